"""Clean stops: SIGINT (Ctrl-C) and SIGTERM end a search or a worker as a stop, never as a failure.

While :func:`stop_on_signals` is active, the first SIGINT or SIGTERM raises :class:`Stopped` in
the main thread, wherever it is (training, latency measurement, waiting for workers). The process
then marks the trials it was evaluating as stopped (:func:`mark_stopped`: FAIL with
``Attr.STOPPED`` and the reason ``stopped by SIGINT``, and a fresh copy queued again), so that a
resume, or another worker, trains them again and no report counts them as failures. A second
signal during that cleanup acts as it would without this module (SIGINT raises
``KeyboardInterrupt``, SIGTERM ends the process): the trial is then reaped as "worker died" later.

A write that must not be cut in the middle (an append to the journal, under its lock file) runs
inside :func:`uninterrupted`: a stop that arrives meanwhile is raised the moment the write is done.
Without that, a stop raised between taking the journal's lock file and releasing it left the lock
behind, and every other process of the run waited out Optuna's 30 s grace period before writing.

A process killed outright (SIGKILL, a crash, a lost machine) cannot mark anything: its trials stay
RUNNING until the next search reaps them as "worker died" (:meth:`RunStore.reap_stale`), a state
of its own.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from scaler.search.record import Attr, TrialRecord

if TYPE_CHECKING:  # the journal (below the store) imports this module for `uninterrupted`
    from scaler.search.store import RunStore

__all__ = ["STOP_SIGNALS", "Stopped", "mark_stopped", "stop_on_signals", "uninterrupted"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Deferred:
    """The main thread's :func:`uninterrupted` blocks: how deep, and the stop that came during one."""

    depth = 0
    fire: Callable[[], None] | None = None


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold back a stop (:func:`stop_on_signals`) until the block is done, then raise it.

    For short writes that leave shared state broken when cut (the journal's lock file taken, not
    yet released). A second signal during the block is not held back: it acts as it would without
    :func:`stop_on_signals`. Outside the main thread (where no stop is ever raised) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Deferred.depth += 1
    try:
        yield
    finally:
        _Deferred.depth -= 1
        if _Deferred.depth == 0 and _Deferred.fire is not None:
            fire, _Deferred.fire = _Deferred.fire, None
            fire()


# BaseException, as KeyboardInterrupt: a stop is no error, and `except Exception` (a failing candidate) lets it through.
class Stopped(BaseException):
    """The process was asked to stop by a signal.

    Args:
        signum: The signal number.

    Attributes:
        name: The signal's name (``SIGINT``).
        exit_code: The conventional exit status of a process stopped by it (128 + the number: 130, 143).
        requeued: The trial numbers queued again by :func:`mark_stopped` (filled in by whoever marks them).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + self.signum
        self.requeued: list[int] = []
        super().__init__(f"stopped by {self.name}")

    @property
    def reason(self) -> str:
        """What the stopped trials record as their reason: ``stopped by SIGINT``."""
        return f"stopped by {self.name}"


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into :class:`Stopped` while the block (or, as a decorator,
    the function: :func:`~scaler.search.run.run_search`, :func:`~scaler.search.worker.run_worker`) runs.

    Outside the main thread (where Python cannot install handlers) this does nothing, and a signal
    the process was started ignoring stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal ignored when the process started (SIGINT of a background job in a script) stays ignored.
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def stop(signum: int) -> None:
        # One stop is enough: a second signal during the cleanup acts as it would have without us.
        restore()
        raise Stopped(signum)

    def handler(signum: int, frame: FrameType | None) -> None:
        if _Deferred.depth == 0:
            stop(signum)
        elif _Deferred.fire is None:  # mid-write: raised when the write is done
            _Deferred.fire = functools.partial(stop, signum)
        else:  # a second signal while the first waits: as without us (SIGTERM ends the process)
            _Deferred.fire = None
            restore()
            signal.raise_signal(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def mark_stopped(store: RunStore, stop: Stopped, pids: Iterable[int]) -> list[int]:
    """Mark the RUNNING trials that processes ``pids`` on this host own as stopped, and queue each again.

    A stopped trial ends FAIL (Optuna has no state for "interrupted" and never moves a trial back
    to WAITING) with ``Attr.STOPPED`` = the signal's name and ``fail_reason`` = ``stopped by SIGINT``;
    its copy (``retry_of`` = its number) is WAITING, so a resume or any worker trains it again.

    Args:
        store: The run's study.
        stop: The signal that stopped the process.
        pids: The processes whose trials are marked: this one, and the local workers of a search
            (whatever they could not mark themselves before they ended).

    Returns:
        The numbers of the copies queued again (also appended to ``stop.requeued``).
    """
    host = socket.gethostname()
    pids = set(pids)
    requeued = []
    for t in store.trials(states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(Attr.OWNER) or {}
        if owner.get("host") != host or owner.get("pid") not in pids:
            continue
        store.storage.set_trial_user_attr(t._trial_id, Attr.STOPPED, stop.name)
        store.storage.set_trial_user_attr(t._trial_id, Attr.FAIL_REASON, stop.reason)
        store.storage.set_trial_user_attr(t._trial_id, Attr.HEARTBEAT, time.time())
        try:
            store.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # finished meanwhile (its result was recorded just before the signal)
        record = TrialRecord.from_user_attrs(t.user_attrs, number=t.number)
        requeued.append(store.add(record.requeued(t.number), t.distributions))
    stop.requeued.extend(requeued)
    return requeued
