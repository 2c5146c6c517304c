"""The Pareto frontier of a run (latency down, mIoU up) and its hypervolume.

Trials that carry a ``reference`` attribute (a named model measured for comparison) are left out of
the frontier and the hypervolume by default: they are not results of the search. Seed replicas
(``seed_of``: a network trained again with another seed to break a greedy tie) are always left out:
their mIoU is a second reading of their trial's; so are the controls of inherited training (a step's
parent trained further) and the retrains of ``scaler retrain`` (shown beside the frontier, see
:mod:`scaler.search.retrain`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import pandas as pd

from scaler.report.table import finite, own_trials
from scaler.search.store import RunStore

__all__ = ["Hypervolume", "hypervolume", "pareto_front", "reference_point", "run_hypervolume"]


def _complete(df: pd.DataFrame, include_reference: bool) -> pd.DataFrame:
    df = own_trials(df, include_reference=include_reference)
    ok = (df["state"] == "COMPLETE") & df["latency_ms"].map(finite) & df["miou"].map(finite)
    return df[ok]


def pareto_front(df: pd.DataFrame, *, include_reference: bool = False) -> pd.DataFrame:
    """The complete trials no other complete trial beats on both latency (lower) and mIoU (higher).

    Trials with exactly the same latency and mIoU are all kept (none beats the others); at equal
    latency only the best mIoU survives.

    Args:
        df: From :func:`trials_frame`.
        include_reference: Also consider trials of named models measured for comparison.

    Returns:
        The frontier rows, sorted by latency (then trial number), with ``df``'s columns.
    """
    done = _complete(df, include_reference)
    # Per latency the best mIoU; a latency stays when its best beats every faster latency's.
    top = done.groupby("latency_ms", sort=True)["miou"].max()
    beats = top[top > top.cummax().shift(1, fill_value=-math.inf)]
    best_here = done["latency_ms"].map(beats)
    keep = done[best_here.notna() & (done["miou"] == best_here)]
    return keep.sort_values(["latency_ms", "number"]).reset_index(drop=True)


class Hypervolume(NamedTuple):
    """The area a frontier dominates, bounded by a reference point, in ms x mIoU (fraction).

    ``rule`` says where the reference point came from; compare hypervolumes only at the same point.
    """

    value: float
    ref_latency_ms: float | None
    ref_miou: float
    rule: str
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "units": "ms x mIoU (fraction)",
            "reference": {"latency_ms": self.ref_latency_ms, "miou": self.ref_miou},
            "rule": self.rule,
            "n_points": self.n_points,
        }


def reference_point(
    latencies: Iterable[float], *, budget_ms: float | None = None, ref_latency_ms: float | None = None
) -> tuple[float | None, str]:
    """The reference latency for the hypervolume and the rule that chose it.

    Args:
        latencies: Latencies (ms) of the completed trials.
        budget_ms: The space's latency budget, used when given.
        ref_latency_ms: An explicit reference, used first (to compare runs at one point).

    Returns:
        ``(latency ms, rule)``; the latency is ``None`` when there is nothing to derive it from.
    """
    if ref_latency_ms is not None:
        return float(ref_latency_ms), "given"
    if budget_ms is not None:
        return float(budget_ms), "the space's latency budget"
    lats = [float(v) for v in latencies if finite(v)]
    if not lats:
        return None, "no completed trials"
    return 1.1 * max(lats), "1.1 x the slowest completed trial"


def hypervolume(
    points: Iterable[tuple[float, float]],
    ref: tuple[float, float] | None = None,
    *,
    budget_ms: float | None = None,
) -> Hypervolume:
    """Exact 2-D hypervolume of ``(latency ms, mIoU)`` points, latency minimised, mIoU maximised.

    Args:
        points: Any points; dominated ones and those not better than the reference add nothing.
        ref: ``(latency ms, mIoU)``; default: ``(budget_ms, 0)`` if a budget is given, else
            ``(1.1 x the largest latency, 0)``.
        budget_ms: The latency budget for the default reference.

    Returns:
        The value with the reference point used and its rule.
    """
    pts = [(float(lat), float(m)) for lat, m in points if finite(lat) and finite(m)]
    if ref is None:
        ref_lat, rule = reference_point((p[0] for p in pts), budget_ms=budget_ms)
        ref_miou = 0.0
    else:
        ref_lat, ref_miou, rule = float(ref[0]), float(ref[1]), "given"
    if ref_lat is None:
        return Hypervolume(0.0, None, ref_miou, rule, 0)
    inside = sorted((p for p in pts if p[0] < ref_lat and p[1] > ref_miou), key=lambda p: (p[0], -p[1]))
    value = 0.0
    level = ref_miou
    used = 0
    for lat, m in inside:
        if m > level:
            value += (ref_lat - lat) * (m - level)
            level = m
            used += 1
    return Hypervolume(value, ref_lat, ref_miou, rule, used)


def _budget(store: RunStore) -> float | None:
    stopping = (store.get("space") or {}).get("stopping") or {}
    value = stopping.get("latency_budget_ms")
    return float(value) if value is not None else None


def run_hypervolume(store: RunStore, df: pd.DataFrame, *, ref_latency_ms: float | None = None) -> Hypervolume:
    """Hypervolume of the run's completed search trials (references left out).

    The reference latency is ``ref_latency_ms`` if given, else the space's latency budget, else
    1.1 x the slowest completed trial; the reference mIoU is 0.
    """
    done = _complete(df, include_reference=False)
    ref_lat, rule = reference_point(done["latency_ms"], budget_ms=_budget(store), ref_latency_ms=ref_latency_ms)
    points = list(zip(done["latency_ms"], done["miou"], strict=True))
    if ref_lat is None:
        return Hypervolume(0.0, None, 0.0, rule, 0)
    return hypervolume(points, (ref_lat, 0.0))._replace(rule=rule)
