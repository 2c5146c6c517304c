"""How busy the CPUs are with other processes' work.

A CPU latency measurement shares the cores with whatever else runs on the machine. Another busy
process on the same cores stalls PyTorch's OpenMP team at every barrier, which can turn a 3 ms
forward pass into 100 ms while the samples still look stable. The measurement therefore records the
share of all CPUs that other processes used while it sampled (:class:`OthersCPU`), and can wait for
a quiet machine first (:func:`wait_for_quiet`).

Linux only (``/proc/stat``); elsewhere the functions report ``None`` (unknown) and never wait.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

__all__ = ["OthersCPU", "busy_share", "wait_for_quiet"]

_PROC_STAT = Path("/proc/stat")
MIN_WINDOW_S = 0.5


def _cpu_times() -> tuple[int, int] | None:
    """(all, idle) jiffies summed over every CPU since boot, or ``None`` off Linux."""
    try:
        fields = [int(v) for v in _PROC_STAT.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) < 5:
        return None
    # user nice system idle iowait irq softirq steal; guest time is already counted in user.
    return sum(fields[:8]), fields[3] + fields[4]


def _own_cpu_s(children: bool) -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    used = me.ru_utime + me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        used += kids.ru_utime + kids.ru_stime
    return used


def busy_share(window_s: float = 0.5) -> float | None:
    """Share (0-1) of all CPUs busy over ``window_s`` while this process sleeps: others' load.

    ``None`` when the machine cannot tell (not Linux).
    """
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None:
        return None
    total = second[0] - first[0]
    return 1.0 - (second[1] - first[1]) / total if total > 0 else 0.0


def wait_for_quiet(threshold: float, max_wait_s: float, *, window_s: float = 0.5) -> tuple[float | None, float]:
    """Wait (up to ``max_wait_s``) until others use at most ``threshold`` of the CPUs.

    Returns:
        The last busy share seen (``None`` if unknown) and the seconds waited.
    """
    start = time.perf_counter()
    busy = busy_share(window_s)
    while busy is not None and busy > threshold and time.perf_counter() - start < max_wait_s:
        busy = busy_share(max(window_s, 1.0))
    return busy, time.perf_counter() - start


class OthersCPU:
    """Share of all CPUs that other processes used while the ``with`` block ran.

    After the block, ``share`` holds it (0-1), or ``None`` where the machine cannot tell. This
    process's own threads are not counted; with ``children=True`` neither are the child processes
    it waited for during the block.
    """

    def __init__(self, *, children: bool = False) -> None:
        self.children = children
        self.share: float | None = None
        self._start: tuple[int, int] | None = None
        self._own = 0.0

    def __enter__(self) -> OthersCPU:
        self._own = _own_cpu_s(self.children)
        self._start = _cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_times()
        if self._start is None or end is None:
            return
        tick = os.sysconf("SC_CLK_TCK")
        total_s = (end[0] - self._start[0]) / tick
        if total_s <= 0:
            self.share = 0.0
            return
        busy_s = total_s - (end[1] - self._start[1]) / tick
        own_s = _own_cpu_s(self.children) - self._own
        # /proc/stat counts in ticks (10 ms): over a window of a few ms one stray tick would read
        # as a busy machine, so a short window is judged as if it lasted MIN_WINDOW_S.
        floor_s = MIN_WINDOW_S * (os.cpu_count() or 1)
        self.share = min(1.0, max(0.0, busy_s - own_s) / max(total_s, floor_s))
