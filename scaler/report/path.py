"""The greedy trajectory of a run: the start network, then each step's winner."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from scaler.report.table import int_or_none
from scaler.search.store import RunStore

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


_STEP_KEY = re.compile(r"^step_(\d+)$")


def _step_records(store: RunStore) -> list[dict[str, Any]]:
    steps = []
    for key, value in store.study.user_attrs.items():
        m = _STEP_KEY.match(key)
        if m and isinstance(value, dict):
            steps.append({"step": int(m.group(1)), **value})
    return sorted(steps, key=lambda s: s["step"])


def _start_trial(df: pd.DataFrame, steps: list[dict[str, Any]]) -> int | None:
    if steps and steps[0].get("step") == 1 and int_or_none(steps[0].get("parent")) is not None:
        return int(steps[0]["parent"])
    start = df[(df["step"] == 0) & df["reference"].isna() & (df["strategy"].isna() | (df["strategy"] == "greedy"))]
    done = start[start["state"] == "COMPLETE"]
    pick = done if len(done) else start
    return int(pick["number"].min()) if len(pick) else None


def greedy_path(store: RunStore, df: pd.DataFrame) -> pd.DataFrame:
    """The greedy trajectory: the start network, then each step's winner, from the ``step_<s>`` records.

    Args:
        store: The run's study.
        df: From :func:`trials_frame`.

    Returns:
        Columns :data:`PATH_COLUMNS`, one row per step (step 0 is the start). A step that ended
        the search without a winner has an empty ``trial`` and its ``reason``. ``slope`` is the
        winner's (mIoU gain) / (latency gain) against its parent, mIoU as a fraction per ms.
        Empty when the run has no greedy steps.
    """
    steps = _step_records(store)
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
        winner = int_or_none(s.get("winner"))
        slopes = s.get("slopes") or {}
        slope = slopes.get(str(winner)) if winner is not None else None
        trial_row(s["step"], winner, s.get("parent"), slope, s.get("candidates") or [], str(s.get("reason") or ""))
    out = pd.DataFrame(rows, columns=PATH_COLUMNS)
    for col in ("step", "trial", "parent", "steplen"):
        out[col] = out[col].astype("Int64")
    for col in ("latency_ms", "miou", "slope"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    return out
