"""Search strategies: greedy progressive expansion (the method) and Optuna-sampler baselines.

Each strategy is a :class:`~scaler.search.strategies.base.Strategy` (see its docstring for the
contract); :func:`make_strategy` builds one by name.
"""

from __future__ import annotations

from scaler.errors import UserError
from scaler.search.space import SearchSpace
from scaler.search.strategies.base import Decision, Proposal, SearchContext, Strategy, TrialRecord
from scaler.search.strategies.greedy import GreedyStrategy
from scaler.search.strategies.samplers import SamplerStrategy

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


STRATEGIES = ("greedy", "random", "tpe", "nsga2")


def make_strategy(name: str, space: SearchSpace, seed: int = 0, batch: int = 1) -> Strategy:
    if name == "greedy":
        return GreedyStrategy(space, seed)
    if name in ("random", "tpe", "nsga2"):
        return SamplerStrategy(space, name, seed, batch)
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
