"""Runs that last: resume after kill -9, several workers on one storage, a real PostgreSQL server.

These start real processes (the CLI in subprocesses) and a throwaway PostgreSQL cluster on loopback.
In CI (``CI=true``) a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from throwaway_pg import free_port

from scaler.search.store import RunStore, open_run, open_storage

pytestmark = pytest.mark.slow

# The load guard is off (max_others_share: null) so that every measurement is cached even on a busy
# test machine: the runs compared share one cache, which makes their latencies, and so their greedy
# paths, the same (a measurement under load is otherwise taken again and never cached).

SPACE = """\
name: dist
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=16,val=6
constraints: {{width_divisor: 4, max_depth: 6, max_width: 96}}
latency: {{device: cpu, threads: 1, min_samples: 5, max_samples: 20, time_cap_s: 0.5, max_others_share: null}}
training: {{iters: {iters}, batch: 4, crop: 64x96, lr: 0.05, seed: 0}}
stopping: {{max_steps: {steps}}}
"""


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LPS_SCALER_CACHE"] = str(tmp_path / "latency-cache")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _scaler(*args: str) -> list[str]:
    return [sys.executable, "-m", "scaler.cli", *args]


def _run(args: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(args[2:])} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


def _space(tmp_path: Path, iters: int, steps: int) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE.format(iters=iters, steps=steps))
    return p


def _summary(store: RunStore) -> dict[str, object]:
    trials = store.trials()
    complete = collections.Counter(t.user_attrs["arch_hash"] for t in trials if t.state == TrialState.COMPLETE)
    winners = [store.get(f"step_{s}", {}).get("winner") for s in range(1, 10) if store.get(f"step_{s}")]
    path = [trials[w].user_attrs["arch_hash"] for w in winners if w is not None]
    miou = {t.user_attrs["arch_hash"]: t.values[1] for t in trials if t.state == TrialState.COMPLETE}
    return {"complete": complete, "path": path, "miou": miou, "states": [t.state for t in trials]}


def test_resume_after_kill_9_during_training(tmp_path):
    env = _env(tmp_path)
    space = _space(tmp_path, iters=60, steps=2)
    # An uninterrupted run to compare with.
    ref_dir = tmp_path / "ref"
    _run(_scaler("search", "--space", str(space), "--out", str(ref_dir), "--quiet"), env)
    ref = _summary(open_run(ref_dir))

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _scaler("search", "--space", str(space), "--out", str(run_dir), "--quiet"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_number = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "study.journal").exists():
            store = open_run(run_dir)
            done = [t for t in store.trials() if t.state == TrialState.COMPLETE]
            running = [t for t in store.trials() if t.state == TrialState.RUNNING]
            # Kill in the middle of a training, after a few evaluations finished: a while into it, and
            # only if it is still training then (a short training may end within the wait).
            if len(done) >= 3 and running:
                time.sleep(0.3)
                if open_run(run_dir).trials()[running[0].number].state == TrialState.RUNNING:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed_number = running[0].number
                    break
        time.sleep(0.2)
    assert killed_number is not None, "the search finished or stalled before it could be killed"
    before = open_run(run_dir)
    finished_before = {t.number: t.values for t in before.trials() if t.state == TrialState.COMPLETE}
    assert before.trials()[killed_number].state == TrialState.RUNNING

    _run(_scaler("search", "--space", str(space), "--out", str(run_dir), "--quiet"), env)
    after = open_run(run_dir)
    trials = after.trials()
    # Finished evaluations are never redone: same numbers, same values, one COMPLETE trial per network.
    for number, values in finished_before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    summary = _summary(after)
    assert set(summary["complete"].values()) == {1}
    # The candidate whose worker died failed with the reason and was evaluated again.
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed_number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    # Training is deterministic, so the resumed search took the same path with the same results.
    assert summary["path"] == ref["path"]
    assert summary["miou"] == pytest.approx(ref["miou"])
    assert after.get("status") == "finished"


def _count_by_hash(store: RunStore) -> collections.Counter:
    return collections.Counter(t.user_attrs["arch_hash"] for t in store.trials())


def _check_each_candidate_once(store: RunStore) -> set[int]:
    trials = store.trials()
    assert trials, "no trials"
    assert all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials
    ]
    assert set(_count_by_hash(store).values()) == {1}
    return {t.user_attrs["owner"]["pid"] for t in trials}


def test_two_local_workers_share_a_journal(tmp_path):
    env = _env(tmp_path)
    space = _space(tmp_path, iters=30, steps=1)
    run_dir = tmp_path / "run"
    out = _run(_scaler("search", "--space", str(space), "--out", str(run_dir), "--workers", "2", "--json"), env)
    pids = _check_each_candidate_once(open_run(run_dir))
    assert len(pids) >= 2, "both workers should have evaluated candidates"
    # The summary counts the workers' training (it said "training 0 s" when only local time counted).
    summary = json.loads(out)
    trained = sum(
        t.user_attrs["train"]["train_seconds"] + t.user_attrs["train"]["eval_seconds"]
        for t in open_run(run_dir).trials()
        if t.user_attrs.get("train")
    )
    assert summary["train_seconds"] == 0 and summary["worker_train_seconds"] == pytest.approx(trained)


# -- PostgreSQL ------------------------------------------------------------------------------------


def test_postgres_search_with_two_workers(tmp_path, postgres_url):
    env = _env(tmp_path)
    space = _space(tmp_path, iters=30, steps=1)
    run_dir = tmp_path / "run"
    _run(
        _scaler(
            "search",
            "--space",
            str(space),
            "--out",
            str(run_dir),
            "--storage",
            postgres_url,
            "--workers",
            "2",
            "--quiet",
        ),
        env,
    )
    store = RunStore.load(open_storage(postgres_url, None), "dist")
    pids = _check_each_candidate_once(store)
    assert len(pids) >= 2
    # The run folder reads the same study back from the server.
    assert len(open_run(run_dir).trials()) == len(store.trials())


def test_remote_style_workers_pull_from_postgres(tmp_path, postgres_url):
    """Workers started on their own (as on other hosts) while the search only measures and queues."""
    env = _env(tmp_path)
    space = _space(tmp_path, iters=20, steps=1)
    run_dir = tmp_path / "run2"
    study = "dist-remote"
    space.write_text(space.read_text().replace("name: dist", f"name: {study}"))
    workers = [
        subprocess.Popen(
            _scaler("worker", "--storage", postgres_url, "--study", study, "--quiet", "--max-idle", "120"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    time.sleep(1.0)
    # With --workers 0 the search process trains too; the two external workers claim candidates beside it.
    search = subprocess.Popen(
        _scaler(
            "search",
            "--space",
            str(space),
            "--out",
            str(run_dir),
            "--storage",
            postgres_url,
            "--workers",
            "0",
            "--quiet",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert search.wait(timeout=600) == 0, search.stderr.read().decode()
    for w in workers:
        assert w.wait(timeout=200) == 0, w.stderr.read().decode()
    store = RunStore.load(open_storage(postgres_url, None), study)
    trials = store.trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert set(_count_by_hash(store).values()) == {1}


def test_unreachable_storage_is_one_line(tmp_path):
    env = _env(tmp_path)
    space = _space(tmp_path, iters=5, steps=1)
    r = subprocess.run(
        _scaler(
            "search",
            "--space",
            str(space),
            "--out",
            str(tmp_path / "x"),
            "--storage",
            f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: storage postgresql://nobody@127.0.0.1")
