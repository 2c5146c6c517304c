"""What every benchmark records beside its numbers: the command that made them and the machine."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


def write_report(out: str | Path, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> str:
    """Write ``OUT.json`` (the numbers) and ``OUT.md`` (the table), print the table and return it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return text
