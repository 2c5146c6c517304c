"""What a latency was measured on, as plain JSON, and the hashes that key the cache by it.

A fingerprint names the device, runtime and versions, threads, dtype, input shape, network form and
whether the final upsample is included. Its hash leaves out what describes where a result came from
but does not change it (host name, Python version), so the same GPU model in another host reuses
cache entries. Committed runs and users' caches are keyed by these hashes: they must not change.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models import SegArch
from scaler.measure.host import cpu_allocator
from scaler.measure.runners import get_runner

if TYPE_CHECKING:
    from scaler.measure.settings import LatencySettings

__all__ = ["cache_key", "cpu_name", "fingerprint_hash", "logical_cpus", "make_fingerprint"]

# Fingerprint keys that describe where a result came from but do not change it, so they stay out
# of its hash: the same GPU model in another host (or a container with a new name) reuses entries.
_UNHASHED_KEYS = ("host", "python")


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows, else ``"unknown CPU"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def logical_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def make_fingerprint(settings: LatencySettings) -> dict[str, Any]:
    """What a measurement with ``settings`` runs on, as plain JSON, without timestamps.

    Args:
        settings: Resolved settings (a concrete ``cuda:N`` and thread count), as
            :func:`~scaler.measure.measure_latency` makes them before calling this.

    Returns:
        The fingerprint; its keys come in a fixed order.
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
        fp["device_name"] = cpu_name()
        fp["logical_cpus"] = logical_cpus()
        fp["cpu_allocator"] = cpu_allocator()
        fp["cuda"] = None
        fp["cudnn"] = None
    fp["torch"] = torch.__version__
    fp["backend"] = s.backend
    fp.update(get_runner(s.backend).fingerprint_fields(s))
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
    """Hash of the parts of ``fingerprint`` that change a latency (everything but host and Python).

    Args:
        fingerprint: As :func:`make_fingerprint` returns it (or as stored with a result).
        length: Hex digits kept.

    Returns:
        The hash, as hex.
    """
    relevant = {k: v for k, v in fingerprint.items() if k not in _UNHASHED_KEYS}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def cache_key(arch: SegArch, fingerprint: dict[str, Any], rule: dict[str, Any]) -> str:
    """Cache key: ``<arch hash>-<fingerprint hash>-<stopping-rule hash>``.

    Args:
        arch: The measured architecture.
        fingerprint: What it was measured on (:func:`make_fingerprint`).
        rule: The stopping rule (:meth:`LatencySettings.rule`).

    Returns:
        The key, lowercase hex and dashes.
    """
    rule_hash = hashlib.sha256(json.dumps(rule, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    return f"{arch.arch_hash()}-{fingerprint_hash(fingerprint)}-{rule_hash}"
