"""Greedy progressive expansion, as the method defines it (see :mod:`scaler.search.expand`), deciding
from latencies timed side by side and keeping what it knows of their uncertainty.

A step, as this strategy takes it:

1. each operator grows the parent to the step's target (the slowest one-step expansion), the
   networks of each steplen timed together with the parent in short paired probes
   (``greedy.probe_rounds``): a network's latency is the parent's times its median per-round ratio
   to it, so the steplens follow ratios, not the machine's speed. With ``probe_rounds: 0`` (or no
   paired measurement) each network is measured alone (cached); then, when no other grown candidate
   comes near the target (every one under ``OUTLIER_RATIO`` of it), the measurement that set the
   target is taken for an outlier: it is measured again without the cache and the step planned
   again with that number, before any candidate is queued;
2. the parent, every grown candidate and the start network are timed together in one paired pass
   (:attr:`SearchContext.paired`: interleaved rounds, the same machine state for all). Each
   candidate's latency, and its latency gain over the parent with an interval, come from that pass,
   and the latency budget is checked against them. A candidate timed faster than its parent beyond
   noise (its whole interval below 0) is timed again with more rounds, and flagged if it stays so;
3. the workers train the candidates; each one's slope is (mIoU gain) / (latency gain), with the
   interval its latency gain's interval allows (:class:`SlopeEstimate`, which explains the noise floor).
   With ``greedy.halving`` they train in rungs, and only the better half by slope at each rung goes
   on (:mod:`~scaler.search.strategies.halving`);
4. when the best and the second-best slope's intervals overlap, those two are timed with the parent
   again with twice the rounds, up to ``greedy.max_paired_rounds``. If they still overlap and the
   space names a ``greedy.tie_seed``, both and the parent are trained again with that seed (seed
   replicas, recorded as ``tie_<s>`` first so that a resume never times them again) and their mean
   mIoU over the two seeds decides; otherwise, or if they overlap even then, the point estimate
   decides and the decision is recorded as not sure, with the overlap.

Each step is recorded in the run twice (:mod:`~scaler.search.strategies.greedy_steps`): its
:class:`StepPlan` (``plan_<s>``, written when proposed) and its :class:`StepDecision` (``step_<s>``).
A resumed search reuses both and never measures or decides a recorded step again; the report reads
them back with :meth:`GreedyStrategy.plans` and :meth:`GreedyStrategy.steps`. Without a paired
measurement (``ctx.paired`` is ``None``; every run made before it) a step uses the quick
measurements and decides by the point slopes alone, as the method does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from models import LPSNetArch
from scaler.search.expand import (
    Candidate,
    Scored,
    one_step_expansions,
    propose_step,
    select_next,
    target_expansions,
)
from scaler.search.strategies.base import (
    Decision,
    PairedTiming,
    SearchContext,
    Strategy,
    TrialRecord,
    latest_by_hash,
    register_strategy,
    search_trials,
)
from scaler.search.strategies.greedy_steps import (
    PairedLatency,
    PlanCandidate,
    SlopeEstimate,
    StepDecision,
    StepPlan,
    TargetCheck,
)
from scaler.search.strategies.halving import halving_stage, rung_verdicts, stopped_text

__all__ = [
    "OUTLIER_RATIO",
    "GreedyStrategy",
    "PairedLatency",
    "PlanCandidate",
    "SlopeEstimate",
    "StepDecision",
    "StepPlan",
    "TargetCheck",
]

_PLAN_KEY = "plan_{}"
_STEP_KEY = "step_{}"
_TIE_KEY = "tie_{}"

# A target is an outlier when every other grown candidate stays under this share of it: growing
# an operator up to its limits should come near a real target, as the operators' steps are small.
OUTLIER_RATIO = 0.5


@register_strategy("greedy")
class GreedyStrategy(Strategy):
    """Progressive expansion as the method defines it (see :mod:`scaler.search.expand`).

    Its study is named after the space alone (the method's run); it counts steps, and drops the
    candidates over the latency budget in its own plan.
    """

    progress: ClassVar[Literal["steps", "trials"]] = "steps"
    loop_checks_budget: ClassVar[bool] = False

    @classmethod
    def study_name(cls, space_name: str) -> str:
        return space_name

    @staticmethod
    def steps(user_attrs: Mapping[str, Any]) -> list[StepDecision]:
        """Every decided step of a run, in order, from the study's user attributes."""
        out = []
        step = 1
        while isinstance(user_attrs.get(_STEP_KEY.format(step)), Mapping):
            out.append(StepDecision.from_dict(user_attrs[_STEP_KEY.format(step)], step=step))
            step += 1
        return out

    @staticmethod
    def plans(user_attrs: Mapping[str, Any]) -> list[StepPlan]:
        """Every planned step of a run, in order, from the study's user attributes."""
        out = []
        step = 1
        while isinstance(user_attrs.get(_PLAN_KEY.format(step)), Mapping):
            out.append(StepPlan.from_dict(user_attrs[_PLAN_KEY.format(step)]))
            step += 1
        return out

    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        sp = self.space
        replicas = [t for t in history if t.is_seed_replica]
        controls = {t.control_of: t for t in history if t.is_control}
        if any(t.pending for t in history if not t.is_reference):
            return Decision.wait()
        history = search_trials(history)
        latest = latest_by_hash(history)
        start_hash = sp.start.arch_hash()
        # With successive halving, a step's baseline (the control with inherited weights, else the parent)
        # is evaluated at every rung on its way: the candidates at a rung are compared with it there.
        rungs = sp.greedy.rung_iters(sp.training.candidate_iters) if sp.greedy.halving else ()
        inherit = sp.training.init == "inherit"
        if start_hash not in latest:
            eval_at = rungs[:-1] if not inherit else ()
            start = TrialRecord(sp.start, strategy=self.name, step=0, parent=None, steplen=0, eval_at=eval_at)
            return Decision.propose([start])
        parent = latest[start_hash]
        if not parent.complete:
            return Decision.done(f"the start network failed: {parent.fail_reason or 'unknown reason'}")
        budget = sp.stopping.latency_budget_ms
        step = 1
        while True:
            if step > sp.stopping.max_steps:
                return Decision.done(_step_limit(sp.stopping.max_steps, ctx))
            if sp.stopping.max_trials is not None and sum(t.step is not None for t in latest.values()) >= (
                sp.stopping.max_trials
            ):
                return Decision.done(f"trial limit reached ({sp.stopping.max_trials})")
            if budget is not None and parent.latency_ms is not None and parent.latency_ms >= budget:
                return Decision.done(f"latency budget reached ({parent.latency_ms:.2f} >= {budget:g} ms)")
            stored = ctx.get(_PLAN_KEY.format(step))
            if stored is None:
                plan = self._plan(step, parent, ctx)
                ctx.put(_PLAN_KEY.format(step), plan.to_dict())
            else:
                plan = StepPlan.from_dict(stored)
            if not plan.candidates:
                return Decision.done(plan.reason)
            missing = [
                TrialRecord(
                    c.arch,
                    strategy=self.name,
                    step=step,
                    parent=parent.number,
                    operators=c.operators,
                    steplen=c.steplen,
                    target_ms=plan.target_ms,
                    latency=c.latency,
                    inherit_from=parent.number if inherit else None,
                    train_until=rungs[0] if rungs and len(plan.candidates) > 1 else None,
                )
                for c in plan.candidates
                if c.arch_hash not in latest
            ]
            if inherit and parent.number not in controls:
                # The parent, trained as many iterations further as its candidates: their mIoU gains are
                # measured against it, so extra training is not taken for a better architecture.
                missing.append(
                    TrialRecord(
                        parent.arch,
                        strategy=self.name,
                        step=step,
                        parent=parent.number,
                        latency=parent.latency,
                        inherit_from=parent.number,
                        control_of=parent.number,
                        eval_at=rungs[:-1],
                    )
                )
            if missing:
                return Decision.propose(missing)
            stored = ctx.get(_STEP_KEY.format(step))
            if stored is None:
                base = parent
                control = controls.get(parent.number) if inherit else None
                if control is not None and control.complete:
                    base = control
                if rungs:
                    advance = halving_stage(step, parent, base, plan, latest, rungs, sp.greedy.noise_floor_ms, ctx)
                    if advance is not None:
                        return advance
                decided = self._decide(step, parent, base, plan, latest, replicas, ctx)
                if not isinstance(decided, StepDecision):
                    return Decision.propose(decided)
                decision = decided
                ctx.put(_STEP_KEY.format(step), decision.to_dict())
            else:
                decision = StepDecision.from_dict(stored, step=step)
            if decision.winner is None:
                return Decision.done(f"step {step}: {decision.reason}")
            parent = next(t for t in latest.values() if t.number == decision.winner)
            step += 1

    def _plan(self, step: int, parent: TrialRecord, ctx: SearchContext) -> StepPlan:
        sp = self.space
        g = sp.greedy
        arch = parent.lps_arch
        assert arch is not None and parent.number is not None  # the start and its expansions are LPS-Nets
        actions: list[str] = []
        probes: list[int] = []
        many = self._probe(parent, ctx, probes)
        candidates = propose_step(
            arch, sp.operators, ctx.latency_ms, sp.constraints, max_steplen=g.max_steplen, latency_many=many
        )
        # A paired probe's ratios are medians over rounds that shared the machine's state: one
        # disturbed moment does not set the target, so only single measurements are checked.
        check = self._check_target(arch, candidates, ctx) if many is None else None
        if check is not None:
            top, check = check
            fixed = {top: check.again_ms}

            def quick(a: LPSNetArch) -> float:
                return fixed[a] if a in fixed else ctx.latency_ms(a)

            candidates = propose_step(arch, sp.operators, quick, sp.constraints, max_steplen=g.max_steplen)
            actions.append(
                f"target {check.first_ms:.3f} ms (set by {check.operator} x1) looked like an outlier: every other "
                f"candidate stayed under {OUTLIER_RATIO:g} x it; measured again without the cache: "
                f"{check.again_ms:.3f} ms; the step was planned again with it"
            )
            ctx.log(f"step {step}: {actions[-1]}")
        paired = self._time_together(arch, candidates, ctx, actions) if ctx.paired is not None else None
        planned = [
            PlanCandidate(c.arch, c.arch.arch_hash(), tuple(c.operators), c.steplen, c.latency_ms)
            if paired is None
            else PlanCandidate(
                c.arch,
                c.arch.arch_hash(),
                tuple(c.operators),
                c.steplen,
                paired[1][i].median_ms,
                quick_ms=c.latency_ms,
                paired=paired[1][i],
                latency=paired[2][i],
            )
            for i, c in enumerate(candidates)
        ]
        budget = sp.stopping.latency_budget_ms
        kept = [c for c in planned if budget is None or c.latency_ms <= budget]
        over = len(planned) - len(kept)
        reason = ""
        if not candidates:
            reason = "no operator can grow the network within the constraints"
        elif not kept:
            reason = f"every candidate is over the latency budget of {budget:g} ms"
        target = candidates[0].target_ms if candidates else None
        timing = paired[0] if paired is not None else None
        ctx.log(
            f"step {step}: parent #{parent.number} {arch.inline()} ({parent.latency_ms:.2f} ms, "
            f"mIoU {100 * (parent.miou or 0):.2f}); target {target if target is None else round(target, 3)} ms; "
            f"{len(kept)} candidates"
            + (f" ({over} over budget, dropped)" if over else "")
            + (f"; grown to it in {len(probes)} paired probes of {g.probe_rounds} rounds" if probes else "")
            + (
                ""
                if timing is None
                else f"; timed with the parent in {timing.rounds} paired rounds (parent {timing.median_ms(0):.3f} ms)"
            )
        )
        return StepPlan(
            step=step,
            parent=parent.number,
            target_ms=target,
            reason=reason,
            dropped_over_budget=over,
            candidates=tuple(kept),
            parent_ms=None if timing is None else timing.median_ms(0),
            parent_start_ratio=None if paired is None else paired[3],
            rounds=None if timing is None else timing.rounds,
            confidence=None if timing is None else g.confidence,
            others_cpu_share=None if timing is None else timing.others_cpu_share,
            under_load=bool(timing is not None and timing.under_load),
            target_check=check,
            probe_rounds=g.probe_rounds if probes else None,
            probe_passes=len(probes) if probes else None,
            actions=tuple(actions),
        )

    def _probe(
        self, parent: TrialRecord, ctx: SearchContext, passes: list[int]
    ) -> Callable[[Sequence[LPSNetArch]], list[float]] | None:
        """The latency of several grown networks at once, timed with the parent (``None``: single measurements).

        Each network's latency is the parent's recorded one times its median per-round ratio to the
        parent in a paired pass of ``greedy.probe_rounds`` rounds: the steplens then depend on ratios
        alone, which stay put while the machine's speed drifts. Appends each pass's size to ``passes``.
        """
        g = self.space.greedy
        if ctx.paired is None or g.probe_rounds == 0 or parent.latency_ms is None:
            return None
        paired, rounds, arch, ref = ctx.paired, g.probe_rounds, parent.lps_arch, float(parent.latency_ms)
        assert arch is not None

        def many(archs: Sequence[LPSNetArch]) -> list[float]:
            timing = paired([arch, *archs], rounds)
            passes.append(len(archs))
            return [ref * timing.ratio(i + 1, 0) for i in range(len(archs))]

        return many

    def _check_target(
        self, arch: LPSNetArch, candidates: Sequence[Candidate], ctx: SearchContext
    ) -> tuple[LPSNetArch, TargetCheck] | None:
        """The one-step expansion that set the step's target, measured again, when the target is an outlier."""
        if not candidates:
            return None
        sp = self.space
        target = candidates[0].target_ms
        expansions = target_expansions(one_step_expansions(arch, sp.operators, sp.constraints))
        # The first of the slowest, as propose_step takes the target.
        op, top = max(expansions, key=lambda x: ctx.latency_ms(x[1]))
        # Growing an operator up to the target should come near it; a head switch has no steps to grow by.
        setting = {o.name for o, _ in expansions}
        others = [c for c in candidates if c.arch != top and any(n in setting for n in c.operators)]
        if not others or any(c.latency_ms >= OUTLIER_RATIO * target for c in others):
            return None
        again = float(ctx.latency(top, refresh=True)["median_ms"])
        return top, TargetCheck(operator=op.name, first_ms=target, again_ms=again)

    def _time_together(
        self, arch: LPSNetArch, candidates: Sequence[Candidate], ctx: SearchContext, actions: list[str]
    ) -> tuple[PairedTiming, list[PairedLatency], list[dict[str, Any]], float] | None:
        """The paired pass of the parent and ``candidates``: the pass, each candidate's numbers and latency
        record, and the parent's latency as a multiple of the start network's.

        The start network is timed in the pass too (last, when it is not the parent), so that every
        candidate's latency is also known relative to it (:attr:`PairedLatency.start_ratio`).
        A candidate timed faster than its parent beyond noise is timed again, with the parent, in twice
        the rounds (at most ``max_paired_rounds``); its numbers come from that pass, flagged if it
        is still faster.
        """
        assert ctx.paired is not None
        if not candidates:
            return None
        g = self.space.greedy
        start = self.space.start
        extra = [] if arch == start else [start]

        def time_with_parent(archs: list[LPSNetArch], rounds: int) -> tuple[PairedTiming, int]:
            assert ctx.paired is not None
            return ctx.paired([arch, *archs, *extra], rounds), len(archs) + 1 if extra else 0

        timing, s = time_with_parent([c.arch for c in candidates], g.paired_rounds)
        numbers = [_paired_numbers(timing, i + 1, g.confidence, s) for i in range(len(candidates))]
        records = [dict(timing.latency_record(i + 1)) for i in range(len(candidates))]
        faster = [i for i, n in enumerate(numbers) if n.delta_high < 0]
        if faster:
            rounds = min(2 * g.paired_rounds, g.max_paired_rounds)
            again, s_again = time_with_parent([candidates[i].arch for i in faster], rounds)
            for j, i in enumerate(faster, 1):
                first = numbers[i]
                n = _paired_numbers(again, j, g.confidence, s_again)
                numbers[i] = dataclasses.replace(n, remeasured=True, faster_than_parent=n.delta_high < 0)
                records[i] = dict(again.latency_record(j))
                actions.append(
                    f"{'+'.join(candidates[i].operators)} x{candidates[i].steplen} was timed faster than its parent "
                    f"({_signed_interval(first)} ms); timed again with the parent in {rounds} rounds: "
                    f"{_signed_interval(numbers[i])} ms, "
                    + ("still faster: flagged" if numbers[i].faster_than_parent else "no longer faster")
                )
        return timing, numbers, records, timing.ratio(0, s)

    def _decide(
        self,
        step: int,
        parent: TrialRecord,
        base: TrialRecord,
        plan: StepPlan,
        latest: dict[str, TrialRecord],
        replicas: Sequence[TrialRecord],
        ctx: SearchContext,
    ) -> StepDecision | list[TrialRecord]:
        """The step's decision, or the seed replicas to train first (``greedy.tie_seed``, a tie).

        mIoU gains are measured against ``base``: the step's control with inherited weights (the parent
        trained as far as its candidates), else the parent itself.
        """
        trials = [latest[c.arch_hash] for c in plan.candidates]
        if not plan.paired:
            return self._decide_by_points(step, parent, base, trials, ctx)
        g = self.space.greedy
        assert base.miou is not None and base.number is not None and parent.number is not None
        order = {t.number: k for k, t in enumerate(trials)}
        tie = ctx.get(_TIE_KEY.format(step))
        if tie is None:
            estimates, actions, overlap = self._time_apart(parent, base, plan, trials, ctx)
            if base is not parent:
                actions.insert(
                    0,
                    f"mIoU gains are measured against the control #{base.number} (the parent trained as far as "
                    f"its candidates: mIoU {100 * base.miou:.2f}, {100 * (parent.miou or 0):.2f} before)",
                )
            ranked = sorted(estimates, key=lambda n: (-estimates[n].slope, order[n]))
            if overlap is not None and self.space.tie_seed is not None:
                # Recorded before the replicas are queued: a resumed search goes on from here and
                # never times the contenders again.
                tie = {
                    "contenders": ranked[:2],
                    "seed": self.space.tie_seed,
                    "estimates": {str(n): e.to_dict() for n, e in estimates.items()},
                    "actions": actions,
                }
                ctx.put(_TIE_KEY.format(step), tie)
        if tie is not None:
            estimates = {int(n): SlopeEstimate.from_dict(e) for n, e in tie["estimates"].items()}
            first_seed = sorted(estimates, key=lambda n: (-estimates[n].slope, order[n]))
            actions = list(tie["actions"])
            by_number = {t.number: t for t in [base, *trials]}
            numbers = [base.number, *(int(n) for n in tie["contenders"])]
            which = "parent" if base is parent else "control"
            seed = int(tie["seed"])
            done = {t.seed_of: t for t in replicas if t.train_seed == seed and not t.pending}
            missing = [by_number[n].replicated(seed) for n in numbers if n not in done]
            if missing:
                ctx.log(
                    f"step {step}: #{numbers[1]} and #{numbers[2]} still overlap after {g.max_paired_rounds} paired "
                    f"rounds; training them and the {which} #{base.number} again with seed {seed}"
                )
                return missing
            means = {n: _mean_miou(by_number[n], done[n]) for n in numbers}
            for n in numbers[1:]:
                e = estimates[n]
                estimates[n] = SlopeEstimate.of(
                    means[n] - means[base.number],
                    e.delta_ms,
                    e.delta_low,
                    e.delta_high,
                    floor_ms=g.noise_floor_ms,
                    rounds=e.rounds,
                )
            actions.append(
                f"#{numbers[1]} and #{numbers[2]} still overlapped: trained them and the {which} #{base.number} "
                f"again with seed {seed}; mean mIoU over both seeds "
                + ", ".join(f"#{n} {_seeds_text(by_number[n], done[n], means[n])}" for n in numbers)
                + "; the mean gains decide"
            )
            # The replicas decide between the two contenders only: the others' gains come from one seed
            # (and one parent reading), so they stay ranked where the first seed put them, below both.
            top = sorted(numbers[1:], key=lambda n: (-estimates[n].slope, order[n]))
            ranked = [*top, *(n for n in first_seed if n not in top)]
            if estimates[top[0]].slope <= 0:  # neither gains on both seeds' mean: the first seed's order of the rest
                ranked = sorted(estimates, key=lambda n: (-estimates[n].slope, order[n]))
            overlap = None
            if len(ranked) >= 2 and estimates[ranked[0]].slope > 0:
                overlap = estimates[ranked[0]].overlap(estimates[ranked[1]])
        warnings = proxy_warnings(trials)
        halving = [v.line() for v in rung_verdicts(step, ctx)]  # logged when each rung was judged
        actions = [*warnings, *halving, *actions]
        slopes = {t.number: (estimates[t.number].slope if t.number in estimates else None) for t in trials}
        winner = None
        if not ranked:
            reason = "every candidate failed"
        elif estimates[ranked[0]].slope <= 0:
            reason = "no candidate improves mIoU over its parent"
        else:
            winner = ranked[0]
            best = estimates[winner]
            interval = _points(best.slope_low, best.slope_high)
            reason = f"best mIoU gain per ms: {100 * best.slope:.4g} points/ms ({interval})"
        decision = StepDecision(
            step=step,
            parent=parent.number,
            candidates=tuple(t.number for t in trials if t.number is not None),
            slopes=slopes,
            winner=winner,
            reason=reason,
            estimates={n: estimates[n] for n in slopes if n in estimates},
            sure=overlap is None,
            confidence=g.confidence,
            overlap=overlap,
            runner_up=ranked[1] if winner is not None and len(ranked) > 1 else None,
            actions=tuple(actions),
        )
        for line in actions:
            if line not in halving:
                ctx.log(f"step {step}: {line}")
        rows = []
        for t in trials:
            e = estimates.get(t.number)  # type: ignore[arg-type]
            numbers = stopped_text(t) if t.pruned else "mIoU failed"
            if e is not None:
                numbers = (
                    f"{_signed_interval(e)} ms, "
                    f"mIoU {100 * (t.miou or 0):.2f}, slope {100 * e.slope:.4g} points/ms "
                    f"({_points(e.slope_low, e.slope_high)})"
                )
            rows.append(f"#{t.number} {'+'.join(t.operators)} x{t.steplen}: {numbers}")
        ctx.log(f"step {step} decided: " + "; ".join(rows))
        ctx.log(
            f"step {step} winner: "
            + (f"#{winner} ({reason}; {decision.certainty()})" if winner is not None else f"none ({reason})")
        )
        return decision

    def _time_apart(
        self, parent: TrialRecord, base: TrialRecord, plan: StepPlan, trials: Sequence[TrialRecord], ctx: SearchContext
    ) -> tuple[dict[int, SlopeEstimate], list[str], tuple[float, float] | None]:
        """Each trained candidate's slope estimate; while the best two overlap, both are timed with the parent
        again in twice the rounds (up to ``max_paired_rounds``). Returns the estimates, what was done, and
        the best two's overlap (``None``: apart, or fewer than two gaining candidates)."""
        g = self.space.greedy
        assert base.miou is not None
        estimates: dict[int, SlopeEstimate] = {}
        for c, t in zip(plan.candidates, trials, strict=True):
            if t.miou is not None and c.paired is not None and t.number is not None:
                p = c.paired
                gain = t.miou - base.miou
                estimates[t.number] = SlopeEstimate.of(
                    gain, p.delta_ms, p.delta_low, p.delta_high, floor_ms=g.noise_floor_ms, rounds=p.rounds
                )
        order = {t.number: k for k, t in enumerate(trials)}
        archs = {t.number: t.lps_arch for t in trials}
        actions: list[str] = []
        rounds = plan.rounds or g.paired_rounds
        while True:
            ranked = sorted(estimates, key=lambda n: (-estimates[n].slope, order[n]))
            if len(ranked) < 2 or estimates[ranked[0]].slope <= 0:
                return estimates, actions, None
            a, b = ranked[:2]
            overlap = estimates[a].overlap(estimates[b])
            if overlap is None or ctx.paired is None or rounds >= g.max_paired_rounds:
                return estimates, actions, overlap
            rounds = min(2 * rounds, g.max_paired_rounds)
            timing = ctx.paired([parent.lps_arch, archs[a], archs[b]], rounds)  # type: ignore[list-item]
            for j, n in ((1, a), (2, b)):
                delta, low, high = timing.delta_ms(j, 0, g.confidence)
                estimates[n] = SlopeEstimate.of(
                    estimates[n].miou_gain, delta, low, high, floor_ms=g.noise_floor_ms, rounds=rounds
                )
            actions.append(
                f"#{a} and #{b}: slope intervals overlapped ({_points(*overlap)}); "
                f"timed both with the parent again in {rounds} paired rounds"
            )

    def _decide_by_points(
        self, step: int, parent: TrialRecord, base: TrialRecord, trials: list[TrialRecord], ctx: SearchContext
    ) -> StepDecision:
        """The method's decision from single measurements: the best point slope, nothing known of its certainty."""
        scored = [Scored(t.number, t.latency_ms if t.latency_ms is not None else float("inf"), t.miou) for t in trials]
        sel = select_next(
            Scored(parent.number, parent.latency_ms or 0.0, base.miou),
            scored,
            min_latency_gain_ms=self.space.greedy.noise_floor_ms,
        )
        rows = []
        for t in trials:
            slope = sel.slopes.get(t.number)
            miou = stopped_text(t) if t.pruned else f"mIoU {'failed' if t.miou is None else f'{100 * t.miou:.2f}'}"
            rows.append(
                f"#{t.number} {'+'.join(t.operators)} x{t.steplen}: "
                f"{t.latency_ms:.2f} ms, {miou}, "
                f"slope {'-' if slope is None else f'{100 * slope:.4g} points/ms'}"
            )
        ctx.log(f"step {step} decided: " + "; ".join(rows))
        ctx.log(
            f"step {step} winner: "
            + (f"#{sel.winner} ({sel.reason})" if sel.winner is not None else f"none ({sel.reason})")
        )
        warnings = proxy_warnings(trials)
        for line in warnings:
            ctx.log(f"step {step}: {line}")
        warnings += [v.line() for v in rung_verdicts(step, ctx)]  # logged when each rung was judged
        return StepDecision(
            step=step,
            parent=parent.number,
            candidates=tuple(t.number for t in trials if t.number is not None),
            slopes=dict(sel.slopes),
            winner=sel.winner,
            reason=sel.reason,
            actions=tuple(warnings),
        )


# mIoUs of one step closer than this (a fraction) cannot be told apart by a short proxy training.
SAME_MIOU = 0.001


def proxy_warnings(trials: Sequence[TrialRecord]) -> list[str]:
    """What makes a step's mIoUs say little of its architectures, one line each: candidates whose
    predictions cover one class (a short schedule on imbalanced data collapses to the dominant class),
    and a step of three or more trained candidates whose mIoUs all lie within :data:`SAME_MIOU` of each
    other (the slopes are then latency noise). Both point at the remedies: a longer schedule, or
    ``training.loss: ohem``."""
    out = []
    one = [t.number for t in trials if t.miou is not None and _classes_predicted(t) == 1]
    if one:
        out.append(
            f"{', '.join(f'#{n}' for n in one)} predict{'s' if len(one) == 1 else ''} one class only (every other "
            "class's IoU is 0): the proxy collapsed to the dominant class, so its mIoU says nothing of the "
            "architecture; train longer, or set training.loss: ohem"
        )
    mious = [t.miou for t in trials if t.miou is not None]
    if len(mious) >= 3 and max(mious) - min(mious) < SAME_MIOU:  # two alike can be chance; three are the proxy
        out.append(
            f"every candidate's mIoU lies within {100 * SAME_MIOU:g} points of the others: the proxy does not tell "
            "them apart, and the slopes rank latency noise; train longer, or set training.loss: ohem"
        )
    return out


def _classes_predicted(trial: TrialRecord) -> int | None:
    """How many classes a trained trial's predictions hit (IoU > 0 on the validation split); ``None``: unknown."""
    per_class = (trial.train or {}).get("per_class_iou")
    if not isinstance(per_class, Mapping) or not per_class:
        return None
    return sum(1 for v in per_class.values() if v is not None and v > 0)


def _paired_numbers(timing: PairedTiming, i: int, confidence: float, start: int) -> PairedLatency:
    """Arch ``i``'s numbers against the parent (index 0), and its ratio to the start network (index ``start``)."""
    delta, low, high = timing.delta_ms(i, 0, confidence)
    return PairedLatency(
        median_ms=timing.median_ms(i),
        delta_ms=delta,
        delta_low=low,
        delta_high=high,
        rel_spread=timing.rel_spread(i),
        rounds=timing.rounds,
        start_ratio=timing.ratio(i, start),
    )


def _mean_miou(trial: TrialRecord, replica: TrialRecord) -> float:
    """A trial's mIoU averaged with its seed replica's (the trial's alone when the replica failed)."""
    assert trial.miou is not None
    return trial.miou if replica.miou is None else (trial.miou + replica.miou) / 2


def _seeds_text(trial: TrialRecord, replica: TrialRecord, mean: float) -> str:
    again = "failed" if replica.miou is None else f"{100 * replica.miou:.2f}"
    return f"{100 * (trial.miou or 0):.2f} / {again} -> {100 * mean:.2f}"


def _signed(ms: float) -> str:
    return f"{ms:+.3f}"


def _signed_interval(p: PairedLatency | SlopeEstimate) -> str:
    return f"{_signed(p.delta_ms)} [{_signed(p.delta_low)}, {_signed(p.delta_high)}]"


def _points(low: float, high: float) -> str:
    """A slope interval in mIoU points per ms."""
    return f"{100 * low:.4g} to {100 * high:.4g} points/ms"


def _step_limit(max_steps: int, ctx: SearchContext) -> str:
    """Why a search stops at its step limit, saying so when an earlier session went further.

    A finished run resumed with a lower ``max_steps`` keeps every step it decided (the trials,
    ``path.csv`` and the frontier show them); the reason says the run holds more than the limit.
    """
    held = max_steps
    while isinstance(ctx.get(_STEP_KEY.format(held + 1)), Mapping):
        held += 1
    reason = f"step limit reached ({max_steps} step{'' if max_steps == 1 else 's'})"
    if held > max_steps:
        reason += f"; the run already holds {held} steps, decided by an earlier session with a higher limit, all kept"
    return reason
