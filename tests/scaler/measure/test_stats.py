"""The statistics of paired measurements: per-round differences and the sign test's interval for their median."""

from __future__ import annotations

import math
import random

import pytest

from scaler.measure.stats import median_interval, min_rounds, paired_differences, sign_interval_rank


def _coverage(k: int, n: int) -> float:
    """1 - 2 P(B <= k - 1), B ~ Binomial(n, 1/2), written out independently of the module."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


def test_paired_differences_are_round_by_round():
    assert paired_differences([3.0, 5.0, 4.0], [1.0, 4.5, 4.0]) == [2.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="same rounds, got 3 and 2"):
        paired_differences([1.0, 2.0, 3.0], [1.0, 2.0])


def test_sign_interval_rank_known_values():
    # n = 15 at 90%: [x_(4), x_(12)] covers 96.5%; [x_(5), x_(11)] only 88.2%.
    assert sign_interval_rank(15, 0.9) == 4
    assert _coverage(4, 15) == pytest.approx(0.96484375)
    assert _coverage(5, 15) == pytest.approx(0.881531, abs=1e-6)
    assert sign_interval_rank(5, 0.9) == 1  # [min, max] covers 1 - 2/32 = 93.75%
    assert sign_interval_rank(4, 0.9) is None  # [min, max] covers 87.5% only
    assert sign_interval_rank(0, 0.9) is None


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_sign_interval_rank_is_the_narrowest_that_keeps_the_coverage(confidence):
    for n in range(1, 61):
        k = sign_interval_rank(n, confidence)
        if k is None:
            assert _coverage(1, n) < confidence
            continue
        assert 1 <= k <= (n + 1) // 2
        assert _coverage(k, n) >= confidence
        assert k == (n + 1) // 2 or _coverage(k + 1, n) < confidence


def test_min_rounds():
    assert min_rounds(0.9) == 5
    assert min_rounds(0.95) == 6
    assert min_rounds(0.99) == 8
    for c in (0.9, 0.95, 0.99):
        assert sign_interval_rank(min_rounds(c) - 1, c) is None


def test_median_interval_uses_the_order_statistics():
    values = [float(v) for v in range(15)]
    random.Random(3).shuffle(values)
    assert median_interval(values, 0.9) == (7.0, 3.0, 11.0)
    assert median_interval(values, 0.99) == (7.0, 2.0, 12.0)  # k = 3 at 99%: coverage 0.9926
    assert median_interval([4.0, 1.0, 3.0, 2.0, 5.0, 0.0], 0.9) == (2.5, 0.0, 5.0)


def test_median_interval_with_too_few_values_says_it_cannot_tell():
    est, low, high = median_interval([0.5, 0.7, 0.6, 0.4], 0.9)
    assert est == pytest.approx(0.55)
    assert low == -math.inf and high == math.inf
    assert median_interval([2.0], 0.5) == (2.0, -math.inf, math.inf)


def test_median_interval_bad_input():
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([], 0.9)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence must be in"):
            median_interval([1.0, 2.0], bad)


def test_median_interval_keeps_its_coverage_on_skewed_noise():
    # Exponential noise (a long right tail, as preempted runs give): true median ln 2 + 0.3.
    rng = random.Random(11)
    true_median = math.log(2) + 0.3
    trials, hits = 4000, 0
    for _ in range(trials):
        values = [0.3 + rng.expovariate(1.0) for _ in range(15)]
        _, low, high = median_interval(values, 0.9)
        hits += low <= true_median <= high
    # Nominal 96.5% (the interval is conservative: discrete order statistics).
    assert 0.955 <= hits / trials <= 0.975
