"""The stopping rule and the statistics of a latency measurement's samples.

Stopping rule: ``warmup`` untimed runs (done by the caller), then one timed run per sample until,
after at least ``min_samples`` samples, the relative spread IQR / median is at most
``target_rel_spread`` (``stable``), or ``max_samples`` samples or ``time_cap_s`` seconds of
sampling are reached (not stable). IQR / median is used rather than (p90 - p10) / median because one
preempted run in a small sample moves p90 a lot and the quartiles hardly at all.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scaler.measure.settings import LatencySettings

__all__ = ["SPREAD_STATISTIC", "STOP_REASONS", "quantile", "rel_spread", "sample_until_stable", "summarize"]

SPREAD_STATISTIC = "iqr/median"
STOP_REASONS = ("stable", "max_samples", "time_cap")


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method).

    Args:
        sorted_values: The samples, sorted ascending; at least one.
        q: The quantile, 0-1.

    Returns:
        The ``q`` quantile.
    """
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def rel_spread(samples: list[float]) -> float:
    """IQR / median of ``samples`` (any order); ``inf`` when the median is not positive."""
    s = sorted(samples)
    median = statistics.median(s)
    iqr = quantile(s, 0.75) - quantile(s, 0.25)
    return iqr / median if median > 0 else math.inf


def sample_until_stable(time_once: Callable[[], float], settings: LatencySettings) -> tuple[list[float], str]:
    """Call ``time_once`` for one sample at a time until the stopping rule of ``settings`` says stop.

    Returns:
        The samples in the order taken, and why sampling stopped (one of :data:`STOP_REASONS`).
    """
    s = settings
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(time_once())
        n = len(samples)
        if n >= s.min_samples and rel_spread(samples) <= s.target_rel_spread:
            return samples, "stable"
        if n >= s.max_samples:
            return samples, "max_samples"
        if time.perf_counter() - start >= s.time_cap_s:
            return samples, "time_cap"


def summarize(samples: list[float]) -> dict[str, float]:
    """The statistics a :class:`~scaler.measure.LatencyResult` reports of its samples (ms).

    Returns:
        ``median_ms``, ``p10_ms``, ``p90_ms``, ``iqr_ms``, ``mean_ms``, ``min_ms`` and ``rel_spread``.
    """
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p10_ms": quantile(ordered, 0.10),
        "p90_ms": quantile(ordered, 0.90),
        "iqr_ms": quantile(ordered, 0.75) - quantile(ordered, 0.25),
        "mean_ms": statistics.fmean(ordered),
        "min_ms": ordered[0],
        "rel_spread": rel_spread(samples),
    }
