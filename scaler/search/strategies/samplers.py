"""Optuna-sampler baselines (random, TPE, NSGA-II) over the same architectures, under a latency budget."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from models import LPSNetArch
from scaler.errors import UserError
from scaler.search.expand import Constraints
from scaler.search.space import SearchSpace
from scaler.search.store import arch_from_params, arch_params
from scaler.search.strategies.base import (
    Decision,
    SearchContext,
    Strategy,
    TrialRecord,
    register_strategy,
    search_trials,
)

__all__ = [
    "MAX_REJECTED_IN_A_ROW",
    "NSGA2Strategy",
    "RandomStrategy",
    "SamplerStrategy",
    "TPEStrategy",
    "sampler_distributions",
    "sampler_params",
    "sampler_to_params",
]


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
    first one would have. Subclasses give the sampler (:meth:`sampler`).

    Raises:
        UserError: The space has no ``stopping.max_trials`` (a baseline's budget).
    """

    def __init__(self, space: SearchSpace, seed: int = 0, batch: int = 1) -> None:
        super().__init__(space, seed, batch)
        if space.stopping.max_trials is None:
            raise UserError(f"strategy {self.name!r} needs stopping.max_trials in the search space (its budget)")

    @abc.abstractmethod
    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The Optuna sampler, seeded with ``seed``."""

    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        sp = self.space
        assert sp.stopping.max_trials is not None  # checked in __init__
        history = search_trials(history)
        if any(t.pending for t in history):
            return Decision.wait()
        mine = [t for t in history if t.strategy == self.name and t.retry_of is None]
        trained = [t for t in mine if not t.over_budget]
        if len(trained) >= sp.stopping.max_trials:
            return Decision.done(f"trial limit reached ({sp.stopping.max_trials})")
        rejected_in_a_row = 0
        for t in reversed(mine):
            if not t.over_budget:
                break
            rejected_in_a_row += 1
        dists = sampler_distributions(sp.constraints)
        shadow = optuna.create_study(
            directions=["minimize", "maximize"], sampler=self.sampler(self.seed * 7919 + len(mine))
        )
        budget = sp.stopping.latency_budget_ms
        for t in history:
            if t.latency_ms is None or t.lps_arch is None or not (t.complete or t.over_budget):
                continue
            shadow.add_trial(
                optuna.trial.create_trial(
                    params=sampler_params(t.lps_arch, sp.constraints),
                    distributions=dists,
                    values=[t.latency_ms, t.miou if t.miou is not None else 0.0],
                    system_attrs={
                        k: v
                        for k, v in (t.sampler_system_attrs or {}).items()
                        if not k.startswith("constraints")  # given afresh below
                    },
                    constraints={"latency_budget": 0.0 if budget is None else t.latency_ms - budget},
                )
            )
        proposals: list[TrialRecord] = []
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
            latency = None
            over = False
            if budget is not None:
                latency = ctx.latency(arch)
                ms = float(latency["median_ms"])
                trial.set_constraint("latency_budget", ms - budget)
                shadow.tell(trial, values=[ms, 0.0])
                over = ms > budget
            else:
                shadow.tell(trial, state=TrialState.FAIL)
            if over:
                rejected_in_a_row += 1
            else:
                rejected_in_a_row = 0
                found += 1
            proposals.append(
                TrialRecord(
                    arch,
                    strategy=self.name,
                    step=None,
                    parent=None,
                    steplen=0,
                    latency=latency,
                    over_budget=over,
                    sampler_system_attrs=dict(shadow.trials[trial.number].system_attrs),
                )
            )
        if not proposals:
            return Decision.done("the sampler proposes only architectures already evaluated")
        return Decision.propose(proposals)


@register_strategy("random")
class RandomStrategy(SamplerStrategy):
    """Baseline: architectures drawn at random."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)


@register_strategy("tpe")
class TPEStrategy(SamplerStrategy):
    """Baseline: Optuna's multivariate TPE over latency and mIoU."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)


@register_strategy("nsga2")
class NSGA2Strategy(SamplerStrategy):
    """Baseline: NSGA-II (population 8) over latency and mIoU."""

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


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
