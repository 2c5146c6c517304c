"""Greedy progressive expansion, as the method defines it (see :mod:`scaler.search.expand`).

Each step is recorded in the run twice, as typed records with a stable JSON form: the
:class:`StepPlan` (``plan_<s>``: the candidates with their operators, steplen and latency, written
when proposed) and the :class:`StepDecision` (``step_<s>``: every candidate's slope, the winner, and
why). A resumed search reuses both, and the report reads them back with :meth:`GreedyStrategy.steps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from models import LPSNetArch
from scaler.search.expand import Scored, propose_step, select_next
from scaler.search.strategies.base import (
    Decision,
    SearchContext,
    Strategy,
    TrialRecord,
    latest_by_hash,
    register_strategy,
    search_trials,
)

__all__ = ["GreedyStrategy", "PlanCandidate", "StepDecision", "StepPlan"]

_PLAN_KEY = "plan_{}"
_STEP_KEY = "step_{}"


@dataclasses.dataclass(frozen=True)
class PlanCandidate:
    """One candidate of a step's plan: the grown architecture and how it was grown."""

    arch: LPSNetArch
    arch_hash: str
    operators: tuple[str, ...]
    steplen: int
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_dict(),
            "arch_hash": self.arch_hash,
            "operators": list(self.operators),
            "steplen": self.steplen,
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanCandidate:
        return cls(
            arch=LPSNetArch.from_dict(d["arch"]),
            arch_hash=str(d["arch_hash"]),
            operators=tuple(d.get("operators") or ()),
            steplen=int(d["steplen"]),
            latency_ms=float(d["latency_ms"]),
        )


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What step ``step`` proposes from its parent: the candidates within the budget, or why none.

    Args:
        step: The step (1 = the first expansion of the start network).
        parent: Trial number of the parent.
        target_ms: The step's target latency (``None`` when nothing could grow).
        reason: Why the plan is empty; ``""`` otherwise.
        dropped_over_budget: Candidates left out for being over the latency budget.
        candidates: The candidates to evaluate.
    """

    step: int
    parent: int
    target_ms: float | None
    reason: str
    dropped_over_budget: int
    candidates: tuple[PlanCandidate, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "parent": self.parent,
            "target_ms": self.target_ms,
            "reason": self.reason,
            "dropped_over_budget": self.dropped_over_budget,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepPlan:
        return cls(
            step=int(d["step"]),
            parent=int(d["parent"]),
            target_ms=None if d.get("target_ms") is None else float(d["target_ms"]),
            reason=str(d.get("reason") or ""),
            dropped_over_budget=int(d.get("dropped_over_budget") or 0),
            candidates=tuple(PlanCandidate.from_dict(c) for c in d.get("candidates") or ()),
        )


@dataclasses.dataclass(frozen=True)
class StepDecision:
    """How step ``step`` ended: each candidate's slope against the parent, the winner, and why.

    Args:
        step: The step.
        parent: Trial number of the parent (``None`` only in hand-made records).
        candidates: Trial numbers of the candidates.
        slopes: (mIoU gain) / (latency gain) per candidate number, mIoU as a fraction per ms;
            ``None`` for one that failed or cannot be compared.
        winner: The next parent's trial number, or ``None`` when the search stops here.
        reason: Why the winner won, or why there is none.
    """

    step: int
    parent: int | None
    candidates: tuple[int, ...]
    slopes: Mapping[int, float | None]
    winner: int | None
    reason: str

    @property
    def winner_slope(self) -> float | None:
        return None if self.winner is None else self.slopes.get(self.winner)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "parent": self.parent,
            "candidates": list(self.candidates),
            "slopes": {str(k): v for k, v in self.slopes.items()},
            "winner": self.winner,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, step: int | None = None) -> StepDecision:
        return cls(
            step=int(d["step"]) if d.get("step") is not None else int(step or 0),
            parent=None if d.get("parent") is None else int(d["parent"]),
            candidates=tuple(int(c) for c in d.get("candidates") or ()),
            slopes={int(k): (None if v is None else float(v)) for k, v in (d.get("slopes") or {}).items()},
            winner=None if d.get("winner") is None else int(d["winner"]),
            reason=str(d.get("reason") or ""),
        )


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
        history = search_trials(history)
        if any(t.pending for t in history):
            return Decision.wait()
        latest = latest_by_hash(history)
        start_hash = sp.start.arch_hash()
        if start_hash not in latest:
            return Decision.propose([TrialRecord(sp.start, strategy=self.name, step=0, parent=None, steplen=0)])
        parent = latest[start_hash]
        if not parent.complete:
            return Decision.done(f"the start network failed: {parent.fail_reason or 'unknown reason'}")
        budget = sp.stopping.latency_budget_ms
        step = 1
        while True:
            if step > sp.stopping.max_steps:
                return Decision.done(f"step limit reached ({sp.stopping.max_steps} steps)")
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
            missing = [c for c in plan.candidates if c.arch_hash not in latest]
            if missing:
                return Decision.propose(
                    [
                        TrialRecord(
                            c.arch,
                            strategy=self.name,
                            step=step,
                            parent=parent.number,
                            operators=c.operators,
                            steplen=c.steplen,
                            target_ms=plan.target_ms,
                        )
                        for c in missing
                    ]
                )
            stored = ctx.get(_STEP_KEY.format(step))
            if stored is None:
                decision = self._decide(step, parent, plan, latest, ctx)
                ctx.put(_STEP_KEY.format(step), decision.to_dict())
            else:
                decision = StepDecision.from_dict(stored, step=step)
            if decision.winner is None:
                return Decision.done(f"step {step}: {decision.reason}")
            parent = next(t for t in latest.values() if t.number == decision.winner)
            step += 1

    def _plan(self, step: int, parent: TrialRecord, ctx: SearchContext) -> StepPlan:
        sp = self.space
        arch = parent.lps_arch
        assert arch is not None and parent.number is not None  # the start and its expansions are LPS-Nets
        candidates = propose_step(arch, sp.operators, ctx.latency_ms, sp.constraints, max_steplen=sp.greedy.max_steplen)
        budget = sp.stopping.latency_budget_ms
        kept = [c for c in candidates if budget is None or c.latency_ms <= budget]
        over = len(candidates) - len(kept)
        reason = ""
        if not candidates:
            reason = "no operator can grow the network within the constraints"
        elif not kept:
            reason = f"every candidate is over the latency budget of {budget:g} ms"
        target = candidates[0].target_ms if candidates else None
        ctx.log(
            f"step {step}: parent #{parent.number} {arch.inline()} ({parent.latency_ms:.2f} ms, "
            f"mIoU {100 * (parent.miou or 0):.2f}); target {target if target is None else round(target, 3)} ms; "
            f"{len(kept)} candidates" + (f" ({over} over budget, dropped)" if over else "")
        )
        return StepPlan(
            step=step,
            parent=parent.number,
            target_ms=target,
            reason=reason,
            dropped_over_budget=over,
            candidates=tuple(
                PlanCandidate(c.arch, c.arch.arch_hash(), tuple(c.operators), c.steplen, c.latency_ms) for c in kept
            ),
        )

    def _decide(
        self, step: int, parent: TrialRecord, plan: StepPlan, latest: dict[str, TrialRecord], ctx: SearchContext
    ) -> StepDecision:
        trials = [latest[c.arch_hash] for c in plan.candidates]
        scored = [Scored(t.number, t.latency_ms if t.latency_ms is not None else float("inf"), t.miou) for t in trials]
        sel = select_next(
            Scored(parent.number, parent.latency_ms or 0.0, parent.miou),
            scored,
            min_latency_gain_ms=self.space.greedy.noise_floor_ms,
        )
        rows = []
        for t in trials:
            slope = sel.slopes.get(t.number)
            rows.append(
                f"#{t.number} {'+'.join(t.operators)} x{t.steplen}: "
                f"{t.latency_ms:.2f} ms, mIoU {'failed' if t.miou is None else f'{100 * t.miou:.2f}'}, "
                f"slope {'-' if slope is None else f'{100 * slope:.4g} points/ms'}"
            )
        ctx.log(f"step {step} decided: " + "; ".join(rows))
        ctx.log(
            f"step {step} winner: "
            + (f"#{sel.winner} ({sel.reason})" if sel.winner is not None else f"none ({sel.reason})")
        )
        return StepDecision(
            step=step,
            parent=parent.number,
            candidates=tuple(t.number for t in trials if t.number is not None),
            slopes=dict(sel.slopes),
            winner=sel.winner,
            reason=sel.reason,
        )
