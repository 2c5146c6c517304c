"""A stand-in for ``scaler.measure.paired.PairedResult`` and ``measure_paired``, of the same shape
(see the contract in the issue-11 notes): built from given per-round samples, or from a seeded
model of latency, so the greedy decisions can be tested without timing anything.

``delta_ms`` has the contract's semantics: the estimate is the median of the per-round differences
and the interval the distribution-free one for that median, from order statistics.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from fake_search import fake_ms

from models import LPSNetArch, SegArch
from scaler.search.strategies import SearchContext


def order_statistic_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    """The distribution-free interval of the median of ``values``: ``[x_(k+1), x_(n-k)]`` with the
    largest ``k`` whose two tails hold at most ``1 - confidence``; unbounded when ``n`` is too small."""
    xs = sorted(values)
    n = len(xs)
    tail = 0.0
    k = -1
    for i in range(n // 2):
        tail += math.comb(n, i) / 2**n
        if 2 * tail > 1 - confidence:
            break
        k = i
    if k < 0:
        return -math.inf, math.inf
    return xs[k], xs[n - 1 - k]


@dataclasses.dataclass(frozen=True)
class StandInPaired:
    """Latencies of several networks timed together; index 0 is the reference (the parent)."""

    archs: tuple[SegArch, ...]
    samples_ms: tuple[tuple[float, ...], ...]
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=lambda: {"device": "fake"})
    fingerprint_hash: str = "fakefingerprint"
    others_cpu_share: float | None = 0.02
    under_load: bool = False
    elapsed_s: float = 0.0
    measured_at: str = "2025-01-01T00:00:00+00:00"

    @property
    def rounds(self) -> int:
        return len(self.samples_ms[0])

    def median_ms(self, i: int) -> float:
        return statistics.median(self.samples_ms[i])

    def rel_spread(self, i: int) -> float:
        q = statistics.quantiles(self.samples_ms[i], n=4, method="inclusive")
        return (q[2] - q[0]) / self.median_ms(i)

    def delta_ms(self, i: int, j: int = 0, confidence: float = 0.9) -> tuple[float, float, float]:
        diffs = [a - b for a, b in zip(self.samples_ms[i], self.samples_ms[j], strict=True)]
        low, high = order_statistic_interval(diffs, confidence)
        return statistics.median(diffs), low, high

    def ratio(self, i: int, j: int = 0) -> float:
        return statistics.median(a / b for a, b in zip(self.samples_ms[i], self.samples_ms[j], strict=True))

    def latency_record(self, i: int) -> dict[str, Any]:
        s = sorted(self.samples_ms[i])
        group = "g" + "".join(a.arch_hash() for a in self.archs)[:11]
        return {
            "median_ms": self.median_ms(i),
            "p10_ms": s[len(s) // 10],
            "p90_ms": s[(9 * len(s)) // 10],
            "n_samples": len(s),
            "rel_spread": self.rel_spread(i),
            "stop_reason": "paired",
            "fingerprint": dict(self.fingerprint),
            "fingerprint_hash": self.fingerprint_hash,
            "others_cpu_share": self.others_cpu_share,
            "under_load": self.under_load,
            "arch_hash": self.archs[i].arch_hash(),
            "paired": {"group": group, "index": i, "rounds": self.rounds},
        }


class FakePaired:
    """Stands in for ``measure_paired``: each network's latency from ``ms`` (default :func:`fake_ms`),
    plus a drift shared by every network of a round and seeded noise of its own; records its calls.

    Args:
        ms: Latency model.
        noise_ms: Half-width of each sample's own uniform noise (0: exact samples).
        drift_ms: Half-width of the per-round drift every network of the round shares.
        bias: A fixed latency added to one network on every call (by architecture): a measurement
            that is wrong in a way more rounds do not fix.
        under_load: What every result says of the machine's load.
        others: Other processes' CPU share every result reports.
    """

    def __init__(
        self,
        ms: Callable[[LPSNetArch], float] = fake_ms,
        *,
        noise_ms: float = 0.0,
        drift_ms: float = 0.0,
        bias: dict[LPSNetArch, float] | None = None,
        under_load: bool = False,
        others: float | None = 0.02,
    ) -> None:
        self.under_load = under_load
        self.others = others
        self.ms = ms
        self.noise_ms = noise_ms
        self.drift_ms = drift_ms
        self.bias = bias or {}
        self.calls: list[tuple[tuple[SegArch, ...], int]] = []

    def __call__(
        self, archs: Sequence[SegArch], settings: Any = None, *, rounds: int = 15, seed: int = 0, **kw: Any
    ) -> StandInPaired:
        self.calls.append((tuple(archs), rounds))
        rng = random.Random(seed)
        rows: list[list[float]] = [[] for _ in archs]
        for _ in range(rounds):
            drift = rng.uniform(-self.drift_ms, self.drift_ms)
            for i, a in enumerate(archs):
                own = rng.uniform(-self.noise_ms, self.noise_ms)
                rows[i].append(self.ms(a) + self.bias.get(a, 0.0) + drift + own)
        return StandInPaired(
            tuple(archs), tuple(tuple(r) for r in rows), others_cpu_share=self.others, under_load=self.under_load
        )


def paired_context(space: Any, kv: dict[str, Any], put: Callable[[str, Any], None] | None = None) -> SearchContext:
    """A strategy's context on :class:`FakePaired`'s latency model, single and paired; ``kv`` holds the
    run's records (``put``: record them another way, counting writes, say)."""
    fake = FakePaired()
    return SearchContext(
        space=space,
        latency=lambda a, refresh=False: {"median_ms": fake.ms(a)},
        get=kv.get,
        put=put or kv.__setitem__,
        paired=lambda archs, rounds: fake(archs, rounds=rounds),
    )
