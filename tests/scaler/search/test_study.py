"""The run's Optuna study as Optuna's own tools see it: metric names, the latency budget as a
constraint, and the plots and model cards attached as artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from paired_standin import FakePaired
from run_builder import GREEDY_TRIALS, make_greedy_run

import scaler.search.run as search_mod
import scaler.search.worker as worker_mod
from models import get_arch
from scaler.cli import main
from scaler.proxy.train import TrainResult
from scaler.report.draw import plot_run
from scaler.report.export import export_trial
from scaler.report.outputs import write_run_outputs
from scaler.report.summary import summarize_run
from scaler.search.artifacts import artifact_store, attach_to_study, study_artifacts, trial_artifacts
from scaler.search.expand import Constraints
from scaler.search.record import TrialRecord
from scaler.search.run import run_search
from scaler.search.run_folder import ARTIFACTS_DIR, JOURNAL_NAME
from scaler.search.space import load_space
from scaler.search.store import METRIC_NAMES, RunStore, distributions, open_run, open_storage

REPO = Path(__file__).resolve().parents[3]
REFERENCE_RUN = REPO / "results" / "reference" / "lpsnet_demo_128x256"

SPACE = """\
name: t
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {{width_divisor: 4, max_depth: 4, max_width: 64}}
training: {{iters: 4, batch: 2, crop: 64x96, lr: 0.05, seed: 0}}
stopping: {{max_steps: 1, max_trials: 4{budget}}}
"""


def _latency_ms(arch) -> float:
    return sum(arch.depth) * 0.1 + sum(arch.width) * 0.01 + 4 * sum(r * r for r in arch.resolution)


class _Latency:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def to_dict(self):
        return {"median_ms": self.ms, "p10_ms": self.ms, "p90_ms": self.ms, "fingerprint": {"device": "fake"}}


@pytest.fixture
def fake_search(monkeypatch, tmp_path):
    """Deterministic latency and an instant 'training' (mIoU from the width), so only the bookkeeping runs."""
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "latency-cache"))
    monkeypatch.setattr(search_mod, "measure_latency", lambda arch, settings, **kw: _Latency(_latency_ms(arch)))
    monkeypatch.setattr(search_mod, "measure_paired", FakePaired(_latency_ms))

    def train(arch, config, **kw):
        return TrainResult(
            status="ok", reason=None, arch=arch.to_dict(), config=config.to_dict(), miou=sum(arch.width) / 1000
        )

    monkeypatch.setattr(worker_mod, "train_and_evaluate", train)


def _space(tmp_path: Path, budget: float | None) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE.format(budget="" if budget is None else f", latency_budget_ms: {budget}"))
    return p


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- metric names ------------------------------------------------------------------------------


def test_a_new_study_names_its_metrics(tmp_path):
    store = RunStore(open_storage(None, tmp_path), "s", 19)
    assert store.study.metric_names == ["latency_ms", "miou"] == list(METRIC_NAMES)
    assert RunStore.load(open_storage(None, tmp_path), "s").study.metric_names == ["latency_ms", "miou"]


def test_the_search_names_the_metrics_of_an_older_run_and_readers_do_not(tmp_path):
    storage = open_storage(None, tmp_path)
    optuna.create_study(storage=storage, study_name="old", directions=["minimize", "maximize"])
    journal = tmp_path / JOURNAL_NAME
    before = _digest(journal)
    reader = RunStore.load(storage, "old")
    assert reader.study.metric_names is None and _digest(journal) == before
    RunStore(storage, "old", 19)  # the search resuming the run
    assert RunStore.load(open_storage(None, tmp_path), "old").study.metric_names == list(METRIC_NAMES)
    with pytest.raises(KeyError):
        RunStore(storage, "missing", 19, own=False)


def test_reading_a_committed_run_writes_nothing_to_its_study(tmp_path):
    run = tmp_path / "ref"
    shutil.copytree(REFERENCE_RUN, run)
    journal = run / JOURNAL_NAME
    before = _digest(journal)
    store = open_run(run)
    assert store.study.metric_names is None  # made before the metrics had names
    summarize_run(run)
    plot_run(run, tmp_path / "fig.png")
    assert _digest(journal) == before
    assert not (run / ARTIFACTS_DIR).exists() and artifact_store(run) is None


# -- the latency budget as Optuna's constraint ---------------------------------------------------


def test_constraints_record_latency_minus_budget_for_every_trial_with_a_latency(tmp_path, fake_search):
    space = load_space(_space(tmp_path, budget=3.0))
    run_search(space, tmp_path / "run", strategy="random", seed=1, progress=False)
    trials = open_run(tmp_path / "run").trials()
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and over and all(t.state == TrialState.FAIL for t in over)
    for t in trials:
        latency = t.user_attrs["latency"]["median_ms"]
        assert t.system_attrs["constraints"] == [pytest.approx(latency - 3.0)]
        assert t.constraints == {"0": pytest.approx(latency - 3.0)}
    assert all(t.system_attrs["constraints"][0] <= 0 for t in done)
    assert all(t.system_attrs["constraints"][0] > 0 for t in over)
    # Optuna's own tools read them: every over-budget trial is infeasible.
    feasible = optuna.study._constrained_optimization._get_feasible_trials(trials)
    assert {t.number for t in feasible} == {t.number for t in done}


def test_no_budget_no_constraints(tmp_path, fake_search):
    run_search(load_space(_space(tmp_path, budget=None)), tmp_path / "run", strategy="random", progress=False)
    trials = open_run(tmp_path / "run").trials()
    assert len(trials) == 4 and all("constraints" not in t.system_attrs for t in trials)
    assert open_run(tmp_path / "run").study.metric_names == list(METRIC_NAMES)


def test_failed_training_with_a_known_latency_records_its_constraint(tmp_path):
    store = make_greedy_run(tmp_path / "run", budget_ms=2.0)
    by_number = {t.number: t for t in store.trials()}
    assert by_number[3].state == TrialState.FAIL
    assert by_number[3].system_attrs["constraints"] == [pytest.approx(GREEDY_TRIALS[3]["latency"] - 2.0)]
    assert by_number[2].system_attrs["constraints"] == [pytest.approx(0.0)]  # exactly at the budget: feasible
    assert "constraints" not in by_number[9].system_attrs  # still queued


def test_finishing_a_reaped_trial_records_nothing(tmp_path):
    store = RunStore(open_storage(None, tmp_path), "s", 19)
    arch = get_arch("lpsnet_tiny")
    store.add(TrialRecord(arch, step=0), distributions(Constraints()))
    claim = store.claim()
    store.storage.set_trial_state_values(claim.trial_id, state=TrialState.FAIL)  # the search reaped it
    assert store.complete(claim, 1.0, 0.5, {"train": {"status": "ok"}}) is False
    assert store.fail(claim, "late", {}) is False
    t = store.trials()[0]
    assert t.state == TrialState.FAIL and "train" not in t.user_attrs and "fail_reason" not in t.user_attrs


# -- artifacts ---------------------------------------------------------------------------------------


def test_a_search_session_attaches_its_plots_and_a_resumed_one_replaces_them(tmp_path, fake_search):
    run = tmp_path / "run"
    args = ["search", "--space", str(_space(tmp_path, budget=3.0)), "--out", str(run), "--strategy", "random"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    first = {a.filename: a for a in study_artifacts(open_run(run))}
    assert set(first) == {"frontier.png", "steps.png"}
    assert first["frontier.png"].mimetype == "image/png"
    for a in first.values():
        assert (run / ARTIFACTS_DIR / a.artifact_id).read_bytes() == (run / "plots" / a.filename).read_bytes()
    # A second session (a longer trial limit) redraws the plots: same artifacts, new content.
    old_png = (run / ARTIFACTS_DIR / first["frontier.png"].artifact_id).read_bytes()
    space = tmp_path / "space.yaml"
    space.write_text(space.read_text().replace("max_trials: 4", "max_trials: 6"))
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    second = {a.filename: a for a in study_artifacts(open_run(run))}
    assert second == first
    assert sorted(os.listdir(run / ARTIFACTS_DIR)) == sorted(a.artifact_id for a in first.values())
    new_png = (run / ARTIFACTS_DIR / first["frontier.png"].artifact_id).read_bytes()
    assert new_png == (run / "plots" / "frontier.png").read_bytes() != old_png
    # Optuna's own reader agrees.
    metas = optuna.artifacts.get_all_artifact_meta(open_run(run).study)
    assert sorted(m.filename for m in metas) == ["frontier.png", "steps.png"]


def test_an_export_attaches_its_model_card_to_the_trial_once(tmp_path):
    run = tmp_path / "run"
    store = make_greedy_run(run)
    export_trial(run, tmp_path / "a", formats="json", trial=2, store=store)
    export_trial(run, tmp_path / "b", formats="json", trial=2)
    arts = {a.filename: a for a in trial_artifacts(open_run(run), 2)}
    assert set(arts) == {"MODEL_CARD.md", "arch.json"}
    assert arts["MODEL_CARD.md"].mimetype == "text/markdown"
    card = (run / ARTIFACTS_DIR / arts["MODEL_CARD.md"].artifact_id).read_text()
    assert card == (tmp_path / "b" / "MODEL_CARD.md").read_text() and "trial 2" in card
    arch = json.loads((run / ARTIFACTS_DIR / arts["arch.json"].artifact_id).read_text())
    assert arch == json.loads((tmp_path / "b" / "arch.json").read_text())
    assert len(os.listdir(run / ARTIFACTS_DIR)) == 2
    assert trial_artifacts(open_run(run), 4) == [] and study_artifacts(open_run(run)) == []


def test_an_unusable_artifact_folder_is_one_warning_never_a_failure(tmp_path):
    run = tmp_path / "run"
    make_greedy_run(run)
    (run / ARTIFACTS_DIR).write_text("not a folder")
    warnings: list[str] = []
    files, report = write_run_outputs(run, warn=warnings.append)
    assert (run / "plots" / "frontier.png").is_file() and report is not None and len(files) == 5
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {run / ARTIFACTS_DIR}: could not attach")
    assert "frontier.png, steps.png" in warnings[0] and len(warnings[0].splitlines()) == 1
    assert study_artifacts(open_run(run)) == []
    result = export_trial(run, tmp_path / "out", formats="json", trial=2, warn=warnings.append)
    assert result.model_card.is_file() and len(warnings) == 2 and "to trial 2" in warnings[1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_artifact_folder_is_one_warning(tmp_path):
    run = tmp_path / "run"
    store = make_greedy_run(run)
    (run / ARTIFACTS_DIR).mkdir()
    (run / ARTIFACTS_DIR).chmod(0o500)
    png = tmp_path / "x.png"
    png.write_bytes(b"png")
    warnings: list[str] = []
    try:
        assert attach_to_study(store, run, [png], warn=warnings.append) == {}
    finally:
        (run / ARTIFACTS_DIR).chmod(0o700)
    assert len(warnings) == 1 and "Permission denied" in warnings[0]
    assert study_artifacts(store) == []


def test_the_default_warning_is_one_line_on_stderr(tmp_path, capsys):
    run = tmp_path / "run"
    store = make_greedy_run(run)
    (run / ARTIFACTS_DIR).write_text("")
    png = tmp_path / "x.png"
    png.write_bytes(b"png")
    assert attach_to_study(store, run, [png]) == {}
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 1
