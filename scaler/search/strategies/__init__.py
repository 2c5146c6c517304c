"""Search strategies: greedy progressive expansion (the method) and Optuna-sampler baselines.

Each strategy is a :class:`~scaler.search.strategies.base.Strategy` (see its docstring for the
contract) registered by name with :func:`register_strategy`; :func:`make_strategy` builds one by
name and :func:`list_strategies` names them all. Adding a strategy is one module in this package
whose class registers itself: every module here is imported below, so the CLI and the search
know it without further edits.
"""

from __future__ import annotations

import importlib
import pkgutil

from scaler.search.strategies.base import (
    Decision,
    MeasureLatency,
    PairedTiming,
    SearchContext,
    Strategy,
    TrialRecord,
    latest_by_hash,
    list_strategies,
    make_strategy,
    register_strategy,
    search_trials,
    strategy_class,
)
from scaler.search.strategies.greedy import GreedyStrategy
from scaler.search.strategies.greedy_steps import (
    PairedLatency,
    PlanCandidate,
    SlopeEstimate,
    StepDecision,
    StepPlan,
    TargetCheck,
)
from scaler.search.strategies.samplers import NSGA2Strategy, RandomStrategy, SamplerStrategy, TPEStrategy

__all__ = [
    "Decision",
    "GreedyStrategy",
    "MeasureLatency",
    "NSGA2Strategy",
    "PairedLatency",
    "PairedTiming",
    "PlanCandidate",
    "RandomStrategy",
    "SamplerStrategy",
    "SearchContext",
    "SlopeEstimate",
    "StepDecision",
    "StepPlan",
    "Strategy",
    "TPEStrategy",
    "TargetCheck",
    "TrialRecord",
    "latest_by_hash",
    "list_strategies",
    "make_strategy",
    "register_strategy",
    "search_trials",
    "strategy_class",
]

# Import every strategy module, so that each registers itself (greedy first: the method, the default).
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "greedy", m.name)):
    importlib.import_module(f"{__name__}.{_module.name}")
