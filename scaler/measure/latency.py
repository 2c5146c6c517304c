"""Latency of an LPS-Net on a target device, measured so that the number can be trusted and reused.

:func:`measure_latency` builds the network (the deploy form, BatchNorm folded, by default), runs it
on the device with the chosen runtime, and times single forward passes until the median is stable
or a cap is reached. Every result carries a fingerprint naming what was measured (device, runtime
and versions, threads, dtype, input shape, whether the final upsample is included), and
:class:`LatencyCache` keeps results on disk keyed by architecture + fingerprint + stopping rule, so
a search never measures the same thing twice.

Backends:

- ``torch``: eager PyTorch under ``torch.inference_mode``. CPU runs are timed with
  ``time.perf_counter`` around each call; CUDA runs with a pair of CUDA events around each call.
- ``cudagraph`` (CUDA only): the forward captured once in a ``torch.cuda.CUDAGraph``; replays are
  timed with CUDA events.
- ``onnxruntime``: the network exported to ONNX (TorchScript exporter, fixed opset and input shape)
  and run by an ``InferenceSession`` on the CPU or CUDA execution provider; checked once against
  PyTorch's output.
- ``tensorrt`` (CUDA only, needs TensorRT): an engine built from the same ONNX model.

Stopping rule: ``warmup`` untimed runs, then one timed run per sample until, after at least
``min_samples`` samples, the relative spread IQR / median is at most ``target_rel_spread``
(``stable``), or ``max_samples`` samples or ``time_cap_s`` seconds of sampling are reached (not
stable). IQR / median is used rather than (p90 - p10) / median because one preempted run in a
small sample moves p90 a lot and the quartiles hardly at all.

CPU measurements run with glibc's malloc told to keep freed memory (:func:`steady_cpu_allocator`),
so a forward pass does not page its activations in afresh each time; without it the same network
measured twice in one process could differ by 10% depending on what the process did before.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import datetime
import functools
import gc
import hashlib
import importlib
import io
import json
import math
import os
import platform
import re
import socket
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import SegArch, SegModel, arch_from_dict, build_model, reparameterize, resolve_arch
from models.base import FixedUpsample
from scaler.device import parse_device, resolve_device
from scaler.errors import UserError
from scaler.files import atomic_write_text
from scaler.measure.load import OthersCPU, wait_for_quiet

__all__ = [
    "BACKENDS",
    "CACHE_ENV",
    "DTYPES",
    "LOAD_GUARD_KEYS",
    "ONNX_OPSET",
    "SPREAD_STATISTIC",
    "LatencyCache",
    "LatencyResult",
    "LatencySettings",
    "cache_key",
    "cpu_allocator",
    "default_cache_dir",
    "fingerprint_hash",
    "make_fingerprint",
    "measure_latency",
    "steady_cpu_allocator",
]

BACKENDS = ("torch", "cudagraph", "onnxruntime", "tensorrt")
DTYPES = ("fp32", "fp16", "bf16")
ONNX_OPSET = 17
SPREAD_STATISTIC = "iqr/median"
CACHE_ENV = "LPS_SCALER_CACHE"
CACHE_FORMAT = 1

DEFAULT_WARMUP = 5
DEFAULT_MIN_SAMPLES = 10
DEFAULT_MAX_SAMPLES = 200
DEFAULT_TARGET_REL_SPREAD = 0.05
DEFAULT_TIME_CAP_S = 10.0
DEFAULT_MAX_OTHERS_SHARE = 0.2
DEFAULT_LOAD_RETRIES = 2
DEFAULT_QUIET_WAIT_S = 10.0
# LatencySettings fields that say how to cope with a busy CPU (not in the fingerprint or the rule).
LOAD_GUARD_KEYS = ("max_others_share", "load_retries", "quiet_wait_s")

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest allowed |runtime - torch| relative to max |torch output|: generous enough for TF32 and
# reduced precision, tight enough that a wrong graph (missing path, wrong resize) fails.
_OUTPUT_RTOL = {"fp32": 1e-2, "fp16": 5e-2, "bf16": 1e-1}
_OUTPUT_ATOL = 1e-5
# Fingerprint keys that describe where a result came from but do not change it, so they stay out
# of its hash: the same GPU model in another host (or a container with a new name) reuses entries.
_UNHASHED_KEYS = ("host", "python")
# glibc's mallopt parameters and the values a CPU measurement runs under (see steady_cpu_allocator).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit
_TRIM_THRESHOLD = 2**30
_STEADY_ALLOCATOR = "glibc malloc keeping freed memory (M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB)"
_allocator_configured: bool | None = None
# Free the CUDA caching allocator's reserve after a call only past this share of the card, so a
# search's thousands of calls keep reusing memory instead of returning it to the driver each time.
_CUDA_RESERVED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class LatencySettings:
    """What to measure and how: everything :func:`measure_latency` takes besides the network.

    Args:
        input_hw: Image height and width.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        batch: Images per forward pass.
        dtype: ``fp32``, ``fp16`` (CUDA only) or ``bf16``.
        backend: One of :data:`BACKENDS`.
        threads: CPU threads (``torch.set_num_threads`` and onnxruntime's intra-op threads);
            ``None`` keeps torch's current count, which is recorded.
        channels_last: Run the torch backends in channels_last memory format.
        include_upsample: Time the final upsample of the logits to the input size too (the paper
            times up to the head's logits, the default).
        deploy: Time the deploy form (BatchNorm folded into the convs); ``False`` times the train
            form in eval mode.
        warmup: Untimed runs before sampling.
        min_samples: Fewest samples before the stopping rule may call the median stable.
        max_samples: Most samples.
        target_rel_spread: Stop once IQR / median of the samples is at most this.
        time_cap_s: Stop sampling after this many seconds (warm-up and building not counted); at
            least one sample is always taken.
        max_others_share: CPU only: the share (0-1) of all CPUs other processes may use while a
            measurement runs. Above it the measurement is taken again after waiting for a quiet
            machine; one still taken under load is flagged (``under_load``) and never cached.
            ``None`` turns the check off. Changes how a measurement is taken, not what it measures.
        load_retries: Measurements taken again at most, when others were busy.
        quiet_wait_s: Longest wait for a quiet machine before each such repeat.

    Raises:
        UserError: A value is malformed or out of range; the message names it.
    """

    input_hw: tuple[int, int]
    device: str = "cpu"
    batch: int = 1
    dtype: str = "fp32"
    backend: str = "torch"
    threads: int | None = None
    channels_last: bool = False
    include_upsample: bool = False
    deploy: bool = True
    warmup: int = DEFAULT_WARMUP
    min_samples: int = DEFAULT_MIN_SAMPLES
    max_samples: int = DEFAULT_MAX_SAMPLES
    target_rel_spread: float = DEFAULT_TARGET_REL_SPREAD
    time_cap_s: float = DEFAULT_TIME_CAP_S
    max_others_share: float | None = DEFAULT_MAX_OTHERS_SHARE
    load_retries: int = DEFAULT_LOAD_RETRIES
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S

    def __post_init__(self) -> None:
        hw = self.input_hw
        if (
            not isinstance(hw, (tuple, list))
            or len(hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw)
        ):
            raise UserError(f"input size must be two integers >= 1 (height, width), got {hw!r}")
        object.__setattr__(self, "input_hw", (int(hw[0]), int(hw[1])))
        if self.backend not in BACKENDS:
            raise UserError(f"unknown latency backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        object.__setattr__(self, "device", parse_device(self.device))
        _check_int("batch", self.batch, 1)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        _check_int("warmup", self.warmup, 0)
        _check_int("min_samples", self.min_samples, 1)
        _check_int("max_samples", self.max_samples, 1)
        if self.max_samples < self.min_samples:
            raise UserError(f"max_samples ({self.max_samples}) must be >= min_samples ({self.min_samples})")
        for name in ("target_rel_spread", "time_cap_s", "quiet_wait_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UserError(f"{name} must be a number > 0, got {v!r}")
        _check_int("load_retries", self.load_retries, 0)
        share = self.max_others_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1
        ):
            raise UserError(f"max_others_share must be a number in [0, 1] or null, got {share!r}")

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def rule(self) -> dict[str, Any]:
        """The stopping rule: settings that change the samples but not what is measured."""
        return {
            "warmup": self.warmup,
            "min_samples": self.min_samples,
            "max_samples": self.max_samples,
            "target_rel_spread": float(self.target_rel_spread),
            "time_cap_s": float(self.time_cap_s),
            "spread_statistic": SPREAD_STATISTIC,
        }


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """One latency measurement. Times are per forward pass of a whole batch, in milliseconds.

    ``rel_spread`` is IQR / median; ``stable`` says whether it fell under the target
    (``stop_reason`` is then ``"stable"``) or sampling stopped at ``"max_samples"`` or
    ``"time_cap"``. ``fingerprint`` names what was measured; ``fingerprint["include_upsample"]``
    says whether the final upsample is in the time. Do not mutate ``fingerprint``.
    ``others_cpu_share`` is the share of all CPUs that other processes used while it was measured
    (``None``: unknown); ``under_load`` says it was over the settings' ``max_others_share`` even
    after waiting, so the times are likely inflated (such a result is not cached).
    """

    arch: SegArch
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    n_samples: int
    samples_ms: tuple[float, ...]
    rel_spread: float
    stable: bool
    stop_reason: str
    rule: dict[str, Any]
    fingerprint: dict[str, Any]
    fingerprint_hash: str
    cache_key: str
    measured_at: str
    elapsed_s: float
    output_max_abs_diff: float | None = None
    from_cache: bool = False
    others_cpu_share: float | None = None
    under_load: bool = False
    load_retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; :meth:`from_dict` inverts it."""
        return {
            "arch": self.arch.to_dict(),
            "arch_hash": self.arch.arch_hash(),
            "inline": self.arch.inline(),
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "iqr_ms": self.iqr_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "n_samples": self.n_samples,
            "rel_spread": self.rel_spread,
            "stable": self.stable,
            "stop_reason": self.stop_reason,
            "rule": dict(self.rule),
            "fingerprint": dict(self.fingerprint),
            "fingerprint_hash": self.fingerprint_hash,
            "cache_key": self.cache_key,
            "measured_at": self.measured_at,
            "elapsed_s": self.elapsed_s,
            "output_max_abs_diff": self.output_max_abs_diff,
            "from_cache": self.from_cache,
            "others_cpu_share": self.others_cpu_share,
            "under_load": self.under_load,
            "load_retries": self.load_retries,
            "samples_ms": list(self.samples_ms),
        }

    def describe_setup(self) -> str:
        """One line naming device, runtime, threads, dtype, input, network form and final upsample."""
        fp = self.fingerprint
        if str(fp["device"]).startswith("cuda"):
            device = f"{fp['device_name']} ({fp['device']}, CUDA {fp['cuda']}, cuDNN {fp['cudnn']})"
        else:
            device = f"{fp['device_name']} (cpu, {fp['logical_cpus']} logical CPUs)"
        runtime = {
            "torch": f"torch {fp['backend_version']} eager",
            "cudagraph": f"torch {fp['backend_version']} CUDA graph",
            "onnxruntime": f"onnxruntime {fp['backend_version']} {fp.get('execution_provider')}",
            "tensorrt": f"TensorRT {fp['backend_version']}",
        }[fp["backend"]]
        layout = ", channels_last" if fp["channels_last"] else ""
        form = "deploy form (BatchNorm folded)" if fp["deploy"] else "train form (BatchNorm, eval mode)"
        upsample = "up to the head's logits (no final upsample)"
        if fp["include_upsample"]:
            upsample = "with the final upsample"
        shape = "x".join(map(str, fp["input_shape"]))
        return f"{device}; {runtime}, {fp['threads']} threads; {fp['dtype']}{layout}; input {shape}; {form}; {upsample}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such output.
        """
        return cls(
            arch=arch_from_dict(data["arch"]),
            median_ms=float(data["median_ms"]),
            p10_ms=float(data["p10_ms"]),
            p90_ms=float(data["p90_ms"]),
            iqr_ms=float(data["iqr_ms"]),
            mean_ms=float(data["mean_ms"]),
            min_ms=float(data["min_ms"]),
            n_samples=int(data["n_samples"]),
            samples_ms=tuple(float(v) for v in data["samples_ms"]),
            rel_spread=float(data["rel_spread"]),
            stable=bool(data["stable"]),
            stop_reason=str(data["stop_reason"]),
            rule=dict(data["rule"]),
            fingerprint=dict(data["fingerprint"]),
            fingerprint_hash=str(data["fingerprint_hash"]),
            cache_key=str(data["cache_key"]),
            measured_at=str(data["measured_at"]),
            elapsed_s=float(data["elapsed_s"]),
            output_max_abs_diff=None if data.get("output_max_abs_diff") is None else float(data["output_max_abs_diff"]),
            from_cache=bool(data.get("from_cache", False)),
            others_cpu_share=None if data.get("others_cpu_share") is None else float(data["others_cpu_share"]),
            under_load=bool(data.get("under_load", False)),
            load_retries=int(data.get("load_retries", 0)),
        )


# --------------------------------------------------------------------------- fingerprint


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _logical_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _module_version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # absent or broken install: the caller reports it where it matters
        return None


def make_fingerprint(settings: LatencySettings) -> dict[str, Any]:
    """What a measurement with ``settings`` runs on, as plain JSON, without timestamps.

    ``settings`` must be resolved (a concrete ``cuda:N`` and thread count), as
    :func:`measure_latency` does before calling this.
    """
    s = settings
    fp: dict[str, Any] = {"device": s.device}
    if s.is_cuda:
        index = torch.device(s.device).index or 0
        props = torch.cuda.get_device_properties(index)
        fp["device_name"] = torch.cuda.get_device_name(index)
        fp["compute_capability"] = f"{props.major}.{props.minor}"
        fp["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        fp["cuda"] = torch.version.cuda
        fp["cudnn"] = torch.backends.cudnn.version()
        fp["cudnn_benchmark"] = True
        # PyTorch runs fp32 convolutions in TF32 on Ampere and later unless told otherwise.
        fp["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    else:
        fp["device_name"] = _cpu_name()
        fp["logical_cpus"] = _logical_cpus()
        fp["cpu_allocator"] = cpu_allocator()
        fp["cuda"] = None
        fp["cudnn"] = None
    fp["torch"] = torch.__version__
    fp["backend"] = s.backend
    if s.backend in ("torch", "cudagraph"):
        fp["backend_version"] = torch.__version__
        fp["timer"] = "cuda_event" if s.is_cuda else "perf_counter"
    elif s.backend == "onnxruntime":
        fp["backend_version"] = _module_version("onnxruntime")
        fp["execution_provider"] = "CUDAExecutionProvider" if s.is_cuda else "CPUExecutionProvider"
        fp["onnx_opset"] = ONNX_OPSET
        fp["timer"] = "perf_counter"
    else:
        fp["backend_version"] = _module_version("tensorrt")
        fp["onnx_opset"] = ONNX_OPSET
        fp["timer"] = "cuda_event"
    h, w = s.input_hw
    fp.update(
        {
            "threads": s.threads,
            "dtype": s.dtype,
            "batch": s.batch,
            "input_shape": [s.batch, 3, h, w],
            "channels_last": s.channels_last,
            "deploy": s.deploy,
            "include_upsample": s.include_upsample,
            "host": socket.gethostname(),
            "python": platform.python_version(),
        }
    )
    return fp


def fingerprint_hash(fingerprint: dict[str, Any], *, length: int = 16) -> str:
    """Hash of the parts of ``fingerprint`` that change a latency (everything but host and Python)."""
    relevant = {k: v for k, v in fingerprint.items() if k not in _UNHASHED_KEYS}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def cache_key(arch: SegArch, fingerprint: dict[str, Any], rule: dict[str, Any]) -> str:
    """Cache key: ``<arch hash>-<fingerprint hash>-<stopping-rule hash>``."""
    rule_hash = hashlib.sha256(json.dumps(rule, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    return f"{arch.arch_hash()}-{fingerprint_hash(fingerprint)}-{rule_hash}"


# --------------------------------------------------------------------------- disk cache


def default_cache_dir() -> Path:
    """``$LPS_SCALER_CACHE`` if set, else ``~/.cache/lps-scaler/latency``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lps-scaler" / "latency"


class LatencyCache:
    """Latency results on disk: one JSON file per key, written atomically.

    Each entry is written to a temporary file in the same folder and renamed over its final name,
    so any number of processes (on one host, or hosts sharing a POSIX file system) may read and
    write at once: a reader sees a whole old entry, a whole new one, or none. Two writers of the
    same key both succeed; the later rename wins.

    Args:
        path: The folder; default :func:`default_cache_dir`. Created on the first write.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path)!r})"

    def entry_path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f-]+", key):
            raise ValueError(f"malformed latency cache key {key!r}")
        return self.path / f"{key}.json"

    def get(self, key: str) -> LatencyResult | None:
        """The stored result for ``key`` (with ``from_cache=True``), or ``None``.

        An unreadable or foreign entry counts as missing; the next :meth:`put` replaces it.
        """
        try:
            data = json.loads(self.entry_path(key).read_text())
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                return None
            result = LatencyResult.from_dict(data["result"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return dataclasses.replace(result, from_cache=True)

    def put(self, key: str, result: LatencyResult) -> Path:
        """Store ``result`` under ``key``, replacing any entry.

        Returns:
            The entry's path.

        Raises:
            UserError: The folder cannot be written; the message names it.
        """
        final = self.entry_path(key)
        entry = {"format": CACHE_FORMAT, "key": key, "result": {**result.to_dict(), "from_cache": False}}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(final, json.dumps(entry))
        except OSError as e:
            raise UserError(
                f"cannot write the latency cache in {self.path} ({e.strerror or e}); "
                f"set {CACHE_ENV} to a writable folder"
            ) from None
        return final

    def keys(self) -> list[str]:
        """Keys of the stored entries, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.keys())


# --------------------------------------------------------------------------- statistics


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _rel_spread(samples: list[float]) -> float:
    s = sorted(samples)
    median = statistics.median(s)
    iqr = _quantile(s, 0.75) - _quantile(s, 0.25)
    return iqr / median if median > 0 else math.inf


def _sample(time_once: Callable[[], float], s: LatencySettings) -> tuple[list[float], str]:
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(time_once())
        n = len(samples)
        if n >= s.min_samples and _rel_spread(samples) <= s.target_rel_spread:
            return samples, "stable"
        if n >= s.max_samples:
            return samples, "max_samples"
        if time.perf_counter() - start >= s.time_cap_s:
            return samples, "time_cap"


# --------------------------------------------------------------------------- CPU allocator


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def cpu_allocator() -> str:
    """Which CPU allocator behaviour CPU measurements run under (recorded in the fingerprint)."""
    return _STEADY_ALLOCATOR if _glibc() is not None else "system default"


def steady_cpu_allocator() -> str:
    """Make glibc's malloc keep freed memory instead of handing it back to the kernel; idempotent.

    With glibc's defaults, the megabytes of activations a forward pass frees go back to the kernel
    (heap trimming, munmap) and the next pass faults them in again: on a VM about 2,300 page faults
    per LPS-Net-M pass at 512x1024, some 10% of its time, and how many depends on what the process
    allocated before, so the same network measured twice in one process could differ by 10%. Raising
    the mmap and trim thresholds removes those faults (as jemalloc or tcmalloc would in a deployment)
    and makes the number independent of the process's history.

    This changes the whole process for the rest of its life (glibc has no way to read the previous
    values back, and its defaults would also switch off its adaptive mmap threshold); free memory is
    still returned after each measurement with ``malloc_trim``. Does nothing where libc is not glibc.

    Returns:
        The allocator behaviour now in force, as :func:`cpu_allocator` names it.
    """
    global _allocator_configured
    libc = _glibc()
    if libc is not None and not _allocator_configured:
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        _allocator_configured = ok and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return cpu_allocator()


def _release_free_cpu_memory() -> None:
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# --------------------------------------------------------------------------- checks


def _import_backend(backend: str) -> Any:
    if backend == "onnxruntime":
        try:
            return importlib.import_module("onnxruntime")
        except ImportError:
            raise UserError(
                "onnxruntime is not installed; install it with: pip install 'lps-scaler[onnx]' "
                "(onnxruntime-gpu for the CUDA provider)"
            ) from None
    if backend == "tensorrt":
        try:
            return importlib.import_module("tensorrt")
        except ImportError:
            raise UserError(
                "TensorRT is not installed: the 'tensorrt' backend needs NVIDIA TensorRT on a machine with an "
                "NVIDIA GPU (pip install tensorrt); use --backend onnxruntime or torch instead"
            ) from None
    return None


def _resolve(s: LatencySettings) -> LatencySettings:
    """Check that ``s`` can run here; return it with a concrete device index and thread count."""
    _import_backend(s.backend)
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
            ort = _import_backend("onnxruntime")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
                    "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu), "
                    "or use --device cpu with --backend onnxruntime"
                )
    threads = s.threads if s.threads is not None else torch.get_num_threads()
    return dataclasses.replace(s, device=device, threads=threads)


# --------------------------------------------------------------------------- the network


def _build_model(arch: SegArch, given: SegModel | None, s: LatencySettings) -> nn.Module:
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
    model = model.eval().to(device=torch.device(s.device), dtype=_TORCH_DTYPES[s.dtype])
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return FixedUpsample(model, s.include_upsample).eval()


def _make_input(s: LatencySettings) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.batch, 3, *s.input_hw, generator=g)
    x = x.to(device=torch.device(s.device), dtype=_TORCH_DTYPES[s.dtype])
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _max_abs_diff(out: torch.Tensor, ref: torch.Tensor, s: LatencySettings, runtime: str) -> float:
    out = out.detach().float().cpu()
    ref = ref.detach().float().cpu()
    if tuple(out.shape) != tuple(ref.shape):
        raise UserError(f"{runtime} output has shape {tuple(out.shape)}, PyTorch's {tuple(ref.shape)}")
    diff = float((out - ref).abs().max())
    tol = _OUTPUT_ATOL + _OUTPUT_RTOL[s.dtype] * float(ref.abs().max())
    if not diff <= tol:  # also catches NaN
        raise UserError(
            f"{runtime} output differs from PyTorch's by {diff:.3g} (tolerance {tol:.3g}) at {s.dtype}; "
            f"its timing would not be of the same network, so it is not reported"
        )
    return diff


def _export_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns that shapes become constants: exactly what a fixed-shape export wants.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=["logits"],
            do_constant_folding=True,
        )
    return buffer.getvalue()


# --------------------------------------------------------------------------- runners


class _Runner:
    """Runs one forward pass per :meth:`time_once` call and returns its time in ms."""

    output_max_abs_diff: float | None = None

    def warm_up(self, n: int) -> None:
        for _ in range(n):
            self.run()

    def run(self) -> None:
        raise NotImplementedError

    def time_once(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Drop every reference to models, tensors, sessions and graphs."""
        self.__dict__.clear()


class _TorchCPU(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x

    def run(self) -> None:
        self.model(self.x)

    def time_once(self) -> float:
        model, x = self.model, self.x
        t0 = time.perf_counter()
        model(x)
        return (time.perf_counter() - t0) * 1e3


class _CudaEvents:
    """A pair of CUDA events around a callable on ``stream``; the stream is idle before each run."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], Any]) -> float:
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        # Waiting on the end event also leaves the stream idle for the next sample, so no run
        # overlaps another and each time covers one run from launch to completion.
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))


class _TorchCUDA(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.events = _CudaEvents(torch.cuda.current_stream(x.device))

    def run(self) -> None:
        self.model(self.x)

    def warm_up(self, n: int) -> None:
        # At least one run: with cudnn.benchmark the first call at a shape tries every algorithm.
        super().warm_up(max(1, n))
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.run)


class _CudaGraph(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, warmup: int) -> None:
        device = x.device
        # The graph reads the parameters' and input's memory by address: keep both alive.
        self.model, self.x = model, x
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Capture needs warmed-up kernels (cudnn.benchmark's trials and lazy inits must not run
        # while capturing), done on a side stream as the CUDA-graph docs prescribe.
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                model(x)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=side):
            self.out = model(x)
        torch.cuda.synchronize(device)
        self.events = _CudaEvents(torch.cuda.current_stream(device))

    def run(self) -> None:
        self.graph.replay()

    def warm_up(self, n: int) -> None:
        super().warm_up(max(1, n))
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.graph.replay)

    def close(self) -> None:
        if "graph" in self.__dict__:
            torch.cuda.synchronize(self.x.device)
            self.graph.reset()
        super().close()


_NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16"}


class _OnnxRuntime(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, s: LatencySettings) -> None:
        import numpy as np

        ort = _import_backend("onnxruntime")
        ref = model(x)
        onnx_bytes = _export_onnx(model, x)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(s.threads or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if s.is_cuda:
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": x.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(onnx_bytes, sess_options=so, providers=providers)
        del onnx_bytes
        wanted = "CUDAExecutionProvider" if s.is_cuda else "CPUExecutionProvider"
        if self.session.get_providers()[0] != wanted:
            raise UserError(f"onnxruntime did not start its {wanted} (got {self.session.get_providers()})")
        self.input_name = self.session.get_inputs()[0].name
        self.cuda = s.is_cuda
        if self.cuda:
            self.x = x.contiguous()
            self.out = torch.empty_like(ref).contiguous()
            elem = getattr(np, _NUMPY_DTYPES[s.dtype])
            index = x.device.index or 0
            self.binding = self.session.io_binding()
            self.binding.bind_input(self.input_name, "cuda", index, elem, tuple(self.x.shape), self.x.data_ptr())
            self.binding.bind_output(
                self.session.get_outputs()[0].name, "cuda", index, elem, tuple(self.out.shape), self.out.data_ptr()
            )
            torch.cuda.synchronize(x.device)
            self.run()
            out = self.out
        else:
            self.feed = {self.input_name: x.detach().cpu().numpy()}
            out = torch.from_numpy(self.session.run(None, self.feed)[0])
        self.output_max_abs_diff = _max_abs_diff(out, ref, s, f"onnxruntime {ort.__version__}")

    def run(self) -> None:
        if self.cuda:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.session.run(None, self.feed)

    def time_once(self) -> float:
        # Wall clock: session.run returns once the outputs are ready, on the CPU and (after the
        # provider's stream sync) on CUDA, and onnxruntime's own stream is not torch's.
        t0 = time.perf_counter()
        self.run()
        return (time.perf_counter() - t0) * 1e3


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


class _TensorRT(_Runner):
    def __init__(self, model: nn.Module, x: torch.Tensor, s: LatencySettings) -> None:
        trt = _import_backend("tensorrt")
        device = x.device
        # The engine takes fp32 input; reduced precision is a builder flag, not the ONNX dtypes.
        model32 = model.float()
        x32 = x.float().contiguous()
        ref = model32(x32)
        onnx_bytes = _export_onnx(model32, x32)
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # gone (the only mode) in TRT 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT {trt.__version__} cannot parse the exported ONNX model: {errors}")
        config = builder.create_builder_config()
        if s.dtype != "fp32":
            flag = {"fp16": "FP16", "bf16": "BF16"}[s.dtype]
            if not hasattr(trt.BuilderFlag, flag):
                raise UserError(f"TensorRT {trt.__version__} has no {flag} mode; use fp32 or fp16")
            config.set_flag(getattr(trt.BuilderFlag, flag))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UserError(f"TensorRT {trt.__version__} could not build an engine for this network")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        del serialized, onnx_bytes, parser, network, config, builder
        if not hasattr(self.engine, "num_io_tensors"):
            raise UserError(f"TensorRT {trt.__version__} is too old: the tensorrt backend needs TensorRT >= 8.5")
        self.context = self.engine.create_execution_context()
        self.x = x32
        self.out: torch.Tensor | None = None
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_tensor_address(name, self.x.data_ptr())
            else:
                dtype = _TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name]
                shape = tuple(self.engine.get_tensor_shape(name))
                self.out = torch.empty(shape, dtype=dtype, device=device)
                self.context.set_tensor_address(name, self.out.data_ptr())
        self.stream = torch.cuda.current_stream(device)
        self.events = _CudaEvents(self.stream)
        self.run()
        torch.cuda.synchronize(device)
        assert self.out is not None
        self.output_max_abs_diff = _max_abs_diff(self.out, ref, s, f"TensorRT {trt.__version__}")

    def run(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)

    def warm_up(self, n: int) -> None:
        super().warm_up(n)
        torch.cuda.synchronize(self.x.device)

    def time_once(self) -> float:
        return self.events.time(self.run)


def _make_runner(model: nn.Module, x: torch.Tensor, s: LatencySettings) -> _Runner:
    if s.backend == "onnxruntime":
        return _OnnxRuntime(model, x, s)
    if s.backend == "tensorrt":
        return _TensorRT(model, x, s)
    if s.backend == "cudagraph":
        return _CudaGraph(model, x, s.warmup)
    return _TorchCUDA(model, x) if s.is_cuda else _TorchCPU(model, x)


@contextlib.contextmanager
def _pinned(s: LatencySettings) -> Iterator[None]:
    """Thread count and cudnn.benchmark set for the measurement, restored after."""
    prev_threads = torch.get_num_threads()
    prev_benchmark = torch.backends.cudnn.benchmark
    try:
        if s.threads is not None and s.threads != prev_threads:
            torch.set_num_threads(s.threads)
        if s.is_cuda:
            torch.backends.cudnn.benchmark = True
        with contextlib.ExitStack() as stack:
            if s.is_cuda:
                stack.enter_context(torch.cuda.device(torch.device(s.device)))
            yield
    finally:
        if torch.get_num_threads() != prev_threads:
            torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_benchmark


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """As timeit does: a collection of unrelated garbage must not land inside a sample."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _measure(arch: SegArch, given: SegModel | None, s: LatencySettings) -> tuple[list[float], str, float | None]:
    runner: _Runner | None = None
    if not s.is_cuda:
        steady_cpu_allocator()
    try:
        with _pinned(s), torch.inference_mode():
            model = _build_model(arch, given, s)
            x = _make_input(s)
            runner = _make_runner(model, x, s)
            del model, x
            runner.warm_up(s.warmup)
            with _gc_paused():
                samples, reason = _sample(runner.time_once, s)
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
        # Young generations only: a full collection costs tens of ms with torch loaded, and what
        # a call leaves behind (if anything) is young.
        gc.collect(1)
        if not s.is_cuda:
            _release_free_cpu_memory()
        if s.is_cuda and torch.cuda.is_available():
            index = torch.device(s.device).index or 0
            total = torch.cuda.get_device_properties(index).total_memory
            if torch.cuda.memory_reserved(index) > _CUDA_RESERVED_FRACTION * total:
                torch.cuda.empty_cache()


# --------------------------------------------------------------------------- public entry point


def measure_latency(
    arch_or_model: SegArch | SegModel | str | Path,
    *,
    input_hw: tuple[int, int],
    device: str = "cpu",
    batch: int = 1,
    dtype: str = "fp32",
    backend: str = "torch",
    threads: int | None = None,
    channels_last: bool = False,
    include_upsample: bool = False,
    deploy: bool = True,
    warmup: int = DEFAULT_WARMUP,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    target_rel_spread: float = DEFAULT_TARGET_REL_SPREAD,
    time_cap_s: float = DEFAULT_TIME_CAP_S,
    max_others_share: float | None = DEFAULT_MAX_OTHERS_SHARE,
    load_retries: int = DEFAULT_LOAD_RETRIES,
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S,
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
        input_hw, device, batch, dtype, backend, threads, channels_last, include_upsample, deploy,
        warmup, min_samples, max_samples, target_rel_spread, time_cap_s, max_others_share,
        load_retries, quiet_wait_s: See :class:`LatencySettings`.
        cache: Where to look the result up first and store it after; ``None`` measures and stores
            nothing. Keyed by architecture, fingerprint and stopping rule (not by weights).
        refresh: Measure even when ``cache`` holds the result, and replace the entry.

    Returns:
        The :class:`LatencyResult`; ``from_cache`` says whether it was measured now.

    Raises:
        UserError: An unknown backend, dtype or device; CUDA asked for without CUDA; ``cudagraph``
            or ``fp16`` on the CPU; a backend that is not installed; an input too small for the
            architecture; a runtime whose output does not match PyTorch's; out of GPU memory.
        ArchError: ``arch_or_model`` is a malformed architecture.
    """
    settings = LatencySettings(
        input_hw=input_hw,
        device=device,
        batch=batch,
        dtype=dtype,
        backend=backend,
        threads=threads,
        channels_last=channels_last,
        include_upsample=include_upsample,
        deploy=deploy,
        warmup=warmup,
        min_samples=min_samples,
        max_samples=max_samples,
        target_rel_spread=target_rel_spread,
        time_cap_s=time_cap_s,
        max_others_share=max_others_share,
        load_retries=load_retries,
        quiet_wait_s=quiet_wait_s,
    )
    return _measure_with(arch_or_model, settings, cache=cache, refresh=refresh)


def _measure_with(
    arch_or_model: SegArch | SegModel | str | Path,
    settings: LatencySettings,
    *,
    cache: LatencyCache | None,
    refresh: bool,
) -> LatencyResult:
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
    s = _resolve(settings)
    fingerprint = make_fingerprint(s)
    rule = s.rule()
    key = cache_key(arch, fingerprint, rule)
    if cache is not None and not refresh:
        hit = cache.get(key)
        if hit is not None:
            return hit
    started = time.perf_counter()
    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    samples, reason, diff, others, retries = _measure_guarded(arch, given, s)
    under_load = not s.is_cuda and s.max_others_share is not None and others is not None and others > s.max_others_share
    ordered = sorted(samples)
    result = LatencyResult(
        arch=arch,
        median_ms=statistics.median(ordered),
        p10_ms=_quantile(ordered, 0.10),
        p90_ms=_quantile(ordered, 0.90),
        iqr_ms=_quantile(ordered, 0.75) - _quantile(ordered, 0.25),
        mean_ms=statistics.fmean(ordered),
        min_ms=ordered[0],
        n_samples=len(samples),
        samples_ms=tuple(samples),
        rel_spread=_rel_spread(samples),
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


def _measure_guarded(
    arch: SegArch, given: SegModel | None, s: LatencySettings
) -> tuple[list[float], str, float | None, float | None, int]:
    """:func:`_measure`, taken again (after waiting for a quiet machine) while others kept the CPUs busy.

    Returns the last attempt's samples, stop reason and output difference, the share of the CPUs
    others used during it, and how many attempts were discarded.
    """
    guard = None if s.is_cuda else s.max_others_share
    retries = 0
    while True:
        with OthersCPU() as others:
            samples, reason, diff = _measure(arch, given, s)
        if guard is None or others.share is None or others.share <= guard or retries >= s.load_retries:
            return samples, reason, diff, others.share, retries
        retries += 1
        wait_for_quiet(guard, s.quiet_wait_s)
