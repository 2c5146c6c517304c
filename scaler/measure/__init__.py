"""Measuring a network where it will run: latency on the target device, and its size (parameters, MACs).

Everything a search knows about speed comes from here; nothing here trains or searches.

- :mod:`~scaler.measure.latency`: :func:`measure_latency`, the entry point (resolve, build, measure, cache);
- :mod:`~scaler.measure.paired`: :func:`measure_paired`, several networks timed together in interleaved rounds;
- :mod:`~scaler.measure.settings`: what it is asked (:class:`LatencySettings`) and gives (:class:`LatencyResult`);
- :mod:`~scaler.measure.runners`: one :class:`Runner` per backend, in a registry (:func:`register_runner`);
- :mod:`~scaler.measure.stats`: the stopping rule and the samples' statistics;
- :mod:`~scaler.measure.fingerprint`: what a result was measured on, and the hashes that key the cache;
- :mod:`~scaler.measure.cache`: :class:`LatencyCache`, results on disk;
- :mod:`~scaler.measure.host`: allocator, thread pinning, collector, memory, and the guard against others' load;
- :mod:`~scaler.measure.load`: how busy the CPUs are with other processes;
- :mod:`~scaler.measure.onnx_export`: the one ONNX export and output check (also used by ``scaler export``);
- :mod:`~scaler.measure.complexity`: parameters and MACs.

Usage::

    from scaler.measure import LatencyCache, LatencySettings, measure_latency

    result = measure_latency("lpsnet_m", LatencySettings(input_hw=(1024, 2048)), cache=LatencyCache())
"""

from __future__ import annotations

from scaler.measure.cache import CACHE_ENV, LatencyCache, default_cache_dir
from scaler.measure.complexity import Complexity, measure_complexity
from scaler.measure.fingerprint import cache_key, cpu_name, fingerprint_hash, logical_cpus, make_fingerprint
from scaler.measure.host import cpu_allocator, steady_cpu_allocator
from scaler.measure.latency import build_network, make_input, measure_latency, measure_once, resolve_settings
from scaler.measure.load import OthersCPU, busy_share, wait_for_quiet
from scaler.measure.onnx_export import ONNX_OPSET
from scaler.measure.paired import PairedResult, measure_paired
from scaler.measure.runners import (
    RUNNERS,
    CudaEvents,
    CudaGraphRunner,
    OnnxRuntimeRunner,
    Runner,
    TensorRTRunner,
    TorchCudaRunner,
    TorchRunner,
    get_runner,
    register_runner,
)
from scaler.measure.settings import BACKENDS, DTYPES, LOAD_GUARD_KEYS, LatencyResult, LatencySettings
from scaler.measure.stats import SPREAD_STATISTIC, median_interval, paired_differences

__all__ = [
    "BACKENDS",
    "CACHE_ENV",
    "DTYPES",
    "LOAD_GUARD_KEYS",
    "ONNX_OPSET",
    "RUNNERS",
    "SPREAD_STATISTIC",
    "Complexity",
    "CudaEvents",
    "CudaGraphRunner",
    "LatencyCache",
    "LatencyResult",
    "LatencySettings",
    "OnnxRuntimeRunner",
    "OthersCPU",
    "PairedResult",
    "Runner",
    "TensorRTRunner",
    "TorchCudaRunner",
    "TorchRunner",
    "build_network",
    "busy_share",
    "cache_key",
    "cpu_allocator",
    "cpu_name",
    "default_cache_dir",
    "fingerprint_hash",
    "get_runner",
    "logical_cpus",
    "make_fingerprint",
    "make_input",
    "measure_complexity",
    "measure_latency",
    "measure_once",
    "measure_paired",
    "median_interval",
    "paired_differences",
    "register_runner",
    "resolve_settings",
    "steady_cpu_allocator",
    "wait_for_quiet",
]
