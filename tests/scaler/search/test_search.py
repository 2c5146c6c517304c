from __future__ import annotations

import json
import os
import re
from pathlib import Path

import fake_search
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from paired_standin import FakePaired

import scaler.search.run as search_mod
import scaler.search.strategies.samplers as strategies_mod
import scaler.search.worker as worker_mod
from scaler.cli import main
from scaler.errors import UserError
from scaler.measure import LatencySettings
from scaler.proxy.train import TrainResult
from scaler.report.outputs import write_run_outputs
from scaler.search.run import run_search
from scaler.search.space import load_space
from scaler.search.store import open_run

SPACE = """\
name: t
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {{width_divisor: 4, max_depth: 4, max_width: 64}}
latency: {{device: cpu, threads: 1, min_samples: 3, max_samples: 10, time_cap_s: 0.3}}
training: {{iters: 4, batch: 2, crop: 64x96, lr: 0.05, seed: 0}}
stopping: {{max_steps: {steps}{extra}}}
"""


@pytest.fixture(autouse=True)
def _latency_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "latency-cache"))


def _space(tmp_path: Path, steps: int = 1, extra: str = "") -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE.format(steps=steps, extra=extra))
    return p


class FakeLatency:
    """Deterministic latency: so decisions in these tests do not depend on the machine's load."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, arch, settings, **kw):
        assert isinstance(settings, LatencySettings)  # the space's settings, passed as they are
        self.calls += 1
        ms = sum(arch.depth) * 0.1 + sum(arch.width) * 0.01 + 4 * sum(r * r for r in arch.resolution)
        return _Result(ms)


class _Result:
    def __init__(self, ms: float) -> None:
        self.ms = ms

    def to_dict(self):
        return {"median_ms": self.ms, "p10_ms": self.ms, "p90_ms": self.ms, "fingerprint": {"device": "fake"}}


@pytest.fixture
def fake_latency(monkeypatch):
    fake = FakeLatency()
    monkeypatch.setattr(search_mod, "measure_latency", fake)
    monkeypatch.setattr(search_mod, "measure_paired", FakePaired())
    return fake


def test_greedy_records_every_candidate_and_its_decision(tmp_path, fake_latency):
    space = load_space(_space(tmp_path, steps=2))
    messages: list[str] = []
    summary = run_search(space, tmp_path / "run", log=messages.append, progress=False)
    store = open_run(tmp_path / "run")
    trials = store.trials()
    assert summary.trials == len(trials) and summary.complete == len(trials)
    assert trials[0].user_attrs["step"] == 0 and trials[0].user_attrs["parent"] is None
    plan = store.get("plan_1")
    step1 = store.get("step_1")
    assert {c["arch_hash"] for c in plan["candidates"]} == {
        t.user_attrs["arch_hash"] for t in trials if t.user_attrs["step"] == 1
    }
    assert step1["parent"] == 0 and step1["winner"] in step1["candidates"]
    assert set(step1["slopes"]) == {str(n) for n in step1["candidates"]}
    best = max((v, int(k)) for k, v in step1["slopes"].items() if v is not None)[1]
    assert step1["winner"] == best
    for t in trials:
        assert t.values[0] == t.user_attrs["latency"]["median_ms"]
        assert t.user_attrs["train"]["status"] == "ok" and "loss_curve" not in t.user_attrs["train"]
        assert t.params["d1"] == t.user_attrs["arch"]["depth"][0]
    assert any(m.startswith("step 1 winner: #") for m in messages)
    assert store.get("status") == "finished"
    assert store.get("stop_reason") in (
        "step limit reached (2 steps)",
        "step 2: no candidate improves mIoU over its parent",
    )


def test_a_failing_candidate_is_recorded_and_the_search_goes_on(tmp_path, fake_latency, monkeypatch):
    real = worker_mod.train_and_evaluate

    def flaky(arch, config, **kw):
        if arch.depth[1] > 1:  # every deeper candidate fails
            return TrainResult(
                status="failed",
                reason="loss became nan at iteration 3/4 (lr 0.05); lower the learning rate",
                arch=arch.to_dict(),
                config=config.to_dict(),
            )
        return real(arch, config, **kw)

    monkeypatch.setattr(worker_mod, "train_and_evaluate", flaky)
    run_search(load_space(_space(tmp_path, steps=1)), tmp_path / "run", progress=False)
    store = open_run(tmp_path / "run")
    failed = [t for t in store.trials() if t.state == TrialState.FAIL]
    assert failed and all("loss became nan" in t.user_attrs["fail_reason"] for t in failed)
    step1 = store.get("step_1")
    assert all(step1["slopes"][str(t.number)] is None for t in failed)
    assert step1["winner"] not in {t.number for t in failed}


def test_latency_budget_drops_slow_candidates_and_stops(tmp_path, fake_latency):
    space = load_space(_space(tmp_path, steps=5, extra=", latency_budget_ms: 3.0"))
    summary = run_search(space, tmp_path / "run", progress=False)
    store = open_run(tmp_path / "run")
    assert all(t.values[0] <= 3.0 for t in store.trials())
    assert "budget" in summary.stop_reason or "step limit" in summary.stop_reason


def test_resume_reuses_everything(tmp_path, fake_latency, monkeypatch):
    space = load_space(_space(tmp_path, steps=1))
    run_search(space, tmp_path / "run", progress=False)
    before = [(t.number, t.values) for t in open_run(tmp_path / "run").trials()]

    def must_not_train(*a, **k):
        raise AssertionError("a finished evaluation was redone")

    monkeypatch.setattr(worker_mod, "train_and_evaluate", must_not_train)
    summary = run_search(space, tmp_path / "run", progress=False)
    assert [(t.number, t.values) for t in open_run(tmp_path / "run").trials()] == before
    assert summary.trials == len(before)


def test_extending_the_step_limit_continues_the_run(tmp_path, fake_latency):
    run_search(load_space(_space(tmp_path, steps=1)), tmp_path / "run", progress=False)
    n1 = len(open_run(tmp_path / "run").trials())
    run_search(load_space(_space(tmp_path, steps=2)), tmp_path / "run", progress=False)
    store = open_run(tmp_path / "run")
    assert len(store.trials()) > n1 and store.get("step_2") is not None


def test_lowering_the_step_limit_of_a_finished_run_says_what_the_run_holds(tmp_path, fake_latency, monkeypatch):
    # Every candidate improves, so the first session runs to its limit of 2 steps.
    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_search.fake_train)
    first = run_search(load_space(_space(tmp_path, steps=2)), tmp_path / "run", progress=False)
    assert first.stop_reason == "step limit reached (2 steps)"
    again = run_search(load_space(_space(tmp_path, steps=1)), tmp_path / "run", progress=False)
    assert again.stop_reason == (
        "step limit reached (1 step); the run already holds 2 steps, decided by an earlier session with a "
        "higher limit, all kept"
    )
    assert again.trials == first.trials  # nothing was trained or dropped
    _, report = write_run_outputs(tmp_path / "run")
    path = pd.read_csv(tmp_path / "run" / "path.csv")
    assert list(path["step"]) == [0, 1, 2] and path["trial"].notna().all()
    assert report.status == f"finished: {again.stop_reason}"


@pytest.mark.parametrize("strategy", ["random", "tpe", "nsga2"])
def test_sampler_baselines_share_the_evaluator(tmp_path, fake_latency, strategy):
    space = load_space(_space(tmp_path, steps=1, extra=", max_trials: 4"))
    summary = run_search(space, tmp_path / strategy, strategy=strategy, seed=3, progress=False)
    store = open_run(tmp_path / strategy)
    trained = [t for t in store.trials() if not t.user_attrs.get("over_budget")]
    assert len(trained) == 4 and summary.stop_reason == "trial limit reached (4)"
    assert all(t.user_attrs["strategy"] == strategy for t in store.trials())
    assert len({t.user_attrs["arch_hash"] for t in store.trials()}) == len(store.trials())
    for t in store.trials():
        assert all(r * 8 == int(r * 8) for r in t.user_attrs["arch"]["resolution"])


def test_sampler_needs_a_trial_budget(tmp_path, fake_latency):
    with pytest.raises(UserError, match=r"needs stopping\.max_trials"):
        run_search(load_space(_space(tmp_path)), tmp_path / "run", strategy="tpe", progress=False)


def test_run_folder_errors_never_damage_a_run(tmp_path, fake_latency):
    space_file = _space(tmp_path, steps=1)
    run_search(load_space(space_file), tmp_path / "run", progress=False)
    journal = (tmp_path / "run" / "study.journal").read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text(space_file.read_text().replace("iters: 4", "iters: 5"))
    with pytest.raises(UserError, match=r"made with another search space \(training.iters: 4 -> 5\)"):
        run_search(load_space(other), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="a run with strategy 'greedy', not 'random'"):
        run_search(load_space(space_file), tmp_path / "run", strategy="random", progress=False)
    assert (tmp_path / "run" / "study.journal").read_bytes() == journal

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty folder that holds no run"):
        run_search(load_space(space_file), tmp_path / "busy", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        run_search(load_space(space_file), tmp_path / "afile", progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, fake_latency):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(UserError, match="cannot write the run folder"):
        run_search(load_space(_space(tmp_path)), ro / "run", progress=False)


def test_unknown_dataset_is_one_clear_error(tmp_path):
    p = _space(tmp_path)
    p.write_text(p.read_text().replace("synthetic:size=64x128,train=8,val=4", "cityscapes:/nonexistent"))
    r = CliRunner().invoke(main, ["search", "--space", str(p), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "/nonexistent" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_search_json_summary(tmp_path, fake_latency):
    r = CliRunner().invoke(main, ["search", "--space", str(_space(tmp_path)), "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["strategy"] == "greedy" and data["complete"] == data["trials"] > 1
    assert (tmp_path / "run" / "trials.csv").exists()


def test_progress_bars_follow_steps_and_candidates(tmp_path, fake_latency, capsys):
    run_search(load_space(_space(tmp_path, steps=2)), tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    trials = open_run(tmp_path / "run").trials()
    n1 = sum(t.user_attrs["step"] == 1 for t in trials)
    n2 = sum(t.user_attrs["step"] == 2 for t in trials)
    assert re.search(r"steps: 100%\|[^\r\n]*\| 2/2 .*best mIoU \d+\.\d at \d+\.\d\d ms", err)
    assert re.search(rf"step 1 candidates: 100%\|[^\r\n]*\| {n1}/{n1} ", err)
    assert re.search(rf"step 2 candidates: 100%\|[^\r\n]*\| {n2}/{n2} ", err)
    # Log lines are written between bar refreshes, never glued onto a bar.
    assert re.search(r"(^|\n)step 1 winner: #\d+", err) is None  # no log function was given


def test_sampler_progress_counts_trained_trials(tmp_path, fake_latency, capsys):
    space = load_space(_space(tmp_path, steps=1, extra=", max_trials: 3"))
    run_search(space, tmp_path / "run", strategy="random", progress=True)
    assert re.search(r"random trials: 100%\|[^\r\n]*\| 3/3 ", capsys.readouterr().err)


def test_busy_cpu_is_reported_before_and_during_the_search(tmp_path, monkeypatch):
    def loaded(arch, settings, **kw):
        class R:
            def to_dict(self):
                return {"median_ms": 1.5, "under_load": True, "others_cpu_share": 0.45, "fingerprint": {}}

        return R()

    monkeypatch.setattr(search_mod, "measure_latency", loaded)
    monkeypatch.setattr(search_mod, "measure_paired", FakePaired(lambda arch: 1.5, under_load=True, others=0.45))
    monkeypatch.setattr(search_mod, "busy_share", lambda window: 0.6)
    messages: list[str] = []
    run_search(load_space(_space(tmp_path, steps=1)), tmp_path / "run", log=messages.append, progress=False)
    assert messages[0] == (
        "warning: other processes are using 60% of the CPUs; each CPU latency measurement will wait up to 10 s "
        "for them (at most 2 times) and flag the result if they go on; stop them for trustworthy latencies"
    )
    assert any(
        m.startswith("warning: the latency of lpsnet:") and "(1.50 ms) was measured while other processes used 45%" in m
        for m in messages
    )
    # Said once, however many paired passes (probes included) were timed under load.
    together = [m for m in messages if "networks were timed together" in m]
    assert len(together) == 1 and re.fullmatch(
        r"warning: \d+ networks were timed together while other processes used the machine \(45% of the CPUs\), "
        r"even after waiting for them; their latencies are likely inflated \(their differences less so: every "
        r"network shared the window; said once, each step's record keeps its share\)",
        together[0],
    )


def test_quiet_machine_gives_no_load_warning(tmp_path, fake_latency, monkeypatch):
    monkeypatch.setattr(search_mod, "busy_share", lambda window: 0.05)
    messages: list[str] = []
    run_search(load_space(_space(tmp_path, steps=1)), tmp_path / "run", log=messages.append, progress=False)
    assert not any(m.startswith("warning:") for m in messages)


def test_sampler_rejects_over_budget_proposals_untrained(tmp_path, fake_latency):
    space = load_space(_space(tmp_path, steps=1, extra=", max_trials: 4, latency_budget_ms: 3.0"))
    summary = run_search(space, tmp_path / "run", strategy="random", seed=1, progress=False)
    trials = open_run(tmp_path / "run").trials()
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    trained = [t for t in trials if not t.user_attrs.get("over_budget")]
    assert len(trained) == 4 and summary.stop_reason == "trial limit reached (4)"
    assert all(t.state == TrialState.COMPLETE and t.values[0] <= 3.0 for t in trained)
    assert over and all(t.state == TrialState.FAIL and t.user_attrs["latency"]["median_ms"] > 3.0 for t in over)
    assert all("not trained" in t.user_attrs["fail_reason"] and "train" not in t.user_attrs for t in over)
    # One latency measurement per architecture: the loop reuses what the strategy measured.
    assert fake_latency.calls == len(trials)


def test_nsga2_evolves_beyond_its_first_generation(tmp_path, fake_latency):
    space = load_space(_space(tmp_path, steps=1, extra=", max_trials: 20, latency_budget_ms: 100.0"))
    run_search(space, tmp_path / "run", strategy="nsga2", seed=0, progress=False)
    generations = [
        t.user_attrs["sampler_system_attrs"].get("NSGAIISampler:generation")
        for t in open_run(tmp_path / "run").trials()
    ]
    # Population 8: generations 0, 1 and 2 over 20 trials (before the shadow study's attributes were
    # kept in the run, every trial was drawn at random in generation 0).
    assert generations[:8] == [0] * 8 and max(generations) == 2


def test_sampler_gives_up_when_nothing_fits_the_budget(tmp_path, fake_latency, monkeypatch):
    monkeypatch.setattr(strategies_mod, "MAX_REJECTED_IN_A_ROW", 6)
    space = load_space(_space(tmp_path, steps=1, extra=", max_trials: 4, latency_budget_ms: 0.5"))
    summary = run_search(space, tmp_path / "run", strategy="tpe", progress=False)
    trials = open_run(tmp_path / "run").trials()
    assert summary.stop_reason == ("6 proposals in a row were over the latency budget of 0.5 ms or already evaluated")
    assert len(trials) == 6 and all(t.user_attrs["over_budget"] for t in trials)


def test_sampler_view_of_an_architecture_round_trips():
    from models import get_arch
    from scaler.search.expand import Constraints
    from scaler.search.store import arch_from_params
    from scaler.search.strategies.samplers import sampler_params, sampler_to_params

    c = Constraints(width_divisor=4, max_depth=12, max_width=192)
    arch = get_arch("lpsnet_tiny")
    p = sampler_params(arch, c)
    assert [p[f"k{i}"] for i in range(1, 6)] == [1, 2, 4, 8, 8]
    assert arch_from_params(sampler_to_params(p, c), arch) == arch
