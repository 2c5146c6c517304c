"""Latencies of several networks timed together, so that their differences can be trusted.

Two networks measured in two windows differ by whatever the machine did in between (frequency,
other processes, cache state); on a 2-core CPU that drift is often larger than the difference
between one greedy step's candidates. :func:`measure_paired` therefore builds every network of a
group once, warms each up, and times them in interleaved rounds: in each round every network runs
:data:`RUNS_PER_ROUND` times in a freshly shuffled order, and the median of those runs is its sample
for the round. Differences are then taken round by round (:meth:`PairedResult.delta_ms`), so drift
that lasts longer than a round cancels out, and a distribution-free interval for their median
(:func:`scaler.measure.stats.median_interval`) says how sure the difference is.

A paired pass under others' load is not repeated (the round-by-round differences already share the
load, and the median ignores a few disturbed rounds); it is flagged ``under_load`` and not cached.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models import SegArch, arch_from_dict, resolve_arch
from scaler.errors import UserError
from scaler.measure import load
from scaler.measure.cache import LatencyCache
from scaler.measure.fingerprint import fingerprint_hash, make_fingerprint
from scaler.measure.host import gc_paused, pinned, release_memory, steady_cpu_allocator
from scaler.measure.latency import build_network, make_input, resolve_settings
from scaler.measure.runners import Runner, get_runner
from scaler.measure.settings import LatencyResult, LatencySettings
from scaler.measure.stats import median_interval, paired_differences, rel_spread, summarize

__all__ = ["PAIRED_KEY_PREFIX", "RUNS_PER_ROUND", "PairedResult", "group_hash", "measure_paired", "paired_cache_key"]

# Timed runs of each network per round; their median is the round's sample. Three keeps a round
# short (a step's ten candidates at 30 ms: about a second) and lets one preempted run not count.
RUNS_PER_ROUND = 3
# Paired cache keys start with this, so no single-measurement key (arch hash first) can equal one.
PAIRED_KEY_PREFIX = "paired-"


def group_hash(archs: Sequence[SegArch], *, length: int = 16) -> str:
    """Hash of a group of architectures in their order (the order matters: index 0 is the reference)."""
    canonical = ",".join(a.arch_hash() for a in archs)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def paired_cache_key(archs: Sequence[SegArch], fingerprint: dict[str, Any], rule: dict[str, Any]) -> str:
    """Cache key of a paired pass: ``paired-<group hash>-<fingerprint hash>-<rule hash>``.

    Args:
        archs: The group, in order.
        fingerprint: What it was measured on (:func:`make_fingerprint`).
        rule: How it was sampled (:func:`paired_rule`: rounds, seed, runs per round, warm-up).

    Returns:
        The key, lowercase letters, digits and dashes.
    """
    rule_hash = hashlib.sha256(json.dumps(rule, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    return f"{PAIRED_KEY_PREFIX}{group_hash(archs)}-{fingerprint_hash(fingerprint)}-{rule_hash}"


def paired_rule(settings: LatencySettings, rounds: int, seed: int) -> dict[str, Any]:
    """What decides a paired pass's samples besides the networks and the fingerprint."""
    return {
        "kind": "paired",
        "rounds": rounds,
        "seed": seed,
        "runs_per_round": RUNS_PER_ROUND,
        "round_statistic": "median",
        "order": "shuffled per round",
        "warmup": settings.warmup,
        # Not used while sampling, only to call an arch's spread stable (as a single measurement does).
        "target_rel_spread": float(settings.target_rel_spread),
    }


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """Latencies of several networks timed together: interleaved rounds, order shuffled per round.

    ``samples_ms[i][r]`` is arch ``i``'s time in round ``r`` (the median of its
    :data:`RUNS_PER_ROUND` runs in that round). ``others_cpu_share`` is the share of all CPUs other
    processes used over the whole window (``None``: unknown); ``under_load`` says it exceeded the
    settings' ``max_others_share`` (CPU only), and such a result is not cached. Do not mutate
    ``fingerprint`` or ``rule``.
    """

    archs: tuple[SegArch, ...]
    samples_ms: tuple[tuple[float, ...], ...]
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    others_cpu_share: float | None
    under_load: bool
    elapsed_s: float
    measured_at: str
    rule: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache_key: str = ""
    from_cache: bool = False
    output_max_abs_diffs: tuple[float | None, ...] = ()

    @property
    def rounds(self) -> int:
        return len(self.samples_ms[0]) if self.samples_ms else 0

    @property
    def group(self) -> str:
        """:func:`group_hash` of the archs."""
        return group_hash(self.archs)

    def median_ms(self, i: int) -> float:
        """Median of arch ``i``'s per-round samples."""
        return float(statistics.median(self.samples_ms[i]))

    def rel_spread(self, i: int) -> float:
        """IQR / median of arch ``i``'s per-round samples (round-to-round spread, drift included)."""
        return rel_spread(list(self.samples_ms[i]))

    def delta_ms(self, i: int, j: int = 0, confidence: float = 0.9) -> tuple[float, float, float]:
        """(estimate, low, high) of arch ``i``'s latency minus arch ``j``'s.

        The estimate is the median of the per-round differences; ``[low, high]`` covers the true
        median difference with at least ``confidence`` whatever their distribution (the sign test's
        interval, :func:`~scaler.measure.stats.median_interval`). With fewer rounds than that
        confidence needs (5 at 0.9), the interval is ``(-inf, inf)``.

        Raises:
            IndexError: ``i`` or ``j`` is not an arch of the group.
            ValueError: ``confidence`` is not in (0, 1).
        """
        est, low, high = median_interval(paired_differences(self.samples_ms[i], self.samples_ms[j]), confidence)
        return float(est), float(low), float(high)

    def ratio(self, i: int, j: int = 0) -> float:
        """Arch ``i``'s latency as a multiple of arch ``j``'s: the median of the per-round ratios.

        A machine that runs everything slower for a while (frequency, a busy neighbour) moves both
        networks of a round alike, so this is what stays put from one window, or run, to the next.

        Raises:
            IndexError: ``i`` or ``j`` is not an arch of the group.
        """
        return float(statistics.median(a / b for a, b in zip(self.samples_ms[i], self.samples_ms[j], strict=True)))

    def latency_record(self, i: int) -> dict[str, Any]:
        """What a trial's ``latency`` user attribute holds for arch ``i``.

        The keys of :meth:`LatencyResult.to_dict` (statistics over arch ``i``'s per-round samples,
        ``stop_reason="paired"``, the group's fingerprint, cache key and window; no ``samples_ms``)
        plus ``"paired": {"group", "index", "rounds"}``.
        """
        samples = list(self.samples_ms[i])
        summary = summarize(samples)
        target = self.rule.get("target_rel_spread")
        diffs = self.output_max_abs_diffs
        result = LatencyResult(
            arch=self.archs[i],
            **summary,
            n_samples=len(samples),
            samples_ms=tuple(samples),
            stable=bool(target is not None and summary["rel_spread"] <= target and not self.under_load),
            stop_reason="paired",
            rule=dict(self.rule),
            fingerprint=dict(self.fingerprint),
            fingerprint_hash=self.fingerprint_hash,
            cache_key=self.cache_key,
            measured_at=self.measured_at,
            elapsed_s=self.elapsed_s,
            output_max_abs_diff=diffs[i] if i < len(diffs) else None,
            from_cache=self.from_cache,
            others_cpu_share=self.others_cpu_share,
            under_load=self.under_load,
        )
        record = result.to_dict()
        del record["samples_ms"]  # the group's samples live in the paired result, not in every trial
        return {**record, "paired": {"group": self.group, "index": i, "rounds": self.rounds}}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; :meth:`from_dict` inverts it."""
        return {
            "kind": "paired",
            "archs": [a.to_dict() for a in self.archs],
            "arch_hashes": [a.arch_hash() for a in self.archs],
            "inlines": [a.inline() for a in self.archs],
            "group": self.group,
            "samples_ms": [list(s) for s in self.samples_ms],
            "fingerprint": dict(self.fingerprint),
            "fingerprint_hash": self.fingerprint_hash,
            "others_cpu_share": self.others_cpu_share,
            "under_load": self.under_load,
            "elapsed_s": self.elapsed_s,
            "measured_at": self.measured_at,
            "rule": dict(self.rule),
            "cache_key": self.cache_key,
            "from_cache": self.from_cache,
            "output_max_abs_diffs": list(self.output_max_abs_diffs),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedResult:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such output (a single measurement's, say).
        """
        if data.get("kind") != "paired":
            raise ValueError(f"not a paired result (kind {data.get('kind')!r})")
        archs = tuple(arch_from_dict(a) for a in data["archs"])
        samples = tuple(tuple(float(v) for v in s) for s in data["samples_ms"])
        if len(samples) != len(archs) or len({len(s) for s in samples}) > 1:
            raise ValueError("a paired result needs one sample per round for every arch")
        share = data.get("others_cpu_share")
        return cls(
            archs=archs,
            samples_ms=samples,
            fingerprint=dict(data["fingerprint"]),
            fingerprint_hash=str(data["fingerprint_hash"]),
            others_cpu_share=None if share is None else float(share),
            under_load=bool(data["under_load"]),
            elapsed_s=float(data["elapsed_s"]),
            measured_at=str(data["measured_at"]),
            rule=dict(data.get("rule", {})),
            cache_key=str(data.get("cache_key", "")),
            from_cache=bool(data.get("from_cache", False)),
            output_max_abs_diffs=tuple(None if v is None else float(v) for v in data.get("output_max_abs_diffs", [])),
        )


def measure_paired(
    archs: Sequence[SegArch | str | Path],
    settings: LatencySettings,
    *,
    rounds: int = 15,
    seed: int = 0,
    cache: LatencyCache | None = None,
    refresh: bool = False,
) -> PairedResult:
    """Time a group of networks together: built once, warmed up, then ``rounds`` interleaved rounds.

    Each network is built as :func:`~scaler.measure.measure_latency` builds one (seeded weights,
    deploy form by default, the backend's runner, pinned threads, steady allocator); all are built
    before any timing. In each round the order is shuffled with ``random.Random(seed)`` and each
    network runs :data:`RUNS_PER_ROUND` times; the median is its sample for the round. The
    collector is paused while timing; everything is released after.

    Args:
        archs: The group; index 0 is the reference (a greedy step's parent). Any ARCH spelling.
        settings: What to measure on (the same settings give the same fingerprint as a single
            measurement). Its stopping rule is not used, except ``warmup`` (untimed runs per
            network, at least one) and ``target_rel_spread`` (what counts as stable).
        rounds: Interleaved rounds (samples per network); 5 or more for a finite 90% interval.
        seed: Seeds the per-round order.
        cache: Where to look the group up first and store it after (under its own key: the group's
            arch hashes in order, fingerprint, rounds and seed); ``None`` stores nothing.
        refresh: Measure even when ``cache`` holds the group, and replace the entry.

    Returns:
        The :class:`PairedResult`; ``from_cache`` says whether it was measured now.

    Raises:
        UserError: An empty group; ``rounds`` or ``seed`` not an integer (``rounds`` >= 1); an input
            too small for one of the networks; what :func:`measure_latency` raises for the settings
            (backend not installed, CUDA missing, out of memory).
        ArchError: An arch is malformed.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UserError(f"paired latency: rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"paired latency: seed must be an integer, got {seed!r}")
    group = tuple(resolve_arch(a) for a in archs)
    if not group:
        raise UserError("paired latency needs at least one network, got an empty group")
    h, w = settings.input_hw
    for arch in group:
        try:
            arch.check_input_size(h, w)
        except ValueError as e:
            raise UserError(f"paired latency: {arch.inline()} cannot be measured: {e}") from None
    s = resolve_settings(settings)
    fingerprint = make_fingerprint(s)
    rule = paired_rule(s, rounds, seed)
    key = paired_cache_key(group, fingerprint, rule)
    if cache is not None and not refresh:
        hit = cache.get_paired(key)
        if hit is not None:
            return hit
    started = time.perf_counter()
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Looked up on the module at call time, so tests can script the load.
    with load.OthersCPU() as others:
        samples, diffs = _time_group(group, s, rounds, seed)
    share = others.share
    under_load = s.over_load_limit(share)
    result = PairedResult(
        archs=group,
        samples_ms=tuple(tuple(v) for v in samples),
        fingerprint=fingerprint,
        fingerprint_hash=fingerprint_hash(fingerprint),
        others_cpu_share=None if share is None else round(share, 3),
        under_load=under_load,
        elapsed_s=time.perf_counter() - started,
        measured_at=measured_at,
        rule=rule,
        cache_key=key,
        output_max_abs_diffs=tuple(diffs),
    )
    if cache is not None and not under_load:
        cache.put_paired(key, result)
    return result


def _time_group(
    group: tuple[SegArch, ...], settings: LatencySettings, rounds: int, seed: int
) -> tuple[list[list[float]], list[float | None]]:
    """Build all, warm each up, time ``rounds`` shuffled rounds, release; the per-round samples and output checks."""
    s = settings
    runners: list[Runner] = []
    if not s.is_cuda:
        steady_cpu_allocator()
    try:
        with pinned(s), torch.inference_mode():
            for arch in group:
                model = build_network(arch, None, s)
                runners.append(get_runner(s.backend).create(model, make_input(s), s))
                del model
            for runner in runners:
                runner.warm_up(max(1, s.warmup))
            rng = random.Random(seed)
            order = list(range(len(runners)))
            samples: list[list[float]] = [[] for _ in runners]
            with gc_paused():
                for _ in range(rounds):
                    rng.shuffle(order)
                    for i in order:
                        time_once = runners[i].time_once
                        samples[i].append(statistics.median([time_once() for _ in range(RUNS_PER_ROUND)]))
            return samples, [r.output_max_abs_diff for r in runners]
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"out of memory on {s.device} building {len(group)} networks at batch {s.batch}, input "
            f"{s.input_hw[0]}x{s.input_hw[1]}, {s.dtype}; measure a smaller group, input or batch"
        ) from None
    finally:
        for runner in runners:
            runner.close()
        runners.clear()
        release_memory(s)
