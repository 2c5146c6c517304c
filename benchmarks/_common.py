"""What every benchmark records beside its numbers: the command that made them and the machine."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from typing import Any

import torch

from scaler.measure import cpu_name, logical_cpus


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "logical_cpus": logical_cpus(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, {m['threads']} threads"
