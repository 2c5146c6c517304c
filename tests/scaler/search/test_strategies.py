"""Every registered strategy: the registry, and the contract that a strategy is a pure function of
the run's history (a resumed search decides as the first one did)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from fake_search import FakeLatency, fake_train
from optuna.trial import TrialState
from paired_standin import FakePaired

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from scaler.cli.search import StrategyChoice
from scaler.errors import UserError
from scaler.search.record import TrialRecord
from scaler.search.run import run_search
from scaler.search.space import load_space
from scaler.search.store import open_run
from scaler.search.strategies import (
    Decision,
    GreedyStrategy,
    SearchContext,
    Strategy,
    list_strategies,
    make_strategy,
    register_strategy,
    strategy_class,
)
from scaler.search.strategies import base as strategies_base

SPACE = """\
name: contract
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {width_divisor: 4, max_depth: 4, max_width: 64}
latency: {device: cpu, threads: 1}
training: {iters: 2, batch: 2, crop: 64x96, seed: 0}
stopping: {max_steps: 2, max_trials: 24, latency_budget_ms: 6.0}
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "latency-cache"))


def test_registry_names_every_strategy_once_the_method_first():
    assert list_strategies() == ["greedy", "random", "tpe", "nsga2"]
    assert all(strategy_class(n).name == n for n in list_strategies())
    assert StrategyChoice().choices == tuple(list_strategies())


def test_unknown_strategy_names_the_known_ones(tmp_path):
    space = load_space(_space_file(tmp_path))
    with pytest.raises(UserError, match=r"unknown strategy 'annealing'; choose one of greedy, random, tpe, nsga2"):
        make_strategy("annealing", space)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="'greedy' is registered already"):

        @register_strategy("greedy")
        class Again(GreedyStrategy):
            pass


def test_a_new_strategy_is_one_registered_class(tmp_path, monkeypatch):
    """A strategy registered anywhere is searchable by name and offered by the CLI."""
    monkeypatch.setattr(strategies_base, "_REGISTRY", dict(strategies_base._REGISTRY))

    @register_strategy("start_only")
    class StartOnly(Strategy):
        def propose(self, history, ctx):
            if not history:
                return Decision.propose([TrialRecord(self.space.start, strategy=self.name, step=None)])
            return Decision.wait() if any(t.pending for t in history) else Decision.done("one is enough")

    assert "start_only" in StrategyChoice().choices
    _fakes(monkeypatch)
    summary = run_search(load_space(_space_file(tmp_path)), tmp_path / "run", strategy="start_only", progress=False)
    assert summary.study_name == "contract-start_only" and summary.stop_reason == "one is enough"
    assert summary.trials == summary.complete == 1


def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "contract_space.yaml"
    path.write_text(SPACE)
    return path


def _fakes(monkeypatch) -> FakeLatency:
    latency = FakeLatency()
    monkeypatch.setattr(run_mod, "measure_latency", latency)
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired(noise_ms=0.004, drift_ms=0.02))
    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_train)
    return latency


@pytest.mark.parametrize("name", list_strategies())
def test_a_replayed_history_gets_the_same_decisions(name, tmp_path, monkeypatch):
    """Run a seeded search, then hand each history the strategy saw to a fresh instance, call by
    call: it must decide exactly as the first one did, whether the run's records are those written
    so far or all those the run left."""
    _fakes(monkeypatch)
    calls: list[tuple[list, SearchContext, Decision]] = []
    real_make = run_mod.make_strategy

    def recording(strategy_name, space, seed=0, batch=1):
        strat = real_make(strategy_name, space, seed=seed, batch=batch)
        inner = strat.propose

        def propose(history, ctx):
            decision = inner(history, ctx)
            calls.append((list(history), ctx, decision))
            return decision

        strat.propose = propose  # type: ignore[method-assign]
        return strat

    monkeypatch.setattr(run_mod, "make_strategy", recording)
    summary = run_search(load_space(_space_file(tmp_path)), tmp_path / "run", strategy=name, seed=5, progress=False)
    store = open_run(tmp_path / "run")
    trials = store.records()

    # The search ran: it stopped for a reason, trained something, and never evaluated one network twice.
    assert summary.stop_reason and calls[-1][2].kind == "done" and calls[-1][2].reason == summary.stop_reason
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3
    assert len({t.arch_hash for t in trials}) == len(trials)
    assert all(t.strategy == name for t in trials)
    assert sum(d.kind == "propose" for _, _, d in calls) >= 2

    stored = copy.deepcopy(dict(store.study.user_attrs))
    for records in ({}, stored):  # the records as the run went, and those it left
        kv = dict(records)
        for i, (history, ctx, decision) in enumerate(calls):
            # A fresh instance per call: a search resumed at that point.
            fresh = make_strategy(name, ctx.space, seed=5, batch=1)
            replay = SearchContext(
                space=ctx.space, latency=ctx.latency, get=kv.get, put=kv.__setitem__, paired=ctx.paired
            )
            assert fresh.propose(history, replay) == decision, f"call {i} decided otherwise"
