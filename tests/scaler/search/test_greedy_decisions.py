"""The greedy step's decisions with their uncertainty: the paired pass gives the numbers, overlapping
contenders get more rounds (else a recorded 'not sure'), a candidate timed faster than its parent is
re-measured and flagged, an outlier target is re-measured before anything is queued, and a resumed
search reuses every recorded decision. Seeded fakes stand in for timing and training."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from optuna.trial import TrialState
from paired_standin import FakePaired, StandInPaired, order_statistic_interval

from models import LPSNetArch, get_arch
from scaler.search.space import SpaceError, space_from_dict
from scaler.search.strategies import (
    Decision,
    GreedyStrategy,
    SearchContext,
    SlopeEstimate,
    StepDecision,
    StepPlan,
    TrialRecord,
)

TINY = get_arch("lpsnet_tiny")
DEPTH = dataclasses.replace(TINY, depth=(1, 1, 1, 2, 2))  # depth_4-5 x1
WIDTH = dataclasses.replace(TINY, width=(4, 8, 16, 64, 64))  # width_4-5 x1


def model_ms(arch: LPSNetArch) -> float:
    """One step of either operator costs 0.5 ms, so both candidates of step 1 are one step (1.5 ms)."""
    return 1.0 + 0.25 * (arch.depth[3] + arch.depth[4] - 2) + (arch.width[3] + arch.width[4] - 64) / 128


def miou_model(depth_gain: float, width_gain: float) -> Callable[[LPSNetArch], float]:
    """mIoU 0.30 for the start; each step of depth or width adds its gain."""
    return lambda a: 0.30 + depth_gain * (a.depth[3] + a.depth[4] - 2) / 2 + width_gain * (a.width[3] - 32) / 32


def make_space(budget: float | None = None, training_seed: int = 0, **greedy: Any):
    """The step under test; its operators grow by quick single measurements unless ``probe_rounds`` is given."""
    return space_from_dict(
        {
            "name": "decide",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic",
            "operators": ["depth_4-5", "width_4-5"],
            "constraints": {"max_depth": 8, "max_width": 512},
            "training": {"seed": training_seed},
            "stopping": {"max_steps": 1, "latency_budget_ms": budget},
            "greedy": {"max_steplen": 8, "probe_rounds": 0, **greedy},
        }
    )


class Quick:
    """The single (cached) measurement: ``model_ms``, with optional first readings that are wrong."""

    def __init__(self, first: dict[LPSNetArch, float] | None = None) -> None:
        self.first = dict(first or {})
        self.refreshed: list[LPSNetArch] = []

    def __call__(self, arch: LPSNetArch, *, refresh: bool = False) -> dict[str, Any]:
        if refresh:
            self.refreshed.append(arch)
            self.first.pop(arch, None)
        return {"median_ms": self.first.get(arch, model_ms(arch))}


def paired_ctx(space, fake: Callable[..., StandInPaired] | None, quick: Quick | None = None, kv=None) -> SearchContext:
    kv = {} if kv is None else kv
    paired = None
    if fake is not None:

        def paired(archs, rounds):
            return fake(archs, rounds=rounds, seed=len(archs) * 1000 + rounds)

    return SearchContext(space=space, latency=quick or Quick(), get=kv.get, put=kv.__setitem__, paired=paired)


def drive(
    space,
    ctx: SearchContext,
    miou: Callable[[LPSNetArch], float],
    seeded: Callable[[LPSNetArch, int], float] | None = None,
    history: list[TrialRecord] | None = None,
) -> tuple[list[TrialRecord], Decision]:
    """The search loop, in miniature: queue what the strategy proposes, 'train' it, until it stops.

    ``seeded`` gives the mIoU of a trial trained with another seed (a seed replica); ``history`` goes on
    from a run's trials (a resume).
    """
    strat = GreedyStrategy(space)
    history = [] if history is None else list(history)
    for _ in range(20):
        decision = strat.propose(history, ctx)
        if decision.kind == "done":
            return history, decision
        assert decision.kind == "propose"
        for p in decision.proposals:
            rec = p if p.latency is not None else p.with_latency(ctx.latency(p.arch))
            number = len(history)
            value = miou(rec.arch) if rec.train_seed is None else seeded(rec.arch, rec.train_seed)  # type: ignore[misc]
            history.append(
                dataclasses.replace(rec, number=number, state=TrialState.COMPLETE, values=(rec.latency_ms, value))
            )
    raise AssertionError("the search did not stop")


def plan_and_step(ctx: SearchContext) -> tuple[StepPlan, StepDecision]:
    return StepPlan.from_dict(ctx.get("plan_1")), StepDecision.from_dict(ctx.get("step_1"))


def test_the_paired_pass_gives_the_trials_their_latencies_and_the_budget_its_numbers():
    # The paired pass times every network 10% slower than the quick loop did: its numbers are the ones used.
    space = make_space(budget=1.6)
    fake = FakePaired(lambda a: 1.1 * model_ms(a), noise_ms=0.01, drift_ms=0.05)
    ctx = paired_ctx(space, fake)
    history, done = drive(space, ctx, miou_model(0.02, 0.01))
    plan = StepPlan.from_dict(ctx.get("plan_1"))
    # Both candidates are 1.5 ms quick (within the budget) but 1.65 ms paired: over it, not trained.
    assert [r.arch for r in history] == [TINY] and plan.candidates == () and plan.dropped_over_budget == 2
    assert plan.reason == "every candidate is over the latency budget of 1.6 ms" and done.reason == plan.reason
    assert fake.calls == [((TINY, DEPTH, WIDTH), 15)]

    space = make_space(budget=1.7)
    fake = FakePaired(lambda a: 1.1 * model_ms(a), noise_ms=0.01, drift_ms=0.05)
    ctx = paired_ctx(space, fake)
    history, done = drive(space, ctx, miou_model(0.02, 0.01))
    plan, step = plan_and_step(ctx)
    timing = fake(*fake.calls[0][:1], rounds=15, seed=3 * 1000 + 15)
    assert plan.paired and plan.rounds == 15 and plan.confidence == 0.9 and plan.others_cpu_share == 0.02
    assert plan.parent_ms == pytest.approx(timing.median_ms(0))
    for i, c in enumerate(plan.candidates, 1):
        trial = next(t for t in history if t.arch_hash == c.arch_hash)
        # The trial carries the paired record (and so its value), the plan the same numbers.
        assert trial.latency == timing.latency_record(i) and trial.latency["paired"]["index"] == i
        assert trial.latency_ms == c.latency_ms == c.paired.median_ms == pytest.approx(1.65, abs=0.06)
        assert c.quick_ms == 1.5
        assert (c.paired.delta_ms, c.paired.delta_low, c.paired.delta_high) == timing.delta_ms(i, 0, 0.9)
        assert c.paired.delta_low < 0.55 < c.paired.delta_high and c.paired.rounds == 15
        assert c.paired.rel_spread == timing.rel_spread(i) and not c.paired.faster_than_parent
    # The decision divides by the paired latency gain: depth's 0.02 over ~0.55 ms beats width's 0.01.
    assert step.winner == 1 and step.sure is True and step.confidence == 0.9 and step.actions == ()
    est = step.estimates[1]
    assert est.miou_gain == pytest.approx(0.02) and est.slope == pytest.approx(0.02 / est.delta_ms)
    assert est.slope_low == pytest.approx(0.02 / est.delta_high) and est.slope_high == pytest.approx(
        0.02 / est.delta_low
    )
    assert step.slopes == {1: est.slope, 2: step.estimates[2].slope}
    assert step.runner_up == 2 and step.certainty() == "sure at 90%: apart from the runner-up #2"
    assert step.reason == (
        f"best mIoU gain per ms: {100 * est.slope:.4g} points/ms "
        f"({100 * est.slope_low:.4g} to {100 * est.slope_high:.4g} points/ms)"
    )


def test_the_slope_interval_keeps_the_noise_floor_at_both_ends():
    e = SlopeEstimate.of(0.01, 0.02, -0.03, 0.2, floor_ms=0.05, rounds=15)
    assert e.slope == pytest.approx(0.2) and e.slope_high == pytest.approx(0.2) and e.slope_low == pytest.approx(0.05)
    loss = SlopeEstimate.of(-0.01, 0.1, 0.08, 0.5, floor_ms=0.05, rounds=15)
    assert (loss.slope_low, loss.slope_high) == pytest.approx((-0.125, -0.02))
    unbounded = SlopeEstimate.of(0.01, 0.1, -math.inf, math.inf, floor_ms=0.05, rounds=3)
    assert (unbounded.slope_low, unbounded.slope_high) == (0.0, pytest.approx(0.2))
    assert SlopeEstimate.from_dict(unbounded.to_dict()) == unbounded  # stored as null, read back unbounded
    assert e.overlap(unbounded) == pytest.approx((0.05, 0.2)) and loss.overlap(e) is None


def test_the_stand_in_interval_is_the_order_statistic_one():
    # n=15: P(B<=3) = 0.018 and P(B<=4) = 0.059 for B ~ Bin(15, 1/2): [x_(4), x_(12)] covers 96.5% >= 90%.
    assert order_statistic_interval(range(1, 16), 0.9) == (4, 12)
    assert order_statistic_interval([1, 2, 3, 4], 0.9) == (-math.inf, math.inf)


def test_overlapping_contenders_get_more_rounds_until_they_part():
    # Slopes 5% apart (depth's the better): 15 noisy rounds rank them the wrong way round, with
    # overlapping intervals; 30 rounds rank them right, and apart.
    space = make_space()
    fake = FakePaired(model_ms, noise_ms=0.12, drift_ms=0.3)
    ctx = paired_ctx(space, fake)
    _, done = drive(space, ctx, miou_model(0.0100, 0.0095))
    plan, step = plan_and_step(ctx)
    assert fake.calls == [((TINY, DEPTH, WIDTH), 15), ((TINY, WIDTH, DEPTH), 30)]
    first = {
        n: SlopeEstimate.of(gain, c.paired.delta_ms, c.paired.delta_low, c.paired.delta_high, floor_ms=0.05, rounds=15)
        for n, gain, c in zip((1, 2), (0.01, 0.0095), plan.candidates, strict=True)
    }
    assert first[2].slope > first[1].slope and first[2].overlap(first[1]) is not None  # what 15 rounds said
    assert step.winner == 1 and step.sure is True and step.overlap is None
    assert step.estimates[1].overlap(step.estimates[2]) is None
    assert all(e.rounds == 30 for e in step.estimates.values())
    assert plan.candidates[0].paired.rounds == 15  # the plan keeps the first pass, the decision the last
    assert step.actions == (
        f"#2 and #1: slope intervals overlapped ({100 * first[1].slope_low:.4g} to {100 * first[2].slope_high:.4g} "
        "points/ms); timed both with the parent again in 30 paired rounds",
    )
    assert step.certainty() == "sure at 90%: apart from the runner-up #2"
    assert done.reason == "step limit reached (1 step)"


def test_contenders_that_stay_overlapping_are_decided_by_the_point_estimate_and_recorded_not_sure():
    # The same mIoU gain for the same latency: no number of rounds can part them.
    space = make_space()
    fake = FakePaired(model_ms, noise_ms=0.05, drift_ms=0.2)
    ctx = paired_ctx(space, fake)
    drive(space, ctx, miou_model(0.01, 0.01))
    _, step = plan_and_step(ctx)
    assert [r for _, r in fake.calls] == [15, 30, 60]
    best = max(step.estimates, key=lambda n: (step.estimates[n].slope, -n))
    assert step.winner == best and step.sure is False
    low, high = step.overlap
    other = step.estimates[3 - best]
    assert (low, high) == (
        max(step.estimates[best].slope_low, other.slope_low),
        min(step.estimates[best].slope_high, other.slope_high),
    )
    assert step.runner_up == 3 - best
    assert step.certainty() == (
        f"not sure: its 90% interval overlaps the runner-up #{3 - best}'s over {100 * low:.4g} to "
        f"{100 * high:.4g} points/ms after 60 paired rounds; the point estimate decided"
    )
    assert len(step.actions) == 2 and "60 paired rounds" in step.actions[1]
    # The record keeps it all, and reads back as written.
    assert StepDecision.from_dict(ctx.get("step_1")) == step and step.to_dict() == ctx.get("step_1")


# The second seed is greedy.tie_seed, unless that is the run's own training seed: a second training
# with it would repeat the first exactly (it once did, in the inherit benchmark's seed 1).
@pytest.mark.parametrize(("training_seed", "seed"), [(0, 1), (1, 2)])
def test_a_tie_seed_trains_the_contenders_and_the_parent_again_and_their_mean_mious_decide(training_seed, seed):
    # The contenders of the test above: no number of rounds parts them. Without a tie seed the point
    # estimate picks `best`; with one, the other contender gains more on the second seed and wins.
    fake = FakePaired(model_ms, noise_ms=0.05, drift_ms=0.2)
    ctx = paired_ctx(make_space(), fake)
    drive(make_space(), ctx, miou_model(0.01, 0.01))
    best = plan_and_step(ctx)[1].winner
    favoured = 3 - best

    space = make_space(training_seed=training_seed, tie_seed=1)
    assert space.to_dict()["greedy"]["tie_seed"] == 1 and "tie_seed" not in make_space().to_dict()["greedy"]
    assert space.tie_seed == seed
    fake = FakePaired(model_ms, noise_ms=0.05, drift_ms=0.2)
    kv: dict[str, Any] = {}
    ctx = paired_ctx(space, fake, kv=kv)
    miou = miou_model(0.01, 0.01)
    archs: dict[int, LPSNetArch] = {}

    def seeded(arch: LPSNetArch, trained_with: int) -> float:
        assert trained_with == seed
        shift = {favoured: 0.006, best: -0.006}
        return miou(arch) + next((v for n, v in shift.items() if archs.get(n) == arch), 0.0)

    strat = GreedyStrategy(space)
    history: list[TrialRecord] = []
    # Drive by hand until the replicas are asked for, to see them.
    for _ in range(5):
        decision = strat.propose(history, ctx)
        assert decision.kind == "propose"
        if any(p.train_seed is not None for p in decision.proposals):
            break
        for p in decision.proposals:
            rec = p if p.latency is not None else p.with_latency(ctx.latency(p.arch))
            n = len(history)
            archs[n] = rec.arch
            history.append(
                dataclasses.replace(rec, number=n, state=TrialState.COMPLETE, values=(rec.latency_ms, miou(rec.arch)))
            )
    replicas = decision.proposals
    assert [(r.seed_of, r.train_seed, r.arch) for r in replicas] == [
        (0, seed, archs[0]),
        (1, seed, archs[1]),
        (2, seed, archs[2]),
    ]
    assert all(r.latency == history[r.seed_of].latency and r.kind.value == "seed" for r in replicas)
    assert ctx.get("step_1") is None and ctx.get("tie_1")["contenders"] == [best, favoured]
    assert [r for _, r in fake.calls][-3:] == [15, 30, 60]
    calls = len(fake.calls)

    history, done = drive(space, ctx, miou, seeded, history=history)
    step = StepDecision.from_dict(ctx.get("step_1"))
    assert len(fake.calls) == calls  # the contenders were not timed again
    assert step.winner == favoured and step.sure is True
    e = step.estimates
    assert e[favoured].miou_gain == pytest.approx(0.01 + 0.003) and e[best].miou_gain == pytest.approx(0.01 - 0.003)
    assert step.actions[-1].startswith(
        f"#{best} and #{favoured} still overlapped: trained them and the parent #0 again with seed {seed}; "
        "mean mIoU over both seeds #0 30.00 / 30.00 -> 30.00, "
    ) and step.actions[-1].endswith("; the mean gains decide")
    assert sum(t.train_seed == seed for t in history) == 3

    # A resumed search reads the recorded tie and decision: nothing timed, nothing queued again.
    again = GreedyStrategy(space).propose(history, paired_ctx(space, None, kv=dict(kv)))
    assert again == done and len(fake.calls) == calls


def test_after_a_tie_seed_only_the_contenders_are_ranked_by_their_means():
    # Three candidates, each 0.5 ms over the parent: #1 and #2 tie exactly (+1 point), #3 is below them
    # (+0.8). On the second seed both contenders gain less (+0.2, +0.4), as a worse seed does for
    # everyone: their means (+0.6, +0.7) fall under #3's one-seed gain, which must not win by it.
    space = space_from_dict(
        {
            "name": "decide",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic",
            "operators": ["depth_4-5", "width_4-5", "width_3-5"],
            "constraints": {"max_depth": 8, "max_width": 512},
            "stopping": {"max_steps": 1},
            "greedy": {"max_steplen": 8, "probe_rounds": 0, "tie_seed": 1},
        }
    )

    def miou(a: LPSNetArch) -> float:
        return (
            0.30
            + 0.01 * (a.depth[3] + a.depth[4] - 2) / 2
            + 0.01 * (a.width[3] - 32) / 32
            - 0.002 * (a.width[2] - 16) / 16
        )

    def seeded(a: LPSNetArch, seed: int) -> float:
        return {TINY: 0.30, DEPTH: 0.302, WIDTH: 0.304}[a]

    kv: dict[str, Any] = {}
    ctx = paired_ctx(space, FakePaired(model_ms), kv=kv)
    history, _ = drive(space, ctx, miou, seeded)
    step = StepDecision.from_dict(kv["step_1"])
    assert [t.arch for t in history[1:3]] == [DEPTH, WIDTH] and kv["tie_1"]["contenders"] == [1, 2]
    assert {n: round(e.slope, 6) for n, e in step.estimates.items()} == {1: 0.012, 2: 0.014, 3: 0.016}
    assert step.winner == 2 and step.runner_up == 1 and step.sure is True


def test_the_rounds_cap_is_the_spaces():
    space = make_space(paired_rounds=20, max_paired_rounds=20)
    fake = FakePaired(model_ms, noise_ms=0.05, drift_ms=0.2)
    ctx = paired_ctx(space, fake)
    drive(space, ctx, miou_model(0.01, 0.01))
    _, step = plan_and_step(ctx)
    assert [r for _, r in fake.calls] == [20] and step.sure is False and step.actions == ()


def test_a_candidate_timed_faster_than_its_parent_is_timed_again_and_flagged_if_it_stays_so():
    space = make_space()
    # The width candidate reads 0.8 ms faster than the model in every pass: the flag stays.
    fake = FakePaired(model_ms, noise_ms=0.01, bias={WIDTH: -0.8})
    ctx = paired_ctx(space, fake)
    drive(space, ctx, miou_model(0.01, 0.02))
    plan = StepPlan.from_dict(ctx.get("plan_1"))
    assert fake.calls == [((TINY, DEPTH, WIDTH), 15), ((TINY, WIDTH), 30)]
    depth, width = plan.candidates
    assert not depth.paired.remeasured and not depth.paired.faster_than_parent
    assert width.paired.remeasured and width.paired.faster_than_parent and width.paired.rounds == 30
    assert width.paired.delta_high < 0 and width.latency["paired"]["rounds"] == 30
    assert len(plan.actions) == 1 and plan.actions[0].startswith("width_4-5 x1 was timed faster than its parent (-0.3")
    assert plan.actions[0].endswith(
        "timed again with the parent in 30 rounds: " + _interval(width) + " ms, still faster: flagged"
    )

    # Wrong only in the first pass: re-measured, and no longer flagged.
    first_only = FakePaired(model_ms, noise_ms=0.01, bias={WIDTH: -0.8})
    later = FakePaired(model_ms, noise_ms=0.01)
    calls: list[int] = []

    def once(archs, **kw):
        calls.append(kw["rounds"])
        return (first_only if len(calls) == 1 else later)(archs, **kw)

    ctx = paired_ctx(space, once)
    drive(space, ctx, miou_model(0.01, 0.02))
    plan, _ = plan_and_step(ctx)
    width = plan.candidates[1]
    assert calls == [15, 30] and width.paired.remeasured and not width.paired.faster_than_parent
    assert width.paired.delta_ms == pytest.approx(0.5, abs=0.02)
    assert plan.actions[0].endswith("no longer faster")


def _interval(c) -> str:
    p = c.paired
    return f"{p.delta_ms:+.3f} [{p.delta_low:+.3f}, {p.delta_high:+.3f}]"


def test_an_outlier_target_is_measured_again_before_any_candidate_is_queued():
    # The depth step's first reading is 190 ms (a busy moment); width grows to its limit far below it.
    space = make_space()
    quick = Quick(first={DEPTH: 190.0})
    fake = FakePaired(model_ms)
    ctx = paired_ctx(space, fake, quick)
    strat = GreedyStrategy(space)
    start = TrialRecord(
        TINY,
        strategy="greedy",
        step=0,
        latency={"median_ms": 1.0},
        number=0,
        state=TrialState.COMPLETE,
        values=(1.0, 0.3),
    )
    first = strat.propose([start], ctx)
    assert quick.refreshed == [DEPTH]  # measured again before the step's candidates were proposed
    plan = StepPlan.from_dict(ctx.get("plan_1"))
    assert plan.target_check is not None and plan.target_check.operator == "depth_4-5"
    assert (plan.target_check.first_ms, plan.target_check.again_ms) == (190.0, 1.5)
    assert plan.target_ms == 1.5 and [c.steplen for c in plan.candidates] == [1, 1]
    assert [p.arch for p in first.proposals] == [DEPTH, WIDTH] and all(p.target_ms == 1.5 for p in first.proposals)
    assert plan.actions == (
        "target 190.000 ms (set by depth_4-5 x1) looked like an outlier: every other candidate stayed under "
        "0.5 x it; measured again without the cache: 1.500 ms; the step was planned again with it",
    )
    assert StepPlan.from_dict(plan.to_dict()) == plan


def test_a_real_target_far_above_the_rest_is_confirmed_and_kept():
    space = make_space()
    quick = Quick()
    ctx = paired_ctx(space, FakePaired(model_ms), quick)
    # A target that is what it says: the depth step really is 190 ms.
    ctx.latency = _Always({DEPTH: 190.0}, quick)  # type: ignore[assignment]
    drive(space, ctx, miou_model(0.01, 0.01))
    plan, _ = plan_and_step(ctx)
    assert plan.target_check.again_ms == 190.0 and plan.target_ms == 190.0
    assert max(c.steplen for c in plan.candidates) == 8  # width grew to max_steplen towards the real target


class _Always:
    def __init__(self, fixed: dict[LPSNetArch, float], quick: Quick) -> None:
        self.fixed, self.quick = fixed, quick

    def __call__(self, arch: LPSNetArch, *, refresh: bool = False) -> dict[str, Any]:
        return {"median_ms": self.fixed[arch]} if arch in self.fixed else self.quick(arch, refresh=refresh)


def test_a_resumed_search_reuses_the_recorded_decisions():
    space = make_space()
    fake = FakePaired(model_ms, noise_ms=0.05, drift_ms=0.2)
    kv: dict[str, Any] = {}
    history, done = drive(space, paired_ctx(space, fake, kv=kv), miou_model(0.01, 0.01))

    def never(archs, **kw):
        raise AssertionError("a recorded step was measured again")

    calls_before = len(fake.calls)
    again = GreedyStrategy(space).propose(history, paired_ctx(space, never, kv=dict(kv)))
    assert again == done and len(fake.calls) == calls_before


def test_without_a_paired_measurement_the_step_decides_by_points_as_the_method_does():
    space = make_space()
    ctx = paired_ctx(space, None)
    drive(space, ctx, miou_model(0.02, 0.01))
    plan, step = plan_and_step(ctx)
    assert not plan.paired and all(c.paired is None and c.latency is None for c in plan.candidates)
    assert "parent_ms" not in ctx.get("plan_1") and "sure" not in ctx.get("step_1")
    assert step.sure is None and step.estimates == {} and step.winner == 1
    assert step.slopes == {1: pytest.approx(0.04), 2: pytest.approx(0.02)}
    assert step.reason == "best mIoU gain per ms: 4 points/ms"
    assert step.certainty() == "unknown (no paired measurement)"


def test_the_paired_options_are_validated_and_left_out_of_the_stored_space_at_their_defaults():
    assert "paired_rounds" not in make_space().to_dict()["greedy"]
    assert "probe_rounds" not in make_space(probe_rounds=5).to_dict()["greedy"]
    changed = make_space(paired_rounds=21, confidence=0.95).to_dict()["greedy"]
    assert changed == {
        "max_steplen": 8,
        "noise_floor_ms": 0.05,
        "paired_rounds": 21,
        "confidence": 0.95,
        "probe_rounds": 0,
    }
    with pytest.raises(SpaceError, match=r"greedy: probe_rounds must be 0 \(single measurements\) or 3 to"):
        make_space(probe_rounds=2)
    with pytest.raises(SpaceError, match=r"greedy: max_paired_rounds \(10\) must be >= paired_rounds \(15\)"):
        make_space(max_paired_rounds=10)
    with pytest.raises(SpaceError, match=r"greedy: confidence must be in \[0.5, 1\), such as 0.9; got 1.0"):
        make_space(confidence=1)
    with pytest.raises(SpaceError, match=r"greedy: paired_rounds must be >= 5"):
        make_space(paired_rounds=3)


# Four operators whose one-step expansions cost 0.5 (depth), 0.25 (width) and 0.6 ms (the target),
# so that the steplens depend on how each network compares with the others.
PROBE_OPS = ["depth_4-5", "width_4-5", "width_3-5", "depth_3-5"]


def probe_ms(arch: LPSNetArch) -> float:
    return (
        1.0
        + 0.25 * (arch.depth[3] + arch.depth[4] - 2)
        + 0.3 * (arch.depth[2] - 1)
        + (arch.width[3] + arch.width[4] - 64) / 256
        + (arch.width[2] - 16) / 64
    )


class SpeedDrift:
    """A machine whose speed changes between calls (every network of one call alike): seeded factors in [1, 1.6)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.speed = 1.0
        self.fake = FakePaired(lambda a: self.speed * probe_ms(a))
        self.quick_calls = 0

    def paired(self, archs, rounds):
        self.speed = 1.0 + 0.6 * self.rng.random()
        return self.fake(archs, rounds=rounds, seed=0)

    def quick(self, arch: LPSNetArch, *, refresh: bool = False) -> dict[str, Any]:
        self.quick_calls += 1
        return {"median_ms": (1.0 + 0.6 * self.rng.random()) * probe_ms(arch)}


def probe_space(probe_rounds: int, max_steps: int = 1):
    return space_from_dict(
        {
            "name": "probe",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic",
            "operators": PROBE_OPS,
            "constraints": {"max_depth": 12, "max_width": 512},
            "stopping": {"max_steps": max_steps},
            "greedy": {"max_steplen": 8, "probe_rounds": probe_rounds},
        }
    )


def steplens(plan: StepPlan) -> dict[str, int]:
    return {"+".join(c.operators): c.steplen for c in plan.candidates}


def test_paired_probes_grow_every_operator_by_ratios_so_the_machines_speed_does_not_move_the_steplens():
    exact = probe_space(0)
    ctx = SearchContext(
        space=exact, latency=lambda a, refresh=False: {"median_ms": probe_ms(a)}, get={}.get, put=lambda k, v: None
    )
    kv: dict[str, Any] = {}
    ctx = dataclasses.replace(ctx, get=kv.get, put=kv.__setitem__)
    drive(exact, ctx, lambda a: 0.3)
    want = steplens(StepPlan.from_dict(kv["plan_1"]))
    assert want == {"depth_4-5": 2, "width_4-5": 3, "width_3-5": 2, "depth_3-5": 1}

    space = probe_space(5)
    for seed in range(3):
        machine = SpeedDrift(seed)
        kv = {}
        ctx = SearchContext(space=space, latency=machine.quick, get=kv.get, put=kv.__setitem__, paired=machine.paired)
        drive(space, ctx, lambda a: 0.3)
        plan = StepPlan.from_dict(kv["plan_1"])
        assert steplens(plan) == want
        # One probe for the one-step expansions, one per further steplen of the operators still growing,
        # each with the parent first, in the probe's rounds; then the step's own pass.
        probes = machine.fake.calls[:-1]
        assert plan.probe_rounds == 5 and plan.probe_passes == len(probes) == 4
        assert all(group[0] == TINY and rounds == 5 for group, rounds in probes)
        assert [len(group) - 1 for group, _ in probes] == [4, 3, 1, 1]
        assert machine.fake.calls[-1][1] == 15 and machine.quick_calls == 1  # only the start, once
        # The quick numbers are the parent's recorded latency times each network's ratio to it.
        start_ms = kv["plan_1"]["candidates"][0]["quick_ms"] / (probe_ms(plan.candidates[0].arch) / probe_ms(TINY))
        for c in plan.candidates:
            assert c.quick_ms == pytest.approx(start_ms * probe_ms(c.arch) / probe_ms(TINY))

    # Single quick measurements on the same machine follow its speed: the steplens move.
    single = probe_space(0)
    moved = 0
    for seed in range(3):
        machine = SpeedDrift(seed)
        kv = {}
        ctx = SearchContext(space=single, latency=machine.quick, get=kv.get, put=kv.__setitem__, paired=machine.paired)
        drive(single, ctx, lambda a: 0.3)
        moved += steplens(StepPlan.from_dict(kv["plan_1"])) != want
    assert moved >= 2


def test_every_paired_pass_times_the_start_network_too_so_latencies_are_known_relative_to_it():
    space = probe_space(5, max_steps=2)
    machine = SpeedDrift(7)
    kv: dict[str, Any] = {}
    ctx = SearchContext(space=space, latency=machine.quick, get=kv.get, put=kv.__setitem__, paired=machine.paired)
    # Width pays best, so step 2 grows from a widened parent.
    drive(space, ctx, lambda a: 0.3 + 0.001 * (a.width[3] + a.width[2]) - 0.01 * sum(a.depth))
    plan1, plan2 = StepPlan.from_dict(kv["plan_1"]), StepPlan.from_dict(kv["plan_2"])
    assert plan1.parent_start_ratio == pytest.approx(1.0)
    for c in plan1.candidates:
        assert c.paired.start_ratio == pytest.approx(probe_ms(c.arch) / probe_ms(TINY))
    step_pass = machine.fake.calls[-1][0]
    assert step_pass[-1] == TINY and step_pass[0] != TINY  # the start, last, beside a grown parent
    assert plan2.parent_start_ratio == pytest.approx(probe_ms(step_pass[0]) / probe_ms(TINY))
    for c in plan2.candidates:
        assert c.paired.start_ratio == pytest.approx(probe_ms(c.arch) / probe_ms(TINY))
        assert c.paired.median_ms == pytest.approx(machine.speed * probe_ms(c.arch))
    assert StepPlan.from_dict(plan2.to_dict()) == plan2


def test_a_collapsed_proxy_is_said_in_the_step_record():
    from scaler.search.strategies.greedy import proxy_warnings

    def trained(n: int, miou: float, per_class: dict[str, float | None]) -> TrialRecord:
        return TrialRecord(
            TINY,
            number=n,
            state=TrialState.COMPLETE,
            values=(1.0, miou),
            train={"per_class_iou": per_class},
        )

    one = {"road": 0.8, "car": 0.0, "sky": None}  # sky absent from the validation split
    two = {"road": 0.8, "car": 0.1, "sky": None}
    assert proxy_warnings([trained(1, 0.3, two), trained(2, 0.4, two)]) == []
    assert proxy_warnings([trained(1, 0.27, one), trained(2, 0.3, two), trained(3, 0.27, one)]) == [
        "#1, #3 predict one class only (every other class's IoU is 0): the proxy collapsed to the dominant class, "
        "so its mIoU says nothing of the architecture; train longer, or set training.loss: ohem"
    ]
    alike = [trained(n, 0.3 + 0.0002 * n, two) for n in (1, 2, 3)]
    assert proxy_warnings(alike) == [
        "every candidate's mIoU lies within 0.1 points of the others: the proxy does not tell them apart, and the "
        "slopes rank latency noise; train longer, or set training.loss: ohem"
    ]
    assert proxy_warnings(alike[:2]) == []  # two alike can be chance
