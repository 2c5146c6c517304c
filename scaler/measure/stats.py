"""The stopping rule and the statistics of a latency measurement's samples.

Stopping rule: ``warmup`` untimed runs (done by the caller), then one timed run per sample until,
after at least ``min_samples`` samples, the relative spread IQR / median is at most
``target_rel_spread`` (``stable``), or ``max_samples`` samples or ``time_cap_s`` seconds of
sampling are reached (not stable). IQR / median is used rather than (p90 - p10) / median because one
preempted run in a small sample moves p90 a lot and the quartiles hardly at all.

Paired measurements (:mod:`scaler.measure.paired`) compare networks by the per-round differences of
their samples (:func:`paired_differences`); :func:`median_interval` gives a distribution-free
confidence interval for the median of such differences from their order statistics (the sign
test's interval), so one slow round cannot make two networks look apart.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scaler.measure.settings import LatencySettings

__all__ = [
    "SPREAD_STATISTIC",
    "STOP_REASONS",
    "median_interval",
    "min_rounds",
    "paired_differences",
    "quantile",
    "rel_spread",
    "sample_until_stable",
    "sign_interval_rank",
    "summarize",
]

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


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round-by-round differences ``a[r] - b[r]`` of two networks timed in the same rounds.

    Raises:
        ValueError: ``a`` and ``b`` have different lengths (they were not timed in the same rounds).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need the same rounds, got {len(a)} and {len(b)} samples")
    return [x - y for x, y in zip(a, b, strict=True)]


def _binom_half_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def sign_interval_rank(n: int, confidence: float) -> int | None:
    """The rank ``k`` (1-based) for which ``[x_(k), x_(n+1-k)]`` covers the median with at least ``confidence``.

    The sample median lies below ``x_(k)`` only if at most ``k - 1`` of the ``n`` values fall below
    the true median, which for any continuous distribution has probability ``P(B <= k - 1)``, ``B ~
    Binomial(n, 1/2)``; so the interval's coverage is ``1 - 2 P(B <= k - 1)``, whatever the
    distribution. The largest such ``k`` is returned: the narrowest interval of order statistics
    that still keeps the coverage.

    Args:
        n: Number of values.
        confidence: Wanted coverage, in (0, 1).

    Returns:
        ``k``, or ``None`` when even ``[min, max]`` covers less than ``confidence`` (fewer than
        :func:`min_rounds` values).

    Raises:
        ValueError: ``confidence`` is not in (0, 1), or ``n`` is negative.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    best = None
    for k in range(1, (n + 1) // 2 + 1):
        if 1 - 2 * _binom_half_cdf(k - 1, n) >= confidence:
            best = k
        else:
            break
    return best


def min_rounds(confidence: float) -> int:
    """Fewest values for which :func:`median_interval` is finite at ``confidence`` (5 at 0.9, 6 at 0.95)."""
    n = 1
    while sign_interval_rank(n, confidence) is None:
        n += 1
    return n


def median_interval(values: Sequence[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for the true median.

    Args:
        values: Independent values (for a paired comparison, :func:`paired_differences`); any order.
        confidence: Wanted coverage, in (0, 1).

    Returns:
        ``(median, low, high)`` with ``low <= median <= high``. With too few values for the
        coverage (:func:`min_rounds`), ``low`` is ``-inf`` and ``high`` is ``inf``: the data cannot
        say where the median is at that confidence, and an interval that claims otherwise would
        mislead a decision.

    Raises:
        ValueError: ``values`` is empty, or ``confidence`` is not in (0, 1).
    """
    if not values:
        raise ValueError("median_interval needs at least one value")
    ordered = sorted(values)
    n = len(ordered)
    k = sign_interval_rank(n, confidence)
    median = statistics.median(ordered)
    if k is None:
        return median, -math.inf, math.inf
    return median, ordered[k - 1], ordered[n - k]
