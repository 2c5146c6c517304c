"""The ``scaler`` command line with deterministic stand-ins for latency and training, for tests that
run a search or a worker as a real process (to signal it, kill it, resume it) in seconds.

Run it as ``python tests/helpers/fake_cli.py search --space ... --out ...``. Latency comes from
:func:`fake_search.fake_ms` (paired passes from :class:`paired_standin.FakePaired`); training from
:func:`fake_search.fake_train_saving` (weights written when asked), after sleeping ``FAKE_TRAIN_S``
seconds (default 0): the window in which a test stops the process mid-training.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fake_search import FakeLatency, fake_train_saving
from paired_standin import FakePaired

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from models import SegArch
from scaler.cli import main
from scaler.proxy.train import TrainConfig, TrainResult


def slow_train(arch: SegArch, config: TrainConfig, **kw: Any) -> TrainResult:
    """:func:`fake_search.fake_train_saving`, taking ``FAKE_TRAIN_S`` seconds."""
    time.sleep(float(os.environ.get("FAKE_TRAIN_S", "0")))
    return fake_train_saving(arch, config, **kw)


if __name__ == "__main__":
    run_mod.measure_latency = FakeLatency()
    run_mod.measure_paired = FakePaired()
    worker_mod.train_and_evaluate = slow_train
    main()  # as `python -m scaler.cli` does: the exit status is the command's own
