"""What every benchmark records beside its numbers: the command that made them and the machine."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "logical_cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, {m['threads']} threads"
