"""Successive halving within a greedy step (``greedy.halving``): candidates train rung by rung from
checkpoints, the better half by slope goes on, the rest are PRUNED with their rung mIoUs as Optuna
intermediate values; verdicts are recorded first and replayed on resume."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fake_search import FakeLatency
from optuna.trial import TrialState
from paired_standin import FakePaired, paired_context

import scaler.search.run as run_mod
from models import get_arch
from scaler.errors import UserError
from scaler.proxy.train import train_and_evaluate
from scaler.search.run import run_search
from scaler.search.space import space_from_dict
from scaler.search.store import RunStore, distributions, open_run, open_storage
from scaler.search.strategies import GreedyStrategy, StepDecision, TrialRecord
from scaler.search.strategies.halving import RungVerdict, rung_verdicts

TINY = get_arch("lpsnet_tiny")


def _space(init: str = "scratch", iters: int = 8, inherit_iters: int | None = None, **greedy: Any):
    return space_from_dict(
        {
            "name": "halving",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic:size=64x128,train=8,val=4",
            "operators": ["depth_4-5", "width_4-5", "depth_3-5", "width_3-5"],
            "constraints": {"max_depth": 8, "max_width": 256, "width_divisor": 4},
            "latency": {"device": "cpu", "threads": 1},
            "training": {
                "iters": iters,
                "batch": 2,
                "crop": "64x128",
                "init": init,
                **({} if inherit_iters is None else {"inherit_iters": inherit_iters}),
            },
            "stopping": {"max_steps": 1},
            "greedy": {"max_steplen": 2, "halving": True, **greedy},
        }
    )


def test_halving_options_are_checked_and_stored_only_when_set():
    assert _space().greedy.rung_iters(8) == (2, 4, 8)
    assert _space(halving_rungs=4).greedy.rung_iters(150) == (18, 37, 75, 150)
    plain = dataclasses.replace(_space().greedy, halving=False)
    assert "halving" not in plain.to_dict() and _space().to_dict()["greedy"]["halving"] is True
    with pytest.raises(UserError, match="halving_rungs must be 2 to 8, got 1"):
        _space(halving_rungs=1)
    with pytest.raises(UserError, match=r"greedy.halving_rungs.*cut training.iters \(4\) below one iteration"):
        _space(iters=4, halving_rungs=4)
    with pytest.raises(UserError, match=r"greedy\.halving: must be true or false, got 'yes'"):
        _space(halving="yes")


@pytest.mark.slow
@pytest.mark.parametrize(("init", "iters", "inherit_iters"), [("scratch", 8, None), ("inherit", 16, 8)])
def test_a_real_search_halves_each_step_and_keeps_every_rung(tmp_path, monkeypatch, init, iters, inherit_iters):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired())
    run_dir = tmp_path / "run"
    space = _space(init, iters, inherit_iters)
    run_search(space, run_dir, progress=False)
    store = open_run(run_dir)
    records = store.records()
    trials = {t.number: t for t in store.trials()}
    start = records[0]
    # The start (and the control) are evaluated at every rung on their way: the baselines of the rungs.
    assert start.complete and start.train["iters_done"] == iters  # the start trains the from-scratch schedule
    if init == "scratch":  # the baseline of step 1's rungs; with inherited weights the control is
        assert sorted(trials[0].intermediate_values) == [2, 4, iters]
        assert start.eval_at == (2, 4) and [r["iters"] for r in start.rungs] == [2, 4, iters]
    else:
        assert start.eval_at == () and not trials[0].intermediate_values
    candidates = [r for r in records if r.step == 1 and not r.is_control]
    assert len(candidates) == 4
    pruned = [r for r in candidates if r.state == TrialState.PRUNED]
    done = [r for r in candidates if r.complete]
    # 4 at 2 iterations, the best 2 on to 4, the best 1 on to the whole schedule.
    assert len(pruned) == 3 and len(done) == 1
    assert sorted(max(trials[r.number].intermediate_values) for r in pruned) == [2, 2, 4]
    assert sorted(trials[done[0].number].intermediate_values) == [2, 4, 8]
    assert all(r.pruned.startswith("successive halving, step 1: slope ") for r in pruned)
    assert not any(r.paused for r in records)
    verdicts = [RungVerdict.from_dict(store.get(f"rung_1_{k}")) for k in (0, 1)]
    assert [v.iters for v in verdicts] == [2, 4] and [len(v.kept) for v in verdicts] == [2, 1]
    assert verdicts[1].next_iters is None and verdicts[0].next_iters == 4
    assert set(verdicts[1].kept) == {done[0].number} and set(verdicts[1].ranked[0][:1]) == {done[0].number}
    control = [r for r in records if r.is_control]
    base = control[0] if init == "inherit" else start
    if control:  # the parent trained as far as its candidates: their schedule, evaluated at their rungs
        assert control[0].train["iters_done"] == 8 and [r["iters"] for r in control[0].rungs] == [2, 4, 8]
    assert len(control) == (1 if init == "inherit" else 0)
    # Each rung is judged against the baseline at the same iteration, by slope over the paired latency gain.
    plan = GreedyStrategy.plans(store.study.user_attrs)[0]
    by_number = {r.number: r for r in records}
    for v in verdicts:
        assert v.base == base.number and v.base_miou == base.miou_by_iters[v.iters] and not v.base_note
        for n, miou, slope in v.ranked:
            c = next(c for c in plan.candidates if c.arch_hash == by_number[n].arch_hash)
            assert miou == trials[n].intermediate_values[v.iters]
            assert slope == pytest.approx((miou - v.base_miou) / max(c.paired.delta_ms, 0.05))
        slopes = [s for _, _, s in v.ranked]
        assert slopes == sorted(slopes, reverse=True)
    # The survivor, trained in three rungs from checkpoints, scores what one straight training scores.
    survivor = done[0]
    config = dataclasses.replace(space.training)
    if init == "scratch":
        straight = train_and_evaluate(survivor.arch, config, progress=False)
        assert survivor.miou == straight.miou
    assert survivor.train["iters_done"] == 8
    assert survivor.train["train_seconds"] == pytest.approx(sum(r["train_seconds"] for r in survivor.rungs))
    # The step decided among the candidates that finished, and says what halving did.
    decision = StepDecision.from_dict(store.get("step_1"))
    assert decision.winner in (survivor.number, None)
    halving = [a for a in decision.actions if a.startswith("successive halving at ")]
    assert [a.split(":")[0] for a in halving] == [f"successive halving at {k} iterations" for k in (2, 4)]
    # Training spent: 4 x 2 + 2 x 2 + 1 x 4 = 16 candidate iterations instead of 4 x 8 = 32.
    spent = sum(int(r.train["iters_done"]) if r.complete else max(r.miou_by_iters) for r in candidates)
    assert spent == 2 + 2 + 4 + 8


def test_a_verdict_is_recorded_once_and_replayed_when_the_search_resumes_before_applying_it():
    space = _space()
    kv: dict[str, Any] = {}
    puts: list[str] = []

    def put(key: str, value: Any) -> None:
        puts.append(key)
        kv[key] = value

    ctx = paired_context(space, kv, put)
    fake = FakePaired()
    strat = GreedyStrategy(space)
    start = TrialRecord(
        TINY,
        step=0,
        number=0,
        state=TrialState.COMPLETE,
        values=(fake.ms(TINY), 0.30),
        latency={"median_ms": fake.ms(TINY)},
        rungs=({"iters": 2, "miou": 0.10}, {"iters": 4, "miou": 0.20}),
        train={"iters_done": 8},
    )
    proposed = strat.propose([start], ctx)
    assert proposed.kind == "propose" and all(p.train_until == 2 for p in proposed.proposals)
    gains = [0.02, 0.05, -0.01, 0.04]
    history = [start] + [
        dataclasses.replace(
            p, number=i + 1, state=TrialState.WAITING, paused=True, rungs=({"iters": 2, "miou": 0.10 + g},)
        )
        for i, (p, g) in enumerate(zip(proposed.proposals, gains, strict=True))
    ]
    first = strat.propose(history, ctx)
    assert first.kind == "advance" and puts.count("rung_1_0") == 1
    assert len(first.resume) == 2 and len(first.prune) == 2 and set(first.resume.values()) == {4}
    # Killed before the verdict was applied: the resumed search applies the recorded one, judging nothing again.
    kv["rung_1_0"]["ranked"] = [[n, m, s] for n, m, s in kv["rung_1_0"]["ranked"]]
    again = strat.propose(history, ctx)
    assert again == first and puts.count("rung_1_0") == 1
    # Half applied (one stopped already): the rest is applied, the same way.
    one = next(iter(first.prune))
    history = [dataclasses.replace(t, paused=False, state=TrialState.PRUNED) if t.number == one else t for t in history]
    rest = strat.propose(history, ctx)
    assert rest.resume == first.resume and set(rest.prune) == set(first.prune) - {one}
    assert [v.rung for v in rung_verdicts(1, ctx)] == [0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["worker died", "checkpoint lost"])
def test_a_rung_survives_a_dead_worker_and_a_lost_checkpoint(tmp_path, monkeypatch, fault):
    """A worker that dies mid-rung leaves a copy that goes on from the last checkpoint (rungs and intermediate
    values kept); a checkpoint that cannot be read is trained again from the start, said so. Either way the
    survivor ends where one straight training ends."""
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired())
    real = run_mod.evaluate_claim
    hit: list[int] = []
    run_dir = tmp_path / "run"

    def evaluate(store, claim, training, **kw):
        record = claim.record
        if record.checkpoint_artifact is not None and not hit:
            hit.append(claim.number)
            if fault == "worker died":
                return False  # claimed and abandoned: RUNNING, owned by this (idle) process, as after a kill
            (run_dir / "artifacts" / record.checkpoint_artifact).unlink()
        return real(store, claim, training, **kw)

    monkeypatch.setattr(run_mod, "evaluate_claim", evaluate)
    space = _space()
    run_search(space, run_dir, progress=False)
    store = open_run(run_dir)
    records = {r.number: r for r in store.records()}
    trials = {t.number: t for t in store.trials()}
    (first,) = hit
    hurt = records[first]
    if fault == "worker died":
        assert hurt.state == TrialState.FAIL and hurt.interrupted == "worker died"
        (copy,) = [r for r in records.values() if r.retry_of == first]
        # The copy went on from the rung the dead worker started from: its first rung is the original's.
        assert copy.rungs[0] == hurt.rungs[0] and trials[copy.number].intermediate_values[2] == hurt.rungs[0]["miou"]
        assert copy.checkpoint_lost is None and copy.state in (TrialState.COMPLETE, TrialState.PRUNED)
        survivor_or_copy = copy
    else:
        assert hurt.checkpoint_lost.startswith("its checkpoint ") and " cannot be read (" in hurt.checkpoint_lost
        assert hurt.state in (TrialState.COMPLETE, TrialState.PRUNED)
        survivor_or_copy = hurt
    # Trained again from the start or from the checkpoint, each rung's mIoU is what it was to be.
    assert [r["iters"] for r in survivor_or_copy.rungs][:2] == [2, 4]
    (survivor,) = [r for r in records.values() if r.step == 1 and r.complete]
    straight = train_and_evaluate(survivor.arch, space.training, progress=False, eval_at=(2, 4))
    assert survivor.miou == straight.miou
    assert [r["miou"] for r in survivor.rungs] == [r["miou"] for r in straight.rungs]
    assert StepDecision.from_dict(store.get("step_1")).winner in (survivor.number, None)


def test_inherited_candidates_train_their_own_shorter_schedule_and_halving_cuts_it():
    space = _space("inherit", iters=16, inherit_iters=8)
    assert space.training.candidate_iters == 8 and space.to_dict()["training"]["inherit_iters"] == 8
    assert "inherit_iters" not in _space("inherit").to_dict()["training"]
    inherited = space.training.inherited()
    assert inherited.iters == 8 and inherited.inherit_iters is None and inherited.init == "inherit"
    assert _space("scratch", iters=16, inherit_iters=8).training.candidate_iters == 16  # scratch ignores it
    with pytest.raises(UserError, match=r"training.inherit_iters \(2\) below one iteration per rung"):
        _space("inherit", iters=16, inherit_iters=2)
    with pytest.raises(UserError, match="inherit_iters must be >= 1, got 0"):
        _space("inherit", inherit_iters=0)
    kv: dict[str, Any] = {}
    ctx = paired_context(space, kv)
    fake = FakePaired()
    strat = GreedyStrategy(space)
    first = strat.propose([], ctx).proposals[0]
    assert first.eval_at == ()  # the control is the rungs' baseline, not the start
    start = dataclasses.replace(
        first, number=0, state=TrialState.COMPLETE, values=(fake.ms(TINY), 0.3), latency={"median_ms": fake.ms(TINY)}
    )
    step = strat.propose([start], ctx).proposals
    assert {p.train_until for p in step if not p.is_control} == {2}
    (control,) = [p for p in step if p.is_control]
    assert control.eval_at == (2, 4) and control.train_until is None


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_store_pauses_resumes_and_prunes_a_trial_in_a_journal_and_a_database(tmp_path, kind):
    """The same transitions in the run's journal and in an RDB storage (what PostgreSQL runs use)."""
    url = None if kind == "journal" else f"sqlite:///{tmp_path / 'db.sqlite3'}"
    store = RunStore(open_storage(url, tmp_path), "s", 19)
    dists = distributions(_space().constraints)
    arch = dataclasses.replace(TINY, num_classes=19)
    for _ in range(2):
        store.add(TrialRecord(arch, step=1, train_until=2, latency={"median_ms": 1.0}), dists)
    first = store.claim()
    assert first is not None and first.record.train_until == 2
    store.report(first, [{"iters": 2, "miou": 0.25}])
    assert store.pause(first, {"rungs": [{"iters": 2, "miou": 0.25}]})
    second = store.claim()  # the paused one is skipped
    assert second is not None and second.number != first.number and store.claim() is None
    record = next(r for r in store.records() if r.number == first.number)
    assert record.paused and not record.pending and record.state == TrialState.WAITING
    assert store.resume(first.number, 4) and not store.resume(first.number, 4)  # a replay does nothing
    again = store.claim()
    assert again is not None and again.number == first.number and again.record.train_until == 4
    assert store.pause(again, {}) and store.prune(first.number, "halving")
    assert not store.prune(first.number, "halving")
    trial = next(t for t in store.trials() if t.number == first.number)
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {2: 0.25}
    pruned = TrialRecord.from_trial(trial)
    assert pruned.pruned == "halving" and not pruned.paused and pruned.miou_by_iters == {2: 0.25}
    # A copy queued again keeps the rungs reached as its intermediate values.
    copy = store.add(dataclasses.replace(pruned, number=None, state=None).requeued(first.number), dists)
    assert next(t for t in store.trials() if t.number == copy).intermediate_values == {2: 0.25}
