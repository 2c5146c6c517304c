"""Behaviour of the latency measurement, its disk cache and ``scaler bench`` (CPU only; no timings asserted)."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import types
import weakref
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import scaler.measure.latency as latency
from models import LPSNet, arch_from_dict, get_arch
from scaler.cli import main
from scaler.errors import UserError
from scaler.measure import (
    BACKENDS,
    CACHE_ENV,
    ONNX_OPSET,
    CudaGraphRunner,
    LatencyCache,
    LatencyResult,
    LatencySettings,
    TorchRunner,
    cache_key,
    cpu_allocator,
    fingerprint_hash,
    get_runner,
    load,
    make_fingerprint,
    measure_latency,
    register_runner,
    runners,
    steady_cpu_allocator,
)
from scaler.measure.onnx_export import OutputMismatch, check_output

HW = (64, 128)
# Few samples and one thread: these tests check behaviour, not timings, and one thread does not
# stall when other processes hold the cores (an OpenMP team waits for its slowest member).
# The load guard is off here (tests of it script the load): the cache tests must not depend on what
# else runs on the machine.
FAST = {"warmup": 1, "min_samples": 3, "max_samples": 8, "time_cap_s": 2.0, "threads": 1, "max_others_share": None}
TINY = "lpsnet_tiny"


@pytest.fixture(autouse=True)
def _seeded_and_isolated(monkeypatch, tmp_path):
    torch.manual_seed(0)
    # Never touch the user's real cache from a test.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))


def settings(**kwargs) -> LatencySettings:
    return LatencySettings(**{"input_hw": HW, **FAST, **kwargs})


def tiny(cache: LatencyCache | None = None, refresh: bool = False, **kwargs) -> LatencyResult:
    return measure_latency(TINY, settings(**kwargs), cache=cache, refresh=refresh)


def scripted_times(monkeypatch, values):
    """Make every timed CPU run return the next of ``values`` (cycling) instead of a real time."""
    it = iter(values)

    def fake(self) -> float:
        self.model(self.x)
        return next(it)

    monkeypatch.setattr(TorchRunner, "time_once", fake)


# --------------------------------------------------------------------------- the result


def test_result_fields_are_consistent():
    r = tiny()
    assert r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert 1 <= r.n_samples <= FAST["max_samples"] and len(r.samples_ms) == r.n_samples
    assert r.iqr_ms >= 0 and r.mean_ms > 0
    assert r.rel_spread == pytest.approx(r.iqr_ms / r.median_ms)
    assert r.stable == (r.stop_reason == "stable")
    if r.stable:
        assert r.n_samples >= FAST["min_samples"] and r.rel_spread <= r.rule["target_rel_spread"]
    assert r.rule["spread_statistic"] == "iqr/median"
    fp = r.fingerprint
    assert fp["device"] == "cpu" and fp["backend"] == "torch" and fp["timer"] == "perf_counter"
    assert fp["threads"] == 1 and fp["dtype"] == "fp32" and fp["batch"] == 1
    assert fp["input_shape"] == [1, 3, *HW]
    assert fp["deploy"] is True and fp["include_upsample"] is False and fp["channels_last"] is False
    assert fp["device_name"] and fp["torch"] == torch.__version__ and fp["host"]
    assert fp["cpu_allocator"] == cpu_allocator() == steady_cpu_allocator()
    assert r.fingerprint_hash == fingerprint_hash(fp)
    assert r.arch == get_arch(TINY) and not r.from_cache and r.output_max_abs_diff is None
    assert r.cache_key.startswith(get_arch(TINY).arch_hash() + "-" + r.fingerprint_hash)
    data = json.loads(json.dumps(r.to_dict()))
    assert LatencyResult.from_dict(data) == r
    assert "no final upsample" in r.describe_setup() and "1 threads" in r.describe_setup()


def test_stable_samples_stop_at_min_samples(monkeypatch):
    scripted_times(monkeypatch, [2.0] * 100)
    r = tiny(min_samples=5, max_samples=50)
    assert r.stable and r.stop_reason == "stable" and r.n_samples == 5
    assert r.median_ms == r.p10_ms == r.p90_ms == 2.0 and r.iqr_ms == 0


def test_noisy_samples_run_to_max_samples(monkeypatch):
    scripted_times(monkeypatch, [1.0, 3.0] * 100)
    r = tiny(min_samples=4, max_samples=12, target_rel_spread=0.05)
    assert not r.stable and r.stop_reason == "max_samples" and r.n_samples == 12
    assert r.samples_ms == (1.0, 3.0) * 6 and r.median_ms == 2.0 and r.p10_ms == 1.0 and r.p90_ms == 3.0


def test_time_cap_stops_sampling(monkeypatch):
    def slow(self) -> float:
        time.sleep(0.05)
        return 5.0  # perfectly stable, but min_samples is never reached within the cap

    monkeypatch.setattr(TorchRunner, "time_once", slow)
    r = tiny(min_samples=50, max_samples=100, time_cap_s=0.2)
    assert r.stop_reason == "time_cap" and not r.stable and 1 <= r.n_samples < 50


def test_threads_and_collector_restored_after_success_and_failure(monkeypatch):
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    r = tiny(threads=other)
    assert r.fingerprint["threads"] == other
    assert torch.get_num_threads() == before and gc.isenabled()

    def boom(self) -> float:
        raise RuntimeError("boom")

    monkeypatch.setattr(TorchRunner, "time_once", boom)
    with pytest.raises(RuntimeError, match="boom"):
        tiny(threads=other)
    assert torch.get_num_threads() == before and gc.isenabled()


def test_default_threads_are_torchs_current_count():
    assert tiny(threads=None).fingerprint["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("deploy", [True, False])
def test_deploy_and_train_form(deploy):
    r = tiny(deploy=deploy)
    assert r.fingerprint["deploy"] is deploy and r.median_ms > 0
    assert ("deploy form" in r.describe_setup()) is deploy


def test_model_argument_is_not_changed():
    model = LPSNet(get_arch(TINY)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = measure_latency(model, settings(dtype="bf16", channels_last=True))
    assert r.arch == model.arch and r.fingerprint["dtype"] == "bf16"
    assert model.training and not model.deploy
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert model.head.weight.is_contiguous()
    deployed = LPSNet(get_arch(TINY), deploy=True)
    assert measure_latency(deployed, settings()).fingerprint["deploy"] is True
    with pytest.raises(UserError, match="already in deploy form"):
        measure_latency(deployed, settings(deploy=False))


def test_channels_last_bf16_batch_and_inline_arch():
    arch = get_arch(TINY)
    r = measure_latency(arch.inline(), settings(channels_last=True, dtype="bf16", batch=2))
    fp = r.fingerprint
    assert fp["channels_last"] is True and fp["dtype"] == "bf16" and fp["input_shape"] == [2, 3, *HW]
    assert "channels_last" in r.describe_setup()


def test_include_upsample_changes_fingerprint_and_key():
    a = tiny()
    b = tiny(include_upsample=True)
    assert b.fingerprint["include_upsample"] is True and "with the final upsample" in b.describe_setup()
    assert a.fingerprint_hash != b.fingerprint_hash and a.cache_key != b.cache_key


# --------------------------------------------------------------------------- runtimes


def test_onnxruntime_backend_runs_and_checks_its_output():
    pytest.importorskip("onnxruntime")
    r = tiny(backend="onnxruntime")
    fp = r.fingerprint
    assert fp["backend"] == "onnxruntime" and fp["execution_provider"] == "CPUExecutionProvider"
    assert fp["backend_version"] and fp["onnx_opset"] == ONNX_OPSET
    assert r.output_max_abs_diff is not None and r.output_max_abs_diff < 1e-4
    assert r.median_ms > 0 and "onnxruntime" in r.describe_setup()


def test_onnxruntime_output_mismatch_fails_clearly(monkeypatch):
    pytest.importorskip("onnxruntime")
    before = torch.get_num_threads()
    monkeypatch.setattr(runners, "OUTPUT_RTOL", {"fp32": -1.0, "fp16": -1.0, "bf16": -1.0})
    with pytest.raises(UserError, match=r"onnxruntime .* output differs from PyTorch's") as info:
        tiny(backend="onnxruntime")
    assert "\n" not in str(info.value)
    assert torch.get_num_threads() == before


def test_tensorrt_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where TensorRT exists
    with pytest.raises(UserError, match="TensorRT is not installed") as info:
        tiny(backend="tensorrt")
    assert "\n" not in str(info.value) and "pip install tensorrt" in str(info.value)


def test_backends_are_the_registered_runners(monkeypatch):
    assert BACKENDS == tuple(runners.RUNNERS) == ("torch", "cudagraph", "onnxruntime", "tensorrt")
    assert get_runner("cudagraph") is CudaGraphRunner and get_runner("torch") is TorchRunner
    with pytest.raises(ValueError, match="'torch' is already registered"):
        register_runner("torch")(TorchRunner)
    monkeypatch.setattr(runners, "RUNNERS", dict(runners.RUNNERS))

    @register_runner("constant")
    class Constant(TorchRunner):
        """Runs the network but reports 3 ms: a backend added from outside the package."""

        @classmethod
        def fingerprint_fields(cls, settings):
            return {"backend_version": "1.0", "timer": "none"}

        @classmethod
        def runtime_label(cls, fingerprint):
            return f"constant {fingerprint['backend_version']}"

        def time_once(self) -> float:
            self.run()
            return 3.0

    r = tiny(backend="constant")
    assert r.median_ms == 3.0 and r.stable and r.fingerprint["backend"] == "constant"
    assert r.fingerprint["timer"] == "none" and "constant 1.0, 1 threads" in r.describe_setup()


def test_output_check_names_the_runtime_and_the_tolerance():
    ref = torch.tensor([[1.0, -2.0]])
    ok = check_output("rt 1.0", ref + 2**-10, ref, atol=1e-5, rtol=1e-3)  # exact in float32
    assert ok.max_abs_diff == 2**-10 and ok.tolerance == pytest.approx(1e-5 + 2e-3)
    with pytest.raises(OutputMismatch) as e:
        check_output("rt 1.0", ref + 0.1, ref, atol=1e-5, rtol=1e-3)
    assert str(e.value) == "rt 1.0 output differs from PyTorch's by 0.1 (tolerance 0.00201)"
    assert not e.value.shape_differs
    with pytest.raises(OutputMismatch, match="differs"):
        check_output("rt 1.0", torch.full_like(ref, float("nan")), ref, atol=1e-5, rtol=1e-3)
    with pytest.raises(OutputMismatch, match=r"^rt 1.0 output has shape \(2,\), PyTorch's \(1, 2\)$") as e:
        check_output("rt 1.0", ref[0], ref, atol=1e-5, rtol=1e-3)
    assert e.value.shape_differs
    s = LatencySettings(input_hw=HW, dtype="bf16")
    with pytest.raises(UserError) as e:
        runners.check_runtime_output(ref * 2, ref, s, "rt 1.0")
    assert str(e.value) == (
        "rt 1.0 output differs from PyTorch's by 2 (tolerance 0.2) at bf16; "
        "its timing would not be of the same network, so it is not reported"
    )
    assert runners.check_runtime_output(ref * 1.0625, ref, s, "rt 1.0") == 0.125


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cuda"}, "CUDA is not available"),
        ({"device": "cuda:1", "backend": "cudagraph"}, "CUDA is not available"),
        ({"backend": "cudagraph"}, "cudagraph backend runs on CUDA only"),
        ({"dtype": "fp16"}, "fp16 runs on CUDA only"),
        ({"backend": "onnxruntime", "channels_last": True}, "--channels-last applies to"),
        ({"backend": "onnxruntime", "dtype": "bf16"}, "does not run bf16"),
        ({"backend": "tvm"}, "unknown latency backend 'tvm'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"batch": 0}, "batch must be an integer >= 1"),
        ({"min_samples": 9, "max_samples": 3}, r"max_samples \(3\) must be >= min_samples \(9\)"),
        ({"time_cap_s": 0}, "time_cap_s must be a number > 0"),
        ({"input_hw": (1, 1)}, "input 1x1 is too small for resolution factor 0.5"),
        ({"input_hw": (0, 64)}, "input size must be two integers >= 1"),
    ],
)
def test_bad_requests_are_one_line_user_errors(monkeypatch, kwargs, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=message) as info:
        tiny(**kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def count_measurements(monkeypatch):
    calls = []
    real = latency.measure_once

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "measure_once", counting)
    return calls


def test_cache_hit_returns_same_numbers_without_measuring(tmp_path, count_measurements):
    cache = LatencyCache(tmp_path / "cache")
    first = tiny(cache=cache)
    assert len(count_measurements) == 1 and not first.from_cache
    assert cache.keys() == [first.cache_key]
    second = tiny(cache=cache)
    assert len(count_measurements) == 1 and second.from_cache
    assert dataclasses.replace(second, from_cache=False) == first
    fresh = tiny(cache=cache, refresh=True)
    assert len(count_measurements) == 2 and not fresh.from_cache
    assert cache.get(first.cache_key) == dataclasses.replace(fresh, from_cache=True)
    assert len(cache) == 1


def test_no_cache_argument_never_stores(tmp_path, count_measurements):
    tiny()
    tiny()
    assert len(count_measurements) == 2
    assert not (tmp_path / "default-cache").exists()


def test_cache_key_depends_on_arch_fingerprint_and_rule():
    base = LatencySettings(input_hw=HW, threads=2)
    arch = get_arch(TINY)
    fp = make_fingerprint(base)
    key = cache_key(arch, fp, base.rule())
    assert key == cache_key(arch, make_fingerprint(base), base.rule())
    assert cache_key(get_arch("lpsnet_s"), fp, base.rule()) != key
    assert cache_key(dataclasses.replace(arch, num_classes=5), fp, base.rule()) != key
    for change in (
        {"threads": 1},
        {"dtype": "bf16"},
        {"batch": 2},
        {"input_hw": (64, 64)},
        {"channels_last": True},
        {"include_upsample": True},
        {"deploy": False},
        {"backend": "onnxruntime"},
    ):
        other = dataclasses.replace(base, **change)
        assert cache_key(arch, make_fingerprint(other), other.rule()) != key, change
    for change in ({"min_samples": 20}, {"target_rel_spread": 0.01}, {"time_cap_s": 1.0}, {"warmup": 0}):
        other = dataclasses.replace(base, **change)
        assert cache_key(arch, make_fingerprint(other), other.rule()) != key, change
    moved = {**fp, "host": "another-host", "python": "3.99"}
    assert fingerprint_hash(moved) == fingerprint_hash(fp)
    assert fingerprint_hash({**fp, "device_name": "another CPU"}) != fingerprint_hash(fp)


# Fingerprints and cache keys must stay byte-identical across refactors: committed runs (results/reference)
# and users' caches are keyed by them. Taken on the maintainers' CPU machine (AMD EPYC, 2 logical CPUs).
PINNED = {
    LatencySettings(input_hw=(256, 512), threads=1): (
        {
            "device": "cpu",
            "device_name": "AMD EPYC",
            "logical_cpus": 2,
            "cpu_allocator": "glibc malloc keeping freed memory (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)",
            "cuda": None,
            "cudnn": None,
            "torch": "2.13.0+cpu",
            "backend": "torch",
            "backend_version": "2.13.0+cpu",
            "timer": "perf_counter",
            "threads": 1,
            "dtype": "fp32",
            "batch": 1,
            "input_shape": [1, 3, 256, 512],
            "channels_last": False,
            "deploy": True,
            "include_upsample": False,
            "host": "vm",
            "python": "3.11.7",
        },
        "bd6964e94c8ba8da",
        "2a273e0bdeb1-bd6964e94c8ba8da-b5e65cec",
    ),
    LatencySettings(input_hw=(256, 512), threads=2, backend="onnxruntime", batch=2, include_upsample=True): (
        {
            "device": "cpu",
            "device_name": "AMD EPYC",
            "logical_cpus": 2,
            "cpu_allocator": "glibc malloc keeping freed memory (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)",
            "cuda": None,
            "cudnn": None,
            "torch": "2.13.0+cpu",
            "backend": "onnxruntime",
            "backend_version": "1.32.0",
            "execution_provider": "CPUExecutionProvider",
            "onnx_opset": 17,
            "timer": "perf_counter",
            "threads": 2,
            "dtype": "fp32",
            "batch": 2,
            "input_shape": [2, 3, 256, 512],
            "channels_last": False,
            "deploy": True,
            "include_upsample": True,
            "host": "vm",
            "python": "3.11.7",
        },
        "048e403ad99a3419",
        "2a273e0bdeb1-048e403ad99a3419-b5e65cec",
    ),
}
# What differs from machine to machine (and so is compared by key only, not by value).
MACHINE_KEYS = ("device_name", "logical_cpus", "cpu_allocator", "torch", "backend_version", "host", "python")


@pytest.mark.parametrize("settings", list(PINNED), ids=["torch", "onnxruntime"])
def test_fingerprint_and_cache_key_are_pinned(settings):
    pinned, pinned_hash, pinned_key = PINNED[settings]
    assert fingerprint_hash(pinned) == pinned_hash
    assert cache_key(get_arch(TINY), pinned, settings.rule()) == pinned_key
    live = make_fingerprint(settings)
    assert list(live) == list(pinned), "fingerprint keys (or their order) changed"
    for key, value in pinned.items():
        if key not in MACHINE_KEYS:
            assert live[key] == value, key
    if all(live[k] == pinned[k] for k in MACHINE_KEYS if k not in ("host", "python")):
        assert fingerprint_hash(live) == pinned_hash  # this is the machine the pins were taken on


# The CUDA fingerprints of the committed GPU run's machine (an H100; results/reference/lpsnet_synthetic_gpu),
# rebuilt here without a GPU by answering the device queries as that machine did. The hashes were taken
# before the latency module was split; the cudagraph one is the committed run's.
CUDA_PINNED = {
    ("cudagraph", "fp16", True): "400fd51dca897141",
    ("torch", "fp32", False): "9971a0485c19b2e0",
    ("onnxruntime", "fp16", False): "8ab5b7271754ade3",
    ("tensorrt", "fp16", False): "b0650ea6134604a3",
}


@pytest.mark.parametrize(("backend", "dtype", "channels_last"), list(CUDA_PINNED))
def test_cuda_fingerprint_is_pinned_without_a_gpu(monkeypatch, backend, dtype, channels_last):
    h100 = types.SimpleNamespace(major=9, minor=0, total_memory=int(79.2 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: h100)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91900)
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(__version__="1.20.1"))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    s = LatencySettings(
        input_hw=(256, 512), device="cuda:0", backend=backend, dtype=dtype, channels_last=channels_last, threads=16
    )
    fp = make_fingerprint(s)
    assert fingerprint_hash(fp) == CUDA_PINNED[(backend, dtype, channels_last)]
    assert fp["timer"] == ("perf_counter" if backend == "onnxruntime" else "cuda_event")
    assert ("onnx_opset" in fp) is (backend in ("onnxruntime", "tensorrt"))


def _latency_records(obj):
    if isinstance(obj, dict):
        if "fingerprint_hash" in obj and "cache_key" in obj:
            yield obj
        for v in obj.values():
            yield from _latency_records(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _latency_records(v)


REFERENCE_RUNS = Path(__file__).resolve().parents[3] / "results" / "reference"
# Runs committed before latency.py was split (and before paired measurement): their keys were made
# by the old code, so they pin that the split changed no hash.
OLDER_RUNS = ("lpsnet_demo_128x256", "lpsnet_synthetic_gpu", "lpsnet_synthetic_gpu_fusion")


def _committed_records(name: str) -> list[dict]:
    lines = (REFERENCE_RUNS / name / "study.journal").read_text().splitlines()
    return [r for line in lines for r in _latency_records(json.loads(line))]


def test_committed_runs_keep_their_fingerprint_hashes_and_cache_keys():
    records = [r for name in OLDER_RUNS for r in _committed_records(name)]
    assert len(records) >= 60
    for r in records:
        assert fingerprint_hash(r["fingerprint"]) == r["fingerprint_hash"]
        assert cache_key(arch_from_dict(r["arch"]), r["fingerprint"], r["rule"]) == r["cache_key"]


def test_the_paired_reference_run_keeps_its_fingerprint_hashes_and_marks_paired_keys():
    records = _committed_records("lpsnet_demo")
    paired = [r for r in records if "paired" in r]
    assert len(paired) >= 20 and len(records) > len(paired)  # the start network is measured alone
    for r in records:
        assert fingerprint_hash(r["fingerprint"]) == r["fingerprint_hash"]
        if "paired" in r:
            assert r["cache_key"].startswith("paired-") and r["stop_reason"] == "paired"
        else:
            assert cache_key(arch_from_dict(r["arch"]), r["fingerprint"], r["rule"]) == r["cache_key"]


def test_corrupt_entry_is_a_miss_and_gets_replaced(tmp_path, count_measurements):
    cache = LatencyCache(tmp_path)
    first = tiny(cache=cache)
    path = cache.entry_path(first.cache_key)
    path.write_text('{"format": 1, "key": "trunc')
    assert cache.get(first.cache_key) is None
    again = tiny(cache=cache)
    assert len(count_measurements) == 2 and not again.from_cache
    assert cache.get(first.cache_key) is not None


def test_unwritable_cache_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"cannot write the latency cache in .*a-file"):
        tiny(cache=LatencyCache(blocker / "cache"))


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert LatencyCache().path == tmp_path / "here"
    monkeypatch.delenv(CACHE_ENV)
    assert LatencyCache().path == Path.home() / ".cache" / "lps-scaler" / "latency"


_WRITER = textwrap.dedent(
    """
    import json, sys
    from scaler.measure import LatencyCache, LatencyResult
    cache = LatencyCache(sys.argv[1])
    base = LatencyResult.from_dict(json.loads(open(sys.argv[2]).read()))
    tag = sys.argv[3]
    for i in range(150):
        shared = base.cache_key
        own = base.cache_key[:-4] + format(i, "04x") + tag
        cache.put(shared, base)
        cache.put(own, base)
        assert cache.get(shared) is not None
    """
)


def test_concurrent_writers_do_not_corrupt_the_cache(tmp_path):
    result = tiny()
    src = tmp_path / "result.json"
    src.write_text(json.dumps(result.to_dict()))
    root = tmp_path / "shared-cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(src), tag], env=env, stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    cache = LatencyCache(root)
    while any(p.poll() is None for p in procs):
        hit = cache.get(result.cache_key)
        if hit is not None:
            assert hit.samples_ms == result.samples_ms
        time.sleep(0.002)
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    keys = cache.keys()
    assert len(keys) == 1 + 2 * 150
    for key in keys:
        assert cache.get(key) == dataclasses.replace(result, from_cache=True)
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary files left behind"


# --------------------------------------------------------------------------- many calls in one process


def test_repeated_calls_release_everything(monkeypatch):
    built: list[weakref.ref] = []
    real_build = latency.build_network

    def tracking_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(latency, "build_network", tracking_build)
    # The load guard off: a busy machine would measure some calls again (more networks built).
    few = LatencySettings(input_hw=(32, 64), warmup=0, min_samples=2, max_samples=2, threads=1, max_others_share=None)
    for _ in range(10):  # first-call caches (CPU name, lazy imports, allocator pools) fill here
        measure_latency(TINY, few)
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(200):
            measure_latency(TINY, few)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 256 * 1024, f"Python memory grew by {(end - start) / 1024:.0f} KiB over 200 calls"
    assert len(built) == 210 and all(ref() is None for ref in built), "a network outlived its measurement"


def test_networks_are_freed_without_the_cyclic_collector(monkeypatch):
    built: list[weakref.ref] = []
    real_build = latency.build_network
    monkeypatch.setattr(latency, "build_network", lambda *a, **k: _track(real_build(*a, **k), built))
    gc.disable()
    try:
        for backend in ("torch", "onnxruntime"):
            measure_latency(TINY, settings(input_hw=(32, 64), backend=backend, warmup=0, max_samples=3))
        alive = [ref for ref in built if ref() is not None]
    finally:
        gc.enable()
    assert not alive


def _track(model, refs):
    refs.append(weakref.ref(model))
    return model


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def bench(tmp_path):
    runner = CliRunner()
    cache_dir = tmp_path / "cli-cache"

    def invoke(*args: str):
        argv = ["bench", *args, "--input", "64x128", "--warmup", "1", "--min-samples", "3", "--max-samples", "6"]
        if "--threads" not in args:
            argv += ["--threads", "1"]
        return runner.invoke(main, [*argv, "--cache-dir", str(cache_dir)], catch_exceptions=False)

    return invoke


def test_cli_text_then_cache_then_no_cache(bench):
    r = bench(TINY)
    assert r.exit_code == 0, r.output
    out = r.output
    for text in ("median", "p10", "p90", "IQR", "n=", "stable", "cpu", "fp32", "1x3x64x128"):
        assert text in out, text
    assert "deploy form (BatchNorm folded)" in out and "no final upsample" in out and "measured now" in out
    assert "torch" in out and "1 threads" in out
    again = bench(TINY)
    assert again.exit_code == 0 and "from the cache" in again.output
    assert again.output.splitlines()[1] == out.splitlines()[1]  # the same median line
    fresh = bench(TINY, "--no-cache")
    assert fresh.exit_code == 0 and "measured now (--no-cache)" in fresh.output


def test_cli_json(bench):
    r = bench(TINY, "--json", "--with-upsample", "--train-form", "--classes", "5")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["name"] == TINY and data["arch"]["num_classes"] == 5
    assert data["fingerprint"]["include_upsample"] is True and data["fingerprint"]["deploy"] is False
    assert data["p10_ms"] <= data["median_ms"] <= data["p90_ms"]
    assert len(data["samples_ms"]) == data["n_samples"] <= 6
    assert data["from_cache"] is False and Path(data["cache_entry"]).is_file()
    assert json.loads(bench(TINY, "--json", "--with-upsample", "--train-form", "--classes", "5").output)["from_cache"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "tensorrt"], "TensorRT is not installed"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--backend", "cudagraph"], "cudagraph backend runs on CUDA only"),
        (["--dtype", "fp16"], "fp16 runs on CUDA only"),
        (["--device", "gpu0"], "unknown device 'gpu0'"),
        (["--backend", "nope"], "Invalid value for '--backend'"),
    ],
)
def test_cli_errors_are_one_line(bench, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = bench(TINY, *args)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_cli_input_too_small_and_bad_arch(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["bench", TINY, "--input", "1x1", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.strip() == (
        "error: input 1x1 is too small for resolution factor 0.5 (path input would be 0x0); use a larger input"
    )
    r = runner.invoke(main, ["bench", "lpsnet_huge", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 2 and r.stderr.startswith("error: unknown architecture 'lpsnet_huge'")


# --------------------------------------------------------------------------- load guard


class ScriptedLoad:
    """Stands in for load.OthersCPU: each measurement sees the next share of ``shares``."""

    def __init__(self, shares):
        self.shares = list(shares)
        self.waits = []

    def others(self):
        scripted = self

        class _Others:
            share = None

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.share = scripted.shares.pop(0)

        return _Others()

    def wait(self, threshold, max_wait_s):
        self.waits.append((threshold, max_wait_s))
        return 0.0, 0.0


@pytest.fixture
def scripted_load(monkeypatch):
    def install(shares):
        scripted = ScriptedLoad(shares)
        monkeypatch.setattr(load, "OthersCPU", scripted.others)
        monkeypatch.setattr(load, "wait_for_quiet", scripted.wait)
        return scripted

    return install


def test_busy_machine_is_waited_out_and_measured_again(tmp_path, scripted_load, count_measurements):
    load = scripted_load([0.6, 0.05])
    cache = LatencyCache(tmp_path / "c")
    r = tiny(cache=cache, max_others_share=0.2, quiet_wait_s=3.0)
    assert len(count_measurements) == 2 and load.waits == [(0.2, 3.0)]
    assert r.others_cpu_share == 0.05 and not r.under_load and r.load_retries == 1
    assert cache.keys() == [r.cache_key]
    again = LatencyResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.others_cpu_share == 0.05 and again.load_retries == 1 and not again.under_load


def test_measurement_still_under_load_is_flagged_and_not_cached(tmp_path, scripted_load, count_measurements):
    load = scripted_load([0.9, 0.7, 0.5, 0.0])
    cache = LatencyCache(tmp_path / "c")
    r = tiny(cache=cache, max_others_share=0.2, load_retries=2)
    assert len(count_measurements) == 3 and len(load.waits) == 2
    assert r.under_load and r.others_cpu_share == 0.5 and r.load_retries == 2
    assert len(cache) == 0 and r.to_dict()["under_load"] is True
    # The next call measures again rather than trusting the flagged number.
    assert not tiny(cache=cache, max_others_share=0.2).under_load
    assert len(cache) == 1


def test_load_guard_off_measures_once_and_records_the_share(scripted_load, count_measurements):
    load = scripted_load([0.9])
    r = tiny(max_others_share=None)
    assert len(count_measurements) == 1 and load.waits == []
    assert r.others_cpu_share == 0.9 and not r.under_load


def test_load_guard_settings_do_not_change_the_cache_key(scripted_load):
    scripted_load([0.0, 0.0])
    a = tiny(max_others_share=0.1, load_retries=0)
    b = tiny(max_others_share=0.5, load_retries=3, quiet_wait_s=1.0)
    assert a.cache_key == b.cache_key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_others_share": 1.5}, "max_others_share must be a number in [0, 1] or null, got 1.5"),
        ({"max_others_share": True}, "max_others_share must be a number in [0, 1] or null, got True"),
        ({"load_retries": -1}, "load_retries must be an integer >= 0, got -1"),
        ({"quiet_wait_s": 0}, "quiet_wait_s must be a number > 0, got 0"),
    ],
)
def test_load_guard_settings_are_checked(kwargs, message):
    with pytest.raises(UserError) as e:
        LatencySettings(input_hw=HW, **kwargs)
    assert str(e.value) == message


def test_cli_bench_reports_the_load_and_warns(tmp_path, scripted_load):
    scripted_load([0.7, 0.6, 0.55])
    out = CliRunner().invoke(
        main,
        [
            "bench",
            TINY,
            "--input",
            "32x64",
            "--threads",
            "1",
            "--min-samples",
            "3",
            "--max-samples",
            "5",
            "--time-cap",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "others used 55% of the CPUs meanwhile, measured again 2x after waiting" in out.stdout
    assert "not stored: measured under load" in out.stdout
    assert out.stderr.startswith("warning: other processes used 55% of the CPUs during the measurement (limit 20%)")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.json"))
