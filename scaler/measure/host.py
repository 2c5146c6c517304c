"""The process and machine a measurement runs in: allocator, threads, collector, memory, and others' load.

CPU measurements run with glibc's malloc told to keep freed memory (:func:`steady_cpu_allocator`),
so a forward pass does not page its activations in afresh each time; without it the same network
measured twice in one process could differ by 10% depending on what the process did before.

Each measurement pins the thread count and ``cudnn.benchmark`` (:func:`pinned`), pauses the cyclic
collector while sampling (:func:`gc_paused`), and gives memory back after (:func:`release_memory`).
A CPU measurement taken while other processes kept the CPUs busy is taken again after waiting for
a quiet machine (:func:`guard_against_load`, using :mod:`scaler.measure.load`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import platform
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from scaler.measure import load

if TYPE_CHECKING:
    from scaler.measure.settings import LatencySettings

__all__ = [
    "cpu_allocator",
    "gc_paused",
    "guard_against_load",
    "pinned",
    "release_memory",
    "steady_cpu_allocator",
]

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

_T = TypeVar("_T")


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


# --------------------------------------------------------------------------- one measurement's surroundings


@contextlib.contextmanager
def pinned(settings: LatencySettings) -> Iterator[None]:
    """Thread count and cudnn.benchmark set for the measurement, restored after."""
    s = settings
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
def gc_paused() -> Iterator[None]:
    """As timeit does: a collection of unrelated garbage must not land inside a sample."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def release_memory(settings: LatencySettings) -> None:
    """After a measurement: collect its garbage and give free memory back (CPU), or trim a large CUDA reserve."""
    # Young generations only: a full collection costs tens of ms with torch loaded, and what
    # a call leaves behind (if anything) is young.
    gc.collect(1)
    if not settings.is_cuda:
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)
    if settings.is_cuda and torch.cuda.is_available():
        index = torch.device(settings.device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        if torch.cuda.memory_reserved(index) > _CUDA_RESERVED_FRACTION * total:
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- others' load


def guard_against_load(attempt: Callable[[], _T], settings: LatencySettings) -> tuple[_T, float | None, int]:
    """``attempt()``, taken again (after waiting for a quiet machine) while others kept the CPUs busy.

    CPU only: with ``settings.max_others_share`` set, an attempt during which other processes used
    more than that share of all CPUs is discarded, :func:`scaler.measure.load.wait_for_quiet` waits
    up to ``quiet_wait_s``, and the attempt is repeated, at most ``load_retries`` times.

    Args:
        attempt: One whole measurement.
        settings: The resolved settings.

    Returns:
        The last attempt's value, the share of the CPUs others used during it (``None``: unknown),
        and how many attempts were discarded.
    """
    s = settings
    retries = 0
    while True:
        # Looked up on the module each time, so tests can script the load there.
        with load.OthersCPU() as others:
            value = attempt()
        if not s.over_load_limit(others.share) or retries >= s.load_retries:
            return value, others.share, retries
        retries += 1
        load.wait_for_quiet(s.max_others_share, s.quiet_wait_s)
