"""Progress bars over a search: steps or trained trials (as the strategy counts), and the current
step's candidates. Training bars of single candidates appear below them.

Everything shown is computed from the run's trials, so a resumed search starts where it stood.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from scaler.search.record import TrialKind, TrialRecord
from scaler.search.space import SearchSpace
from scaler.search.strategies import Strategy

__all__ = ["SearchBars"]


class SearchBars:
    """The bars of one search.

    Args:
        space: The search space (its stopping rules are the totals).
        strategy: The strategy class; its ``progress`` says whether steps or trials are counted.
        enabled: Show the bars (``None``: when stderr is a terminal).
    """

    def __init__(self, space: SearchSpace, strategy: type[Strategy], enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.space = space
        self.by_steps = strategy.progress == "steps"
        # tqdm's disable=None hides the bars when stderr is not a terminal (logs, CI).
        disable = None if enabled is None else not enabled
        common = {"disable": disable, "dynamic_ncols": True, "file": sys.stderr}
        if self.by_steps:
            self.main = tqdm(total=space.stopping.max_steps, desc="steps", unit="step", position=0, **common)
            self.step = tqdm(total=1, desc="candidates", unit="cand", position=1, leave=False, **common)
        else:
            total = space.stopping.max_trials or 0
            self.main = tqdm(total=total, desc=f"{strategy.name} trials", unit="trial", position=0, **common)
            self.step = None
        self._tqdm = tqdm
        self._current: int | None = None

    def write(self, log: Callable[[str], None], message: str) -> None:
        """Log ``message`` without tearing the bars."""
        with self._tqdm.external_write_mode(file=sys.stderr):
            log(message)

    def update(self, history: Sequence[TrialRecord]) -> None:
        """Show where the search stands after ``history`` (every trial so far)."""
        history = [t for t in history if not t.is_reference]
        done = [t for t in history if not t.pending]
        best = max((t for t in done if t.complete), key=lambda t: t.miou or 0.0, default=None)
        if best is not None:
            self.main.set_postfix_str(
                f"best mIoU {100 * (best.miou or 0):.1f} at {best.latency_ms:.2f} ms", refresh=False
            )
        if not self.by_steps:
            trained = [t for t in done if t.kind == TrialKind.CANDIDATE]
            _set(self.main, len(trained))
            return
        current = max((t.step for t in history if t.step is not None), default=0)
        in_step = [t for t in _latest(history) if t.step == current]
        finished = sum(not t.pending for t in in_step)
        # A step counts once all its candidates are back (step 0, the start network, is not counted).
        _set(self.main, max(0, min(self.main.total, current if finished == len(in_step) else current - 1)))
        assert self.step is not None
        if current != self._current:  # a new step: its own count, rate and elapsed time
            self._current = current
            self.step.reset(total=max(1, len(in_step)))
            self.step.set_description_str(f"step {current} candidates" if current else "start network", refresh=False)
        self.step.total = max(1, len(in_step))
        _set(self.step, finished)

    def close(self) -> None:
        if self.step is not None:
            self.step.close()
        self.main.close()


def _set(bar: Any, n: int) -> None:
    if n != bar.n:
        bar.n = n
        bar.refresh()


def _latest(history: Sequence[TrialRecord]) -> list[TrialRecord]:
    """One record per architecture and step: a re-queued candidate replaces its dead attempt."""
    out: dict[tuple[str, int | None], TrialRecord] = {}
    for t in sorted(history, key=lambda t: t.number if t.number is not None else -1):
        out[(t.arch_hash, t.step)] = t
    return list(out.values())
