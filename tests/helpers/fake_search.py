"""Deterministic latency and training for search tests: decisions depend on the architecture alone,
never on the machine's load or on real training (which these tests do not test)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models import LPSNetArch, SegArch, build_model
from scaler.proxy.train import TrainConfig, TrainResult
from scaler.search.space import SearchSpace, space_from_dict


def fake_ms(arch: LPSNetArch) -> float:
    """Latency grows with depth, width and (squared) resolution, as real latency does."""
    return sum(arch.depth) * 0.1 + sum(arch.width) * 0.01 + 4 * sum(r * r for r in arch.resolution)


class FakeLatency:
    """Stands in for ``measure_latency``; counts its calls. Other families get a fixed latency."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, arch: SegArch, settings: Any = None, **kw: Any) -> _Result:
        self.calls += 1
        return _Result(fake_ms(arch) if isinstance(arch, LPSNetArch) else 7.5)


class _Result:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.ms, "p10_ms": self.ms, "p90_ms": self.ms, "fingerprint": {"device": "fake"}}


def fake_miou(arch: SegArch) -> float:
    """A saturating gain in capacity; widths help more than depth, so the greedy path is not trivial."""
    if not isinstance(arch, LPSNetArch):
        return 0.42
    capacity = sum(arch.depth) * 0.5 + sum(arch.width) / 16 + 8 * sum(arch.resolution)
    return round(0.9 * (1 - math.exp(-capacity / 60)), 6)


def fake_train(arch: SegArch, config: TrainConfig, **kw: Any) -> TrainResult:
    """Stands in for ``train_and_evaluate``: :func:`fake_miou`, and a failure for three-path networks."""
    if isinstance(arch, LPSNetArch) and arch.num_paths == 3:
        return TrainResult(status="failed", reason="fake: three paths fail", arch=arch.to_dict(), config={})
    return TrainResult(status="ok", reason=None, arch=arch.to_dict(), config={}, miou=fake_miou(arch))


def fake_train_saving(
    arch: SegArch,
    config: TrainConfig,
    *,
    save: str | Path | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    **kw: Any,
) -> TrainResult:
    """:func:`fake_train`, writing weights as ``train_and_evaluate(save=...)`` does (seeded, or ``init_state``
    loaded strictly, so a grown state that does not fit fails here as it would there), for inherited searches."""
    result = fake_train(arch, config)
    if save is not None and result.ok:
        torch.manual_seed(config.seed)
        model = build_model(arch)
        if init_state is not None:
            model.load_state_dict(init_state)
        torch.save({"arch": arch.to_dict(), "state_dict": model.state_dict()}, save)
    return result


def tiny_space(name: str, max_steps: int) -> str:
    """A space file's text for a greedy search on a tiny synthetic set, seconds per candidate with the
    stand-ins above (real latency and training take a few seconds more)."""
    return (
        f"name: {name}\n"
        "start: lpsnet_tiny\n"
        "input_size: 64x128\n"
        "dataset: synthetic:size=64x128,train=8,val=4\n"
        "constraints: {width_divisor: 4, max_depth: 4, max_width: 64}\n"
        "latency: {device: cpu, threads: 1, min_samples: 3, max_samples: 10, time_cap_s: 0.3}\n"
        "training: {iters: 4, batch: 2, crop: 64x96, lr: 0.05, seed: 0}\n"
        f"stopping: {{max_steps: {max_steps}}}\n"
    )


def inherit_space(init: str = "inherit", max_steps: int = 1, **training: Any) -> SearchSpace:
    """A one-step greedy space of two operators on a tiny synthetic set, with ``training.init: init``
    (the inherited-training tests' space; ``training`` adds to its recipe)."""
    return space_from_dict(
        {
            "name": "inherit",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic:size=64x128,train=8,val=4",
            "operators": ["depth_4-5", "width_4-5"],
            "constraints": {"max_depth": 8, "max_width": 256},
            "latency": {"device": "cpu", "threads": 1},
            "training": {"iters": 4, "batch": 2, "crop": "64x128", "init": init, **training},
            "stopping": {"max_steps": max_steps},
            "greedy": {"max_steplen": 4},
        }
    )
