"""Why a greedy run went where it went: every step's candidates, their latency and mIoU gains over
the parent, their slopes, the winner, and how sure the decision was, as plain records.

Read from the step records the strategy wrote (:meth:`GreedyStrategy.plans`,
:meth:`GreedyStrategy.steps`) and the trials; nothing is measured or decided again and nothing is
written. A step timed with a paired pass has intervals (of the latency gain, and of the slope it
allows) and a certainty; a step of a run made before paired measurement has point values only,
and says so. Text for people is :func:`scaler.report.render.format_explain`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaler.search.record import TrialRecord
from scaler.search.store import RunStore, open_run
from scaler.search.strategies import GreedyStrategy, PlanCandidate, SlopeEstimate, StepDecision, StepPlan
from scaler.search.strategies.base import latest_by_hash, search_trials
from scaler.search.strategies.halving import stopped_text

__all__ = ["CandidateExplanation", "RunExplanation", "StepExplanation", "explain_run"]


def _num(x: float | None) -> float | None:
    """A number for JSON: an unbounded interval end is ``None``."""
    return x if x is None or math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class CandidateExplanation:
    """One candidate of a step, against the step's parent.

    Args:
        trial: Its trial number (``None`` when it is not in the run yet).
        arch: Its architecture, inline.
        operators: The operators that grew it from the parent.
        steplen: Times they were applied.
        latency_ms: Its latency (the paired median on a paired step).
        start_ratio: Its latency as a multiple of the start network's, timed in the same pass (``None``:
            not recorded; runs made before it).
        delta_ms: Latency gain over the parent (ms).
        delta_low: Lower end of its interval (``None``: a step without paired data, or unbounded).
        delta_high: Upper end.
        miou: Its mIoU (a fraction; ``None``: not trained or failed).
        miou_gain: mIoU gain over the parent (over the step's control, with inherited weights).
        slope: (mIoU gain) / (latency gain), mIoU as a fraction per ms, as the decision used it.
        slope_low: Lower end of its interval (paired steps only).
        slope_high: Upper end.
        rounds: Paired rounds the latency gain comes from (paired steps only).
        winner: It won the step.
        notes: What is worth knowing of it: failed, timed faster than its parent, re-measured.
    """

    trial: int | None
    arch: str
    operators: tuple[str, ...]
    steplen: int
    latency_ms: float | None
    start_ratio: float | None
    delta_ms: float | None
    delta_low: float | None
    delta_high: float | None
    miou: float | None
    miou_gain: float | None
    slope: float | None
    slope_low: float | None
    slope_high: float | None
    rounds: int | None
    winner: bool
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["operators"] = list(self.operators)
        out["notes"] = list(self.notes)
        for key in ("delta_low", "delta_high", "slope_low", "slope_high"):
            out[key] = _num(out[key])
        return out


@dataclasses.dataclass(frozen=True)
class StepExplanation:
    """One greedy step: its parent, target, candidates, winner and how sure the decision was.

    Args:
        step: The step (1 = the first expansion of the start network).
        parent: The parent's trial number.
        parent_latency_ms: The parent's latency the step compared against (paired median when paired).
        parent_start_ratio: The parent's latency as a multiple of the start network's (paired steps that recorded it).
        parent_miou: The parent's mIoU.
        target_ms: The step's target latency.
        paired: Whether the step timed its parent and candidates together.
        rounds: Rounds of the step's first paired pass.
        confidence: Coverage of the intervals.
        others_cpu_share: Other processes' CPU share during the paired pass.
        probe_rounds: Rounds of each paired probe that grew the operators to the target (``None``:
            single measurements grew them).
        probe_passes: How many paired probes the step took.
        dropped_over_budget: Candidates left out for being over the latency budget.
        candidates: Every candidate, in the order they were grown.
        decided: Whether the step has been decided (a running search may not have yet).
        winner: The winner's trial number (``None``: the search stopped at this step, or it is undecided).
        sure: ``True``: the winner's interval is apart from the runner-up's; ``False``: they overlap
            and the point estimate decided; ``None``: unknown (no paired measurement).
        certainty: :attr:`sure` in words, for people.
        overlap: When not sure, the slopes both intervals hold.
        reason: The decision's reason (or the plan's, when no candidate was left).
        actions: What the step did beyond the method's steps (re-measurements), one line each.
    """

    step: int
    parent: int | None
    parent_latency_ms: float | None
    parent_start_ratio: float | None
    parent_miou: float | None
    target_ms: float | None
    paired: bool
    rounds: int | None
    confidence: float | None
    others_cpu_share: float | None
    probe_rounds: int | None
    probe_passes: int | None
    dropped_over_budget: int
    candidates: tuple[CandidateExplanation, ...]
    decided: bool
    winner: int | None
    sure: bool | None
    certainty: str
    overlap: tuple[float, float] | None
    reason: str
    actions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["candidates"] = [c.to_dict() for c in self.candidates]
        out["overlap"] = None if self.overlap is None else list(self.overlap)
        out["actions"] = list(self.actions)
        return out


@dataclasses.dataclass(frozen=True)
class RunExplanation:
    """Every greedy step of a run, explained; ``steps`` is empty for a run of another strategy.

    ``noise_floor_ms`` is the run's ``greedy.noise_floor_ms``: a latency gain below it counted as it.
    """

    run_dir: str
    strategy: str | None
    status: str | None
    stop_reason: str | None
    noise_floor_ms: float | None
    steps: tuple[StepExplanation, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "strategy": self.strategy,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "noise_floor_ms": self.noise_floor_ms,
            "steps": [s.to_dict() for s in self.steps],
        }


def explain_run(run_dir: str | Path, store: RunStore | None = None) -> RunExplanation:
    """Explain every greedy step of the run in ``run_dir`` (read only: nothing is written).

    Raises:
        UserError: ``run_dir`` is not a run folder (see :func:`~scaler.search.store.open_run`).
    """
    store = store if store is not None else open_run(run_dir)
    attrs = store.study.user_attrs
    everything = store.records()
    records = search_trials(everything)
    latest = latest_by_hash(records)
    by_number = {t.number: t for t in records}
    controls = {t.control_of: t for t in everything if t.is_control and t.complete}
    decisions = {d.step: d for d in GreedyStrategy.steps(attrs)}
    plans = {p.step: p for p in GreedyStrategy.plans(attrs)}
    floor = float(((attrs.get("space") or {}).get("greedy") or {}).get("noise_floor_ms") or 0.0)
    steps = []
    for s in sorted(set(plans) | set(decisions)):
        plan = plans.get(s) or _plan_from_trials(decisions[s], by_number)
        steps.append(_explain_step(plan, decisions.get(s), latest, by_number, controls, floor))
    strategy = attrs.get("strategy")
    return RunExplanation(
        run_dir=str(run_dir),
        strategy=None if strategy is None else str(strategy),
        status=attrs.get("status"),
        stop_reason=attrs.get("stop_reason"),
        noise_floor_ms=floor or None,
        steps=tuple(steps),
    )


def _plan_from_trials(decision: StepDecision, by_number: Mapping[int | None, TrialRecord]) -> StepPlan:
    """The plan of a step that recorded only its decision, as far as its candidates' trials tell it."""
    trials = [by_number[n] for n in decision.candidates if n in by_number and by_number[n].lps_arch is not None]
    return StepPlan(
        step=decision.step,
        parent=decision.parent if decision.parent is not None else -1,
        target_ms=next((t.target_ms for t in trials if t.target_ms is not None), None),
        reason="",
        dropped_over_budget=0,
        candidates=tuple(
            PlanCandidate(t.arch, t.arch_hash, t.operators, t.steplen or 0, t.latency_ms or math.nan)  # type: ignore[arg-type]
            for t in trials
        ),
    )


def _explain_step(
    plan: StepPlan,
    decision: StepDecision | None,
    latest: Mapping[str, TrialRecord],
    by_number: Mapping[int | None, TrialRecord],
    controls: Mapping[int | None, TrialRecord],
    floor_ms: float,
) -> StepExplanation:
    parent = by_number.get(plan.parent)
    parent_ms = plan.parent_ms if plan.paired else (parent.latency_ms if parent is not None else None)
    parent_miou = parent.miou if parent is not None else None
    # With inherited weights the gains are measured against the step's control (the parent trained further).
    control = controls.get(plan.parent)
    base_miou = control.miou if control is not None else parent_miou
    estimates = decision.estimates if decision is not None else {}
    rows = []
    for c in plan.candidates:
        t = latest.get(c.arch_hash)
        number = t.number if t is not None else None
        rows.append(
            _explain_candidate(
                c,
                t,
                estimates.get(number) if number is not None else None,
                None if decision is None or number is None else decision.slopes.get(number),
                parent_ms,
                base_miou,
                floor_ms,
                plan.rounds,
                winner=decision is not None and number is not None and number == decision.winner,
            )
        )
    sure = decision.sure if decision is not None else None
    confidence = plan.confidence if plan.confidence is not None else (decision.confidence if decision else None)
    if decision is None:
        certainty = "not decided yet" if plan.candidates else "no candidates"
    else:
        certainty = decision.certainty()
    return StepExplanation(
        step=plan.step,
        parent=plan.parent,
        parent_latency_ms=parent_ms,
        parent_start_ratio=plan.parent_start_ratio,
        parent_miou=parent_miou,
        target_ms=plan.target_ms,
        paired=plan.paired,
        rounds=plan.rounds,
        confidence=confidence,
        others_cpu_share=plan.others_cpu_share,
        probe_rounds=plan.probe_rounds,
        probe_passes=plan.probe_passes,
        dropped_over_budget=plan.dropped_over_budget,
        candidates=tuple(rows),
        decided=decision is not None,
        winner=decision.winner if decision is not None else None,
        sure=sure,
        certainty=certainty,
        overlap=decision.overlap if decision is not None else None,
        reason=decision.reason if decision is not None else plan.reason,
        actions=plan.actions + (decision.actions if decision is not None else ()),
    )


def _explain_candidate(
    c: PlanCandidate,
    t: TrialRecord | None,
    estimate: SlopeEstimate | None,
    slope: float | None,
    parent_ms: float | None,
    base_miou: float | None,
    floor_ms: float,
    step_rounds: int | None,
    *,
    winner: bool,
) -> CandidateExplanation:
    latency = t.latency_ms if t is not None and t.latency_ms is not None else c.latency_ms
    miou = t.miou if t is not None else None
    notes = []
    if t is None or t.pending:
        notes.append("not trained yet")
    elif t.pruned:
        notes.append(stopped_text(t))
    elif miou is None:
        notes.append(f"failed: {t.fail_reason or 'unknown reason'}")
    p = c.paired
    if p is not None and p.faster_than_parent:
        notes.append("FLAG: faster than its parent, also when re-measured")
    elif p is not None and p.remeasured:
        notes.append("re-measured: was faster than its parent")
    if estimate is not None:
        delta, low, high, rounds = estimate.delta_ms, estimate.delta_low, estimate.delta_high, estimate.rounds
    elif p is not None:
        delta, low, high, rounds = p.delta_ms, p.delta_low, p.delta_high, p.rounds
    else:
        delta = None if parent_ms is None else latency - parent_ms
        low = high = rounds = None
        if delta is not None and delta < 0:
            notes.append("faster than its parent, unchecked")
    if rounds is not None and step_rounds is not None and rounds != step_rounds:
        notes.append(f"latency gain from {rounds} rounds")
    if delta is not None and delta < floor_ms and miou is not None:
        notes.append(f"below the noise floor: counted as +{floor_ms:g} ms")
    return CandidateExplanation(
        trial=None if t is None else t.number,
        arch=c.arch.inline(),
        operators=c.operators,
        steplen=c.steplen,
        latency_ms=latency,
        start_ratio=None if p is None else p.start_ratio,
        delta_ms=delta,
        delta_low=low,
        delta_high=high,
        miou=miou,
        # The decision's own gain when it has one: against the step's control with inherited weights.
        miou_gain=estimate.miou_gain
        if estimate is not None
        else (None if miou is None or base_miou is None else miou - base_miou),
        slope=estimate.slope if estimate is not None else slope,
        slope_low=estimate.slope_low if estimate is not None else None,
        slope_high=estimate.slope_high if estimate is not None else None,
        rounds=rounds,
        winner=winner,
        notes=tuple(notes),
    )
