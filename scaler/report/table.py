"""Every trial of a run as one table (pandas), and the small readers the other report modules share.

mIoU stays a fraction in ``[0, 1]`` as the study stores it; latency is the median in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from scaler.search.record import OWNER_GONE, TrialRecord
from scaler.search.store import STALE_AFTER_S, RunStore

__all__ = ["SECOND_READINGS", "TRIAL_COLUMNS", "finite", "operator_dimension", "own_trials", "trials_frame"]

# Trials that read an architecture again rather than add one to the search: a seed replica (another
# training seed, to break a tie), a step's control (the parent trained further), a retrain from scratch.
SECOND_READINGS = ("seed_of", "control_of", "retrain_of")


def own_trials(df: pd.DataFrame, *, include_reference: bool = False) -> pd.DataFrame:
    """The rows of the search's own candidates: not named references (unless asked), not second readings."""
    ok = pd.Series(True, index=df.index)
    if not include_reference:
        ok &= df["reference"].isna()
    for col in SECOND_READINGS:
        if col in df:
            ok &= df[col].isna()
    return df[ok]


TRIAL_COLUMNS = [
    "number",
    "state",
    "strategy",
    "step",
    "parent",
    "operators",
    "dimension",
    "steplen",
    "reference",
    "arch",
    "arch_hash",
    *[f"d{i}" for i in range(1, 6)],
    *[f"w{i}" for i in range(1, 6)],
    *[f"r{i}" for i in range(1, 4)],
    "num_paths",
    "latency_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    "miou",
    "pixel_accuracy",
    "train_seconds",
    "fail_reason",
    "interrupted",
    "over_budget",
    "retry_of",
    "seed_of",
    "train_seed",
    "control_of",
    "inherit_from",
    "retrain_of",
    "weights",
    "device",
    "latency_fingerprint",
]


_INT_COLUMNS = (
    "step",
    "parent",
    "steplen",
    "retry_of",
    "seed_of",
    "train_seed",
    "control_of",
    "inherit_from",
    "retrain_of",
    "num_paths",
)
_KIND_BY_PREFIX = (("depth", "depth"), ("width", "width"), ("res", "resolution"), ("head", "head"))


def operator_dimension(operators: Iterable[str], kinds: dict[str, str] | None = None) -> str:
    """The dimension (``depth``, ``width``, ``resolution``, or ``head`` for a head switch) grown by
    ``operators``; ``""`` for none.

    Args:
        operators: Operator names as the trials record them (``width_1-5``).
        kinds: Name to kind, from the stored space; names missing there are read from their prefix.

    Returns:
        The kind, or the kinds joined with ``+`` when the operators grow several dimensions.
    """
    found = []
    for name in operators:
        kind = (kinds or {}).get(name)
        if kind is None:
            kind = next((k for prefix, k in _KIND_BY_PREFIX if name.startswith(prefix)), "other")
        if kind not in found:
            found.append(kind)
    return "+".join(found)


def _operator_kinds(store: RunStore) -> dict[str, str]:
    ops = (store.get("space") or {}).get("operators") or []
    return {op["name"]: op["kind"] for op in ops if isinstance(op, dict) and "name" in op and "kind" in op}


def trials_frame(
    store: RunStore, *, per_class: bool = False, records: Sequence[TrialRecord] | None = None
) -> pd.DataFrame:
    """One row per trial of the run, in trial order.

    Args:
        store: The run's study.
        per_class: Add an ``iou_<class>`` column per class (from the training result).
        records: ``store.records()``, when the caller has read them already (a large run's read
            is most of a report's time).

    Returns:
        Columns :data:`TRIAL_COLUMNS` (plus the per-class ones). ``latency_ms`` is the trial's
        value when complete, else the measured median when there is one; ``miou`` is a fraction.
        ``interrupted``: ``stopped`` or ``worker died`` for a FAIL trial that a stop or a dead worker
        cut short (queued again, not a failure of the candidate), ``owner gone`` for a RUNNING one
        whose worker is gone; else empty.
    """
    kinds = _operator_kinds(store)
    rows = []
    class_names: list[str] = []
    for t in store.records() if records is None else records:
        lps = t.lps_arch
        lat = t.latency or {}
        train = t.train or {}
        res = [*(lps.resolution if lps else ()), 0.0, 0.0, 0.0][:3]
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name if t.state is not None else None,
            "strategy": t.strategy,
            "step": t.step,
            "parent": t.parent,
            "operators": "+".join(t.operators),
            "dimension": operator_dimension(t.operators, kinds),
            "steplen": t.steplen,
            "reference": t.reference,
            "arch": t.arch.inline(),
            "arch_hash": t.arch_hash,
            **{f"d{i + 1}": (lps.depth[i] if lps else None) for i in range(5)},
            **{f"w{i + 1}": (lps.width[i] if lps else None) for i in range(5)},
            **{f"r{i + 1}": (res[i] if lps else None) for i in range(3)},
            "num_paths": lps.num_paths if lps else None,
            "latency_ms": t.values[0] if t.values is not None else t.latency_ms,
            "latency_p10_ms": lat.get("p10_ms"),
            "latency_p90_ms": lat.get("p90_ms"),
            "miou": t.miou,
            "pixel_accuracy": train.get("pixel_accuracy"),
            "train_seconds": train.get("train_seconds"),
            "fail_reason": t.fail_reason,
            "interrupted": t.interrupted or (OWNER_GONE if t.owner_gone(STALE_AFTER_S) else None),
            "over_budget": t.over_budget,
            "retry_of": t.retry_of,
            "seed_of": t.seed_of,
            "train_seed": t.train_seed,
            "control_of": t.control_of,
            "inherit_from": t.inherit_from,
            "retrain_of": t.retrain_of,
            "weights": t.weights,
            "device": t.fingerprint.get("device_name"),
            "latency_fingerprint": t.fingerprint_hash,
        }
        if per_class:
            for name, iou in (train.get("per_class_iou") or {}).items():
                if name not in class_names:
                    class_names.append(name)
                row[f"iou_{name}"] = iou
        rows.append(row)
    if per_class:
        stored = [str(n) for n in store.get("class_names") or []]
        class_names = stored + [n for n in class_names if n not in stored]
    columns = TRIAL_COLUMNS + [f"iou_{n}" for n in class_names]
    df = pd.DataFrame(rows, columns=columns)
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ("latency_ms", "latency_p10_ms", "latency_p90_ms", "miou", "pixel_accuracy", "train_seconds"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def finite(v: Any) -> bool:
    """``v`` is a finite int or float (not None, NaN or inf)."""
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)
