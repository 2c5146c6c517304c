"""The run store's claim and dead-worker rules, on a journal file (fast; the real multi-process
and PostgreSQL runs are in test_distributed.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from models import get_arch
from scaler.errors import UserError
from scaler.search.expand import Constraints
from scaler.search.record import TrialRecord
from scaler.search.run_folder import LOCK_NAME, exclusive
from scaler.search.store import STALE_AFTER_S, RunStore, StorageError, distributions, open_storage

ARCH = get_arch("lpsnet_tiny")


def _store(tmp_path, n=1):
    store = RunStore(open_storage(None, tmp_path), "s", ARCH.num_classes)
    for _ in range(n):
        store.add(TrialRecord(ARCH, step=0), distributions(Constraints()))
    return store


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_is_exclusive_and_names_its_worker(tmp_path):
    store = _store(tmp_path)
    claim = store.claim()
    assert claim is not None and claim.number == 0 and claim.arch == ARCH
    assert store.claim() is None
    t = store.trials()[0]
    assert t.state == TrialState.RUNNING
    assert t.user_attrs["owner"]["pid"] == os.getpid() and t.user_attrs["owner"]["host"] == socket.gethostname()


def test_local_worker_that_died_is_failed_and_requeued_once(tmp_path):
    store = _store(tmp_path)
    claim = store.claim()
    store.storage.set_trial_user_attr(claim.trial_id, "owner", {"host": socket.gethostname(), "pid": _dead_pid()})
    assert store.reap_stale() == [1]
    dead, retry = store.trials()
    assert dead.state == TrialState.FAIL and "died (last heartbeat 0 s ago)" in dead.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0
    assert "owner" not in retry.user_attrs and retry.user_attrs["step"] == 0
    assert store.reap_stale() == []


def test_live_local_worker_is_left_alone(tmp_path):
    store = _store(tmp_path)
    store.claim()
    assert store.reap_stale(now=time.time() + 10 * STALE_AFTER_S) == []


def test_remote_worker_is_judged_by_its_heartbeat(tmp_path):
    store = _store(tmp_path)
    claim = store.claim()
    store.storage.set_trial_user_attr(claim.trial_id, "owner", {"host": "elsewhere", "pid": 1})
    beat = store.trials()[0].user_attrs["heartbeat"]
    assert store.reap_stale(now=beat + STALE_AFTER_S - 1) == []
    assert store.reap_stale(now=beat + STALE_AFTER_S + 1) == [1]


def test_a_claim_not_yet_named_is_not_taken_for_a_dead_worker(tmp_path):
    # A worker moves the trial to RUNNING and names itself a moment later; the search process may
    # look in between (this once failed a PostgreSQL run with two workers).
    store = _store(tmp_path)
    trial_id = store.trials()[0]._trial_id
    assert store.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    assert store.reap_stale() == []
    assert store.trials()[0].state == TrialState.RUNNING
    # Left unnamed for longer than a heartbeat may be late: that worker died right after claiming.
    assert store.reap_stale(now=time.time() + STALE_AFTER_S + 5) == [1]
    assert store.trials()[0].state == TrialState.FAIL
    assert store.trials()[0].user_attrs["fail_reason"].startswith("its worker died between claiming it and naming")


def test_a_remote_worker_named_but_without_a_heartbeat_yet_is_judged_from_its_claim(tmp_path):
    # Named and not yet beating (two writes apart): alive until its claim is older than a heartbeat may be late.
    store = _store(tmp_path)
    trial_id = store.trials()[0]._trial_id
    assert store.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    store.storage.set_trial_user_attr(trial_id, "owner", {"host": "elsewhere", "pid": 1})
    claimed = store.trials()[0].datetime_start.timestamp()
    assert store.reap_stale(now=claimed + STALE_AFTER_S - 1) == []
    assert store.reap_stale(now=claimed + STALE_AFTER_S + 1) == [1]
    assert store.trials()[0].user_attrs["fail_reason"] == "worker elsewhere:1 died (no heartbeat recorded)"


def test_a_worker_never_creates_a_journal(tmp_path):
    (tmp_path / "study.journal").write_text("")
    with pytest.raises(StorageError, match=r"no such journal \(that folder holds study\.journal\)"):
        open_storage(f"journal:{tmp_path / 'stdy.journal'}", None, create=False)
    with pytest.raises(StorageError, match=r"no such folder"):
        open_storage(f"journal:{tmp_path / 'missing' / 'study.journal'}", None, create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.journal"]
    # The search itself may start a journal at a path of its choice.
    open_storage(f"journal:{tmp_path / 'new.journal'}", None)
    assert (tmp_path / "new.journal").exists()


def test_a_run_folder_whose_lock_cannot_be_written_is_one_user_error(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # fails for root too, as a read-only file system would
    with (
        pytest.raises(UserError, match=r"cannot take the run's lock .*resume it where the folder is writable"),
        exclusive(tmp_path),
    ):
        pass


def test_a_seed_replica_trains_with_its_seed_and_is_left_out_of_the_frontier(tmp_path, monkeypatch):
    import scaler.search.worker as worker_mod
    from scaler.proxy.train import TrainConfig, TrainResult
    from scaler.report import pareto_front, trials_frame

    seeds: list[int] = []

    def fake_train(arch, config, **kw):
        seeds.append(config.seed)
        return TrainResult(status="ok", reason=None, arch=arch.to_dict(), config={}, miou=0.3 + 0.01 * config.seed)

    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_train)
    store = RunStore(open_storage(None, tmp_path), "s", ARCH.num_classes)
    dists = distributions(Constraints())
    first = TrialRecord(ARCH, step=0, latency={"median_ms": 1.0})
    store.add(first, dists)
    training = TrainConfig(iters=1, seed=0)
    assert worker_mod.evaluate_claim(store, store.claim(), training)
    done = store.records()[0]
    replica = done.replicated(seed=3)
    assert (replica.seed_of, replica.train_seed, replica.number, replica.state) == (0, 3, None, None)
    store.add(replica, dists)
    assert worker_mod.evaluate_claim(store, store.claim(), training)
    assert seeds == [0, 3] and training.seed == 0  # the recipe itself is left as it was
    again = store.records()[1]
    assert again.kind.value == "seed" and again.miou == pytest.approx(0.33) and again.latency_ms == 1.0
    df = trials_frame(store)
    assert (
        df["seed_of"].isna().tolist() == [True, False] and df["seed_of"].iloc[1] == 0 and df["train_seed"].iloc[1] == 3
    )
    assert list(pareto_front(df)["number"]) == [0]  # the replica's better mIoU is not a network of its own


def test_a_trial_this_process_owns_is_reaped_only_when_it_says_it_is_idle(tmp_path):
    # The search reaps between its own evaluations: a trial it owns then is left from an earlier session.
    store = _store(tmp_path)
    store.claim()
    assert store.reap_stale() == []
    assert store.reap_stale(idle=True) == [1]
    assert "died" in store.trials()[0].user_attrs["fail_reason"]
