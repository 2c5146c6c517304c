"""Paired latency measurement: interleaved shuffled rounds, paired differences, the cache (scripted timers)."""

from __future__ import annotations

import json
import math
import random
import statistics
from typing import Any, ClassVar

import pytest
import torch

from models import get_arch, resolve_arch
from scaler.errors import UserError
from scaler.measure import (
    CACHE_ENV,
    LatencyCache,
    LatencySettings,
    PairedResult,
    Runner,
    load,
    make_fingerprint,
    measure_latency,
    measure_paired,
    register_runner,
    resolve_settings,
    runners,
)
from scaler.measure.paired import RUNS_PER_ROUND, group_hash

HW = (64, 128)
TINY = get_arch("lpsnet_tiny").inline()
WIDE = "lpsnet:d=1,1,1,1,1;w=4,24,48,96,96;r=1"
DEEP = "lpsnet:d=1,2,2,2,2;w=4,8,16,32,32;r=0.5"
# Each arch's true time (ms), and drift shared by all archs in a round, much larger than their
# differences: what a busy 2-core machine does between measurement windows.
BASE = {TINY: 1.0, WIDE: 1.3, DEEP: 1.1}
DRIFT = [0.0, 2.0, 0.5, 4.0, 1.0, 3.0, 0.2, 2.5, 0.7, 5.0, 1.5, 0.1, 3.5, 0.9, 2.2]


class ScriptedRunner(Runner):
    """Times nothing: each timed run returns the arch's base + the round's drift (+ an outlier now and then)."""

    log: ClassVar[list[str]] = []
    built: ClassVar[list[str]] = []
    closed: ClassVar[int] = 0
    group_size: ClassVar[int] = 1

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, settings: LatencySettings) -> None:
        self.name = model.model.arch.inline()
        assert tuple(x.shape[-2:]) == settings.input_hw
        ScriptedRunner.built.append(self.name)

    @classmethod
    def fingerprint_fields(cls, settings: LatencySettings) -> dict[str, Any]:
        return {"backend_version": "scripted-1", "timer": "scripted"}

    @classmethod
    def runtime_label(cls, fingerprint: dict[str, Any]) -> str:
        return "scripted"

    def run(self) -> None:
        pass

    def time_once(self) -> float:
        cls = ScriptedRunner
        cls.log.append(self.name)
        rnd = (len(cls.log) - 1) // (cls.group_size * RUNS_PER_ROUND)
        value = BASE[self.name] + DRIFT[rnd % len(DRIFT)]
        # Every fourth run is preempted: a round's median of three must not see it.
        return value + (50.0 if len(cls.log) % 4 == 0 else 0.0)

    def close(self) -> None:
        ScriptedRunner.closed += 1
        super().close()


@pytest.fixture(autouse=True)
def scripted(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    monkeypatch.setattr(runners, "RUNNERS", dict(runners.RUNNERS))
    register_runner("scripted")(ScriptedRunner)
    ScriptedRunner.log, ScriptedRunner.built, ScriptedRunner.closed = [], [], 0
    return ScriptedRunner


def settings(**kwargs: Any) -> LatencySettings:
    base = {"input_hw": HW, "backend": "scripted", "threads": 1, "warmup": 1, "max_others_share": None}
    return LatencySettings(**{**base, **kwargs})


def paired(archs=(TINY, WIDE, DEEP), **kwargs: Any) -> PairedResult:
    ScriptedRunner.group_size = len(archs)
    return measure_paired(list(archs), settings(), **kwargs)


def _rounds_of(log: list[str], n: int) -> list[list[str]]:
    size = n * RUNS_PER_ROUND
    return [log[i : i + size] for i in range(0, len(log), size)]


# --------------------------------------------------------------------------- rounds


def test_every_round_times_each_network_in_a_seeded_shuffled_order(scripted):
    archs = (TINY, WIDE, DEEP)
    result = paired(archs, rounds=15, seed=7)
    assert result.rounds == 15 and len(scripted.log) == 15 * 3 * RUNS_PER_ROUND
    rng, order, expected = random.Random(7), [0, 1, 2], []
    for _ in range(15):
        rng.shuffle(order)
        expected.append([archs[i] for i in order])
    seen = []
    for chunk in _rounds_of(scripted.log, 3):
        # Each network's runs of a round come together, then the next network's.
        names = chunk[::RUNS_PER_ROUND]
        assert chunk == [name for name in names for _ in range(RUNS_PER_ROUND)]
        assert sorted(names) == sorted(archs)
        seen.append(names)
    assert seen == expected
    assert len({tuple(o) for o in seen}) > 1  # shuffled, not round-robin in one fixed order


def test_the_seed_decides_the_order_and_nothing_else(scripted):
    paired(rounds=6, seed=1)
    first = list(scripted.log)
    scripted.log.clear()
    paired(rounds=6, seed=1)
    assert scripted.log == first
    scripted.log.clear()
    paired(rounds=6, seed=2)
    assert _rounds_of(scripted.log, 3) != _rounds_of(first, 3)


def test_all_networks_are_built_once_before_timing_and_released_after(scripted):
    paired(rounds=5)
    assert scripted.built == [resolve_arch(a).inline() for a in (TINY, WIDE, DEEP)]
    assert scripted.closed == 3


def test_samples_are_each_rounds_median_of_its_runs(scripted):
    result = paired(rounds=15)
    assert [a.inline() for a in result.archs] == [TINY, WIDE, DEEP]
    for i, name in enumerate((TINY, WIDE, DEEP)):
        # The preempted runs (+50 ms) never reach a sample.
        assert result.samples_ms[i] == pytest.approx(tuple(BASE[name] + d for d in DRIFT))
        assert result.median_ms(i) == pytest.approx(BASE[name] + statistics.median(DRIFT))
        assert result.rel_spread(i) > 0.5  # the drift dominates each network's own samples


def test_paired_differences_cancel_the_drift(scripted):
    result = paired(rounds=15)
    for i, name in enumerate((TINY, WIDE, DEEP)):
        est, low, high = result.delta_ms(i)
        assert (est, low, high) == pytest.approx((BASE[name] - BASE[TINY],) * 3)
    assert result.delta_ms(1, 2) == pytest.approx((0.2, 0.2, 0.2))
    assert result.delta_ms(2, 1) == pytest.approx((-0.2, -0.2, -0.2))


def test_delta_interval_from_noisy_rounds(monkeypatch, scripted):
    # Per-round noise on the wider network only: the interval is the sign test's, [d_(4), d_(12)] of 15.
    noise = [0.05, -0.02, 0.11, 0.0, -0.07, 0.03, 0.2, -0.01, 0.04, 0.08, -0.04, 0.01, 0.06, -0.1, 0.02]
    original = ScriptedRunner.time_once

    def noisy(self: ScriptedRunner) -> float:
        value = original(self)
        rnd = (len(ScriptedRunner.log) - 1) // (2 * RUNS_PER_ROUND)
        return value + (noise[rnd] if self.name == WIDE else 0.0)

    monkeypatch.setattr(ScriptedRunner, "time_once", noisy)
    result = paired((TINY, WIDE), rounds=15)
    diffs = sorted(0.3 + v for v in noise)
    est, low, high = result.delta_ms(1)
    assert est == pytest.approx(diffs[7]) and low == pytest.approx(diffs[3]) and high == pytest.approx(diffs[11])
    _, low99, high99 = result.delta_ms(1, confidence=0.99)
    assert low99 == pytest.approx(diffs[2]) and high99 == pytest.approx(diffs[12])
    assert low > 0  # the wider network is slower, surely, although the drift is 10x the difference


def test_ratio_is_the_median_of_the_per_round_ratios(scripted):
    # The drift is additive here, so each round's ratio differs; the median of the 15 is exact.
    result = paired((TINY, WIDE), rounds=15)
    ratios = sorted((BASE[WIDE] + d) / (BASE[TINY] + d) for d in DRIFT)
    assert result.ratio(1) == pytest.approx(ratios[7]) and result.ratio(1, 0) == result.ratio(1)
    assert result.ratio(0, 1) == pytest.approx(statistics.median(1 / r for r in ratios))
    assert result.ratio(0, 0) == 1.0
    assert result.ratio(1) < BASE[WIDE] / BASE[TINY]  # the shared drift pulls a ratio toward 1
    with pytest.raises(IndexError):
        result.ratio(2)


def test_too_few_rounds_give_an_unbounded_interval(scripted):
    result = paired((TINY, WIDE), rounds=4)
    est, low, high = result.delta_ms(1)
    assert est == pytest.approx(0.3) and (low, high) == (-math.inf, math.inf)
    assert paired((TINY, WIDE), rounds=5).delta_ms(1) == pytest.approx((0.3, 0.3, 0.3))


def test_one_network_and_repeated_networks(scripted):
    solo = paired((WIDE,), rounds=3)
    assert solo.rounds == 3 and solo.median_ms(0) == pytest.approx(BASE[WIDE] + statistics.median(DRIFT[:3]))
    scripted.log.clear()  # the scripted rounds count from the first timed run
    twice = paired((TINY, TINY), rounds=5)  # the parent against itself: a noise check
    assert twice.delta_ms(1) == pytest.approx((0.0, 0.0, 0.0))


# --------------------------------------------------------------------------- what it records


def test_fingerprint_is_a_single_measurements_and_the_window_is_recorded(scripted):
    result = paired(rounds=5)
    single = measure_latency(TINY, settings(min_samples=3, max_samples=3))
    assert result.fingerprint == make_fingerprint(resolve_settings(settings())) == single.fingerprint
    assert result.fingerprint_hash == single.fingerprint_hash
    assert result.elapsed_s > 0 and result.measured_at.endswith("+00:00")
    assert not result.from_cache and not result.under_load
    assert result.rule["rounds"] == 5 and result.rule["seed"] == 0 and result.rule["runs_per_round"] == RUNS_PER_ROUND


def test_latency_record_has_a_single_measurements_keys_plus_paired(scripted):
    result = paired(rounds=6)
    single = measure_latency(TINY, settings(min_samples=3, max_samples=3)).to_dict()
    record = result.latency_record(1)
    assert set(record) == (set(single) - {"samples_ms"}) | {"paired"}
    assert record["paired"] == {"group": group_hash(result.archs), "index": 1, "rounds": 6}
    assert record["arch_hash"] == resolve_arch(WIDE).arch_hash()
    assert record["inline"] == WIDE and record["n_samples"] == 6 and record["stop_reason"] == "paired"
    assert record["median_ms"] == pytest.approx(result.median_ms(1))
    assert record["rel_spread"] == pytest.approx(result.rel_spread(1))
    assert record["stable"] is False  # drift of several ms on 1 ms
    assert record["cache_key"] == result.cache_key and record["cache_key"].startswith("paired-")
    json.dumps(record)


def test_to_dict_round_trips_through_json(scripted):
    result = paired(rounds=5)
    again = PairedResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    with pytest.raises(ValueError, match="not a paired result"):
        PairedResult.from_dict(measure_latency(TINY, settings(min_samples=3, max_samples=3)).to_dict())


# --------------------------------------------------------------------------- cache


def test_cache_hit_miss_and_refresh(tmp_path, scripted):
    cache = LatencyCache(tmp_path / "cache")
    first = paired(rounds=5, cache=cache)
    timed = len(scripted.log)
    hit = paired(rounds=5, cache=cache)
    assert len(scripted.log) == timed and hit.from_cache  # nothing built or timed
    assert hit.samples_ms == first.samples_ms and hit.cache_key == first.cache_key
    assert len(cache) == 1 and cache.keys()[0].startswith("paired-")
    paired(rounds=5, cache=cache, refresh=True)
    assert len(scripted.log) == 2 * timed
    # Another number of rounds, seed or order of the group is another measurement.
    paired(rounds=6, cache=cache)
    paired(rounds=5, seed=1, cache=cache)
    paired((WIDE, TINY, DEEP), rounds=5, cache=cache)
    assert len(cache) == 4


def test_single_and_paired_lookups_never_return_each_other(tmp_path, scripted):
    cache = LatencyCache(tmp_path / "cache")
    group = paired((TINY, WIDE), rounds=5, cache=cache)
    single = measure_latency(TINY, settings(min_samples=3, max_samples=3), cache=cache)
    assert cache.get(group.cache_key) is None
    assert cache.get_paired(single.cache_key) is None
    assert cache.get(single.cache_key) is not None and cache.get_paired(group.cache_key) is not None
    # Single entries are written as before paired ones existed (no kind key).
    entry = json.loads(cache.entry_path(single.cache_key).read_text())
    assert list(entry) == ["format", "key", "result"]
    assert json.loads(cache.entry_path(group.cache_key).read_text())["kind"] == "paired"


def test_no_cache_argument_stores_nothing(tmp_path, scripted):
    paired(rounds=5)
    assert len(LatencyCache()) == 0


class _Load:
    def __init__(self, share: float) -> None:
        self.share_after = share
        self.share: float | None = None

    def __enter__(self) -> _Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.share = self.share_after


def test_under_load_is_flagged_and_not_cached(tmp_path, monkeypatch, scripted):
    cache = LatencyCache(tmp_path / "cache")
    monkeypatch.setattr(load, "OthersCPU", lambda: _Load(0.6))
    ScriptedRunner.group_size = 2
    guarded = settings(max_others_share=0.2)
    busy = measure_paired([TINY, WIDE], guarded, rounds=5, cache=cache)
    assert busy.under_load and busy.others_cpu_share == 0.6 and len(cache) == 0
    assert busy.latency_record(0)["under_load"] is True
    assert len(scripted.log) == 5 * 2 * RUNS_PER_ROUND  # recorded, not repeated: the rounds share the load
    monkeypatch.setattr(load, "OthersCPU", lambda: _Load(0.1))
    quiet = measure_paired([TINY, WIDE], guarded, rounds=5, cache=cache)
    assert not quiet.under_load and quiet.others_cpu_share == 0.1 and len(cache) == 1
    # The guard off: the share is recorded, nothing is flagged.
    monkeypatch.setattr(load, "OthersCPU", lambda: _Load(0.9))
    off = measure_paired([TINY, WIDE], settings(), rounds=5)
    assert off.others_cpu_share == 0.9 and not off.under_load


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("archs", "kwargs", "message"),
    [
        ([], {}, "paired latency needs at least one network, got an empty group"),
        ([TINY], {"rounds": 0}, "paired latency: rounds must be an integer >= 1, got 0"),
        ([TINY], {"rounds": True}, "paired latency: rounds must be an integer >= 1, got True"),
        ([TINY], {"rounds": 2.5}, "paired latency: rounds must be an integer >= 1, got 2.5"),
        ([TINY], {"seed": "a"}, "paired latency: seed must be an integer, got 'a'"),
    ],
)
def test_bad_requests_are_one_line_user_errors(scripted, archs, kwargs, message):
    with pytest.raises(UserError) as e:
        measure_paired(archs, settings(), **kwargs)
    assert str(e.value) == message
    assert scripted.built == []


def test_an_input_a_network_cannot_take_names_it_and_measures_nothing(scripted):
    with pytest.raises(UserError) as e:
        measure_paired([WIDE, TINY], settings(input_hw=(1, 2)))
    assert str(e.value) == (
        f"paired latency: {TINY} cannot be measured: input 1x2 is too small for resolution factor 0.5 "
        "(path input would be 0x1); use a larger input"
    )
    assert scripted.built == [] and scripted.log == []


# --------------------------------------------------------------------------- real timing


@pytest.mark.slow
def test_real_paired_pass_orders_a_tiny_and_a_large_network(monkeypatch):
    monkeypatch.setattr(runners, "RUNNERS", {k: v for k, v in runners.RUNNERS.items() if k != "scripted"})
    s = LatencySettings(input_hw=(128, 256), threads=1, warmup=2, max_others_share=None)
    result = measure_paired([TINY, "lpsnet_m"], s, rounds=6, seed=0)
    assert result.rounds == 6 and all(v > 0 for row in result.samples_ms for v in row)
    assert result.median_ms(1) > result.median_ms(0)
    est, low, high = result.delta_ms(1)
    assert 0 < low <= est <= high
