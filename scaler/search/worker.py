"""Workers: train queued candidates of a run's study and record what they got.

Any process may be one: the search itself (``workers=0``), local worker processes it starts
(``python -m scaler.cli worker``, see :func:`start_local_workers`), or ``scaler worker`` on any host
that reaches the study's storage. Each claims a WAITING trial atomically, trains it with the
space's recipe while recording a heartbeat, and finishes it as COMPLETE or FAIL. A worker stopped
by SIGINT or SIGTERM marks its trial stopped and queues it again (:mod:`scaler.search.stops`), so
another worker, or the next one started, trains it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.artifacts import download_artifact

from models import GrowthError
from scaler.proxy.train import Checkpoint, TrainConfig, TrainResult, train_and_evaluate
from scaler.search.inherit import (
    ARTIFACTS_ATTR,
    InheritError,
    error_line,
    inherited_state,
    keep_weights,
    run_artifacts,
)
from scaler.search.record import Attr, TrialRecord
from scaler.search.run_folder import JOURNAL_NAME
from scaler.search.space import space_from_dict
from scaler.search.stops import Stopped, mark_stopped, stop_on_signals
from scaler.search.store import Claim, RunStore, StorageError, open_storage

__all__ = ["POLL_S", "evaluate_claim", "run_worker", "start_local_workers"]

POLL_S = 2.0


def evaluate_claim(
    store: RunStore,
    claim: Claim,
    training: TrainConfig,
    *,
    weights_dir: Path | None = None,
    run_dir: Path | None = None,
    artifacts_url: str | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> bool:
    """Train a claimed candidate and record the result (COMPLETE, or FAIL with the reason).

    A candidate whose parent's weights cannot be had trains from scratch, its ``inherited`` saying
    why (``fallback``, ``reason``), or fails with the reason under ``training.inherit_missing: fail``.

    Args:
        store: The run's study.
        claim: From :meth:`RunStore.claim`.
        training: The recipe.
        weights_dir: Keep the trained weights here (``trial_<number>.pt``).
        run_dir: The run folder: kept weights inside it are recorded relative to it.
        artifacts_url: This worker's own way to the run's artifact store (``None``: the run's, see
            :func:`~scaler.search.inherit.run_artifacts`).
        log: Receives one line per result.
        progress: Show the training progress bar (``None``: when stderr is a terminal).

    Returns:
        Whether the trial was recorded COMPLETE (``False`` if it failed or was reaped meanwhile).
    """
    record = claim.record
    if record.train_seed is not None:  # a seed replica: the same recipe with another seed
        training = dataclasses.replace(training, seed=record.train_seed)
    if record.recipe:  # a retrain: its own schedule (checked when it was queued)
        training = dataclasses.replace(training, **{k: record.recipe[k] for k in RECIPE_KEYS if k in record.recipe})
    inherit = training.init == "inherit"
    if inherit and record.inherit_from is not None:  # goes on from a trained network: its own schedule
        training = training.inherited()
    halving = record.train_until is not None or record.checkpoint_artifact is not None or bool(record.eval_at)
    attrs: dict[str, Any] = {}
    init_state = None
    with contextlib.ExitStack() as stack:
        artifacts = None
        # Parents' weights, or the checkpoints of rungs (evaluating on the way needs no store).
        needs = inherit or record.train_until is not None or record.checkpoint_artifact is not None
        if needs and (run_dir is not None or artifacts_url or store.get(ARTIFACTS_ATTR)):
            artifacts = run_artifacts(store, run_dir, artifacts_url)
        if needs and artifacts is None:
            what = "inherited training" if inherit else "successive halving"
            return _fail(
                store,
                claim,
                f"{what} needs the run folder or a shared store: start the worker with --run-dir RUN "
                "or --artifacts URL",
                log,
            )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trial-")))
        resume = None
        if record.checkpoint_artifact is not None:
            assert artifacts is not None
            resume, lost = _fetch_checkpoint(record.checkpoint_artifact, artifacts, tmp / "resume.pt", training)
            if lost is not None:  # trained again from its start up to this rung: the same result, later
                attrs[Attr.CHECKPOINT_LOST] = lost
                log(f"trial #{claim.number}: {lost}; training it again from the start")
        if inherit and record.inherit_from is not None and resume is None:
            try:
                init_state, attrs[Attr.INHERITED] = inherited_state(store, record, artifacts, seed=claim.number)
            except GrowthError as e:  # a child that is no growth of its parent is a bug, not a lost file
                return _fail(store, claim, str(e), log)
            except InheritError as e:
                if training.inherit_missing == "fail":
                    return _fail(store, claim, f"{e} (training.inherit_missing: fail)", log)
                attrs[Attr.INHERITED] = {"from_trial": record.inherit_from, "fallback": "scratch", "reason": str(e)}
                training = dataclasses.replace(training, init="scratch")  # what it really trains with
                log(f"warning: trial #{claim.number} {claim.arch.inline()} trains from scratch: {e}")
        until = record.train_until if record.train_until is not None and record.train_until < training.iters else None
        kept = None if weights_dir is None else weights_dir / f"trial_{claim.number:05d}.pt"
        save = kept if until is None else None
        if save is None and artifacts is not None and until is None:
            # every trained trial may become a parent: its weights go to the store
            save = tmp / "weights.pt"
        checkpoint = tmp / "checkpoint.pt" if until is not None else None
        with store.heartbeat(claim):
            result = train_and_evaluate(
                claim.arch,
                training,
                progress=progress,
                save=save,
                init_state=init_state,
                until=until,
                resume=resume,
                checkpoint=checkpoint,
                eval_at=record.eval_at,
            )
        if artifacts is not None and save is not None and result.ok:
            try:
                attrs[Attr.WEIGHTS_ARTIFACT] = keep_weights(store, claim, save, artifacts)
            except Exception as e:  # a store that cannot be written: the result stands, its children start afresh
                log(f"warning: trial #{claim.number}: its weights cannot be kept ({error_line(e)})")
        if artifacts is not None and checkpoint is not None and result.ok:
            try:  # without its checkpoint the trial cannot go on from this rung: a failure that says why
                attrs[Attr.CHECKPOINT] = keep_weights(store, claim, checkpoint, artifacts)
            except Exception as e:
                return _fail(store, claim, f"its checkpoint at a rung cannot be kept ({error_line(e)})", log)
    attrs[Attr.TRAIN] = {k: v for k, v in result.to_dict().items() if k != "loss_curve"}
    if halving and result.ok:
        rungs = _rungs(record, result)
        attrs[Attr.RUNGS] = rungs
        store.report(claim, rungs)
        attrs[Attr.TRAIN]["train_seconds"] = sum(float(r.get("train_seconds") or 0.0) for r in rungs)
        if until is not None:
            ok = store.pause(claim, attrs)
            log(
                f"trial #{claim.number} {claim.arch.inline()}: mIoU {100 * float(result.miou or 0):.2f} after {until} "
                f"of {training.iters} iterations; paused for the step's halving decision"
            )
            return ok
    if kept is not None and result.ok:
        # Relative to the run folder when it is inside it (the schema), else where the worker put it.
        inside = run_dir is not None and kept.resolve().is_relative_to(run_dir.resolve())
        attrs[Attr.WEIGHTS] = str(kept.resolve().relative_to(run_dir.resolve())) if inside else str(kept.resolve())
    latency = claim.record.latency_ms
    if result.ok and latency is not None:
        ok = store.complete(claim, float(latency), float(result.miou), attrs)
        log(f"trial #{claim.number} {claim.arch.inline()}: mIoU {100 * result.miou:.2f} at {latency:.2f} ms")
        return ok
    return _fail(store, claim, result.reason or "no latency recorded", log, attrs)


def _fetch_checkpoint(
    artifact_id: str, artifacts: Any, path: Path, training: TrainConfig
) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint a paused trial goes on from, or ``None`` and why it cannot be had (or used: a worker
    whose recipe differs, a mixed-precision setting, say, cannot go on from it)."""
    try:
        download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=artifact_id)
        checkpoint = Checkpoint.read(path)
    except Exception as e:  # a deleted or damaged file, a store that cannot be reached
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"its checkpoint {artifact_id} cannot be read ({first})"
    why = checkpoint.mismatch(training)
    return (checkpoint, None) if why is None else (None, f"its checkpoint {artifact_id} cannot be used: {why}")


def _rungs(record: TrialRecord, result: TrainResult) -> list[dict[str, Any]]:
    """Every rung the trial has reached: those of earlier claims and this training's, the last with this
    training's seconds (each rung's own cost). A trial trained again from its start (its checkpoint lost)
    keeps the rungs measured before: training is deterministic, they are the ones it passed again."""
    earlier = [dict(r) for r in record.rungs]
    reached = max((int(r["iters"]) for r in earlier), default=0)
    new = [{"iters": int(r["iters"]), "miou": float(r["miou"])} for r in result.rungs if int(r["iters"]) > reached]
    if new:
        new[-1]["train_seconds"] = round(float(result.train_seconds), 3)
    return earlier + new


# What a trial's recipe may replace of the space's training settings.
RECIPE_KEYS = ("iters", "seed", "init")


def _fail(
    store: RunStore, claim: Claim, reason: str, log: Callable[[str], None], attrs: dict[str, Any] | None = None
) -> bool:
    store.fail(claim, reason, attrs or {})
    log(f"trial #{claim.number} {claim.arch.inline()}: FAILED ({reason})")
    return False


def start_local_workers(
    n: int, run_dir: Path, storage_url: str | None, study_name: str, weights_dir: Path | None
) -> list[subprocess.Popen]:
    """Start ``n`` worker processes (``python -m scaler.cli worker``) on this host for the run.

    They exit when the search finishes, or when this process (their parent) is gone. Each runs in
    a session of its own, so a terminal's Ctrl-C reaches the search alone: the search stops them
    (SIGTERM) when it stops, after a worker still starting up would otherwise print a traceback.
    """
    url = storage_url or f"journal:{(run_dir / JOURNAL_NAME).resolve()}"
    cmd = [
        sys.executable,
        "-m",
        "scaler.cli",
        "worker",
        "--storage",
        url,
        "--study",
        study_name,
        "--parent-pid",
        str(os.getpid()),
        "--quiet",
    ]
    cmd += ["--run-dir", str(run_dir)]  # kept weights are recorded relative to it; inherited ones live in it
    if weights_dir is not None:
        cmd += ["--weights-dir", str(weights_dir)]
    return [subprocess.Popen(cmd, start_new_session=True) for _ in range(n)]


@stop_on_signals()
def run_worker(
    storage_url: str,
    study_name: str,
    *,
    device: str | None = None,
    weights_dir: Path | None = None,
    poll_s: float = POLL_S,
    max_idle_s: float | None = None,
    parent_pid: int | None = None,
    run_dir: Path | None = None,
    artifacts_url: str | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> int:
    """Evaluate queued candidates of a study until the search finishes; returns how many were evaluated.

    ``artifacts_url`` is this host's way to the run's store of inherited weights (``None``: the store
    the search recorded, else ``RUN/artifacts`` of ``run_dir``).

    Raises:
        UserError: Unreachable storage, no such study, or an artifact store that cannot be used.
        Stopped: SIGINT or SIGTERM stopped the worker; the trial it was training is queued again
            (the copy's number in ``requeued``).
    """
    storage = open_storage(storage_url, None, create=False)
    started = time.monotonic()
    waiting_logged = False
    while True:
        try:
            store = RunStore.load(storage, study_name)
            if store.get("space") is not None:
                break
        except StorageError:
            if max_idle_s is not None and time.monotonic() - started > max_idle_s:
                raise
        # Workers may start before the search creates its study: wait for it.
        if not waiting_logged:
            log(f"waiting for study {study_name!r} to be created by scaler search")
            waiting_logged = True
        if parent_pid is not None and os.getppid() != parent_pid:
            return 0
        time.sleep(poll_s)
    stored = dict(store.get("space") or {})
    stored.pop("num_classes", None)
    space = space_from_dict(stored, source=f"study {study_name}")
    training = space.training if device is None else dataclasses.replace(space.training, device=device)
    if training.init == "inherit" and (artifacts_url or store.get(ARTIFACTS_ATTR)):
        run_artifacts(store, run_dir, artifacts_url)  # a bad URL or boto3 missing: said now, not per candidate
    try:
        return _evaluate_queued(
            store, training, poll_s, max_idle_s, parent_pid, weights_dir, run_dir, artifacts_url, log, progress
        )
    except Stopped as stop:
        # From the claim on, wherever the signal came: the trial this process holds is queued again.
        mark_stopped(store, stop, [os.getpid()])
        raise


def _evaluate_queued(
    store: RunStore,
    training: TrainConfig,
    poll_s: float,
    max_idle_s: float | None,
    parent_pid: int | None,
    weights_dir: Path | None,
    run_dir: Path | None,
    artifacts_url: str | None,
    log: Callable[[str], None],
    progress: bool | None,
) -> int:
    """Claim and evaluate queued trials until the search finishes, the worker idles out or its parent is gone."""
    done = 0
    idle_since = time.monotonic()
    while True:
        if parent_pid is not None and os.getppid() != parent_pid:
            return done
        claim = store.claim()
        if claim is None:
            if store.get("status") == "finished":
                return done
            if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return done
            time.sleep(poll_s)
            continue
        evaluate_claim(
            store,
            claim,
            training,
            weights_dir=weights_dir,
            run_dir=run_dir,
            artifacts_url=artifacts_url,
            log=log,
            progress=progress,
        )
        done += 1
        idle_since = time.monotonic()
