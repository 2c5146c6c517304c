"""Latency of a segmentation network on a target device, measured so that the number can be trusted and reused.

:func:`measure_latency` checks that the :class:`LatencySettings` can run here
(:func:`resolve_settings`), looks the result up in a :class:`LatencyCache`, and otherwise builds the
network (the deploy form, BatchNorm folded, by default; :func:`build_network`) and its input
(:func:`make_input`), runs it with the backend's runner (:mod:`scaler.measure.runners`), and times
single forward passes until the median is stable or a cap is reached (:mod:`scaler.measure.stats`).
Every result carries a fingerprint naming what was measured (:mod:`scaler.measure.fingerprint`), and
the cache keeps results keyed by architecture + fingerprint + stopping rule, so a search never
measures the same thing twice. How the process and machine are prepared (allocator, threads, a
busy CPU) is in :mod:`scaler.measure.host`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import time
from pathlib import Path

import torch
from torch import nn

from models import SegArch, SegModel, build_model, reparameterize, resolve_arch
from models.base import FixedUpsample
from scaler.device import resolve_device
from scaler.errors import UserError
from scaler.measure.cache import LatencyCache
from scaler.measure.fingerprint import cache_key, fingerprint_hash, make_fingerprint
from scaler.measure.host import gc_paused, guard_against_load, pinned, release_memory, steady_cpu_allocator
from scaler.measure.runners import Runner, get_runner, import_backend
from scaler.measure.settings import LatencyResult, LatencySettings
from scaler.measure.stats import sample_until_stable, summarize

__all__ = ["TORCH_DTYPES", "build_network", "make_input", "measure_latency", "measure_once", "resolve_settings"]

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def measure_latency(
    arch_or_model: SegArch | SegModel | str | Path,
    settings: LatencySettings,
    *,
    cache: LatencyCache | None = None,
    refresh: bool = False,
) -> LatencyResult:
    """Measure the latency of one forward pass of an LPS-Net on a device.

    Nothing survives the call but the result (and the cache entry): the network, inputs, sessions,
    engines and graphs are released, and the thread count and ``cudnn.benchmark`` are restored,
    so the search can call this thousands of times in one process. The one lasting change: a CPU
    measurement switches glibc's malloc to keep freed memory (:func:`steady_cpu_allocator`).

    Args:
        arch_or_model: Any ARCH spelling (see :func:`models.resolve_arch`) or a network
            (:class:`LPSNet`, :class:`MobileNetV2Seg`; its weights are used, the caller's module is
            not changed). An architecture is built with seeded random weights.
        settings: What to measure and how (device, backend, dtype, input, stopping rule, ...).
        cache: Where to look the result up first and store it after; ``None`` measures and stores
            nothing. Keyed by architecture, fingerprint and stopping rule (not by weights).
        refresh: Measure even when ``cache`` holds the result, and replace the entry.

    Returns:
        The :class:`LatencyResult`; ``from_cache`` says whether it was measured now.

    Raises:
        UserError: CUDA asked for without CUDA; ``cudagraph`` or ``fp16`` on the CPU; a backend
            that is not installed; an input too small for the architecture; a runtime whose output
            does not match PyTorch's; out of GPU memory.
        ArchError: ``arch_or_model`` is a malformed architecture.
        TypeError: ``arch_or_model`` is a module but not a segmentation network.
    """
    if isinstance(arch_or_model, nn.Module):
        if not isinstance(arch_or_model, SegModel):
            raise TypeError(
                f"measure_latency takes a network (LPSNet, MobileNetV2Seg) or an architecture, "
                f"got {type(arch_or_model).__name__}"
            )
        given: SegModel | None = arch_or_model
        arch = arch_or_model.arch
    else:
        given = None
        arch = resolve_arch(arch_or_model)
    h, w = settings.input_hw
    try:
        arch.check_input_size(h, w)
    except ValueError as e:
        raise UserError(str(e)) from None
    s = resolve_settings(settings)
    fingerprint = make_fingerprint(s)
    rule = s.rule()
    key = cache_key(arch, fingerprint, rule)
    if cache is not None and not refresh:
        hit = cache.get(key)
        if hit is not None:
            return hit
    started = time.perf_counter()
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # measure_once is looked up here at call time, so tests can count the attempts.
    (samples, reason, diff), others, retries = guard_against_load(lambda: measure_once(arch, given, s), s)
    under_load = s.over_load_limit(others)
    result = LatencyResult(
        arch=arch,
        **summarize(samples),
        n_samples=len(samples),
        samples_ms=tuple(samples),
        stable=reason == "stable",
        stop_reason=reason,
        rule=rule,
        fingerprint=fingerprint,
        fingerprint_hash=fingerprint_hash(fingerprint),
        cache_key=key,
        measured_at=measured_at,
        elapsed_s=time.perf_counter() - started,
        output_max_abs_diff=diff,
        others_cpu_share=None if others is None else round(others, 3),
        under_load=under_load,
        load_retries=retries,
    )
    if cache is not None and not under_load:
        cache.put(key, result)
    return result


def resolve_settings(settings: LatencySettings) -> LatencySettings:
    """Check that ``settings`` can run here; return them with a concrete device index and thread count.

    Raises:
        UserError: The backend is not installed, runs on CUDA only, or cannot take the dtype or
            memory format; CUDA is asked for but not available; the GPU lacks bf16.
    """
    s = settings
    import_backend(s.backend)
    if not s.is_cuda:
        if s.backend in ("cudagraph", "tensorrt"):
            raise UserError(f"the {s.backend} backend runs on CUDA only; use --device cuda, or --backend torch on cpu")
        if s.dtype == "fp16":
            raise UserError("fp16 runs on CUDA only (CPUs have no fast fp16 convolutions); on the cpu use fp32 or bf16")
    if s.backend in ("onnxruntime", "tensorrt") and s.channels_last:
        raise UserError(f"--channels-last applies to the torch and cudagraph backends, not {s.backend} (ONNX is NCHW)")
    if s.backend == "onnxruntime" and s.dtype == "bf16":
        raise UserError("the onnxruntime backend does not run bf16 convolutions; use fp32 (or fp16 on cuda)")
    device = str(resolve_device(s.device))
    if s.is_cuda:
        index = torch.device(device).index
        if s.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"{torch.cuda.get_device_name(index)} does not support bf16; use fp32 or fp16")
        if s.backend == "onnxruntime":
            ort = import_backend("onnxruntime")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu), "
                    "or use --device cpu with --backend onnxruntime"
                )
    threads = s.threads if s.threads is not None else torch.get_num_threads()
    return dataclasses.replace(s, device=device, threads=threads)


def build_network(arch: SegArch, given: SegModel | None, settings: LatencySettings) -> nn.Module:
    """The network to time: ``given`` (copied) or ``arch`` with seeded weights, in the settings' form.

    Args:
        arch: The architecture (``given.arch`` when a network is given).
        given: The caller's network, never changed; ``None`` builds ``arch`` with seed 0.
        settings: Resolved settings: deploy form, device, dtype, memory format, final upsample.

    Returns:
        The network in eval mode, wrapped so its forward takes just the input.

    Raises:
        UserError: ``given`` is in deploy form but the settings ask for the train form.
    """
    s = settings
    if given is not None:
        if given.deploy and not s.deploy:
            raise UserError("the model is already in deploy form (BatchNorm folded); measure it with deploy=True")
        # Never change the caller's module: .to() and .half() work in place.
        # reparameterize reads BatchNorm's running statistics whatever the mode and returns a new module.
        model = reparameterize(given) if s.deploy and not given.deploy else copy.deepcopy(given)
    else:
        # A fixed seed without touching the caller's global RNG: weights do not change the
        # latency, but identical runs should run identical networks.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(arch).eval()
        if s.deploy:
            model = reparameterize(model)
    model = model.eval().to(device=torch.device(s.device), dtype=TORCH_DTYPES[s.dtype])
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return FixedUpsample(model, s.include_upsample).eval()


def make_input(settings: LatencySettings) -> torch.Tensor:
    """The seeded input batch of the settings' shape, device, dtype and memory format."""
    s = settings
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.batch, 3, *s.input_hw, generator=g)
    x = x.to(device=torch.device(s.device), dtype=TORCH_DTYPES[s.dtype])
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def measure_once(
    arch: SegArch, given: SegModel | None, settings: LatencySettings
) -> tuple[list[float], str, float | None]:
    """One measurement attempt: build, warm up, sample until the stopping rule says stop, release.

    Args:
        arch, given: As for :func:`build_network`.
        settings: Resolved settings (:func:`resolve_settings`).

    Returns:
        The samples (ms), why sampling stopped, and the runtime's largest difference from PyTorch's
        output (``None`` for the torch backends).

    Raises:
        UserError: Out of GPU memory, or a runtime that fails its output check.
    """
    s = settings
    runner: Runner | None = None
    if not s.is_cuda:
        steady_cpu_allocator()
    try:
        with pinned(s), torch.inference_mode():
            model = build_network(arch, given, s)
            x = make_input(s)
            runner = get_runner(s.backend).create(model, x, s)
            del model, x
            runner.warm_up(s.warmup)
            with gc_paused():
                samples, reason = sample_until_stable(runner.time_once, s)
            return samples, reason, runner.output_max_abs_diff
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"out of memory on {s.device} at batch {s.batch}, input {s.input_hw[0]}x{s.input_hw[1]}, {s.dtype}; "
            "use a smaller input or batch"
        ) from None
    finally:
        if runner is not None:
            runner.close()
        runner = None
        release_memory(s)
