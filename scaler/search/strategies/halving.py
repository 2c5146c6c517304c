"""Successive halving within a greedy step (``greedy.halving``): most of a step's training goes to the
candidates still in contention.

Every candidate of the step first trains to the first rung of the schedule (``iters / 2^(rungs-1)``
iterations; :meth:`~scaler.search.space.GreedySettings.rung_iters`), keeps a checkpoint and pauses.
Its slope at that rung is its mIoU gain over the step's baseline *at the same iteration* (the control
with inherited weights, else the parent, both evaluated at every rung on their way: ``eval_at``),
divided by its latency gain (the step's paired pass). The better half goes on to the next rung from
its checkpoint; the others are stopped (Optuna's PRUNED), their rung mIoUs kept as the trial's
intermediate values. When one candidate is left it trains the whole schedule; the candidates that
reach the last rung are decided by the step as any other step's (:mod:`.greedy`).

Optuna's pruners do not apply: they judge single-objective studies, and a greedy run is a
multi-objective one; the greedy slope is the single score a rung is judged by.

Each rung's verdict is recorded in the run (``rung_<step>_<k>``) before any trial is resumed or
stopped, so a search killed in between applies the same verdict when it resumes and never judges a
rung twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from scaler.search.record import TrialRecord
from scaler.search.strategies.base import Decision, SearchContext
from scaler.search.strategies.greedy_steps import StepPlan

__all__ = ["RungVerdict", "halving_stage", "rung_verdicts", "stopped_text"]

_RUNG_KEY = "rung_{}_{}"


@dataclasses.dataclass(frozen=True)
class RungVerdict:
    """Which candidates of a step go on after a rung, and why.

    Args:
        step: The greedy step.
        rung: The rung's index (0: the first).
        iters: The iteration the rung ends at.
        next_iters: Where the kept candidates train to next (``None``: the whole schedule).
        base: The trial the gains are measured against (the control, or the parent).
        base_miou: Its mIoU at ``iters``.
        base_note: Why ``base_miou`` is not its mIoU at ``iters`` (it was not evaluated there), else empty.
        ranked: ``(trial, mIoU at the rung, slope)`` of every candidate at the rung, best slope first.
        kept: The candidates that go on.
        stopped: The candidates stopped here.
    """

    step: int
    rung: int
    iters: int
    next_iters: int | None
    base: int
    base_miou: float
    base_note: str
    ranked: tuple[tuple[int, float, float], ...]
    kept: tuple[int, ...]
    stopped: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ranked"] = [list(r) for r in self.ranked]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RungVerdict:
        return cls(
            step=int(d["step"]),
            rung=int(d["rung"]),
            iters=int(d["iters"]),
            next_iters=None if d.get("next_iters") is None else int(d["next_iters"]),
            base=int(d["base"]),
            base_miou=float(d["base_miou"]),
            base_note=str(d.get("base_note") or ""),
            ranked=tuple((int(n), float(m), float(s)) for n, m, s in d["ranked"]),
            kept=tuple(int(n) for n in d["kept"]),
            stopped=tuple(int(n) for n in d["stopped"]),
        )

    def prune_reason(self, number: int) -> str:
        """What a stopped candidate records as why it was stopped."""
        place = [n for n, _, _ in self.ranked].index(number) + 1
        slope = dict((n, s) for n, _, s in self.ranked)[number]
        return (
            f"successive halving, step {self.step}: slope {100 * slope:.4g} points/ms at {self.iters} iterations "
            f"ranked {place} of {len(self.ranked)}; the best {len(self.kept)} went on"
        )

    def line(self) -> str:
        """One line for the step's record and the log."""
        to = "the whole schedule" if self.next_iters is None else f"{self.next_iters} iterations"
        ranked = ", ".join(f"#{n} {100 * m:.2f} ({100 * s:.4g} points/ms)" for n, m, s in self.ranked)
        note = f" ({self.base_note})" if self.base_note else ""
        return (
            f"successive halving at {self.iters} iterations: mIoU and slope against #{self.base} "
            f"({100 * self.base_miou:.2f}{note}): {ranked}; "
            f"{', '.join(f'#{n}' for n in self.kept)} went on to {to}"
            + (f", {', '.join(f'#{n}' for n in self.stopped)} stopped" if self.stopped else "")
        )


def rung_verdicts(step: int, ctx: SearchContext) -> list[RungVerdict]:
    """Every rung verdict recorded for ``step``, in order."""
    out = []
    while isinstance(stored := ctx.get(_RUNG_KEY.format(step, len(out))), Mapping):
        out.append(RungVerdict.from_dict(stored))
    return out


def halving_stage(
    step: int,
    parent: TrialRecord,
    base: TrialRecord,
    plan: StepPlan,
    latest: Mapping[str, TrialRecord],
    rungs: Sequence[int],
    floor_ms: float,
    ctx: SearchContext,
) -> Decision | None:
    """The verdict on the step's candidates paused at a rung, or ``None`` when none is paused (the
    step's survivors have trained the whole schedule, or halving is over).

    Args:
        step: The greedy step.
        parent: The step's parent.
        base: What gains are measured against: the control (inherited weights), else the parent.
        plan: The step's plan (its candidates and their paired latency gains).
        latest: Each architecture's latest trial.
        rungs: The iteration each rung ends at (the last is the whole schedule).
        floor_ms: Latency gains below this count as this (``greedy.noise_floor_ms``).
        ctx: The run's records and log.
    """
    trials = [latest[c.arch_hash] for c in plan.candidates]
    paused = [t for t in trials if t.paused]
    if not paused:
        return None
    reached = {t.number: _last_rung(t) for t in paused}
    iters = min(reached.values())
    if iters not in rungs:
        raise AssertionError(f"a trial paused at {iters} iterations, not a rung of {list(rungs)}")
    k = list(rungs).index(iters)
    stored = ctx.get(_RUNG_KEY.format(step, k))
    if stored is None:
        verdict = _judge(step, k, iters, parent, base, plan, trials, rungs, floor_ms)
        # Recorded before any trial is resumed or stopped: a search killed in between applies it again.
        ctx.put(_RUNG_KEY.format(step, k), verdict.to_dict())
        ctx.log(f"step {step}: {verdict.line()}")
    else:
        verdict = RungVerdict.from_dict(stored)
    waiting = {t.number for t in paused}
    return Decision.advance(
        resume={n: verdict.next_iters for n in verdict.kept if n in waiting},
        prune={n: verdict.prune_reason(n) for n in verdict.stopped if n in waiting},
    )


def _judge(
    step: int,
    k: int,
    iters: int,
    parent: TrialRecord,
    base: TrialRecord,
    plan: StepPlan,
    trials: Sequence[TrialRecord],
    rungs: Sequence[int],
    floor_ms: float,
) -> RungVerdict:
    """Rank the candidates at rung ``k`` by slope against ``base`` at the same iteration; keep the better half."""
    assert base.number is not None and base.miou is not None
    at = base.miou_by_iters
    note = ""
    if iters in at:
        base_miou = at[iters]
    else:  # a parent trained before halving was on (a resumed run): its final mIoU, said so
        base_miou = base.miou
        note = f"its mIoU after its whole schedule: it was not evaluated at {iters} iterations"
    scored = []
    for order, (c, t) in enumerate(zip(plan.candidates, trials, strict=True)):
        if not t.paused or t.number is None:
            continue  # failed (or stopped) along the way
        miou = t.miou_by_iters[_last_rung(t)]
        delta = c.paired.delta_ms if c.paired is not None else c.latency_ms - (parent.latency_ms or 0.0)
        scored.append((t.number, miou, (miou - base_miou) / max(delta, floor_ms), order))
    scored.sort(key=lambda r: (-r[2], r[3]))
    keep = max(1, math.ceil(len(scored) / 2))
    last = k + 1 == len(rungs) - 1 or keep == 1  # the next rung is the whole schedule, or one is left
    return RungVerdict(
        step=step,
        rung=k,
        iters=iters,
        next_iters=None if last else rungs[k + 1],
        base=base.number,
        base_miou=base_miou,
        base_note=note,
        ranked=tuple((n, m, s) for n, m, s, _ in scored),
        kept=tuple(n for n, _, _, _ in scored[:keep]),
        stopped=tuple(n for n, _, _, _ in scored[keep:]),
    )


def _last_rung(t: TrialRecord) -> int:
    return max(int(r["iters"]) for r in t.rungs)


def stopped_text(trial: TrialRecord) -> str:
    """A candidate stopped by successive halving: where, and its mIoU there."""
    at = trial.miou_by_iters
    iters = max(at, default=0)
    return f"stopped by successive halving at {iters} iterations (mIoU {100 * at.get(iters, 0.0):.2f})"
