"""The search process: owns the run folder, measures latency, queues candidates, collects results.

Data flow (DESIGN.md): search space → strategy proposes → latency measured here, on the target
device (cached by architecture + device fingerprint) → candidates queued as trials in the run's
Optuna study → workers (:mod:`scaler.search.worker`: this process with ``workers=0``, or
``scaler worker`` processes on any host) train each briefly and report mIoU → the strategy picks
what comes next. The space's named ``references`` are queued once, trained like any candidate and
never part of a decision. Running the same command again resumes: nothing finished is redone, and
a candidate whose worker died or was stopped is evaluated again.

SIGINT and SIGTERM stop a search cleanly (:mod:`scaler.search.stops`): the trial in training is
marked stopped and queued again, the run's status says ``stopped``, and :func:`run_search` raises
:class:`~scaler.search.stops.Stopped`.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from models import LPSNetArch, class_embeddings, resolve_arch
from scaler.errors import UserError
from scaler.measure import LatencyCache, PairedResult, measure_latency, measure_paired
from scaler.measure.load import busy_share
from scaler.proxy.data import open_dataset
from scaler.search.inherit import ARTIFACTS_ATTR, artifact_store
from scaler.search.inherit import artifacts_url as normalize_artifacts_url
from scaler.search.progress import SearchBars
from scaler.search.record import DIED, STOPPED, Attr, TrialRecord
from scaler.search.run_folder import ARTIFACTS_DIR, WEIGHTS_DIR, check_run_dir, exclusive, write_record
from scaler.search.space import SearchSpace
from scaler.search.stops import Stopped, mark_stopped, stop_on_signals
from scaler.search.store import RunStore, distributions, open_storage
from scaler.search.strategies import Decision, SearchContext, Strategy, make_strategy, strategy_class
from scaler.search.worker import POLL_S, evaluate_claim, start_local_workers

__all__ = ["SearchSummary", "run_search"]


def _group_seed(archs: Sequence[LPSNetArch], rounds: int) -> int:
    """The shuffling seed of one paired pass: the same networks and rounds always get the same order."""
    key = ",".join(a.arch_hash() for a in archs) + f":{rounds}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


@dataclasses.dataclass
class SearchSummary:
    """What one search session did: why it stopped, its trials, and where its time went (seconds).

    ``train_seconds`` is training in this process; ``worker_train_seconds`` the training (and
    evaluation) that other processes (``--workers``, ``scaler worker``) did for trials finished
    during the session, which ran in parallel and so is not a share of ``seconds``. ``failed``
    counts candidates that failed (training, or over the latency budget); ``stopped`` and ``died``
    count evaluations that a stop (SIGINT, SIGTERM) or a dead worker cut short, each queued again;
    ``pruned`` the candidates successive halving stopped at a rung (``greedy.halving``).
    """

    run_dir: Path
    study_name: str
    strategy: str
    stop_reason: str
    trials: int
    complete: int
    failed: int
    seconds: float
    latency_seconds: float
    train_seconds: float
    worker_train_seconds: float = 0.0
    stopped: int = 0
    died: int = 0
    pruned: int = 0


def _space_record(space: SearchSpace, class_names: list[str]) -> dict[str, Any]:
    return {**space.to_dict(), "num_classes": len(class_names)}


@stop_on_signals()
def run_search(
    space: SearchSpace,
    run_dir: str | Path,
    *,
    space_file: str | None = None,
    storage_url: str | None = None,
    strategy: str = "greedy",
    workers: int = 0,
    seed: int = 0,
    keep_weights: bool = False,
    artifacts_url: str | None = None,
    latency_cache: LatencyCache | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> SearchSummary:
    """Run (or resume) a search; returns when the strategy stops.

    Args:
        space: The search space.
        run_dir: The run folder (created, or resumed if it holds this search).
        storage_url: ``None`` for the journal file in ``run_dir``; a database URL for several hosts.
        strategy: A registered strategy: ``greedy`` (the method) or a baseline (``random``,
            ``tpe``, ``nsga2``); see :func:`~scaler.search.strategies.list_strategies`.
        workers: Local worker processes; 0 trains in this process.
        keep_weights: Keep each candidate's proxy-trained weights in ``run_dir/weights``.
        artifacts_url: A shared store for inherited weights (``s3://BUCKET[/PREFIX]`` or a folder),
            recorded in the study for every worker; ``None``: the one recorded, else ``RUN/artifacts``.
        latency_cache: Where measured latencies are cached (default: the user cache).
        log: Receives the decisions and results as one-line messages.

    Raises:
        UserError: Bad options, a run folder of another search, unreachable storage, missing data.
        Stopped: SIGINT or SIGTERM stopped the search; the interrupted trials are queued again
            (their copies' numbers in ``requeued``) and the run's status is ``stopped``.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    if artifacts_url is not None:  # a bad URL, or boto3 missing: said before the run folder is touched
        artifacts_url = normalize_artifacts_url(artifacts_url)
        if space.training.init == "inherit":
            artifact_store(None, artifacts_url)
    session_start = datetime.datetime.now()
    strategy_cls = strategy_class(strategy)
    info = open_dataset(space.dataset, "val", seed=space.training.seed).info
    heads = [space.start.head, *(op.head for op in space.operators if op.head is not None)]
    for head in dict.fromkeys(h for h in heads if h.language_guided):
        # Fail before touching the run folder, not in every candidate, if a head's text encoder (the
        # start's, or one a head operator switches to) cannot embed the classes (this also fills the
        # embedding cache the workers read).
        class_embeddings(head.text_encoder, list(info.class_names), head.templates)
    study_name = strategy_cls.study_name(space.name)
    record = {
        "study_name": study_name,
        "storage": storage_url or "journal",
        "space_file": space_file,
        "strategy": strategy,
        "space_hash": space.space_hash(),
    }
    is_new = check_run_dir(run_dir, record)
    with exclusive(run_dir):
        storage = open_storage(storage_url, run_dir)
        store = RunStore(storage, study_name, info.num_classes)
        if is_new:
            write_record(run_dir, record)
        stored = store.get("space")
        if stored is not None:
            # Stopping rules may change between sessions (to extend a finished search); nothing else may.
            stored = {k: v for k, v in stored.items() if k not in ("num_classes", "stopping")}
            diff = space.diff({**stored, "stopping": space.to_dict()["stopping"]})
            if diff:
                raise UserError(
                    f"{run_dir}: this run was made with another search space ({diff}); use another --out for a new run"
                )
            store.put("space", _space_record(space, list(info.class_names)))
        else:
            store.put("space", _space_record(space, list(info.class_names)))
            store.put("class_names", list(info.class_names))
            store.put("strategy", strategy)
        _record_artifacts(store, artifacts_url, space, run_dir)
        store.put("status", "running")
        store.put("stop_reason", None)  # the last session's, if any: not why this one will stop
        try:
            reason, timings = _session(
                store,
                space,
                run_dir,
                storage_url,
                strategy_cls,
                strategy,
                workers,
                seed,
                keep_weights,
                latency_cache,
                log,
                progress,
            )
        except Stopped as stop:
            mark_stopped(store, stop, [os.getpid()])
            # The local workers, stopped with the search, queued their trials again themselves.
            stop.requeued[:] = _requeued_since(store, session_start)
            store.put("status", "stopped")
            store.put("stop_reason", stop.reason)
            raise
        store.put("status", "finished")
        store.put("stop_reason", reason)
    trials = store.records()
    return SearchSummary(
        run_dir=run_dir,
        study_name=study_name,
        strategy=strategy,
        stop_reason=reason,
        trials=len(trials),
        complete=sum(t.complete for t in trials),
        failed=sum(t.state == TrialState.FAIL and t.interrupted is None for t in trials),
        stopped=sum(t.interrupted == STOPPED for t in trials),
        died=sum(t.interrupted == DIED for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        seconds=time.perf_counter() - t0,
        latency_seconds=timings["latency"],
        train_seconds=timings["train"],
        worker_train_seconds=_trained_elsewhere(store.trials(), session_start),
    )


def _session(
    store: RunStore,
    space: SearchSpace,
    run_dir: Path,
    storage_url: str | None,
    strategy_cls: type[Strategy],
    strategy: str,
    workers: int,
    seed: int,
    keep_weights: bool,
    latency_cache: LatencyCache | None,
    log: Callable[[str], None],
    progress: bool | None,
) -> tuple[str, dict[str, float]]:
    """One session of a search whose run folder is held: measure, queue, train until the strategy stops.

    Returns:
        Why the strategy stopped, and the seconds spent on ``latency`` and ``train`` here.
    """
    space = dataclasses.replace(space, start=dataclasses.replace(space.start, num_classes=store.num_classes))
    cache = latency_cache if latency_cache is not None else LatencyCache()
    timings = {"latency": 0.0, "train": 0.0}

    def latency(arch: LPSNetArch, *, refresh: bool = False) -> dict[str, Any]:
        t = time.perf_counter()
        try:
            result = measure_latency(arch, space.latency, cache=cache, refresh=refresh)
        except RuntimeError as e:  # a device gone, a driver error: nothing a candidate did
            raise _measurement_failed(e, space, run_dir, arch.inline()) from e
        finally:
            timings["latency"] += time.perf_counter() - t
        d = result.to_dict()
        d.pop("samples_ms", None)
        if d.get("under_load"):
            log(
                f"warning: the latency of {arch.inline()} ({d['median_ms']:.2f} ms) was measured while other "
                f"processes used {d['others_cpu_share']:.0%} of the CPUs, even after waiting for them; it is "
                "likely inflated and is not cached"
            )
        return d

    def paired(archs: Sequence[LPSNetArch], rounds: int) -> PairedResult:
        t = time.perf_counter()
        try:
            result = measure_paired(
                list(archs), space.latency, rounds=rounds, seed=_group_seed(archs, rounds), cache=cache
            )
        except RuntimeError as e:
            raise _measurement_failed(e, space, run_dir, f"{len(archs)} networks together") from e
        finally:
            timings["latency"] += time.perf_counter() - t
        if result.under_load and not warned_load:
            warned_load.append(True)
            share = "" if result.others_cpu_share is None else f" ({result.others_cpu_share:.0%} of the CPUs)"
            log(
                f"warning: {len(archs)} networks were timed together while other processes used the machine"
                f"{share}, even after waiting for them; their latencies are likely inflated (their differences "
                "less so: every network shared the window; said once, each step's record keeps its share)"
            )
        return result

    warned_load: list[bool] = []

    _warn_if_busy(space, log)
    bars = SearchBars(space, strategy_cls, progress)
    log = functools.partial(bars.write, log)
    ctx = SearchContext(space=space, latency=latency, get=store.get, put=store.put, log=log, paired=paired)
    strat = make_strategy(strategy, space, seed=seed, batch=max(1, workers))
    dists = distributions(space.constraints)
    weights_dir = run_dir / WEIGHTS_DIR if keep_weights else None
    procs = start_local_workers(workers, run_dir, storage_url, store.study_name, weights_dir)
    try:
        _queue_references(store, space, ctx, dists, log)
        reason = _loop(
            store, strat, ctx, dists, space, workers, procs, run_dir, weights_dir, timings, log, progress, bars
        )
    except Stopped as stop:
        # The workers (in sessions of their own: a terminal's Ctrl-C reached the search alone) stop
        # with it and queue their trials again; what one could not mark before it ended is marked here.
        _end_workers(procs, signal.SIGTERM)
        mark_stopped(store, stop, [p.pid for p in procs])
        raise
    finally:
        bars.close()
        _end_workers(procs, signal.SIGTERM)
    return reason, timings


def _end_workers(procs: Sequence[subprocess.Popen], signum: int, wait_s: float = 30.0) -> None:
    """Send ``signum`` to the local workers still running, wait up to ``wait_s`` for them, then kill the rest."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
    deadline = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _requeued_since(store: RunStore, since: datetime.datetime) -> list[int]:
    """The numbers of the copies queued again for trials stopped since ``since`` (by this process or its workers)."""
    trials = store.trials()
    stopped = {
        t.number
        for t in trials
        if t.user_attrs.get(Attr.STOPPED) and t.datetime_complete is not None and t.datetime_complete >= since
    }
    return [t.number for t in trials if t.user_attrs.get(Attr.RETRY_OF) in stopped]


def _trained_elsewhere(trials: Sequence[Any], since: datetime.datetime) -> float:
    """Seconds other processes spent training and evaluating the trials they finished since ``since``."""
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    total = 0.0
    for t in trials:
        if t.datetime_complete is None or t.datetime_complete < since:
            continue
        record = TrialRecord.from_trial(t)
        owner = dict(record.owner or {})
        if not owner or {k: owner.get(k) for k in me} == me:
            continue
        train = record.train or {}
        total += float(train.get("train_seconds") or 0.0) + float(train.get("eval_seconds") or 0.0)
    return total


def _record_artifacts(store: RunStore, url: str | None, space: SearchSpace, run_dir: Path) -> None:
    """Record the run's shared artifact store ``url`` (checked by :func:`artifacts_url`); a run keeps its own.

    Raises:
        UserError: ``url`` is not the store the run's inherited weights are in.
    """
    if url is None:
        return
    recorded = store.get(ARTIFACTS_ATTR)
    if recorded is None and space.training.init == "inherit" and store.trials():
        recorded = str((run_dir / ARTIFACTS_DIR).resolve())  # the weights kept so far are in the run folder
    if recorded is not None and recorded != url:
        raise UserError(f"{run_dir}: this run keeps its weights in {recorded}, not {url}; resume without --artifacts")
    store.put(ARTIFACTS_ATTR, url)


def _measurement_failed(e: RuntimeError, space: SearchSpace, run_dir: Path, what: str) -> UserError:
    """The one line for a latency measurement the device could not take (gone, driver error): the search stops
    before recording anything of the step it was planning, so the run resumes where it was."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(
        f"latency measurement on {space.latency.device} failed while timing {what}: {first}; the run in "
        f"{run_dir} is intact: check the device, then run the same command to resume"
    )


def _warn_if_busy(space: SearchSpace, log: Callable[[str], None]) -> None:
    """Say so before a search whose CPU latencies other processes would distort."""
    guard = space.latency.max_others_share
    if space.latency.is_cuda or guard is None:
        return
    busy = busy_share(0.5)
    if busy is not None and busy > guard:
        log(
            f"warning: other processes are using {busy:.0%} of the CPUs; each CPU latency measurement will "
            f"wait up to {space.latency.quiet_wait_s:g} s for them (at most {space.latency.load_retries} times) "
            "and flag the result if they go on; stop them for trustworthy latencies"
        )


def _queue_references(
    store: RunStore, space: SearchSpace, ctx: SearchContext, dists: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Queue each of the space's named references not in the run yet (measured here, trained by workers)."""
    present = {t.reference for t in store.records() if t.is_reference}
    for name in space.references:
        if name in present:
            continue
        arch = resolve_arch(name, num_classes=space.start.num_classes)
        record = TrialRecord(arch, step=None, latency=ctx.latency(arch), reference=name)
        number = store.add(record, dists)
        log(f"queued reference {name} as trial #{number} {arch.inline()} at {record.latency_ms:.2f} ms")


def _queue(
    store: RunStore,
    strat: Strategy,
    proposal: TrialRecord,
    ctx: SearchContext,
    dists: dict[str, Any],
    budget: float | None,
    log: Callable[[str], None],
) -> None:
    """Add a proposal to the study: queued for training, or recorded untrained when over the budget."""
    record = proposal if proposal.latency is not None else proposal.with_latency(ctx.latency(proposal.arch))
    ms = record.latency_ms
    assert ms is not None  # every measurement has a median
    if record.over_budget or (strat.loop_checks_budget and budget is not None and ms > budget):
        record = dataclasses.replace(
            record, over_budget=True, fail_reason=f"over the latency budget ({ms:.2f} > {budget:g} ms), not trained"
        )
        store.add(record, dists, state=TrialState.FAIL)
        return
    number = store.add(record, dists)
    log(f"queued trial #{number} (step {record.step}) {record.arch.inline()} at {ms:.2f} ms")


def _loop(
    store: RunStore,
    strat: Strategy,
    ctx: SearchContext,
    dists: dict[str, Any],
    space: SearchSpace,
    workers: int,
    procs: list[subprocess.Popen],
    run_dir: Path,
    weights_dir: Path | None,
    timings: dict[str, float],
    log: Callable[[str], None],
    progress: bool | None,
    bars: SearchBars,
) -> str:
    budget = space.stopping.latency_budget_ms
    while True:
        for number in store.reap_stale(idle=True):  # between this process's own evaluations
            log(f"a worker died; its candidate is queued again as trial #{number}")
        history = store.records()
        bars.update(history)
        decision: Decision = strat.propose(history, ctx)
        # References still in training hold the end of the search (the strategy never waits for them).
        if decision.kind == "done" and not any(t.pending and t.is_reference for t in history):
            log(f"search finished: {decision.reason}")
            return decision.reason
        if decision.kind == "propose":
            for p in decision.proposals:
                _queue(store, strat, p, ctx, dists, budget, log)
            continue
        if decision.kind == "advance":
            for number, reason in decision.prune.items():
                store.prune(number, reason)
            for number, until in decision.resume.items():
                store.resume(number, until)
            continue
        if workers == 0:
            claim = store.claim()
            if claim is not None:
                t = time.perf_counter()
                evaluate_claim(
                    store,
                    claim,
                    space.training,
                    weights_dir=weights_dir,
                    run_dir=run_dir,
                    log=log,
                    progress=progress,
                )
                timings["train"] += time.perf_counter() - t
                continue
        dead = [p for p in procs if p.poll() is not None]
        if procs and len(dead) == len(procs):
            raise UserError(
                f"all {len(procs)} local workers exited (last exit code {dead[-1].returncode}); "
                "see their messages above"
            )
        time.sleep(POLL_S)
