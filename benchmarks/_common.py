"""What every benchmark records beside its numbers: the command that made them and the machine."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
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


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two rankings (ties in either accounted for); ``None`` when either is constant."""
    concordant = discordant = ties_x = ties_y = 0
    pairs = list(zip(x, y, strict=True))
    for i, (x1, y1) in enumerate(pairs):
        for x2, y2 in pairs[i + 1 :]:
            dx, dy = x1 - x2, y1 - y2
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else None
