"""The strategy contract: what a strategy sees of the run, what it may answer, and the registry.

A strategy is a pure function of the run's history: :meth:`Strategy.propose` looks at every trial
so far and says what to do next (evaluate these architectures, wait for pending ones, or stop).
Because it keeps no state of its own, a search that is killed and started again makes the same
decisions from the stored trials, and the trials already finished are never evaluated again.

Strategies register themselves by name (:func:`register_strategy`); the search loop, the CLI and
the report know them only through :func:`list_strategies`, :func:`strategy_class` and
:func:`make_strategy`, and read what they need to know of one from its class attributes.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from models import LPSNetArch
from scaler.errors import UserError
from scaler.search.record import TrialRecord
from scaler.search.space import SearchSpace

__all__ = [
    "Decision",
    "MeasureLatency",
    "PairedTiming",
    "SearchContext",
    "Strategy",
    "TrialRecord",
    "latest_by_hash",
    "list_strategies",
    "make_strategy",
    "register_strategy",
    "search_trials",
    "strategy_class",
]


@dataclasses.dataclass(frozen=True)
class Decision:
    """``propose`` (evaluate ``proposals``), ``wait`` (pending trials must finish), ``done`` (``reason``), or
    ``advance``: successive halving's verdict on trials paused at a rung (``resume`` maps a trial number to
    the iteration it trains up to next, ``None`` for the whole schedule; ``prune`` to why it stops).

    A proposal is a :class:`TrialRecord` without a number: the architecture and what its trial
    carries (step, parent, operators, and the latency when the strategy measured it already).
    """

    kind: Literal["propose", "wait", "done", "advance"]
    proposals: tuple[TrialRecord, ...] = ()
    reason: str = ""
    resume: Mapping[int, int | None] = dataclasses.field(default_factory=dict)
    prune: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def propose(cls, proposals: Sequence[TrialRecord]) -> Decision:
        return cls("propose", tuple(proposals))

    @classmethod
    def wait(cls) -> Decision:
        return cls("wait")

    @classmethod
    def done(cls, reason: str) -> Decision:
        return cls("done", reason=reason)

    @classmethod
    def advance(cls, resume: Mapping[int, int | None], prune: Mapping[int, str]) -> Decision:
        return cls("advance", resume=dict(resume), prune=dict(prune))


class MeasureLatency(Protocol):
    """A (cached) single latency measurement: the statistics of ``LatencyResult.to_dict()``, without samples."""

    def __call__(self, arch: LPSNetArch, *, refresh: bool = False) -> dict[str, Any]:
        """Measure ``arch`` (from the cache when it holds it, unless ``refresh``)."""
        ...


class PairedTiming(Protocol):
    """What a strategy reads of a paired pass (:class:`scaler.measure.paired.PairedResult`): several
    networks timed together in interleaved rounds, index 0 the reference (the parent)."""

    @property
    def rounds(self) -> int: ...

    @property
    def others_cpu_share(self) -> float | None: ...

    @property
    def under_load(self) -> bool: ...

    def median_ms(self, i: int) -> float: ...

    def rel_spread(self, i: int) -> float: ...

    def delta_ms(self, i: int, j: int = 0, confidence: float = 0.9) -> tuple[float, float, float]: ...

    def ratio(self, i: int, j: int = 0) -> float: ...

    def latency_record(self, i: int) -> Mapping[str, Any]: ...


@dataclasses.dataclass
class SearchContext:
    """What a strategy may use: the space, latency measurements, the run's key-value records, a log.

    Args:
        space: The search space.
        latency: One network's (cached) latency; ``refresh=True`` measures again and replaces the entry.
        get: Reads a run record (``None`` when absent).
        put: Writes a run record.
        log: Receives one-line messages for the user.
        paired: Times several networks together, ``paired(archs, rounds)``, index 0 the reference;
            ``None`` where it is not available (a strategy then decides from single measurements).
    """

    space: SearchSpace
    latency: MeasureLatency
    get: Callable[[str], Any]
    put: Callable[[str, Any], None]
    log: Callable[[str], None] = lambda message: None
    paired: Callable[[Sequence[LPSNetArch], int], PairedTiming] | None = None

    def latency_ms(self, arch: LPSNetArch) -> float:
        return float(self.latency(arch)["median_ms"])


class Strategy(abc.ABC):
    """Base class. Subclasses implement :meth:`propose`; they must keep no state between calls
    beyond their constructor arguments, so that a resumed search decides as the first one did.

    ``history`` holds every trial of the run, references included; a strategy decides from
    :func:`search_trials` (references are measured for comparison, never part of its decisions).

    Class attributes tell the search loop what it needs to know:

    - ``name``: the registered name (set by :func:`register_strategy`);
    - ``progress``: what the progress bar counts, ``"steps"`` or ``"trials"`` (trained ones);
    - ``loop_checks_budget``: the loop records proposals over the latency budget untrained (a
      strategy whose proposals are within the budget by construction turns it off, so that a
      second measurement a little over the budget never drops a candidate it decided on).
    """

    name: ClassVar[str] = ""
    progress: ClassVar[Literal["steps", "trials"]] = "trials"
    loop_checks_budget: ClassVar[bool] = True

    def __init__(self, space: SearchSpace, seed: int = 0, batch: int = 1) -> None:
        self.space = space
        self.seed = seed
        self.batch = batch

    @classmethod
    def study_name(cls, space_name: str) -> str:
        """The run's study name for a search of the space ``space_name``."""
        return f"{space_name}-{cls.name}"

    @abc.abstractmethod
    def propose(self, history: Sequence[TrialRecord], ctx: SearchContext) -> Decision:
        """Decide the next move from every trial so far."""


_REGISTRY: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound=type[Strategy])


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: register a :class:`Strategy` subclass under ``name`` (sets its ``name``).

    Raises:
        ValueError: ``name`` is registered already.
    """

    def wrap(cls: S) -> S:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered already ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_strategies() -> list[str]:
    """Registered strategy names, in registration order (the method first)."""
    return list(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``.

    Raises:
        UserError: No such strategy; the message names the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def make_strategy(name: str, space: SearchSpace, seed: int = 0, batch: int = 1) -> Strategy:
    """A new strategy ``name`` for ``space``.

    Args:
        name: A registered name (:func:`list_strategies`).
        space: The search space.
        seed: Seed of strategies that draw at random.
        batch: Proposals a strategy may make at once (the number of workers).

    Raises:
        UserError: Unknown name, or a space the strategy cannot search.
    """
    return strategy_class(name)(space, seed=seed, batch=batch)


def search_trials(history: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials a strategy decides from: every one but the references, seed replicas, controls and retrains
    (a strategy that asks for replicas or controls reads them from the whole history)."""
    return [t for t in history if not (t.is_reference or t.is_seed_replica or t.is_control or t.is_retrain)]


def latest_by_hash(history: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
    """For each architecture, its complete trial if any, else its most recent one."""
    out: dict[str, TrialRecord] = {}
    for t in sorted(history, key=lambda t: t.number if t.number is not None else -1):
        current = out.get(t.arch_hash)
        if current is None or not current.complete:
            out[t.arch_hash] = t
    return out
