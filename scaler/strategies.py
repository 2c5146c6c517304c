"""Search strategies: greedy progressive expansion (the method) and Optuna-sampler baselines.

A strategy is a pure function of the run's history: :meth:`Strategy.propose` looks at every trial
so far and says what to do next (evaluate these architectures, wait for pending ones, or stop).
Because it keeps no state of its own, a search that is killed and started again makes the same
decisions from the stored trials, and the trials already finished are never evaluated again.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from models import LPSNetArch

from .errors import UserError
from .expand import Constraints, Scored, propose_step, select_next
from .space import SearchSpace
from .store import arch_from_params, arch_params

__all__ = [
    "STRATEGIES",
    "Decision",
    "GreedyStrategy",
    "Proposal",
    "SamplerStrategy",
    "SearchContext",
    "Strategy",
    "TrialRecord",
    "make_strategy",
]


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """What a strategy sees of one trial."""

    number: int
    state: TrialState
    arch: LPSNetArch
    arch_hash: str
    step: int | None
    latency_ms: float | None
    miou: float | None
    attrs: dict[str, Any]

    @property
    def pending(self) -> bool:
        return self.state in (TrialState.WAITING, TrialState.RUNNING)

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        lat = (t.user_attrs.get("latency") or {}).get("median_ms")
        return cls(
            number=t.number,
            state=t.state,
            arch=LPSNetArch.from_dict(t.user_attrs["arch"]),
            arch_hash=t.user_attrs["arch_hash"],
            step=t.user_attrs.get("step"),
            latency_ms=lat,
            miou=t.values[1] if t.state == TrialState.COMPLETE and t.values else None,
            attrs=dict(t.user_attrs),
        )


@dataclasses.dataclass(frozen=True)
class Proposal:
    """An architecture to evaluate, with the attributes its trial carries (step, parent, operators...)."""

    arch: LPSNetArch
    attrs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Decision:
    """``propose`` (evaluate ``proposals``), ``wait`` (pending trials must finish), or ``done`` (``reason``)."""

    kind: str
    proposals: tuple[Proposal, ...] = ()
    reason: str = ""

    @classmethod
    def wait(cls) -> Decision:
        return cls("wait")

    @classmethod
    def done(cls, reason: str) -> Decision:
        return cls("done", reason=reason)


@dataclasses.dataclass
class SearchContext:
    """What a strategy may use: the space, a (cached) latency measurement, the run's key-value records."""

    space: SearchSpace
    latency: Callable[[LPSNetArch], dict[str, Any]]
    get: Callable[[str], Any]
    put: Callable[[str, Any], None]
    log: Callable[[str], None] = lambda message: None

    def latency_ms(self, arch: LPSNetArch) -> float:
        return float(self.latency(arch)["median_ms"])


class Strategy(abc.ABC):
    """Base class. Subclasses implement :meth:`propose`; they must keep no state between calls
    beyond their constructor arguments, so that a resumed search decides as the first one did."""

    name: str = ""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = seed

    @abc.abstractmethod
    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        """Decide the next move from every trial so far."""


def _latest_by_hash(history: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
    """For each architecture, its complete trial if any, else its most recent one."""
    out: dict[str, TrialRecord] = {}
    for t in sorted(history, key=lambda t: t.number):
        current = out.get(t.arch_hash)
        if current is None or not current.complete:
            out[t.arch_hash] = t
    return out


class GreedyStrategy(Strategy):
    """Progressive expansion as the method defines it (see :mod:`scaler.expand`).

    Records per step ``s`` in the run: ``plan_<s>`` (the candidates with their operators, steplen
    and latency, written when proposed) and ``step_<s>`` (every candidate's slope, the winner, and
    why), so the decision at each step can be read back and a resumed search reuses both.
    """

    name = "greedy"

    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        sp = self.space
        if any(t.pending for t in history):
            return Decision.wait()
        latest = _latest_by_hash(history)
        start_hash = sp.start.arch_hash()
        if start_hash not in latest:
            return Decision(
                "propose",
                (
                    Proposal(
                        sp.start, {"step": 0, "parent": None, "operators": [], "steplen": 0, "strategy": self.name}
                    ),
                ),
            )
        parent = latest[start_hash]
        if not parent.complete:
            return Decision.done(f"the start network failed: {parent.attrs.get('fail_reason', 'unknown reason')}")
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
            plan = ctx.get(f"plan_{step}")
            if plan is None:
                plan = self._plan(step, parent, ctx)
                ctx.put(f"plan_{step}", plan)
            if not plan["candidates"]:
                return Decision.done(plan["reason"])
            missing = [c for c in plan["candidates"] if c["arch_hash"] not in latest]
            if missing:
                return Decision(
                    "propose",
                    tuple(
                        Proposal(
                            LPSNetArch.from_dict(c["arch"]),
                            {
                                "step": step,
                                "parent": parent.number,
                                "operators": c["operators"],
                                "steplen": c["steplen"],
                                "target_ms": plan["target_ms"],
                                "strategy": self.name,
                            },
                        )
                        for c in missing
                    ),
                )
            decision = ctx.get(f"step_{step}")
            if decision is None:
                decision = self._decide(step, parent, plan, latest, ctx)
                ctx.put(f"step_{step}", decision)
            if decision["winner"] is None:
                return Decision.done(f"step {step}: {decision['reason']}")
            parent = next(t for t in latest.values() if t.number == decision["winner"])
            step += 1

    def _plan(self, step: int, parent: TrialRecord, ctx: SearchContext) -> dict[str, Any]:
        sp = self.space
        candidates = propose_step(
            parent.arch, sp.operators, ctx.latency_ms, sp.constraints, max_steplen=sp.greedy.max_steplen
        )
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
            f"step {step}: parent #{parent.number} {parent.arch.inline()} ({parent.latency_ms:.2f} ms, "
            f"mIoU {100 * (parent.miou or 0):.2f}); target {target if target is None else round(target, 3)} ms; "
            f"{len(kept)} candidates" + (f" ({over} over budget, dropped)" if over else "")
        )
        return {
            "step": step,
            "parent": parent.number,
            "target_ms": target,
            "reason": reason,
            "dropped_over_budget": over,
            "candidates": [
                {
                    "arch": c.arch.to_dict(),
                    "arch_hash": c.arch.arch_hash(),
                    "operators": list(c.operators),
                    "steplen": c.steplen,
                    "latency_ms": c.latency_ms,
                }
                for c in kept
            ],
        }

    def _decide(
        self, step: int, parent: TrialRecord, plan: dict[str, Any], latest: dict[str, TrialRecord], ctx: SearchContext
    ) -> dict[str, Any]:
        trials = [latest[c["arch_hash"]] for c in plan["candidates"]]
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
                f"#{t.number} {'+'.join(t.attrs.get('operators', []))} x{t.attrs.get('steplen')}: "
                f"{t.latency_ms:.2f} ms, mIoU {'failed' if t.miou is None else f'{100 * t.miou:.2f}'}, "
                f"slope {'-' if slope is None else f'{100 * slope:.4g} points/ms'}"
            )
        ctx.log(f"step {step} decided: " + "; ".join(rows))
        ctx.log(
            f"step {step} winner: "
            + (f"#{sel.winner} ({sel.reason})" if sel.winner is not None else f"none ({sel.reason})")
        )
        return {
            "step": step,
            "parent": parent.number,
            "candidates": [t.number for t in trials],
            "slopes": {str(k): v for k, v in sel.slopes.items()},
            "winner": sel.winner,
            "reason": sel.reason,
        }


# Proposals over the latency budget a baseline may make in a row before it gives up.
MAX_REJECTED_IN_A_ROW = 200


class SamplerStrategy(Strategy):
    """A baseline: an Optuna sampler over the same architectures (depth, width, resolution per path).

    Each call builds a shadow study holding every measured trial of the run and asks its sampler
    for the next architectures. Depth and width are drawn on a log scale (width as a multiple of the
    width divisor): the ranges span one to two orders of magnitude, and uniform draws would put
    nearly every network far above any CPU-scale budget. A proposal over the latency budget is told
    to the shadow study at once as infeasible (``latency_budget`` constraint) and recorded in the
    run untrained, and the sampler asks again, up to :data:`MAX_REJECTED_IN_A_ROW` times in a row.
    The shadow trial's system attributes (NSGA-II's generation, say) are kept in the run, and the
    sampler's seed derives from the number of proposals so far, so a resumed run proposes as the
    first one would have.
    """

    def __init__(self, space: SearchSpace, name: str, seed: int = 0, batch: int = 1) -> None:
        super().__init__(space, seed)
        if space.stopping.max_trials is None:
            raise UserError(f"strategy {name!r} needs stopping.max_trials in the search space (its budget)")
        self.name = name
        self.batch = batch

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if self.name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
        raise UserError(f"unknown strategy {self.name!r}")

    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        sp = self.space
        if any(t.pending for t in history):
            return Decision.wait()
        mine = [t for t in history if t.attrs.get("strategy") == self.name and "retry_of" not in t.attrs]
        trained = [t for t in mine if not t.attrs.get("over_budget")]
        if len(trained) >= sp.stopping.max_trials:
            return Decision.done(f"trial limit reached ({sp.stopping.max_trials})")
        rejected_in_a_row = 0
        for t in reversed(mine):
            if not t.attrs.get("over_budget"):
                break
            rejected_in_a_row += 1
        dists = sampler_distributions(sp.constraints)
        shadow = optuna.create_study(
            directions=["minimize", "maximize"], sampler=self._sampler(self.seed * 7919 + len(mine))
        )
        budget = sp.stopping.latency_budget_ms
        for t in history:
            if t.latency_ms is None or not (t.complete or t.attrs.get("over_budget")):
                continue
            shadow.add_trial(
                optuna.trial.create_trial(
                    params=sampler_params(t.arch, sp.constraints),
                    distributions=dists,
                    values=[t.latency_ms, t.miou if t.miou is not None else 0.0],
                    system_attrs={
                        k: v
                        for k, v in (t.attrs.get("sampler_system_attrs") or {}).items()
                        if not k.startswith("constraints")  # given afresh below
                    },
                    constraints={"latency_budget": 0.0 if budget is None else t.latency_ms - budget},
                )
            )
        proposals: list[Proposal] = []
        seen = {t.arch_hash for t in history}
        wanted = min(self.batch, sp.stopping.max_trials - len(trained))
        found = 0
        while found < wanted:
            if rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
                if proposals:  # record what was found first; the next call stops
                    break
                return Decision.done(
                    f"{MAX_REJECTED_IN_A_ROW} proposals in a row were over the latency budget of {budget:g} ms "
                    "or already evaluated"
                )
            trial = shadow.ask(dists)
            arch = _repair(sampler_to_params(trial.params, sp.constraints), sp)
            if arch.arch_hash() in seen:
                shadow.tell(trial, state=TrialState.FAIL)
                rejected_in_a_row += 1
                continue
            seen.add(arch.arch_hash())
            attrs: dict[str, Any] = {"step": None, "parent": None, "operators": [], "steplen": 0, "strategy": self.name}
            if budget is not None:
                attrs["latency"] = ctx.latency(arch)
                ms = float(attrs["latency"]["median_ms"])
                trial.set_constraint("latency_budget", ms - budget)
                shadow.tell(trial, values=[ms, 0.0])
            else:
                shadow.tell(trial, state=TrialState.FAIL)
            attrs["sampler_system_attrs"] = dict(shadow.trials[trial.number].system_attrs)
            if budget is not None and ms > budget:
                attrs["over_budget"] = True
                rejected_in_a_row += 1
            else:
                rejected_in_a_row = 0
                found += 1
            proposals.append(Proposal(arch, attrs))
        if not proposals:
            return Decision.done("the sampler proposes only architectures already evaluated")
        return Decision("propose", tuple(proposals))


def _repair(params: dict[str, Any], space: SearchSpace) -> LPSNetArch:
    """Snap sampled factors to the 1/8 grid the expansion uses; keep at least one path."""
    p = dict(params)
    for i in range(3):
        p[f"r{i + 1}"] = round(float(p[f"r{i + 1}"]) * 8) / 8
    if all(p[f"r{i + 1}"] == 0 for i in range(3)):
        p["r1"] = 0.125
    arch = arch_from_params(p, space.start)
    while True:
        try:
            arch.check_input_size(*space.input_size)
            return arch
        except ValueError:
            arch = dataclasses.replace(arch, resolution=tuple(min(1.0, r * 2) for r in arch.resolution))


def sampler_distributions(constraints: Constraints) -> dict[str, Any]:
    """The baselines' view of the space: depth and width multiples on a log scale, resolution linear."""
    div = constraints.width_divisor
    dists: dict[str, Any] = {f"d{i + 1}": IntDistribution(1, constraints.max_depth, log=True) for i in range(5)}
    dists.update({f"k{i + 1}": IntDistribution(1, constraints.max_width // div, log=True) for i in range(5)})
    dists.update({f"r{i + 1}": FloatDistribution(0.0, constraints.max_resolution) for i in range(3)})
    return dists


def sampler_params(arch: LPSNetArch, constraints: Constraints) -> dict[str, Any]:
    """An architecture in :func:`sampler_distributions`' terms (widths rounded to the divisor grid)."""
    params = arch_params(arch)
    div = constraints.width_divisor
    top = constraints.max_width // div
    for i in range(5):
        params[f"k{i + 1}"] = min(top, max(1, round(params.pop(f"w{i + 1}") / div)))
        params[f"d{i + 1}"] = min(constraints.max_depth, max(1, params[f"d{i + 1}"]))
    return params


def sampler_to_params(params: dict[str, Any], constraints: Constraints) -> dict[str, Any]:
    out = dict(params)
    for i in range(5):
        out[f"w{i + 1}"] = int(out.pop(f"k{i + 1}")) * constraints.width_divisor
    return out


STRATEGIES = ("greedy", "random", "tpe", "nsga2")


def make_strategy(name: str, space: SearchSpace, seed: int = 0, batch: int = 1) -> Strategy:
    if name == "greedy":
        return GreedyStrategy(space, seed)
    if name in ("random", "tpe", "nsga2"):
        return SamplerStrategy(space, name, seed, batch)
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
