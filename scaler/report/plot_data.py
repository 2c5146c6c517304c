"""What the plots of a run show, as plain data (no matplotlib here; :mod:`scaler.report.draw` draws it).

- :func:`frontier_plot_data`: latency vs mIoU with every candidate (failed ones at their latency),
  the Pareto frontier, the greedy path with the dimension chosen at each step, named models, and
  other runs' frontiers to compare;
- :func:`steps_plot_data`: latency and mIoU of the greedy path step by step, with each step's
  candidates.

mIoU is in percent here (what the axes show); latency in milliseconds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import pandas as pd

from models import get_arch, parse_inline
from scaler.report.frontier import pareto_front
from scaler.report.path import greedy_path
from scaler.report.summary import RunInfo, run_info
from scaler.report.table import own_trials
from scaler.search.store import RunStore

__all__ = [
    "NAMED_MODELS",
    "FrontierPlot",
    "FrontierSeries",
    "NamedPoint",
    "PathPoint",
    "Point",
    "RunInfo",
    "StepsPlot",
    "frontier_plot_data",
    "run_info",
    "steps_plot_data",
]

# The paper's models, annotated wherever a run measured them or reached their architecture.
NAMED_MODELS = ("lpsnet_s", "lpsnet_m", "lpsnet_l")


class Point(NamedTuple):
    """One trial on the latency/mIoU plane; ``miou_pct`` is ``None`` for a trial that did not finish;
    ``head``: the kind of its network's head (where a search switches heads, the plots tell them apart)."""

    number: int
    latency_ms: float
    miou_pct: float | None
    head: str = "plain"


class PathPoint(NamedTuple):
    """One step of the greedy path: the winner and the dimension its operators grew."""

    step: int
    number: int
    latency_ms: float
    miou_pct: float
    dimension: str
    operators: str
    steplen: int | None


class NamedPoint(NamedTuple):
    """A named model in the run (measured for comparison, or reached by the search)."""

    name: str
    number: int
    latency_ms: float
    miou_pct: float | None
    reference: bool


class FrontierSeries(NamedTuple):
    """Another run's frontier, for ``--compare``."""

    name: str
    points: list[Point]


class FrontierPlot(NamedTuple):
    """Everything figure 1 shows. ``failed``: training failed; ``over_budget``: a baseline's sample
    slower than the latency budget, recorded without training."""

    info: RunInfo
    candidates: list[Point]
    failed: list[Point]
    over_budget: list[Point]
    frontier: list[Point]
    path: list[PathPoint]
    named: list[NamedPoint]
    compare: list[FrontierSeries]


class StepsPlot(NamedTuple):
    """Everything figure 2 shows: the path, each step's candidates ``(step, point)``, and the steps
    that ended the search without a winner ``(step, reason)``."""

    info: RunInfo
    path: list[PathPoint]
    candidates: list[tuple[int, Point]]
    failed: list[tuple[int, Point]]
    stopped: list[tuple[int, str]]


def _f(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(value: Any) -> float | None:
    v = _f(value)
    return None if v is None else 100.0 * v


@functools.lru_cache(maxsize=4096)
def _head_kind(arch: Any) -> str:
    """The head kind of an inline architecture (``plain`` for none, or one that does not parse)."""
    if not isinstance(arch, str) or ";h=" not in arch:
        return "plain"
    try:
        return parse_inline(arch).head.kind
    except ValueError:
        return "plain"


def _point(row: Any) -> Point | None:
    lat = _f(row.latency_ms)
    return None if lat is None else Point(int(row.number), lat, _pct(row.miou), _head_kind(getattr(row, "arch", None)))


def _points(df: pd.DataFrame) -> list[Point]:
    return [p for p in _points_or_none(df) if p is not None]


def _named_key(inline: str) -> tuple:
    arch = parse_inline(inline)
    return arch.depth, arch.width, tuple(round(r, 9) for r in arch.resolution)


def _named_points(df: pd.DataFrame) -> list[NamedPoint]:
    known = {_named_key(get_arch(n).inline()): n for n in NAMED_MODELS}
    out = []
    for row in df.itertuples(index=False):
        lat = _f(row.latency_ms)
        if lat is None or not isinstance(row.arch, str):
            continue
        ref = row.reference if isinstance(row.reference, str) else None
        name = ref or known.get(_named_key(row.arch))
        if name:
            out.append(NamedPoint(name, int(row.number), lat, _pct(row.miou), ref is not None))
    return out


def _path_points(path: pd.DataFrame) -> list[PathPoint]:
    out = []
    for row in path.itertuples(index=False):
        lat, miou = _f(row.latency_ms), _pct(row.miou)
        if row.trial is pd.NA or lat is None or miou is None:
            continue
        steplen = None if row.steplen is pd.NA else int(row.steplen)
        dimension = row.dimension if isinstance(row.dimension, str) else ""
        operators = row.operators if isinstance(row.operators, str) else ""
        out.append(PathPoint(int(row.step), int(row.trial), lat, miou, dimension, operators, steplen))
    return out


def frontier_plot_data(
    store: RunStore,
    df: pd.DataFrame,
    *,
    name: str | None = None,
    compare: Sequence[tuple[str, pd.DataFrame]] = (),
) -> FrontierPlot:
    """Figure 1's data: candidates, failures, frontier, greedy path and named models of one run.

    Args:
        store: The run's study.
        df: Its :func:`~scaler.report.frontier.trials_frame`.
        name: The run's label (default: the study name).
        compare: ``(label, trials frame)`` of other runs whose frontiers are overlaid.

    Returns:
        Points in ms and percent; references are named points, not candidates.
    """
    search = own_trials(df)
    done = search[search["state"] == "COMPLETE"]
    # A stopped trial, or one a dead worker cut short, is no failure of its candidate (queued again).
    failed = search[(search["state"] == "FAIL") & search["interrupted"].isna()]
    return FrontierPlot(
        info=run_info(store, name),
        candidates=_points(done),
        failed=_points(failed[~failed["over_budget"].astype(bool)]),
        over_budget=_points(failed[failed["over_budget"].astype(bool)]),
        frontier=_points(pareto_front(df)),
        path=_path_points(greedy_path(store, df)),
        named=_named_points(df[df["state"].isin(["COMPLETE", "FAIL"]) & df["interrupted"].isna()]),
        compare=[FrontierSeries(label, _points(pareto_front(other))) for label, other in compare],
    )


def steps_plot_data(store: RunStore, df: pd.DataFrame, *, name: str | None = None) -> StepsPlot:
    """Figure 2's data: the greedy path and, for each step, every candidate it tried.

    Args:
        store: The run's study.
        df: Its :func:`~scaler.report.frontier.trials_frame`.
        name: The run's label (default: the study name).
    """
    search = own_trials(df)
    search = search[search["step"].notna()]
    candidates = [(int(s), p) for s, p in zip(search["step"], _points_or_none(search), strict=True) if p is not None]
    done = [(s, p) for s, p in candidates if p.miou_pct is not None]
    failed_numbers = set(search.loc[(search["state"] == "FAIL") & search["interrupted"].isna(), "number"])
    failed = [(s, p) for s, p in candidates if p.number in failed_numbers]
    path = greedy_path(store, df)
    stopped = [(int(r.step), str(r.reason)) for r in path.itertuples(index=False) if r.trial is pd.NA]
    return StepsPlot(
        info=run_info(store, name),
        path=_path_points(path),
        candidates=done,
        failed=failed,
        stopped=stopped,
    )


def _points_or_none(df: pd.DataFrame) -> list[Point | None]:
    return [_point(row) for row in df.itertuples(index=False)]
