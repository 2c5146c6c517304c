"""A small greedy run built by hand (trials, step records, weights), for the tests that read runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from models import LPSNet, LPSNetArch, get_arch, parse_inline
from scaler.search.expand import Constraints
from scaler.search.record import TrialRecord
from scaler.search.space import space_from_dict
from scaler.search.store import RunStore, distributions, open_storage

CLASSES = ["road", "car", "sky", "tree"]
INPUT_HW = (48, 80)
TINY = parse_inline("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;c=4")


def grow(arch: LPSNetArch, **changes: Any) -> LPSNetArch:
    return dataclasses.replace(arch, **changes)


def fake_latency(arch: LPSNetArch, ms: float, *, include_upsample: bool = False) -> dict[str, Any]:
    """What LatencyResult.to_dict() holds, reduced to what readers use."""
    return {
        "arch": arch.to_dict(),
        "median_ms": ms,
        "p10_ms": 0.95 * ms,
        "p90_ms": 1.05 * ms,
        "n_samples": 20,
        "fingerprint": {
            "device": "cpu",
            "device_name": "Test CPU 9000",
            "logical_cpus": 2,
            "backend": "torch",
            "backend_version": "2.13.0",
            "threads": 2,
            "dtype": "fp32",
            "batch": 1,
            "input_shape": [1, 3, *INPUT_HW],
            "channels_last": False,
            "deploy": True,
            "include_upsample": include_upsample,
        },
        "fingerprint_hash": "feedfacecafebeef",
    }


def fake_train(miou: float | None) -> dict[str, Any]:
    per_class = {n: (None if miou is None else round(miou + 0.01 * (i - 1.5), 4)) for i, n in enumerate(CLASSES)}
    return {
        "status": "ok" if miou is not None else "failed",
        "miou": miou,
        "pixel_accuracy": None if miou is None else 0.5 + miou / 2,
        "per_class_iou": per_class,
        "train_seconds": 3.5,
        "config": {"iters": 20, "batch": 2, "crop": [32, 64], "lr": 0.05, "seed": 0, "dataset": "synthetic"},
    }


def make_space(budget_ms: float | None = None) -> dict[str, Any]:
    data = {
        "name": "test_space",
        "start": TINY.inline(),
        "input_size": list(INPUT_HW),
        "dataset": "synthetic",
        "training": {"iters": 20, "batch": 2, "crop": [32, 64]},
        "stopping": {"max_steps": 3, "latency_budget_ms": budget_ms},
    }
    return space_from_dict(data).to_dict()


def make_run(
    run_dir: Path,
    trials: list[dict[str, Any]],
    steps: list[dict[str, Any]] = (),
    *,
    budget_ms: float | None = None,
    strategy: str = "greedy",
    study_name: str = "test",
    weights: tuple[int, ...] = (),
    weights_prefix: str = "",
) -> RunStore:
    """A run folder as the search writes it.

    Each trial spec has ``arch`` and optionally ``latency`` (ms), ``miou`` (complete), ``fail``
    (reason; failed), ``waiting`` (left queued) and other TrialRecord fields under ``attrs``. Trials
    numbered in ``weights`` keep (random) weights in the run folder, recorded as ``weights_prefix``
    + the path relative to the run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(
        json.dumps({"study_name": study_name, "storage": "journal", "space_file": "x.yaml", "strategy": strategy})
    )
    store = RunStore(open_storage(None, run_dir), study_name, num_classes=len(CLASSES))
    store.put("space", make_space(budget_ms))
    store.put("class_names", CLASSES)
    store.put("strategy", strategy)
    dists = distributions(Constraints())
    for spec in trials:
        arch = spec["arch"]
        fields: dict[str, Any] = {
            "strategy": strategy,
            "step": 0,
            "parent": None,
            "steplen": 0,
            **spec.get("attrs", {}),
        }
        store.add(TrialRecord(arch, **fields), dists)
        if spec.get("waiting"):
            continue
        claim = store.claim()
        assert claim is not None and claim.arch == arch
        extra: dict[str, Any] = {}
        if claim.number in weights:
            extra["weights"] = weights_prefix + save_weights(run_dir, arch, claim.number)
        if spec.get("latency") is not None:
            extra["latency"] = fake_latency(arch, spec["latency"], include_upsample=spec.get("upsample", False))
        if spec.get("fail"):
            extra["train"] = fake_train(None)
            store.fail(claim, spec["fail"], extra)
        else:
            extra["train"] = fake_train(spec["miou"])
            store.complete(claim, spec["latency"], spec["miou"], extra)
    for record in steps:
        store.put(f"step_{record['step']}", record)
    return store


def greedy_attrs(step: int, parent: int, op: str, steplen: int = 1) -> dict[str, Any]:
    return {"step": step, "parent": parent, "operators": (op,), "steplen": steplen}


A_DEPTH = grow(TINY, depth=(1, 2, 2, 2, 2))
A_WIDTH = grow(TINY, width=(8, 16, 32, 64, 64))
A_RES = grow(TINY, resolution=(0.75,))
A_WD = grow(A_WIDTH, depth=(1, 2, 2, 2, 2))
A_W2P = grow(A_WIDTH, resolution=(0.5, 0.125))
A_WW = grow(A_WIDTH, width=(8, 24, 48, 96, 96))
A_WDD = grow(A_WD, depth=(1, 3, 3, 3, 3))
A_S = dataclasses.replace(get_arch("lpsnet_s"), num_classes=len(CLASSES))

# number: arch, latency, mIoU, how it was made
GREEDY_TRIALS = [
    {"arch": TINY, "latency": 1.0, "miou": 0.20},  # 0 start
    {"arch": A_DEPTH, "latency": 1.8, "miou": 0.26, "attrs": greedy_attrs(1, 0, "depth_2-5")},  # 1
    {"arch": A_WIDTH, "latency": 2.0, "miou": 0.30, "attrs": greedy_attrs(1, 0, "width_1-5")},  # 2 wins step 1
    {
        "arch": A_RES,
        "latency": 2.1,
        "fail": "non-finite loss at iteration 3",
        "attrs": greedy_attrs(1, 0, "res_path1", 2),
    },
    {"arch": A_WD, "latency": 3.0, "miou": 0.33, "attrs": greedy_attrs(2, 2, "depth_2-5")},  # 4 wins step 2
    {"arch": A_W2P, "latency": 2.6, "miou": 0.29, "attrs": greedy_attrs(2, 2, "res_path2")},  # 5 dominated
    {"arch": A_WW, "latency": 3.0, "miou": 0.33, "attrs": greedy_attrs(2, 2, "width_2-5")},  # 6 ties 4
    {"arch": A_WDD, "latency": 4.0, "miou": 0.32, "attrs": greedy_attrs(3, 4, "depth_2-5")},  # 7 no gain
    {"arch": A_S, "latency": 50.0, "miou": 0.50, "attrs": {"reference": "lpsnet_s", "step": None}},  # 8 reference
    {"arch": grow(A_WDD, width=(12, 24, 48, 96, 96)), "waiting": True, "attrs": greedy_attrs(3, 4, "width_1-5")},
]
GREEDY_STEPS = [
    {
        "step": 1,
        "parent": 0,
        "candidates": [1, 2, 3],
        "slopes": {"1": 0.075, "2": 0.1, "3": None},
        "winner": 2,
        "reason": "best slope 0.1 mIoU/ms",
    },
    {
        "step": 2,
        "parent": 2,
        "candidates": [4, 5, 6],
        "slopes": {"4": 0.03, "5": -0.0167, "6": 0.03},
        "winner": 4,
        "reason": "best slope 0.03 mIoU/ms (tie broken by trial number)",
    },
    {
        "step": 3,
        "parent": 4,
        "candidates": [7],
        "slopes": {"7": -0.01},
        "winner": None,
        "reason": "no candidate gains mIoU",
    },
]


def make_greedy_run(run_dir: Path, *, budget_ms: float | None = None, weights: tuple[int, ...] = ()) -> RunStore:
    return make_run(run_dir, GREEDY_TRIALS, GREEDY_STEPS, budget_ms=budget_ms, weights=weights)


def save_weights(run_dir: Path, arch: LPSNetArch, number: int) -> str:
    """Trained-looking weights for trial ``number`` (seeded, BatchNorm statistics moved); path relative to the run."""
    torch.manual_seed(number)
    model = LPSNet(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    rel = f"weights/trial_{number}.pt"
    (run_dir / rel).parent.mkdir(exist_ok=True)
    torch.save({"arch": arch.to_dict(), "state_dict": model.state_dict()}, run_dir / rel)
    return rel
