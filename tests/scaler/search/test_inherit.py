"""Inherited training (``training.init: inherit``): candidates start from their trained parent's weights,
grown; every step trains the parent further as a control, and the slopes' mIoU gains are measured
against it; weights travel through the run's Optuna artifact store."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from fake_search import FakeLatency, inherit_space
from optuna.trial import TrialState
from paired_standin import FakePaired, paired_context

import scaler.search.run as run_mod
from models import arch_from_dict, build_model, get_arch
from scaler.cli import main
from scaler.report import summarize_run, trials_frame
from scaler.report.plot_data import frontier_plot_data, steps_plot_data
from scaler.report.render import format_frontier
from scaler.search.inherit import artifact_store, inherited_state
from scaler.search.run import run_search
from scaler.search.store import open_run
from scaler.search.strategies import Decision, GreedyStrategy, SearchContext, StepDecision, TrialRecord

TINY = get_arch("lpsnet_tiny")


def _space(init: str = "inherit", **training: Any):
    return inherit_space(init, **training)


def _ctx(space, kv: dict[str, Any]) -> SearchContext:
    return paired_context(space, kv)


def _finisher(history: list[TrialRecord], ctx: SearchContext):
    """Records proposals in ``history`` as complete trials with ``miou(record)``, measured when they were not."""

    def finish(proposals, miou):
        for p in proposals:
            rec = p if p.latency is not None else p.with_latency(ctx.latency(p.arch))
            n = len(history)
            history.append(
                dataclasses.replace(rec, number=n, state=TrialState.COMPLETE, values=(rec.latency_ms, miou(rec)))
            )

    return finish


def test_the_step_trains_a_control_and_measures_gains_against_it():
    space = _space()
    kv: dict[str, Any] = {}
    ctx = _ctx(space, kv)
    strat = GreedyStrategy(space)
    history: list[TrialRecord] = []
    finish = _finisher(history, ctx)

    first = strat.propose(history, ctx)
    assert first.proposals[0].inherit_from is None  # the start trains from scratch
    finish(first.proposals, lambda r: 0.30)
    step = strat.propose(history, ctx)
    assert step.kind == "propose"
    *candidates, control = step.proposals
    assert all(c.inherit_from == 0 and c.control_of is None and c.step == 1 for c in candidates)
    assert control.arch == TINY and control.control_of == 0 and control.inherit_from == 0
    assert control.latency == history[0].latency and control.kind.value == "control"
    assert strat.propose(history, ctx) == step  # asked again before anything ran: the same proposals
    # The control gains 4 points by training further; a candidate that gains only that is no better.
    gains = {c.arch: g for c, g in zip(candidates, (0.045, 0.06), strict=True)}
    finish(step.proposals, lambda r: 0.34 if r.is_control else 0.30 + gains[r.arch])
    done = strat.propose(history, ctx)
    assert done.kind == "done"
    decision = StepDecision.from_dict(kv["step_1"])
    control_number = len(history) - 1
    assert {n: round(e.miou_gain, 6) for n, e in decision.estimates.items()} == {1: 0.005, 2: 0.02}
    assert decision.actions[0] == (
        f"mIoU gains are measured against the control #{control_number} (the parent trained as far as its "
        "candidates: mIoU 34.00, 30.00 before)"
    )
    # Controls are not candidates of the search: not on the path, not what the next step grows from.
    assert history[control_number].is_control and decision.winner in (1, 2)


def test_scratch_training_proposes_no_control():
    space = _space(init="scratch")
    assert "init" not in space.to_dict()["training"] and _space().to_dict()["training"]["init"] == "inherit"
    ctx = _ctx(space, {})
    history = [
        TrialRecord(TINY, step=0, number=0, state=TrialState.COMPLETE, values=(1.0, 0.3), latency={"median_ms": 1.0})
    ]
    d: Decision = GreedyStrategy(space).propose(history, ctx)
    assert d.kind == "propose" and all(p.inherit_from is None and p.control_of is None for p in d.proposals)


@pytest.mark.slow
def test_a_real_inherited_search_keeps_weights_as_artifacts_and_starts_candidates_from_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired())
    run_dir = tmp_path / "run"
    run_search(_space(), run_dir, progress=False)
    store = open_run(run_dir)
    records = store.records()
    assert all(r.state == TrialState.COMPLETE for r in records), [r.fail_reason for r in records]
    start, *rest = records
    controls = [r for r in rest if r.is_control]
    candidates = [r for r in rest if not r.is_control]
    assert len(controls) == 1 and controls[0].control_of == 0 and len(candidates) == 2
    # Every trained trial kept its weights in the run's artifact store, and each candidate (and the
    # control) says where its start came from.
    assert all(r.weights_artifact and (run_dir / "artifacts" / r.weights_artifact).is_file() for r in records)
    assert start.inherited is None
    for r in rest:
        assert r.inherited == {
            "from_trial": 0,
            "weights_artifact": start.weights_artifact,
            "growth_noise": 0.0 if r.is_control else 0.01,
        }
        assert r.train["config"]["init"] == "inherit"
    # The depth candidate starts computing exactly what the trained parent computes (appended blocks
    # are identities, and no channel is copied, so the growth noise changes nothing).
    deep = next(r for r in candidates if r.arch.depth != TINY.depth)
    state, _ = inherited_state(store, deep, artifact_store(run_dir), seed=deep.number)
    blob = torch.load(run_dir / "artifacts" / start.weights_artifact, weights_only=True)
    parent = build_model(arch_from_dict(blob["arch"])).eval()
    parent.load_state_dict(blob["state_dict"])
    child = build_model(dataclasses.replace(deep.arch, num_classes=parent.arch.num_classes)).eval()
    child.load_state_dict(state)
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = parent(x), child(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    # The search's decision used the control.
    decision = StepDecision.from_dict(store.get("step_1"))
    assert decision.actions[0].startswith(f"mIoU gains are measured against the control #{controls[0].number} ")
    # What the user reads says which kind of mIoU these are; the controls are not on the frontier.
    report = summarize_run(run_dir)
    text = format_frontier(report)
    assert text.splitlines()[2] == (
        "mIoU: proxy, from inherited training (each candidate started from its parent's trained weights); "
        "not comparable with from-scratch numbers"
    )
    assert report.info.setup().endswith(" · mIoU from inherited training")
    assert controls[0].number not in set(report.frontier["number"])
    df = trials_frame(store)
    plotted = [p.number for p in frontier_plot_data(store, df).candidates]
    stepped = [p.number for _, p in steps_plot_data(store, df).candidates]
    assert controls[0].number not in plotted + stepped and start.number in plotted

    # The frontier trained again from scratch with one recipe: recorded, reused, never on the frontier.
    frontier_numbers = sorted(int(n) for n in report.frontier["number"])
    r = CliRunner().invoke(main, ["retrain", str(run_dir), "--frontier", "--iters", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"{run_dir}: retrained from scratch, 3 iterations, seed 0"
    assert [int(line.split()[0]) for line in lines[2:]] == frontier_numbers
    retrains = [t for t in open_run(run_dir).records() if t.is_retrain]
    assert sorted(t.retrain_of for t in retrains) == frontier_numbers
    assert all(t.complete and t.recipe == {"iters": 3, "seed": 0, "init": "scratch"} for t in retrains)
    assert all(t.train["config"]["iters"] == 3 and "init" not in t.train["config"] for t in retrains)
    assert all(t.inherited is None and t.weights_artifact is None for t in retrains)
    assert sorted(int(n) for n in summarize_run(run_dir).frontier["number"]) == frontier_numbers
    again = CliRunner().invoke(main, ["retrain", str(run_dir), "--frontier", "--iters", "3", "--json"])
    data = json.loads(again.output)
    assert again.exit_code == 0 and all(x["reused"] for x in data["retrained"])
    assert len([t for t in open_run(run_dir).records() if t.is_retrain]) == len(retrains)
    bad = CliRunner().invoke(main, ["retrain", str(run_dir), "--trial", "999"])
    assert bad.exit_code != 0 and bad.output == (
        f"error: scaler retrain: trial #999 of {run_dir} is not in the run; choose complete trials\n"
    )
    none = CliRunner().invoke(main, ["retrain", str(run_dir)])
    assert none.output == "error: scaler retrain: choose what to retrain with --frontier or --trial N (repeatable)\n"


def test_a_tie_in_a_step_with_a_control_trains_one_replica_each_and_decides():
    """A seed replica of the control carries ``control_of`` too: it must not become the step's control
    (it did, and each decision asked for a replica of the last replica, without end)."""
    space = dataclasses.replace(_space(), greedy=dataclasses.replace(_space().greedy, tie_seed=1))
    kv: dict[str, Any] = {}
    ctx = _ctx(space, kv)
    strat = GreedyStrategy(space)
    history: list[TrialRecord] = []
    finish = _finisher(history, ctx)

    finish(strat.propose(history, ctx).proposals, lambda r: 0.30)
    step = strat.propose(history, ctx)
    deltas = {c.arch_hash: c.paired.delta_ms for c in GreedyStrategy.plans(kv)[0].candidates}
    # Gains in proportion to the latency gains: equal slopes, whose intervals overlap however often re-timed.
    finish(step.proposals, lambda r: 0.34 if r.is_control else 0.34 + 0.1 * deltas[r.arch_hash])
    replicas = strat.propose(history, ctx)
    assert replicas.kind == "propose" and len(replicas.proposals) == 3
    assert sum(p.control_of is not None for p in replicas.proposals) == 1
    assert all(p.train_seed == 1 and p.seed_of is not None for p in replicas.proposals)
    finish(replicas.proposals, lambda r: 0.33)
    assert not any(t.is_control for t in history[-3:])  # the control's replica is a replica
    done = strat.propose(history, ctx)
    assert done.kind == "done", done  # decided: no replica of a replica
    assert StepDecision.from_dict(kv["step_1"]).winner in (1, 2)
