"""``scaler dashboard``: the real optuna-dashboard server on a run, checked through its HTTP API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from run_builder import GREEDY_TRIALS, make_greedy_run

from scaler.cli import main
from scaler.report.export import export_trial
from scaler.report.outputs import write_run_outputs
from scaler.search.artifacts import study_artifacts, trial_artifacts
from scaler.search.run_folder import ARTIFACTS_DIR

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 90.0  # importing torch and the models on a loaded 2-core CI machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def _get_json(url: str) -> Any:
    return json.loads(_get(url))


def test_without_the_extra_one_line_names_it(tmp_path, monkeypatch):
    make_greedy_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import optuna_dashboard now raises ImportError
    r = CliRunner().invoke(main, ["dashboard", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert r.stderr == (
        "error: scaler dashboard needs the package optuna-dashboard: pip install 'lps-scaler[dashboard]'\n"
    )


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    pytest.importorskip("optuna_dashboard")
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["dashboard", str(tmp_path / "empty")])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "not a run folder" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_port_in_use_is_one_line(tmp_path):
    pytest.importorskip("optuna_dashboard")
    make_greedy_run(tmp_path / "run")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = CliRunner().invoke(main, ["dashboard", str(tmp_path / "run"), "--port", str(port)])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: cannot serve the dashboard on 127.0.0.1:{port} (")
    assert r.stderr.endswith("; choose another --port or --host\n") and len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_the_dashboard_shows_metric_names_trials_constraints_and_artifacts(tmp_path):
    pytest.importorskip("optuna_dashboard")
    run = tmp_path / "run"
    store = make_greedy_run(run, budget_ms=2.5)
    write_run_outputs(run)
    export_trial(run, tmp_path / "export", formats="json", trial=2, store=store)
    plots = {a.filename: a.artifact_id for a in study_artifacts(store)}
    cards = {a.filename: a.artifact_id for a in trial_artifacts(store, 2)}
    assert set(plots) == {"frontier.png", "steps.png"} and set(cards) == {"MODEL_CARD.md", "arch.json"}

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scaler.cli", "dashboard", str(run), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the dashboard exited ({proc.returncode}):\n{log.read_text()}"
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT_S:g} s:\n{log.read_text()}"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["test"]
        study_id = studies[0]["study_id"]
        assert study_id == store.study_id
        detail = _get_json(f"{base}/api/studies/{study_id}")

        assert detail["objective_names"] == ["latency_ms", "miou"]
        assert detail["directions"] == ["minimize", "maximize"]
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == list(range(len(GREEDY_TRIALS)))
        assert trials[3]["state"] == "Fail" and trials[9]["state"] == "Waiting"
        # latency - budget (2.5 ms): feasible at most 0; none for the trial still queued.
        for number, spec in enumerate(GREEDY_TRIALS):
            expected = [] if spec.get("waiting") else [pytest.approx(spec["latency"] - 2.5)]
            assert trials[number]["constraints"] == expected

        assert {a["filename"]: a["artifact_id"] for a in detail["artifacts"]} == plots
        assert {a["filename"]: a["artifact_id"] for a in trials[2]["artifacts"]} == cards
        assert all(trials[n]["artifacts"] == [] for n in trials if n != 2)
        # ... and serves their content from the run's artifact store.
        png = _get(f"{base}/artifacts/{study_id}/{plots['frontier.png']}")
        assert (
            png
            == (run / "plots" / "frontier.png").read_bytes()
            == (run / ARTIFACTS_DIR / plots["frontier.png"]).read_bytes()
        )
        card = _get(f"{base}/artifacts/{study_id}/{trials[2]['trial_id']}/{cards['MODEL_CARD.md']}")
        assert card == (tmp_path / "export" / "MODEL_CARD.md").read_bytes()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None
