"""A run's persistent state: one Optuna study holding every candidate as a trial.

- params: the architecture (``d1..d5``, ``w1..w5``, ``r1..r3``; ``r`` zero for a missing path);
- values: ``(latency ms, mIoU)`` with directions (minimize, maximize), named :data:`METRIC_NAMES`
  (``study.metric_names``, which Optuna's plots and optuna-dashboard show);
- constraints: with a latency budget, ``latency - budget`` in Optuna's ``constraints`` system
  attribute (at most 0: within the budget), for every trial whose latency is known, so that
  Optuna's tools see which trials are feasible (the budget of the session that finished the trial:
  Optuna cannot change a finished trial);
- user attributes: a :class:`~scaler.search.record.TrialRecord` (architecture, how it was made,
  latency, training result, failure, worker ``owner`` and ``heartbeat``; its keys are
  :class:`~scaler.search.record.Attr`). A reference trial (a named model measured for comparison,
  of any family, maybe outside the space) has no params;
- artifacts: the run's plots and exported model cards (:mod:`scaler.search.artifacts`).

Candidates are added as WAITING trials; any process (the search itself, or ``scaler worker`` on
another host) claims one atomically by moving it to RUNNING, records a heartbeat while training,
and finishes it as COMPLETE or FAIL. A RUNNING trial whose worker died (its process is gone, or its
heartbeat is stale) is failed and re-queued once more by the search process.

The default storage is a journal file in the run folder (:mod:`scaler.search.journal`: a cut-off
last record is moved aside, never written onto); a ``postgresql://`` (or any SQLAlchemy) URL puts
the study in a database for several hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from models import LPSNetArch, SegArch
from scaler.errors import UserError
from scaler.files import jsonable
from scaler.search.expand import Constraints
from scaler.search.journal import open_journal
from scaler.search.record import Attr, TrialRecord
from scaler.search.run_folder import JOURNAL_NAME, RUN_FILE, read_record
from scaler.search.run_folder import pid_alive as _pid_alive

__all__ = [
    "CONSTRAINTS_KEY",
    "METRIC_NAMES",
    "Claim",
    "RunStore",
    "StorageError",
    "arch_from_params",
    "arch_params",
    "distributions",
    "open_run",
    "open_storage",
]

METRIC_NAMES = ("latency_ms", "miou")
# Optuna's trial system attribute for constraint values (optuna.study._constrained_optimization), in
# the list form optuna-dashboard reads too; a trial is feasible when every value is at most 0.
CONSTRAINTS_KEY = "constraints"
HEARTBEAT_INTERVAL_S = 10.0
STALE_AFTER_S = 60.0


class StorageError(UserError):
    """The study's storage cannot be opened (bad URL, unreachable server, unwritable folder)."""


def distributions(constraints: Constraints) -> dict[str, Any]:
    """The parameter space every strategy shares, so samplers and greedy trials live in one study."""
    step = constraints.width_divisor
    dists: dict[str, Any] = {f"d{i + 1}": IntDistribution(1, constraints.max_depth) for i in range(5)}
    dists.update(
        {
            f"w{i + 1}": IntDistribution(step, constraints.max_width - constraints.max_width % step, step=step)
            for i in range(5)
        }
    )
    dists.update({f"r{i + 1}": FloatDistribution(0.0, constraints.max_resolution) for i in range(3)})
    return dists


def arch_params(arch: LPSNetArch) -> dict[str, Any]:
    res = [*arch.resolution, *([0.0] * (3 - len(arch.resolution)))]
    params: dict[str, Any] = {f"d{i + 1}": d for i, d in enumerate(arch.depth)}
    params.update({f"w{i + 1}": w for i, w in enumerate(arch.width)})
    params.update({f"r{i + 1}": float(r) for i, r in enumerate(res)})
    return params


def arch_from_params(params: dict[str, Any], like: LPSNetArch) -> LPSNetArch:
    """The architecture ``params`` describe, with ``like``'s class count and head (not search dimensions)."""
    return LPSNetArch(
        depth=[int(params[f"d{i + 1}"]) for i in range(5)],
        width=[int(params[f"w{i + 1}"]) for i in range(5)],
        resolution=[float(params[f"r{i + 1}"]) for i in range(3)],
        num_classes=like.num_classes,
        head=like.head,
    )


def open_storage(
    url: str | None, run_dir: Path | None, *, create: bool = True, repair: bool = True
) -> optuna.storages.BaseStorage:
    """The journal file in ``run_dir`` (default), or the database at ``url``.

    Args:
        url: ``None`` or ``"journal"`` for the run folder's journal, ``journal:PATH`` for a journal
            elsewhere, or a database URL.
        run_dir: The run folder (for the default journal).
        create: A ``journal:PATH`` that does not exist yet may be created (the search); ``False``
            for processes that join a search (workers): a missing journal is then an error, never
            an empty new file that no search will ever write to.
        repair: For a journal (see :mod:`scaler.search.journal`): move a cut-off last record aside
            now, with a one-line warning (processes that write: the search, workers); ``False``
            for readers, which read the records before it and change nothing.

    Raises:
        StorageError: One line saying what could not be opened and why.
        JournalDamagedError: A record in the middle of the journal cannot be read (one line).
    """
    if url is None or url == "journal":
        if run_dir is None:
            raise StorageError("no storage: give --out RUN_DIR or --storage URL")
        path = run_dir / JOURNAL_NAME
        try:
            return open_journal(path, repair=repair)
        except OSError as e:
            raise StorageError(f"{path}: cannot open the run's journal ({e.strerror})") from None
    if url.startswith(("journal:", "file:")):
        path = Path(url.split(":", 1)[1]).expanduser()
        if not path.parent.is_dir():
            raise StorageError(f"{url}: no such folder {path.parent}; give the path of the search's journal")
        if not create and not path.is_file():
            others = sorted(p.name for p in path.parent.glob("*.journal"))
            hint = f" (that folder holds {', '.join(others)})" if others else ""
            raise StorageError(
                f"{url}: no such journal{hint}; give the journal the search writes (RUN/{JOURNAL_NAME}), "
                "and start the search first"
            )
        try:
            return open_journal(path, repair=repair)
        except OSError as e:
            raise StorageError(f"{url}: cannot open the journal ({e.strerror})") from None
    try:
        return _rdb_storage(url)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "a database driver"
        hint = (
            " (for PostgreSQL: pip install 'lps-scaler[postgres]', which brings psycopg)" if "postgres" in url else ""
        )
        raise StorageError(f"storage {_redact(url)}: the database driver {missing!r} is not installed{hint}") from None
    except Exception as e:  # SQLAlchemy raises many types for bad URLs and unreachable servers
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StorageError(f"storage {_redact(url)} is unreachable or invalid: {first}") from None


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(url)}
            )
        except Exception as e:
            # Processes that open a fresh database at once race to create Optuna's tables; the
            # losers see a unique violation and succeed once the tables exist.
            text = str(e)
            if attempt + 1 < attempts and ("UniqueViolation" in text or "already exists" in text):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise
    raise AssertionError("unreachable")


def _connect_args(url: str) -> dict[str, Any]:
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


@dataclasses.dataclass
class Claim:
    """A trial this process owns until it calls :meth:`RunStore.complete` or :meth:`RunStore.fail`."""

    number: int
    trial_id: int
    arch: SegArch
    attrs: dict[str, Any]

    @property
    def record(self) -> TrialRecord:
        """The claimed trial's record (as it was queued)."""
        return TrialRecord.from_user_attrs(self.attrs, number=self.number, state=TrialState.RUNNING)


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class RunStore:
    """One run's study: add candidates, claim and finish them, read everything back.

    Args:
        storage: From :func:`open_storage`.
        study_name: The study.
        num_classes: Classes of the networks (params do not carry it).
        own: This process runs the search: create the study if it is missing, and name its metrics
            (also in an older run made without them). ``False`` (readers and workers, see
            :meth:`load`) opens an existing study and writes nothing to it.

    Raises:
        KeyError: ``own`` is ``False`` and there is no such study.
    """

    def __init__(
        self, storage: optuna.storages.BaseStorage, study_name: str, num_classes: int, *, own: bool = True
    ) -> None:
        self.storage = storage
        self.study_name = study_name
        self.num_classes = num_classes
        try:
            # Loading first: create_study(load_if_exists=True) appends to a journal even when the study exists.
            self.study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            if not own:
                raise
            self.study = optuna.create_study(
                storage=storage, study_name=study_name, directions=["minimize", "maximize"], load_if_exists=True
            )
        if own and self.study.metric_names is None:
            with warnings.catch_warnings():
                # "Experimental" since Optuna 3.2 and unchanged since; the warning would reach every user.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(METRIC_NAMES))
        self._study_id = storage.get_study_id_from_name(study_name)

    @property
    def study_id(self) -> int:
        """The study's id in its storage (what optuna-dashboard's URLs and study-level attributes use)."""
        return self._study_id

    @classmethod
    def load(cls, storage: optuna.storages.BaseStorage, study_name: str) -> RunStore:
        """Open an existing study; its classes come from the stored space.

        Raises:
            StorageError: No such study in the storage.
        """
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise StorageError(
                f"no study named {study_name!r} in this storage (found: {', '.join(names) or 'none'})"
            ) from None
        space = study.user_attrs.get("space") or {}
        return cls(storage, study_name, int(space.get("num_classes", 0)) or 19, own=False)

    # -- study-level records -------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    @property
    def latency_budget_ms(self) -> float | None:
        """The latency budget of the stored search space (``stopping.latency_budget_ms``), if any."""
        budget = ((self.get("space") or {}).get("stopping") or {}).get("latency_budget_ms")
        return None if budget is None else float(budget)

    def constraint_attrs(self, latency_ms: float | None) -> dict[str, Any]:
        """The trial system attributes that record the latency budget as an Optuna constraint.

        Args:
            latency_ms: The trial's measured latency, or ``None`` if it has none.

        Returns:
            ``{"constraints": [latency_ms - budget]}`` (at most 0: within the budget), or ``{}`` when
            the space has no budget or the latency is unknown or not finite. Optuna cannot change a
            finished trial, so this goes with the trial's last update (or ``create_trial``).
        """
        budget = self.latency_budget_ms
        if budget is None or latency_ms is None or not math.isfinite(float(latency_ms)):
            return {}
        return {CONSTRAINTS_KEY: [float(latency_ms) - budget]}

    # -- adding and reading candidates ---------------------------------------------------------

    def add(self, record: TrialRecord, dists: dict[str, Any], state: TrialState = TrialState.WAITING) -> int:
        """Add ``record`` as a trial: WAITING queues it for training, FAIL records it untrained.

        Returns:
            The trial number.
        """
        # References (named models) and retrains (of any trial, references included) are not points of
        # the search space: they may lie outside it.
        lps = isinstance(record.arch, LPSNetArch) and not record.is_reference and not record.is_retrain
        trial = optuna.trial.create_trial(
            state=state,
            params=arch_params(record.arch) if lps else {},
            distributions=dists if lps else {},
            user_attrs=jsonable(record.to_user_attrs()),
            # A trial recorded untrained is finished now: its constraint goes with it or never.
            system_attrs=self.constraint_attrs(record.latency_ms) if state == TrialState.FAIL else {},
            # A re-queued trial of successive halving keeps the rungs it reached as its intermediate values.
            intermediate_values={int(r["iters"]): float(r["miou"]) for r in record.rungs},
        )
        # Straight to the storage (create_trial validated it, as Study.add_trial would): the new trial's
        # number comes from its id, where reading every trial to find the last one cost O(trials) per add
        # (minutes to queue 1,000 candidates on PostgreSQL), and could name another process's trial.
        trial_id = self.storage.create_new_trial(self._study_id, template_trial=trial)
        return self.storage.get_trial_number_from_id(trial_id)

    def records(self) -> list[TrialRecord]:
        """Every trial as a :class:`~scaler.search.record.TrialRecord`, in trial order."""
        return [TrialRecord.from_trial(t) for t in self.trials()]

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    # -- workers ------------------------------------------------------------------------------

    def claim(self, number: int | None = None) -> Claim | None:
        """Atomically take one WAITING trial (moving it to RUNNING), or ``None`` if there is none.

        Args:
            number: Take this trial only (``None`` when it is not WAITING, or another process took it).
        """
        for t in self.storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if number is not None and t.number != number:
                continue
            if t.user_attrs.get(Attr.PAUSED):  # at a rung, waiting for the strategy's halving decision
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            self.storage.set_trial_user_attr(t._trial_id, Attr.OWNER, _owner())
            self.storage.set_trial_user_attr(t._trial_id, Attr.HEARTBEAT, time.time())
            arch = TrialRecord.from_user_attrs(t.user_attrs, number=t.number).arch
            return Claim(number=t.number, trial_id=t._trial_id, arch=arch, attrs=dict(t.user_attrs))
        return None

    @contextlib.contextmanager
    def heartbeat(self, claim: Claim, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[None]:
        """Record a heartbeat for ``claim`` every ``interval_s`` seconds while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                    self.storage.set_trial_user_attr(claim.trial_id, Attr.HEARTBEAT, time.time())

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def complete(self, claim: Claim, latency_ms: float, miou: float, attrs: dict[str, Any]) -> bool:
        """Record a finished evaluation, with its constraint under a latency budget.

        Returns:
            ``False`` if the trial was already finished (reaped as dead meanwhile); nothing is recorded then.
        """
        try:
            self._set_attrs(claim, attrs, self.constraint_attrs(latency_ms))
            self.study.tell(claim.number, values=[latency_ms, miou])
        except (UpdateFinishedTrialError, RuntimeError, ValueError):
            return False
        return True

    def fail(self, claim: Claim, reason: str, attrs: dict[str, Any] | None = None) -> bool:
        """Record a failed evaluation and why (with its constraint, when its latency is known).

        Returns:
            ``False`` if the trial was already finished (reaped as dead meanwhile).
        """
        latency = ((attrs or {}).get(Attr.LATENCY) or claim.attrs.get(Attr.LATENCY) or {}).get("median_ms")
        try:
            self._set_attrs(claim, {**(attrs or {}), Attr.FAIL_REASON: reason}, self.constraint_attrs(latency))
            self.study.tell(claim.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError, ValueError):
            return False
        return True

    def report(self, claim: Claim, rungs: Sequence[Mapping[str, Any]]) -> None:
        """Record each rung's mIoU as the trial's Optuna intermediate value at its iteration."""
        for r in rungs:
            self.storage.set_trial_intermediate_value(claim.trial_id, int(r["iters"]), float(r["miou"]))

    def pause(self, claim: Claim, attrs: dict[str, Any]) -> bool:
        """Put a trial trained to a rung back in the queue, paused (WAITING, but no worker claims it) until
        the strategy resumes or prunes it (:meth:`resume`, :meth:`prune`).

        Returns:
            ``False`` if the trial was already finished (reaped as dead meanwhile).
        """
        try:
            self._set_attrs(claim, {**attrs, Attr.PAUSED: True}, {})
            return self.storage.set_trial_state_values(claim.trial_id, state=TrialState.WAITING)
        except UpdateFinishedTrialError:
            return False

    def resume(self, number: int, until: int | None) -> bool:
        """Let a paused trial be claimed again, to train up to ``until`` (``None``: the whole schedule).

        Returns:
            Whether it was paused (a second call, after a resumed search replays its decision, does nothing).
        """
        t = self._waiting(number)
        if t is None or not t.user_attrs.get(Attr.PAUSED):
            return False
        self.storage.set_trial_user_attr(t._trial_id, Attr.TRAIN_UNTIL, until)
        self.storage.set_trial_user_attr(t._trial_id, Attr.PAUSED, False)  # last: from here on a worker may take it
        return True

    def prune(self, number: int, reason: str) -> bool:
        """Stop a paused trial for good (Optuna's PRUNED), saying why; its intermediate values stay.

        Returns:
            Whether it was paused (``False``: already pruned, or not a paused trial).
        """
        t = self._waiting(number)
        if t is None or not t.user_attrs.get(Attr.PAUSED):
            return False
        self.storage.set_trial_user_attr(t._trial_id, Attr.PRUNED, reason)
        # It keeps its paused mark (cleared first, a worker could claim it before it is PRUNED).
        try:
            return self.storage.set_trial_state_values(t._trial_id, state=TrialState.PRUNED)
        except UpdateFinishedTrialError:
            return False

    def _waiting(self, number: int) -> FrozenTrial | None:
        for t in self.storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if t.number == number:
                return t
        return None

    def _set_attrs(self, claim: Claim, user: dict[str, Any], system: dict[str, Any]) -> None:
        for key, value in user.items():
            self.storage.set_trial_user_attr(claim.trial_id, key, jsonable(value))
        for key, value in system.items():
            self.storage.set_trial_system_attr(claim.trial_id, key, value)

    # -- the search process: dead workers -------------------------------------------------------

    def reap_stale(
        self, stale_after_s: float = STALE_AFTER_S, now: float | None = None, *, idle: bool = False
    ) -> list[int]:
        """Fail and re-queue RUNNING trials whose worker is gone. Call from one process only (the search).

        A worker on this host is gone when its process no longer exists, or when it is this process and
        ``idle`` says it evaluates nothing now (the search between its own evaluations: a trial it owns
        is then a leftover of an earlier session in the same process, a notebook or a test); one
        elsewhere when its
        heartbeat is older than ``stale_after_s``. Returns the numbers of the re-queued copies.
        """
        now = time.time() if now is None else now
        host = socket.gethostname()
        requeued = []
        for t in self.trials(states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get(Attr.OWNER)
            claimed = t.datetime_start.timestamp() if t.datetime_start is not None else 0.0
            beat = t.user_attrs.get(Attr.HEARTBEAT)
            if owner is None:
                # Claimed a moment ago: the worker moves the trial to RUNNING first and names itself
                # right after. Only a claim left unnamed for long is a worker that died in between.
                if now - claimed <= stale_after_s:
                    continue
                why = f"its worker died between claiming it and naming itself ({now - claimed:.0f} s ago)"
            else:
                if owner.get("host") == host:
                    pid = int(owner.get("pid", -1))
                    dead = (idle and pid == os.getpid()) or not _pid_alive(pid)
                else:  # named, its first heartbeat not written yet: the claim's time stands in for it
                    dead = now - (claimed if beat is None else float(beat)) > stale_after_s
                if not dead:
                    continue
                last = "no heartbeat recorded" if beat is None else f"last heartbeat {now - float(beat):.0f} s ago"
                why = f"worker {owner.get('host')}:{owner.get('pid')} died ({last})"
            self.storage.set_trial_user_attr(t._trial_id, Attr.FAIL_REASON, why)
            try:
                self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            retry = TrialRecord.from_user_attrs(t.user_attrs, number=t.number).requeued(t.number)
            requeued.append(self.add(retry, t.distributions))
        return requeued


def open_run(run_dir: str | Path) -> RunStore:
    """Open the study of the run in ``run_dir`` (its ``run.json`` names study and storage).

    A folder with a journal but no ``run.json`` is accepted when the journal holds one study.

    Raises:
        UserError: The folder does not exist, is not a run, or its study cannot be opened; one line.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    journal = run_dir / JOURNAL_NAME
    record = read_record(run_dir)
    if record is None and not journal.is_file():
        raise UserError(
            f"{run_dir}: not a run folder (no {RUN_FILE} or {JOURNAL_NAME}); 'scaler search --out' makes one"
        )
    url = str((record or {}).get("storage") or "journal")
    # Opening a journal that is not there would create an empty one inside the user's folder.
    if url == "journal" and not journal.is_file():
        raise UserError(f"{journal}: the run's journal is missing")
    # Reading a run changes nothing in it, a damaged journal included (the next search repairs that).
    storage = open_storage(None if url == "journal" else url, run_dir, repair=False)
    if record is not None:
        return RunStore.load(storage, record["study_name"])
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if len(names) != 1:
        raise UserError(f"{journal}: holds {len(names)} studies ({', '.join(names) or 'none'}) and no {RUN_FILE}")
    return RunStore.load(storage, names[0])
