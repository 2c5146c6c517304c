"""Clean stops and honest states, with real processes: SIGINT and SIGTERM stop a search or a worker
as a stop (exit 130/143, one line, the trial queued again, no failure counted), kill -9 stays
"worker died", and ``scaler frontier`` reads a run whose search is gone as stopped.

The search runs in a subprocess with deterministic stand-ins for latency and training
(``tests/helpers/fake_cli.py``): each training sleeps ``FAKE_TRAIN_S`` seconds, the window in which
the process is signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_search import tiny_space
from optuna.trial import TrialState
from run_builder import TINY, make_run

from scaler.cli import main
from scaler.search.store import open_run

pytestmark = pytest.mark.slow

FAKE_CLI = Path(__file__).resolve().parents[2] / "helpers" / "fake_cli.py"

SPACE = tiny_space("stops", max_steps=1)


def _env(tmp_path: Path, train_s: float) -> dict[str, str]:
    env = dict(os.environ)
    env["LPS_SCALER_CACHE"] = str(tmp_path / "latency-cache")
    env["PYTHONUNBUFFERED"] = "1"
    env["FAKE_TRAIN_S"] = str(train_s)
    return env


def _fake(*args: str) -> list[str]:
    return [sys.executable, str(FAKE_CLI), *args]


def _search_args(tmp_path: Path) -> tuple[str, ...]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return ("search", "--space", str(space), "--out", str(tmp_path / "run"), "--quiet")


def _start_and_wait_for_training(args: list[str], env: dict[str, str], run_dir: Path, done: int) -> subprocess.Popen:
    """Start ``args`` and return once a trial is in training and ``done`` trials finished before it."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "study.journal").exists():
            trials = open_run(run_dir).trials()
            if sum(t.state == TrialState.COMPLETE for t in trials) >= done and any(
                t.state == TrialState.RUNNING and "owner" in t.user_attrs for t in trials
            ):
                return proc
        time.sleep(0.1)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"never caught a trial in training (exit {proc.returncode}):\n{err[-2000:]}")


def _lines(err: str) -> list[str]:
    """stderr without the load warnings a busy test machine may add."""
    return [line for line in err.strip().splitlines() if not line.startswith("warning:")]


def _frontier(run_dir: Path) -> tuple[str, dict]:
    runner = CliRunner()
    text = runner.invoke(main, ["frontier", str(run_dir)])
    data = runner.invoke(main, ["frontier", str(run_dir), "--json"])
    assert text.exit_code == 0 and data.exit_code == 0, text.output + data.output
    return text.output, json.loads(data.output)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_search_and_a_resume_trains_the_trial_again(tmp_path, sig, code):
    args = _search_args(tmp_path)
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for_training(_fake(*args), _env(tmp_path, 1.5), run_dir, done=2)
    running = [t.number for t in open_run(run_dir).trials() if t.state == TrialState.RUNNING]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    name = signal.Signals(sig).name

    # The conventional exit status, and one line: what stopped, what was queued again, how to resume.
    assert proc.returncode == code, err
    store = open_run(run_dir)
    trials = store.trials()
    stopped = trials[running[0]]
    copy = next(t for t in trials if t.user_attrs.get("retry_of") == running[0])
    assert _lines(err) == [
        f"search stopped by {name}; the candidate in training is queued again as trial #{copy.number} "
        f"(a stop, not a failure); resume with the same command: scaler {' '.join(args)}"
    ]
    assert out == ""
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["stopped"] == name
    assert stopped.user_attrs["fail_reason"] == f"stopped by {name}"
    assert copy.state == TrialState.WAITING and copy.user_attrs["arch_hash"] == stopped.user_attrs["arch_hash"]
    assert "owner" not in copy.user_attrs and "stopped" not in copy.user_attrs
    assert store.get("status") == "stopped" and store.get("stop_reason") == f"stopped by {name}"

    text, data = _frontier(run_dir)
    assert f"; stopped: stopped by {name}" in text.splitlines()[0]
    assert "1 stopped (queued again)" in text and "failed" not in text and "running" not in text
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    assert (data["trials"]["STOPPED"], data["trials"]["FAIL"], data["trials"]["RUNNING"]) == (1, 0, 0)
    assert data["trials"]["WAITING"] == waiting and waiting >= 1

    # The same command resumes: the stopped candidate is trained again, nothing counts as failed.
    r = subprocess.run(_fake(*args[:-1], "--json"), env=_env(tmp_path, 0), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["failed"], summary["stopped"], summary["died"]) == (0, 1, 0)
    assert summary["complete"] == summary["trials"] - 1
    after = open_run(run_dir).trials()
    assert after[copy.number].state == TrialState.COMPLETE
    assert summary["frontier"]["status"].startswith("finished")
    assert summary["frontier"]["trials"]["FAIL"] == 0 and summary["frontier"]["trials"]["STOPPED"] == 1


def test_kill_9_is_a_dead_worker_and_frontier_says_the_run_stopped(tmp_path):
    args = _search_args(tmp_path)
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for_training(_fake(*args), _env(tmp_path, 1.5), run_dir, done=1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = next(t.number for t in open_run(run_dir).trials() if t.state == TrialState.RUNNING)

    # Its status still says running (it could not write anything), but its lock went with it.
    assert open_run(run_dir).get("status") == "running"
    text, data = _frontier(run_dir)
    first = text.splitlines()[0]
    assert "1 interrupted (worker gone)" in first and "running" not in first
    assert "; stopped: its search process is gone" in first and "run the same scaler search command" in first
    assert data["status"].startswith("stopped: ") and data["trials"]["INTERRUPTED"] == 1

    r = subprocess.run(_fake(*args, "--json"), env=_env(tmp_path, 0), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    # A worker that died keeps its own state and reason: not a failure, not a stop.
    assert (summary["failed"], summary["stopped"], summary["died"]) == (0, 0, 1)
    trials = open_run(run_dir).trials()
    assert "died" in trials[killed].user_attrs["fail_reason"] and "stopped" not in trials[killed].user_attrs
    assert summary["frontier"]["trials"]["DIED"] == 1 and summary["frontier"]["trials"]["FAIL"] == 0


def test_a_worker_stopped_by_sigterm_queues_its_trial_again(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, [{"arch": TINY, "waiting": True}])
    storage = f"journal:{run_dir / 'study.journal'}"
    worker = ("worker", "--storage", storage, "--study", "test", "--quiet")
    proc = _start_and_wait_for_training(_fake(*worker), _env(tmp_path, 30), run_dir, done=0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out == ""
    assert proc.returncode == 143, err
    assert _lines(err) == [
        "worker stopped by SIGTERM; the candidate in training is queued again as trial #1 (a stop, not a "
        f"failure); start it again to go on: scaler {' '.join(worker)}"
    ]
    trials = open_run(run_dir).trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["stopped"] == "SIGTERM" and trials[1].user_attrs["retry_of"] == 0


def test_ctrl_c_stops_a_search_and_its_local_workers(tmp_path):
    # A terminal's Ctrl-C: SIGINT to the foreground process group. The search's workers (which train
    # for real here: the fake training is this process's, not theirs) are in sessions of their own;
    # the search stops them.
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("iters: 4,", "iters: 5000,"))  # still training when the signal comes
    run_dir = tmp_path / "run"
    args = ["search", "--space", str(space), "--out", str(run_dir), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(
        _fake(*args), env=_env(tmp_path, 0), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "study.journal").exists():
            running = [t for t in open_run(run_dir).trials() if t.state == TrialState.RUNNING]
            if len(running) == 1 and "owner" in running[0].user_attrs:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"no worker ever trained: {proc.communicate()[1][-2000:]}")
    worker = running[0].user_attrs["owner"]["pid"]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    trials = open_run(run_dir).trials()
    states = [(t.number, t.state.name, t.user_attrs.get("stopped")) for t in trials]
    copy = next((t for t in trials if t.user_attrs.get("retry_of") == running[0].number), None)
    assert copy is not None, (states, err)
    assert _lines(err) == [
        f"search stopped by SIGINT; the candidate in training is queued again as trial #{copy.number} "
        f"(a stop, not a failure); resume with the same command: scaler {' '.join(args)}"
    ]
    # The worker, stopped by its search, queued its trial again.
    stopped = trials[running[0].number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["stopped"] == "SIGTERM", (states, err)
    assert copy.state == TrialState.WAITING
    # No worker is left training on its own.
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
