"""The CUDA paths of measurement and training, on a real GPU (skipped where there is none).

These run on the maintainers' GPU machines (see benchmarks/results/latency_gpu.md for the command);
CI has no GPU, so there they are reported as skipped. No timings are asserted.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from stripes import Stripes

from models import LPSNet, LPSNetArch, reparameterize
from models.base import FixedUpsample
from scaler.cli import main
from scaler.errors import UserError
from scaler.measure import CACHE_ENV, CudaGraphRunner, LatencyCache, LatencySettings, measure_latency
from scaler.proxy.train import TrainConfig, train_and_evaluate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HW = (256, 512)
FAST = {"warmup": 2, "min_samples": 5, "max_samples": 20, "time_cap_s": 2.0}


def on_cuda(**kwargs) -> LatencySettings:
    """The settings of these tests: input HW on the current GPU, few samples, and ``kwargs``."""
    return LatencySettings(**{"input_hw": HW, "device": "cuda", **FAST, **kwargs})


SMALL_NET = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(8, 8, 16, 16, 16), resolution=(1,))


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    yield
    torch.cuda.synchronize()
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


@pytest.mark.parametrize(
    ("backend", "dtype", "channels_last"),
    [
        ("torch", "fp32", False),
        ("torch", "fp16", True),
        ("torch", "bf16", False),
        ("cudagraph", "fp32", False),
        ("cudagraph", "fp16", True),
    ],
)
def test_cuda_measurement_and_fingerprint(backend, dtype, channels_last):
    r = measure_latency("lpsnet_s", on_cuda(backend=backend, dtype=dtype, channels_last=channels_last))
    assert 1 <= r.n_samples <= FAST["max_samples"] and r.median_ms > 0
    assert r.min_ms <= r.median_ms <= r.p90_ms
    fp = r.fingerprint
    assert fp["device"] == f"cuda:{torch.cuda.current_device()}"
    assert fp["device_name"] == torch.cuda.get_device_name()
    assert fp["timer"] == "cuda_event" and fp["cuda"] == torch.version.cuda and fp["cudnn"]
    assert fp["dtype"] == dtype and fp["channels_last"] is channels_last and fp["input_shape"] == [1, 3, *HW]
    assert fp["cudnn_allow_tf32"] == torch.backends.cudnn.allow_tf32
    assert not r.under_load  # others' CPU share is recorded, but the guard is for CPU measurements


def test_cudagraph_replays_the_same_function_as_eager():
    # A shallow network: a deep one with random weights gives nearly the same output for any input.
    model = reparameterize(LPSNet(SMALL_NET).eval()).cuda()
    forward = FixedUpsample(model, upsample=False).eval()
    x = torch.randn(1, 3, *HW, device="cuda")
    with torch.inference_mode():
        expected = forward(x)
        runner = CudaGraphRunner(forward, x, on_cuda(backend="cudagraph", warmup=2))
        x.copy_(torch.randn(1, 3, *HW, device="cuda"))  # the graph reads the input by address
        runner.run()
        torch.cuda.synchronize()
        fresh = forward(x)
        assert (fresh - expected).abs().max() > 1e-2
        torch.testing.assert_close(runner.out, fresh, rtol=1e-3, atol=1e-3)
        runner.close()


def test_cuda_cache_hit_and_key_follow_the_fingerprint(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    a = measure_latency("lpsnet_tiny", on_cuda(), cache=cache)
    b = measure_latency("lpsnet_tiny", on_cuda(), cache=cache)
    assert not a.from_cache and b.from_cache and a.median_ms == b.median_ms
    c = measure_latency("lpsnet_tiny", on_cuda(dtype="fp16"), cache=cache)
    assert not c.from_cache and c.cache_key != a.cache_key and len(cache) == 2


def test_repeated_cuda_calls_release_gpu_memory():
    measure_latency("lpsnet_s", on_cuda(backend="cudagraph"))
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    for backend in ("torch", "cudagraph") * 4:
        measure_latency("lpsnet_s", on_cuda(backend=backend))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == baseline


def test_runtimes_that_are_missing_say_so_in_one_line():
    try:
        import onnxruntime as ort

        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    if has_cuda_ep:
        r = measure_latency("lpsnet_tiny", on_cuda(backend="onnxruntime"))
        assert r.fingerprint["execution_provider"] == "CUDAExecutionProvider" and r.output_max_abs_diff is not None
    else:
        with pytest.raises(UserError, match=r"CUDAExecutionProvider|onnxruntime is not installed") as e:
            measure_latency("lpsnet_tiny", on_cuda(backend="onnxruntime"))
        assert "\n" not in str(e.value)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="TensorRT is not installed") as e:
            measure_latency("lpsnet_tiny", on_cuda(backend="tensorrt"))
        assert "\n" not in str(e.value)
    else:
        r = measure_latency("lpsnet_tiny", on_cuda(backend="tensorrt"))
        assert r.output_max_abs_diff is not None


def test_real_cuda_out_of_memory_is_one_line_for_latency():
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(64 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    with pytest.raises(UserError, match=r"out of memory on cuda:\d+ at batch 8, input 1024x2048, fp32"):
        measure_latency("lpsnet_l", on_cuda(input_hw=(1024, 2048), batch=8))


def test_training_on_cuda_with_amp_and_channels_last_learns():

    config = TrainConfig(
        dataset="stripes", iters=40, batch=4, crop=(32, 48), lr=0.05, seed=0, jitter=0.1, device="cuda"
    )
    r = train_and_evaluate(SMALL_NET, config, progress=False, train_set=Stripes(), val_set=Stripes(n=6, seed=99))
    assert r.ok, r.reason
    assert r.miou > 0.8 and r.loss_last < 0.5 * r.loss_first
    assert r.config["device"] == "cuda" and r.device.startswith("cuda")


def test_real_cuda_out_of_memory_is_a_failed_training_result():
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(64 * 2**20 / torch.cuda.get_device_properties(0).total_memory)
    config = TrainConfig(dataset="stripes", iters=3, batch=64, crop=(512, 512), seed=0, device="cuda")
    r = train_and_evaluate(SMALL_NET, config, progress=False, train_set=Stripes(), val_set=Stripes(n=2))
    assert r.status == "failed" and "CUDA out of memory at batch 64, crop 512x512" in r.reason


def test_cli_bench_on_cuda_json(tmp_path):
    result = CliRunner().invoke(
        main,
        ["bench", "lpsnet_tiny", "--device", "cuda", "--backend", "cudagraph", "--input", "256x512", "--json"],
        env={CACHE_ENV: str(tmp_path / "cache")},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fingerprint"]["backend"] == "cudagraph" and data["fingerprint"]["timer"] == "cuda_event"
    assert data["median_ms"] > 0
