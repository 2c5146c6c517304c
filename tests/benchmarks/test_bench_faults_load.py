"""The short version of ``benchmarks/bench_faults.py load`` (part c of the fault suite): worker
processes on one journal and on one PostgreSQL study, one SIGKILLed every second or so, lose no
candidate and evaluate none twice; a large run is read whole by ``scaler frontier``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _faults.load import large_run, load_run, read_times

pytestmark = pytest.mark.slow

SETTINGS = dict(workers=3, candidates=20, kill_every_s=2.0, train_s=0.3, seed=14, timeout_s=300, log=lambda m: None)


def _check(row: dict) -> None:
    assert not row["timed_out"], row
    assert (row["lost"], row["twice"]) == (0, 0), row
    assert row["kills"] >= 2, row  # the faults happened
    # Every kill left a trial behind that was reaped and queued again; each candidate has one result.
    assert row["states"]["COMPLETE"] == row["candidates"], row
    assert row["requeued"] == row["states"].get("FAIL", 0) >= 1, row
    assert row["trials"] == row["candidates"] + row["requeued"], row


def test_workers_killed_on_a_journal_lose_nothing(tmp_path):
    _check(load_run(None, tmp_path, **SETTINGS))


def test_workers_killed_on_postgres_lose_nothing(tmp_path, postgres_url):
    _check(load_run(postgres_url, tmp_path, **SETTINGS))


def test_a_grown_run_is_read_whole(tmp_path):
    run = tmp_path / "run"
    built = large_run(run, 600, seed=1)
    assert built["trials"] == 600
    read = read_times(run, repeats=1)
    assert read["trials_read"] == 600 and len(read["frontier_s"]) == 1
