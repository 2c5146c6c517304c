"""A real collapse on imbalanced data: plain cross-entropy predicts the dominant class only, OHEM does not, and the
greedy step's detector tells them apart (the small version of benchmarks/bench_imbalance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from models import resolve_arch
from scaler.proxy.data import open_dataset
from scaler.proxy.data.generate import write_imbalanced_folder
from scaler.proxy.train import TrainConfig, TrainResult, train_and_evaluate
from scaler.search.record import TrialRecord
from scaler.search.strategies.greedy import proxy_warnings

pytestmark = pytest.mark.slow  # two 100-iteration trainings: 14 s on 2 cores shared with other jobs

NET = "lpsnet:d=1,2,2,2,2;w=4,8,16,32,32;r=1.0"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    # One square of the object class in every fifth scene: under 1% of the pixels.
    root = write_imbalanced_folder(
        Path(tmp_path_factory.mktemp("imbalanced")), train=32, val=16, seed=0, objects=0.2, side=(12, 24), classes=1
    )
    spec = f"folder:{root}"
    train_set, val_set = open_dataset(spec, "train"), open_dataset(spec, "val")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same order of float sums however many cores the machine has
    try:
        for loss in ("ce", "ohem"):
            config = TrainConfig(dataset=spec, iters=100, batch=8, crop=(64, 128), lr=0.01, seed=0, loss=loss)
            out[loss] = train_and_evaluate(resolve_arch(NET), config, train_set=train_set, val_set=val_set)
    finally:
        torch.set_num_threads(threads)
    return out


def _trial(result: TrainResult) -> TrialRecord:
    return TrialRecord(
        resolve_arch(NET),
        number=1,
        state=TrialState.COMPLETE,
        values=(1.0, result.miou),
        train=result.to_dict(),
    )


def test_plain_cross_entropy_collapses_to_the_background_and_the_step_says_so(results: dict[str, TrainResult]):
    ce = results["ce"]
    assert ce.ok and ce.per_class_iou["background"] > 0.98 and ce.per_class_iou["red"] == 0.0
    assert proxy_warnings([_trial(ce)]) == [
        "#1 predicts one class only (every other class's IoU is 0): the proxy collapsed to the dominant class, so its "
        "mIoU says nothing of the architecture; train longer, or set training.loss: ohem"
    ]


def test_ohem_finds_the_rare_class_and_the_step_does_not_warn(results: dict[str, TrainResult]):
    ohem = results["ohem"]
    assert ohem.ok and ohem.per_class_iou["red"] > 0.3 and ohem.miou > results["ce"].miou + 0.15
    assert proxy_warnings([_trial(ohem)]) == []
