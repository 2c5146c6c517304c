"""The strategy contract: what a strategy sees of the run and what it may answer.

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

from optuna.trial import FrozenTrial, TrialState

from models import LPSNetArch
from scaler.search.space import SearchSpace

__all__ = ["Decision", "Proposal", "SearchContext", "Strategy", "TrialRecord", "latest_by_hash"]


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


def latest_by_hash(history: Sequence[TrialRecord]) -> dict[str, TrialRecord]:
    """For each architecture, its complete trial if any, else its most recent one."""
    out: dict[str, TrialRecord] = {}
    for t in sorted(history, key=lambda t: t.number):
        current = out.get(t.arch_hash)
        if current is None or not current.complete:
            out[t.arch_hash] = t
    return out
