"""The greedy trajectory of a run: the start network, then each step's winner."""

from __future__ import annotations

from typing import Any

import pandas as pd

from scaler.report.table import own_trials
from scaler.search.record import int_or_none
from scaler.search.store import RunStore
from scaler.search.strategies.greedy import GreedyStrategy, StepDecision

__all__ = ["PATH_COLUMNS", "greedy_path"]

PATH_COLUMNS = [
    "step",
    "trial",
    "parent",
    "arch",
    "operators",
    "dimension",
    "steplen",
    "latency_ms",
    "miou",
    "slope",
    "candidates",
    "reason",
]


def _start_trial(df: pd.DataFrame, steps: list[StepDecision]) -> int | None:
    if steps and steps[0].step == 1 and steps[0].parent is not None:
        return steps[0].parent
    # No decided step yet: the start network is the method's step-0 trial.
    own = own_trials(df)
    start = own[(own["step"] == 0) & (own["strategy"].isna() | (own["strategy"] == GreedyStrategy.name))]
    done = start[start["state"] == "COMPLETE"]
    pick = done if len(done) else start
    return int(pick["number"].min()) if len(pick) else None


def greedy_path(store: RunStore, df: pd.DataFrame) -> pd.DataFrame:
    """The greedy trajectory: the start network, then each step's winner, as the strategy recorded them
    (:meth:`~scaler.search.strategies.greedy.GreedyStrategy.steps`).

    Args:
        store: The run's study.
        df: From :func:`trials_frame`.

    Returns:
        Columns :data:`PATH_COLUMNS`, one row per step (step 0 is the start). A step that ended
        the search without a winner has an empty ``trial`` and its ``reason``. ``slope`` is the
        winner's (mIoU gain) / (latency gain) against its parent, mIoU as a fraction per ms.
        Empty when the run has no greedy steps.
    """
    steps = GreedyStrategy.steps(store.study.user_attrs)
    start = _start_trial(df, steps)
    by_number = df.set_index("number", drop=False)
    rows: list[dict[str, Any]] = []

    def trial_row(step: int, number: int | None, parent: Any, slope: Any, candidates: Any, reason: str) -> None:
        row: dict[str, Any] = dict.fromkeys(PATH_COLUMNS)
        row.update({"step": step, "trial": number, "parent": int_or_none(parent), "slope": slope, "reason": reason})
        row["candidates"] = " ".join(str(c) for c in candidates) if candidates else ""
        if number is not None and number in by_number.index:
            t = by_number.loc[number]
            for col in ("arch", "operators", "dimension", "steplen", "latency_ms", "miou"):
                row[col] = t[col]
        rows.append(row)

    if start is not None:
        trial_row(0, start, None, None, [], "start network")
    for s in steps:
        trial_row(s.step, s.winner, s.parent, s.winner_slope, s.candidates, s.reason)
    out = pd.DataFrame(rows, columns=PATH_COLUMNS)
    for col in ("step", "trial", "parent", "steplen"):
        out[col] = out[col].astype("Int64")
    for col in ("latency_ms", "miou", "slope"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out
