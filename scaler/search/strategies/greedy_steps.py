"""The greedy step's records, typed, with a stable JSON form: what a step planned and how it decided.

A run stores each step twice (as the study's user attributes ``plan_<s>`` and ``step_<s>``):

- :class:`StepPlan`: the candidates grown from the parent, each with the latency the step uses
  (:class:`PlanCandidate`; with :class:`PairedLatency` when the step timed the parent and its
  candidates together), and what the planning did (a target re-measured, a candidate re-measured);
- :class:`StepDecision`: every candidate's slope (with its interval, :class:`SlopeEstimate`, when
  the plan was paired), the winner, how sure the decision was, and what was done to make it.

Runs made before paired measurement have none of the new keys; they read back, and write back,
exactly as stored (every new field is left out of ``to_dict`` while unset).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from models import LPSNetArch

__all__ = ["PairedLatency", "PlanCandidate", "SlopeEstimate", "StepDecision", "StepPlan", "TargetCheck"]


def _store(x: float) -> float | None:
    """A number as stored: an unbounded interval end (too few rounds for the confidence) is ``None``."""
    return x if math.isfinite(x) else None


def _load(x: Any, unbounded: float) -> float:
    return unbounded if x is None else float(x)


@dataclasses.dataclass(frozen=True)
class PairedLatency:
    """A candidate's latency from the step's paired pass: timed in the same rounds as its parent.

    Args:
        median_ms: The candidate's median over the rounds.
        delta_ms: Its latency minus the parent's: the median of the per-round differences.
        delta_low: Lower end of the interval of ``delta_ms`` (``-inf``: unbounded).
        delta_high: Upper end (``inf``: unbounded).
        rel_spread: IQR / median of the candidate's samples.
        rounds: Rounds of the pass these numbers come from.
        faster_than_parent: Its whole interval is below 0 (after a re-measurement, when ``remeasured``):
            a grown network timed faster than the one it grew from, which the measurement cannot explain.
        remeasured: The numbers come from a second pass, because the first timed it faster than its parent.
        start_ratio: Its latency as a multiple of the search's start network's, timed in the same pass
            (the median per-round ratio): what stays put when the machine's speed drifts between
            windows or runs. ``None`` in runs made before it was recorded.
    """

    median_ms: float
    delta_ms: float
    delta_low: float
    delta_high: float
    rel_spread: float
    rounds: int
    faster_than_parent: bool = False
    remeasured: bool = False
    start_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "median_ms": self.median_ms,
            "delta_ms": self.delta_ms,
            "delta_low": _store(self.delta_low),
            "delta_high": _store(self.delta_high),
            "rel_spread": self.rel_spread,
            "rounds": self.rounds,
            "faster_than_parent": self.faster_than_parent,
            "remeasured": self.remeasured,
        }
        if self.start_ratio is not None:
            out["start_ratio"] = self.start_ratio
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedLatency:
        return cls(
            median_ms=float(d["median_ms"]),
            delta_ms=float(d["delta_ms"]),
            delta_low=_load(d.get("delta_low"), -math.inf),
            delta_high=_load(d.get("delta_high"), math.inf),
            rel_spread=float(d.get("rel_spread") or 0.0),
            rounds=int(d["rounds"]),
            faster_than_parent=bool(d.get("faster_than_parent", False)),
            remeasured=bool(d.get("remeasured", False)),
            start_ratio=None if d.get("start_ratio") is None else float(d["start_ratio"]),
        )


@dataclasses.dataclass(frozen=True)
class PlanCandidate:
    """One candidate of a step's plan: the grown architecture, how it was grown, and its latency.

    Args:
        arch: The grown architecture.
        arch_hash: Its hash.
        operators: Operators that grow the parent into it (several when they give the same network).
        steplen: Times they were applied.
        latency_ms: The latency the step uses: the paired median when the step was paired, else the
            single measurement of the grow-to-target loop.
        quick_ms: The grow-to-target loop's single measurement (paired steps only).
        paired: The paired numbers (paired steps only).
        latency: The latency record the candidate's trial carries (paired steps only; a plain step's
            trial is measured when queued).
    """

    arch: LPSNetArch
    arch_hash: str
    operators: tuple[str, ...]
    steplen: int
    latency_ms: float
    quick_ms: float | None = None
    paired: PairedLatency | None = None
    latency: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arch": self.arch.to_dict(),
            "arch_hash": self.arch_hash,
            "operators": list(self.operators),
            "steplen": self.steplen,
            "latency_ms": self.latency_ms,
        }
        if self.paired is not None:
            out["quick_ms"] = self.quick_ms
            out["paired"] = self.paired.to_dict()
        if self.latency is not None:
            out["latency"] = dict(self.latency)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanCandidate:
        return cls(
            arch=LPSNetArch.from_dict(d["arch"]),
            arch_hash=str(d["arch_hash"]),
            operators=tuple(d.get("operators") or ()),
            steplen=int(d["steplen"]),
            latency_ms=float(d["latency_ms"]),
            quick_ms=None if d.get("quick_ms") is None else float(d["quick_ms"]),
            paired=PairedLatency.from_dict(d["paired"]) if isinstance(d.get("paired"), Mapping) else None,
            latency=dict(d["latency"]) if isinstance(d.get("latency"), Mapping) else None,
        )


@dataclasses.dataclass(frozen=True)
class TargetCheck:
    """A step target no grown candidate came near, measured again (without the cache) before planning.

    Args:
        operator: The operator whose one-step expansion set the target.
        first_ms: The latency that set the target.
        again_ms: The same network measured again.
    """

    operator: str
    first_ms: float
    again_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"operator": self.operator, "first_ms": self.first_ms, "again_ms": self.again_ms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetCheck:
        return cls(str(d["operator"]), float(d["first_ms"]), float(d["again_ms"]))


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
        parent_ms: The parent's median in the paired pass (``None``: the step was not paired).
        rounds: Rounds of the paired pass.
        confidence: Coverage of the intervals.
        others_cpu_share: Other processes' share of the CPUs during the paired pass.
        under_load: The paired pass was timed while other processes used the machine.
        target_check: The target, measured again because no candidate came near it.
        parent_start_ratio: The parent's latency as a multiple of the start network's, in the paired pass.
        probe_rounds: Rounds of each paired probe that grew the operators to the target (``None``:
            single measurements grew them).
        probe_passes: How many such probes the step took.
        actions: What the planning did beyond the method's steps, one line each.
    """

    step: int
    parent: int
    target_ms: float | None
    reason: str
    dropped_over_budget: int
    candidates: tuple[PlanCandidate, ...]
    parent_ms: float | None = None
    rounds: int | None = None
    confidence: float | None = None
    others_cpu_share: float | None = None
    under_load: bool = False
    target_check: TargetCheck | None = None
    parent_start_ratio: float | None = None
    probe_rounds: int | None = None
    probe_passes: int | None = None
    actions: tuple[str, ...] = ()

    @property
    def paired(self) -> bool:
        """Whether the step's latencies come from a paired pass (runs before it have none)."""
        return self.parent_ms is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "parent": self.parent,
            "target_ms": self.target_ms,
            "reason": self.reason,
            "dropped_over_budget": self.dropped_over_budget,
            "candidates": [c.to_dict() for c in self.candidates],
        }
        if self.paired:
            out.update(
                parent_ms=self.parent_ms,
                rounds=self.rounds,
                confidence=self.confidence,
                others_cpu_share=self.others_cpu_share,
                under_load=self.under_load,
            )
        if self.target_check is not None:
            out["target_check"] = self.target_check.to_dict()
        for key in ("parent_start_ratio", "probe_rounds", "probe_passes"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.actions:
            out["actions"] = list(self.actions)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepPlan:
        return cls(
            step=int(d["step"]),
            parent=int(d["parent"]),
            target_ms=None if d.get("target_ms") is None else float(d["target_ms"]),
            reason=str(d.get("reason") or ""),
            dropped_over_budget=int(d.get("dropped_over_budget") or 0),
            candidates=tuple(PlanCandidate.from_dict(c) for c in d.get("candidates") or ()),
            parent_ms=None if d.get("parent_ms") is None else float(d["parent_ms"]),
            rounds=None if d.get("rounds") is None else int(d["rounds"]),
            confidence=None if d.get("confidence") is None else float(d["confidence"]),
            others_cpu_share=None if d.get("others_cpu_share") is None else float(d["others_cpu_share"]),
            under_load=bool(d.get("under_load", False)),
            target_check=TargetCheck.from_dict(d["target_check"]) if d.get("target_check") else None,
            parent_start_ratio=None if d.get("parent_start_ratio") is None else float(d["parent_start_ratio"]),
            probe_rounds=None if d.get("probe_rounds") is None else int(d["probe_rounds"]),
            probe_passes=None if d.get("probe_passes") is None else int(d["probe_passes"]),
            actions=tuple(str(a) for a in d.get("actions") or ()),
        )


@dataclasses.dataclass(frozen=True)
class SlopeEstimate:
    """A candidate's slope against its parent, with the interval its latency gain allows.

    The slope is ``miou_gain / max(delta_ms, floor)``: mIoU gain (a point value: training is
    deterministic) over latency gain (measured, paired). ``floor`` is the greedy noise floor
    (``greedy.noise_floor_ms``): a latency gain below it cannot be told from zero, so it is raised to
    it, and a gain for free ranks above any paid one, a loss for free below any paid loss. The same
    rule is applied to both ends of the latency-gain interval, so the slope's interval is that of
    ``miou_gain / max(d, floor)`` over ``d`` in ``[delta_low, delta_high]``; an unbounded upper end
    gives a slope end of 0.

    Args:
        delta_ms: Latency gain over the parent (ms; paired).
        delta_low: Lower end of its interval.
        delta_high: Upper end.
        miou_gain: mIoU gain over the parent (a fraction).
        slope: The point slope (mIoU fraction per ms).
        slope_low: Lower end of its interval.
        slope_high: Upper end.
        rounds: Rounds of the paired pass the latency gain comes from.
    """

    delta_ms: float
    delta_low: float
    delta_high: float
    miou_gain: float
    slope: float
    slope_low: float
    slope_high: float
    rounds: int

    @classmethod
    def of(
        cls, miou_gain: float, delta_ms: float, delta_low: float, delta_high: float, *, floor_ms: float, rounds: int
    ) -> SlopeEstimate:
        """The slope and its interval from a latency gain and its interval (see the class docstring)."""
        ends = [miou_gain / max(d, floor_ms) for d in (delta_low, delta_high)]
        return cls(
            delta_ms=delta_ms,
            delta_low=delta_low,
            delta_high=delta_high,
            miou_gain=miou_gain,
            slope=miou_gain / max(delta_ms, floor_ms),
            slope_low=min(ends),
            slope_high=max(ends),
            rounds=rounds,
        )

    def overlap(self, other: SlopeEstimate) -> tuple[float, float] | None:
        """The slopes both intervals hold, or ``None`` when they are apart."""
        low, high = max(self.slope_low, other.slope_low), min(self.slope_high, other.slope_high)
        return (low, high) if low <= high else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta_ms": self.delta_ms,
            "delta_low": _store(self.delta_low),
            "delta_high": _store(self.delta_high),
            "miou_gain": self.miou_gain,
            "slope": self.slope,
            "slope_low": self.slope_low,
            "slope_high": self.slope_high,
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlopeEstimate:
        return cls(
            delta_ms=float(d["delta_ms"]),
            delta_low=_load(d.get("delta_low"), -math.inf),
            delta_high=_load(d.get("delta_high"), math.inf),
            miou_gain=float(d["miou_gain"]),
            slope=float(d["slope"]),
            slope_low=float(d["slope_low"]),
            slope_high=float(d["slope_high"]),
            rounds=int(d["rounds"]),
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
        estimates: Each compared candidate's slope with its interval (paired steps only).
        sure: Whether the winner's slope interval is apart from every other's (``None``: the step
            was not paired, so nothing is known of its certainty).
        confidence: Coverage of the intervals.
        overlap: When not sure: the slopes both the winner's and the runner-up's intervals hold.
        runner_up: The candidate with the second-best slope, which the winner was judged against
            (paired steps with a winner and more than one compared candidate).
        actions: What was done to decide beyond the method's steps (more paired rounds), one line each.
    """

    step: int
    parent: int | None
    candidates: tuple[int, ...]
    slopes: Mapping[int, float | None]
    winner: int | None
    reason: str
    estimates: Mapping[int, SlopeEstimate] = dataclasses.field(default_factory=dict)
    sure: bool | None = None
    confidence: float | None = None
    overlap: tuple[float, float] | None = None
    runner_up: int | None = None
    actions: tuple[str, ...] = ()

    @property
    def winner_slope(self) -> float | None:
        return None if self.winner is None else self.slopes.get(self.winner)

    def certainty(self) -> str:
        """How sure the decision was, in words."""
        if self.sure is None:
            return "unknown (no paired measurement)"
        if self.winner is None:
            return "no winner (mIoU gains are exact: training is deterministic)"
        level = f"{self.confidence or 0:.0%}"
        if self.runner_up is None:
            return f"sure at {level}: the only candidate compared"
        if self.sure or self.overlap is None:
            return f"sure at {level}: apart from the runner-up #{self.runner_up}"
        estimate = self.estimates.get(self.winner)
        rounds = f" after {estimate.rounds} paired rounds" if estimate is not None else ""
        return (
            f"not sure: its {level} interval overlaps the runner-up #{self.runner_up}'s over "
            f"{100 * self.overlap[0]:.4g} to {100 * self.overlap[1]:.4g} points/ms{rounds}; the point estimate decided"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "parent": self.parent,
            "candidates": list(self.candidates),
            "slopes": {str(k): v for k, v in self.slopes.items()},
            "winner": self.winner,
            "reason": self.reason,
        }
        if self.sure is not None:
            out.update(
                estimates={str(k): e.to_dict() for k, e in self.estimates.items()},
                sure=self.sure,
                confidence=self.confidence,
                overlap=None if self.overlap is None else list(self.overlap),
                runner_up=self.runner_up,
            )
        if self.actions:
            out["actions"] = list(self.actions)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, step: int | None = None) -> StepDecision:
        overlap = d.get("overlap")
        return cls(
            step=int(d["step"]) if d.get("step") is not None else int(step or 0),
            parent=None if d.get("parent") is None else int(d["parent"]),
            candidates=tuple(int(c) for c in d.get("candidates") or ()),
            slopes={int(k): (None if v is None else float(v)) for k, v in (d.get("slopes") or {}).items()},
            winner=None if d.get("winner") is None else int(d["winner"]),
            reason=str(d.get("reason") or ""),
            estimates={int(k): SlopeEstimate.from_dict(v) for k, v in (d.get("estimates") or {}).items()},
            sure=None if d.get("sure") is None else bool(d["sure"]),
            confidence=None if d.get("confidence") is None else float(d["confidence"]),
            overlap=None if overlap is None else (float(overlap[0]), float(overlap[1])),
            runner_up=None if d.get("runner_up") is None else int(d["runner_up"]),
            actions=tuple(str(a) for a in d.get("actions") or ()),
        )
