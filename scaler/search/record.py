"""What one trial of a run carries, typed: :class:`TrialRecord`, and the one place its stored keys live.

A run stores each candidate as an Optuna trial whose user attributes hold the record
(:meth:`TrialRecord.to_user_attrs`); every reader turns a trial back into a record with
:meth:`TrialRecord.from_trial`. The keys are those runs have always stored (:class:`Attr`), so runs
written before this module existed read back unchanged, and keys a record does not know are kept
in :attr:`TrialRecord.extra` rather than lost.

The latency and training statistics stay the plain mappings their producers write
(:meth:`scaler.measure.latency.LatencyResult.to_dict`, :meth:`scaler.proxy.train.TrainResult.to_dict`);
the record gives typed access to the values the search and the report read from them.
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import time
from collections.abc import Mapping
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from models import LPSNetArch, SegArch, arch_from_dict
from scaler.search.run_folder import pid_alive

__all__ = ["DIED", "OWNER_GONE", "STOPPED", "Attr", "TrialKind", "TrialRecord", "int_or_none"]

# How an evaluation that did not end on its own ended (:attr:`TrialRecord.interrupted`), or stands
# (:data:`OWNER_GONE`: still RUNNING, but its worker is gone; the next search queues it again).
STOPPED = "stopped"
DIED = "worker died"
OWNER_GONE = "owner gone"


class Attr:
    """The user-attribute keys of a trial: the stored schema, spelled once."""

    ARCH = "arch"
    ARCH_HASH = "arch_hash"
    STRATEGY = "strategy"
    STEP = "step"
    PARENT = "parent"
    OPERATORS = "operators"
    STEPLEN = "steplen"
    TARGET_MS = "target_ms"
    LATENCY = "latency"
    TRAIN = "train"
    FAIL_REASON = "fail_reason"
    OVER_BUDGET = "over_budget"
    RETRY_OF = "retry_of"
    SEED_OF = "seed_of"
    TRAIN_SEED = "train_seed"
    INHERIT_FROM = "inherit_from"
    CONTROL_OF = "control_of"
    WEIGHTS_ARTIFACT = "weights_artifact"
    INHERITED = "inherited"
    RETRAIN_OF = "retrain_of"
    RECIPE = "recipe"
    REFERENCE = "reference"
    WEIGHTS = "weights"
    SAMPLER_SYSTEM_ATTRS = "sampler_system_attrs"
    OWNER = "owner"
    HEARTBEAT = "heartbeat"
    STOPPED = "stopped"
    TRAIN_UNTIL = "train_until"
    EVAL_AT = "eval_at"
    CHECKPOINT = "checkpoint_artifact"
    RUNGS = "rungs"
    PAUSED = "paused"
    PRUNED = "pruned"
    CHECKPOINT_LOST = "checkpoint_lost"

    # Written for every proposal, ``None`` included (readers of old runs may expect the key).
    CORE = (STEP, PARENT, OPERATORS, STEPLEN, STRATEGY)
    # What a worker's claim adds and a re-queued copy leaves out.
    WORKER = (OWNER, HEARTBEAT, FAIL_REASON, STOPPED)


class TrialKind(str, enum.Enum):
    """Why a trial is in the run.

    ``candidate``: proposed by the strategy and trained; ``over_budget``: proposed, measured over
    the latency budget and recorded untrained; ``retry``: a candidate queued again after its worker
    died or was stopped; ``seed``: a candidate (or a step's parent) trained again with another
    training seed, to tell two close candidates apart (greedy ``tie_seed``); ``control``: with
    inherited weights, a step's parent trained the step's iterations further, the mIoU its candidates
    are compared with; ``retrain``: a trial's architecture trained again from scratch with one recipe
    (``scaler retrain``), so that frontiers can be compared; ``reference``: a named model measured and
    trained for comparison, not part of the search. How a trial ended is apart from why it is in the
    run: see :attr:`TrialRecord.interrupted`.
    """

    CANDIDATE = "candidate"
    OVER_BUDGET = "over_budget"
    RETRY = "retry"
    SEED = "seed"
    CONTROL = "control"
    RETRAIN = "retrain"
    REFERENCE = "reference"


def int_or_none(value: Any) -> int | None:
    """``value`` as an int, or ``None`` when it is missing, a bool or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


_KNOWN = frozenset(v for k, v in vars(Attr).items() if k.isupper() and isinstance(v, str))


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial: what it evaluates, how the strategy made it, what was measured, and its outcome.

    A record made by a strategy (a proposal) has no ``number``, ``state`` or ``values`` yet; a
    record read from the study has them.

    Args:
        arch: The architecture (an LPS-Net for candidates; any family for references).
        strategy: Name of the strategy that proposed it (``None`` for references of old runs).
        step: Greedy step (0 = the start network); ``None`` for baselines and references.
        parent: Trial number of the network it grew from.
        operators: Operator names applied to the parent.
        steplen: Times the operators were applied.
        target_ms: The step's target latency (greedy).
        latency: The latency measurement (statistics and device fingerprint).
        train: The training result, without its loss curve.
        fail_reason: Why the trial failed, when it did.
        over_budget: Measured over the latency budget and not trained.
        retry_of: The trial this one re-queues after its worker died or was stopped.
        seed_of: The trial whose architecture this one trains again with another seed (``train_seed``).
        train_seed: The training seed, when not the space's.
        inherit_from: The trained trial whose weights, grown to ``arch``, this one starts from.
        control_of: The trial (a step's parent) this one trains further as the step's control.
        weights_artifact: The Optuna artifact id of its trained weights (kept when weights are inherited).
        inherited: Where its initial weights came from (``from_trial``, ``weights_artifact``, ``growth_noise``;
            ``new_head`` when its head differs from the parent's and started afresh), or why they could
            not be had (``from_trial``, ``fallback: scratch``, ``reason``).
        retrain_of: The trial whose architecture this one trains again from scratch (``scaler retrain``).
        recipe: Training settings that replace the space's for this trial (``iters``, ``seed``, ``init``).
        reference: The named model this trial measures for comparison.
        weights: Where the proxy-trained weights were kept (relative to the run folder when inside it).
        sampler_system_attrs: A baseline's shadow-trial system attributes (NSGA-II's generation, say).
        owner: The worker that claimed it (``host``, ``pid``).
        heartbeat: The worker's last sign of life (seconds since the epoch).
        stopped: The signal (``SIGINT``, ``SIGTERM``) that stopped its worker mid-evaluation; the
            trial then ended FAIL and a copy was queued again (:mod:`scaler.search.stops`).
        train_until: Successive halving: train up to this iteration of the schedule, then pause
            (``None``: the whole schedule).
        eval_at: Also evaluate at these iterations on the way (a step's parent and control, whose
            mIoUs at each rung are what the rung's candidates are compared with).
        checkpoint_artifact: The artifact id of the checkpoint a paused trial goes on from.
        rungs: The mIoU at each rung it reached (``iters``, ``miou``, ``train_seconds``); also the
            trial's Optuna intermediate values.
        paused: Trained to a rung and waiting for the step's halving decision (WAITING, not claimed).
        pruned: Why successive halving stopped it (the trial is PRUNED).
        checkpoint_lost: Why the checkpoint it was to go on from could not be read (it trained again from
            its start instead).
        extra: Stored keys this record does not know, kept as they are.
        arch_hash: Stored hash of ``arch`` (computed when not given).
        number: Trial number in the study.
        state: Optuna state.
        values: ``(latency ms, mIoU)`` of a complete trial.
    """

    arch: SegArch
    strategy: str | None = None
    step: int | None = None
    parent: int | None = None
    operators: tuple[str, ...] = ()
    steplen: int | None = 0
    target_ms: float | None = None
    latency: Mapping[str, Any] | None = None
    train: Mapping[str, Any] | None = None
    fail_reason: str | None = None
    over_budget: bool = False
    retry_of: int | None = None
    seed_of: int | None = None
    train_seed: int | None = None
    inherit_from: int | None = None
    control_of: int | None = None
    weights_artifact: str | None = None
    inherited: Mapping[str, Any] | None = None
    retrain_of: int | None = None
    recipe: Mapping[str, Any] | None = None
    reference: str | None = None
    weights: str | None = None
    sampler_system_attrs: Mapping[str, Any] | None = None
    owner: Mapping[str, Any] | None = None
    heartbeat: float | None = None
    stopped: str | None = None
    train_until: int | None = None
    eval_at: tuple[int, ...] = ()
    checkpoint_artifact: str | None = None
    rungs: tuple[Mapping[str, Any], ...] = ()
    paused: bool = False
    pruned: str | None = None
    checkpoint_lost: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arch_hash: str = ""
    number: int | None = None
    state: TrialState | None = None
    values: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.arch_hash:
            object.__setattr__(self, "arch_hash", self.arch.arch_hash())
        object.__setattr__(self, "operators", tuple(self.operators))
        object.__setattr__(self, "eval_at", tuple(self.eval_at))
        object.__setattr__(self, "rungs", tuple(self.rungs))

    # -- what it is ----------------------------------------------------------------------------

    @property
    def kind(self) -> TrialKind:
        if self.reference is not None:
            return TrialKind.REFERENCE
        if self.over_budget:
            return TrialKind.OVER_BUDGET
        if self.seed_of is not None:
            return TrialKind.SEED
        if self.control_of is not None:
            return TrialKind.CONTROL
        if self.retrain_of is not None:
            return TrialKind.RETRAIN
        if self.retry_of is not None:
            return TrialKind.RETRY
        return TrialKind.CANDIDATE

    @property
    def is_reference(self) -> bool:
        return self.reference is not None

    @property
    def is_seed_replica(self) -> bool:
        """Trained again with another seed: its mIoU belongs to the trial it replicates, not to the frontier."""
        return self.seed_of is not None

    @property
    def is_retrain(self) -> bool:
        """Trained again from scratch by ``scaler retrain``: shown beside the search's numbers, never among them."""
        return self.retrain_of is not None

    @property
    def is_control(self) -> bool:
        """A step's parent trained further: the step's baseline mIoU, not a network of the frontier. A seed
        replica of a control (a tie) is a replica, not a second control: it carries ``control_of`` too."""
        return self.control_of is not None and self.seed_of is None

    @property
    def lps_arch(self) -> LPSNetArch | None:
        """The architecture when it is an LPS-Net (every search candidate is), else ``None``."""
        return self.arch if isinstance(self.arch, LPSNetArch) else None

    @property
    def pending(self) -> bool:
        """Queued or training; a trial paused at a rung waits for the strategy, not for a worker."""
        return self.state in (TrialState.WAITING, TrialState.RUNNING) and not self.paused

    @property
    def miou_by_iters(self) -> dict[int, float]:
        """The mIoU measured at each iteration it was evaluated at (rungs, and the end of a complete trial)."""
        out = {int(r["iters"]): float(r["miou"]) for r in self.rungs if r.get("miou") is not None}
        done = int_or_none((self.train or {}).get("iters_done"))
        if self.miou is not None and done is not None:
            out[done] = self.miou
        return out

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE

    @property
    def interrupted(self) -> str | None:
        """How an evaluation that did not end on its own ended: :data:`STOPPED` or :data:`DIED`; else ``None``.

        ``stopped``: its worker was stopped by SIGINT or SIGTERM and queued the candidate again;
        ``worker died``: its worker was gone (killed, crashed) and the search queued the candidate
        again. Both are FAIL in Optuna's terms; neither is a failure of the candidate, and reports
        count them apart. A dead worker is recognised by the reason
        :meth:`~scaler.search.store.RunStore.reap_stale` has always written (``worker H:P died ...``),
        so runs made before this property read the same.
        """
        if self.state != TrialState.FAIL:
            return None
        if self.stopped is not None:
            return STOPPED
        reason = self.fail_reason or ""
        if reason.startswith("worker ") and " died" in reason:
            return DIED
        return None

    def owner_gone(self, stale_after_s: float, now: float | None = None) -> bool:
        """Whether this RUNNING trial's worker is gone: the rule the search reaps dead workers by.

        A worker on this host is gone when its process no longer exists; one on another host when
        its heartbeat is older than ``stale_after_s``. A trial not RUNNING, or claimed a moment ago
        and not yet named, is not.
        """
        if self.state != TrialState.RUNNING or not self.owner:
            return False
        if self.owner.get("host") == socket.gethostname():
            pid = int_or_none(self.owner.get("pid"))
            return pid is None or not pid_alive(pid)
        now = time.time() if now is None else now
        return now - (self.heartbeat or 0.0) > stale_after_s

    # -- what was measured ---------------------------------------------------------------------

    @property
    def latency_ms(self) -> float | None:
        """The measured median latency (ms), when measured."""
        return _float((self.latency or {}).get("median_ms"))

    @property
    def miou(self) -> float | None:
        """The validation mIoU (a fraction) of a complete trial."""
        return float(self.values[1]) if self.complete and self.values else None

    @property
    def fingerprint(self) -> Mapping[str, Any]:
        """The latency measurement's device fingerprint (empty when not measured)."""
        return (self.latency or {}).get("fingerprint") or {}

    @property
    def fingerprint_hash(self) -> str | None:
        return (self.latency or {}).get("fingerprint_hash")

    def with_latency(self, latency: Mapping[str, Any]) -> TrialRecord:
        """This record with its latency measurement."""
        return dataclasses.replace(self, latency=dict(latency))

    # -- the stored form -----------------------------------------------------------------------

    def to_user_attrs(self) -> dict[str, Any]:
        """The trial's user attributes: the :attr:`Attr.CORE` keys always, the others when set."""
        out: dict[str, Any] = {
            Attr.ARCH: self.arch.to_dict(),
            Attr.ARCH_HASH: self.arch_hash,
            Attr.STEP: self.step,
            Attr.PARENT: self.parent,
            Attr.OPERATORS: list(self.operators),
            Attr.STEPLEN: self.steplen,
            Attr.STRATEGY: self.strategy,
        }
        optional = {
            Attr.TARGET_MS: self.target_ms,
            Attr.LATENCY: None if self.latency is None else dict(self.latency),
            Attr.TRAIN: None if self.train is None else dict(self.train),
            Attr.FAIL_REASON: self.fail_reason,
            Attr.OVER_BUDGET: True if self.over_budget else None,
            Attr.RETRY_OF: self.retry_of,
            Attr.SEED_OF: self.seed_of,
            Attr.TRAIN_SEED: self.train_seed,
            Attr.INHERIT_FROM: self.inherit_from,
            Attr.CONTROL_OF: self.control_of,
            Attr.WEIGHTS_ARTIFACT: self.weights_artifact,
            Attr.INHERITED: None if self.inherited is None else dict(self.inherited),
            Attr.RETRAIN_OF: self.retrain_of,
            Attr.RECIPE: None if self.recipe is None else dict(self.recipe),
            Attr.REFERENCE: self.reference,
            Attr.WEIGHTS: self.weights,
            Attr.SAMPLER_SYSTEM_ATTRS: None if self.sampler_system_attrs is None else dict(self.sampler_system_attrs),
            Attr.OWNER: None if self.owner is None else dict(self.owner),
            Attr.HEARTBEAT: self.heartbeat,
            Attr.STOPPED: self.stopped,
            Attr.TRAIN_UNTIL: self.train_until,
            Attr.EVAL_AT: list(self.eval_at) if self.eval_at else None,
            Attr.CHECKPOINT: self.checkpoint_artifact,
            Attr.RUNGS: [dict(r) for r in self.rungs] if self.rungs else None,
            Attr.PAUSED: True if self.paused else None,
            Attr.PRUNED: self.pruned,
            Attr.CHECKPOINT_LOST: self.checkpoint_lost,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_user_attrs(
        cls,
        attrs: Mapping[str, Any],
        *,
        number: int | None = None,
        state: TrialState | None = None,
        values: tuple[float, float] | None = None,
    ) -> TrialRecord:
        """A record from stored user attributes (any run, old or new).

        Raises:
            ArchError: The stored architecture cannot be read.
        """
        a = attrs
        return cls(
            arch=arch_from_dict(a[Attr.ARCH], source=f"trial {number}"),
            strategy=a.get(Attr.STRATEGY),
            step=int_or_none(a.get(Attr.STEP)),
            parent=int_or_none(a.get(Attr.PARENT)),
            operators=tuple(str(o) for o in a.get(Attr.OPERATORS) or ()),
            steplen=int_or_none(a.get(Attr.STEPLEN)),
            target_ms=_float(a.get(Attr.TARGET_MS)),
            latency=a.get(Attr.LATENCY) if isinstance(a.get(Attr.LATENCY), Mapping) else None,
            train=a.get(Attr.TRAIN) if isinstance(a.get(Attr.TRAIN), Mapping) else None,
            fail_reason=a.get(Attr.FAIL_REASON),
            over_budget=bool(a.get(Attr.OVER_BUDGET, False)),
            retry_of=int_or_none(a.get(Attr.RETRY_OF)),
            seed_of=int_or_none(a.get(Attr.SEED_OF)),
            train_seed=int_or_none(a.get(Attr.TRAIN_SEED)),
            inherit_from=int_or_none(a.get(Attr.INHERIT_FROM)),
            control_of=int_or_none(a.get(Attr.CONTROL_OF)),
            weights_artifact=a.get(Attr.WEIGHTS_ARTIFACT),
            inherited=a.get(Attr.INHERITED) if isinstance(a.get(Attr.INHERITED), Mapping) else None,
            retrain_of=int_or_none(a.get(Attr.RETRAIN_OF)),
            recipe=a.get(Attr.RECIPE) if isinstance(a.get(Attr.RECIPE), Mapping) else None,
            reference=a.get(Attr.REFERENCE),
            weights=a.get(Attr.WEIGHTS),
            sampler_system_attrs=a.get(Attr.SAMPLER_SYSTEM_ATTRS),
            owner=a.get(Attr.OWNER),
            heartbeat=_float(a.get(Attr.HEARTBEAT)),
            stopped=a.get(Attr.STOPPED) if isinstance(a.get(Attr.STOPPED), str) else None,
            train_until=int_or_none(a.get(Attr.TRAIN_UNTIL)),
            eval_at=tuple(int(k) for k in a.get(Attr.EVAL_AT) or ()),
            checkpoint_artifact=a.get(Attr.CHECKPOINT),
            rungs=tuple(r for r in a.get(Attr.RUNGS) or () if isinstance(r, Mapping)),
            # Only a WAITING trial is paused; a stopped one keeps the mark it had when it was stopped.
            paused=bool(a.get(Attr.PAUSED, False)) and state in (None, TrialState.WAITING),
            pruned=a.get(Attr.PRUNED) if isinstance(a.get(Attr.PRUNED), str) else None,
            checkpoint_lost=a.get(Attr.CHECKPOINT_LOST) if isinstance(a.get(Attr.CHECKPOINT_LOST), str) else None,
            extra={k: v for k, v in a.items() if k not in _KNOWN},
            arch_hash=str(a.get(Attr.ARCH_HASH) or ""),
            number=number,
            state=state,
            values=values,
        )

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        """The record of a stored trial, with its number, state and values."""
        values = None
        if t.state == TrialState.COMPLETE and t.values is not None and len(t.values) == 2:
            values = (float(t.values[0]), float(t.values[1]))
        return cls.from_user_attrs(t.user_attrs, number=t.number, state=t.state, values=values)

    def replicated(self, seed: int) -> TrialRecord:
        """A fresh copy of this (numbered) trial to train again with training seed ``seed``: same latency record."""
        assert self.number is not None
        return dataclasses.replace(
            self,
            train=None,
            fail_reason=None,
            retry_of=None,
            weights=None,
            owner=None,
            heartbeat=None,
            seed_of=self.number,
            train_seed=seed,
            weights_artifact=None,
            inherited=None,
            stopped=None,
            train_until=None,
            eval_at=(),
            checkpoint_artifact=None,
            rungs=(),
            paused=False,
            pruned=None,
            number=None,
            state=None,
            values=None,
        )

    def requeued(self, number: int) -> TrialRecord:
        """A fresh copy of this record to queue again after trial ``number``'s worker died or was stopped.

        A trial of successive halving keeps its rungs and the checkpoint it resumes from (and so where
        its first weights came from): the copy trains on from the last rung reached, not from the start.
        """
        return dataclasses.replace(
            self,
            owner=None,
            heartbeat=None,
            fail_reason=None,
            weights_artifact=None,
            inherited=self.inherited if self.checkpoint_artifact is not None else None,
            paused=False,
            stopped=None,
            retry_of=number,
            number=None,
            state=None,
            values=None,
        )
