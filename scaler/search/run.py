"""The search process: owns the run folder, measures latency, queues candidates, collects results.

Data flow (DESIGN.md): search space → strategy proposes → latency measured here, on the target
device (cached by architecture + device fingerprint) → candidates queued as trials in the run's
Optuna study → workers (this process with ``workers=0``, or ``scaler worker`` processes on any
host) train each briefly and report mIoU → the strategy picks what comes next. Running the same
command again resumes: nothing finished is redone, and a candidate whose worker died is evaluated
again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from models import LPSNetArch, class_embeddings
from scaler.errors import UserError
from scaler.measure import LatencyCache, measure_latency
from scaler.measure.load import busy_share
from scaler.proxy.data import open_dataset
from scaler.proxy.train import TrainConfig, train_and_evaluate
from scaler.search.run_folder import JOURNAL_NAME, WEIGHTS_DIR, check_run_dir, exclusive, write_record
from scaler.search.space import SearchSpace, space_from_dict
from scaler.search.store import Claim, RunStore, StorageError, arch_params, distributions, open_storage
from scaler.search.strategies import Decision, SearchContext, TrialRecord, make_strategy

__all__ = ["SearchSummary", "evaluate_claim", "run_search", "run_worker"]

POLL_S = 2.0


@dataclasses.dataclass
class SearchSummary:
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


def _space_record(space: SearchSpace, class_names: list[str]) -> dict[str, Any]:
    return {**space.to_dict(), "num_classes": len(class_names)}


def evaluate_claim(
    store: RunStore,
    claim: Claim,
    training: TrainConfig,
    *,
    weights_dir: Path | None = None,
    run_dir: Path | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> bool:
    """Train a claimed candidate and record the result (COMPLETE, or FAIL with the reason).

    Kept weights are recorded relative to ``run_dir`` when they lie inside it.
    """
    save = None if weights_dir is None else weights_dir / f"trial_{claim.number:05d}.pt"
    with store.heartbeat(claim):
        result = train_and_evaluate(claim.arch, training, progress=progress, save=save)
    train = {k: v for k, v in result.to_dict().items() if k != "loss_curve"}
    attrs: dict[str, Any] = {"train": train}
    if save is not None and result.ok:
        # Relative to the run folder when it is inside it (the schema), else where the worker put it.
        inside = run_dir is not None and save.resolve().is_relative_to(run_dir.resolve())
        attrs["weights"] = str(save.resolve().relative_to(run_dir.resolve())) if inside else str(save.resolve())
    latency = (claim.attrs.get("latency") or {}).get("median_ms")
    if result.ok and latency is not None:
        ok = store.complete(claim, float(latency), float(result.miou), attrs)
        log(f"trial #{claim.number} {claim.arch.inline()}: mIoU {100 * result.miou:.2f} at {latency:.2f} ms")
        return ok
    reason = result.reason or "no latency recorded"
    store.fail(claim, reason, attrs)
    log(f"trial #{claim.number} {claim.arch.inline()}: FAILED ({reason})")
    return False


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
    latency_cache: LatencyCache | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> SearchSummary:
    """Run (or resume) a search; returns when the strategy stops.

    Args:
        space: The search space.
        run_dir: The run folder (created, or resumed if it holds this search).
        storage_url: ``None`` for the journal file in ``run_dir``; a database URL for several hosts.
        strategy: ``greedy`` (the method) or a baseline (``random``, ``tpe``, ``nsga2``).
        workers: Local worker processes; 0 trains in this process.
        keep_weights: Keep each candidate's proxy-trained weights in ``run_dir/weights``.
        latency_cache: Where measured latencies are cached (default: the user cache).
        log: Receives the decisions and results as one-line messages.

    Raises:
        UserError: Bad options, a run folder of another search, unreachable storage, missing data.
    """
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    info = open_dataset(space.dataset, "val", seed=space.training.seed).info
    if space.start.head.language_guided:
        # Fail before touching the run folder, not in every candidate, if the head's text encoder
        # cannot embed the classes (this also fills the embedding cache the workers read).
        head = space.start.head
        class_embeddings(head.text_encoder, list(info.class_names), head.templates)
    study_name = space.name if strategy == "greedy" else f"{space.name}-{strategy}"
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
        store.put("status", "running")
        space = dataclasses.replace(space, start=dataclasses.replace(space.start, num_classes=info.num_classes))
        cache = latency_cache if latency_cache is not None else LatencyCache()
        timings = {"latency": 0.0, "train": 0.0}

        def latency(arch: LPSNetArch) -> dict[str, Any]:
            t = time.perf_counter()
            result = measure_latency(arch, space.latency, cache=cache)
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

        _warn_if_busy(space, log)
        bars = _SearchBars(space, strategy, progress)
        log = functools.partial(bars.write, log)
        ctx = SearchContext(space=space, latency=latency, get=store.get, put=store.put, log=log)
        strat = make_strategy(strategy, space, seed=seed, batch=max(1, workers))
        dists = distributions(space.constraints)
        weights_dir = run_dir / WEIGHTS_DIR if keep_weights else None
        procs = _start_workers(workers, run_dir, storage_url, study_name, weights_dir)
        try:
            reason = _loop(store, strat, ctx, dists, space, workers, procs, weights_dir, timings, log, progress, bars)
        finally:
            bars.close()
            for p in procs:
                p.terminate()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=30)
        store.put("status", "finished")
        store.put("stop_reason", reason)
    trials = store.trials()
    return SearchSummary(
        run_dir=run_dir,
        study_name=study_name,
        strategy=strategy,
        stop_reason=reason,
        trials=len(trials),
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        seconds=time.perf_counter() - t0,
        latency_seconds=timings["latency"],
        train_seconds=timings["train"],
    )


class _SearchBars:
    """Progress bars over the search: steps (greedy) or trained trials (baselines), and the current
    step's candidates. Training bars of single candidates appear below them.

    Everything shown is computed from the run's trials, so a resumed search starts where it stood.
    """

    def __init__(self, space: SearchSpace, strategy: str, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.space = space
        self.greedy = strategy == "greedy"
        # tqdm's disable=None hides the bars when stderr is not a terminal (logs, CI).
        disable = None if enabled is None else not enabled
        common = {"disable": disable, "dynamic_ncols": True, "file": sys.stderr}
        if self.greedy:
            self.main = tqdm(total=space.stopping.max_steps, desc="steps", unit="step", position=0, **common)
            self.step = tqdm(total=1, desc="candidates", unit="cand", position=1, leave=False, **common)
        else:
            total = space.stopping.max_trials or 0
            self.main = tqdm(total=total, desc=f"{strategy} trials", unit="trial", position=0, **common)
            self.step = None
        self._tqdm = tqdm
        self._current: int | None = None

    def write(self, log: Callable[[str], None], message: str) -> None:
        """Log ``message`` without tearing the bars."""
        with self._tqdm.external_write_mode(file=sys.stderr):
            log(message)

    def update(self, history: list[TrialRecord]) -> None:
        done = [t for t in history if not t.pending]
        best = max((t for t in done if t.complete), key=lambda t: t.miou or 0.0, default=None)
        if best is not None:
            self.main.set_postfix_str(
                f"best mIoU {100 * (best.miou or 0):.1f} at {best.latency_ms:.2f} ms", refresh=False
            )
        if not self.greedy:
            trained = [t for t in done if not t.attrs.get("over_budget") and "retry_of" not in t.attrs]
            _set(self.main, len(trained))
            return
        current = max((t.step for t in history if t.step is not None), default=0)
        in_step = [t for t in _latest(history) if t.step == current]
        finished = sum(not t.pending for t in in_step)
        # A step counts once all its candidates are back (step 0, the start network, is not counted).
        _set(self.main, max(0, min(self.main.total, current if finished == len(in_step) else current - 1)))
        assert self.step is not None
        if current != self._current:  # a new step: its own count, rate and elapsed time
            self._current = current
            self.step.reset(total=max(1, len(in_step)))
            self.step.set_description_str(f"step {current} candidates" if current else "start network", refresh=False)
        self.step.total = max(1, len(in_step))
        _set(self.step, finished)

    def close(self) -> None:
        if self.step is not None:
            self.step.close()
        self.main.close()


def _set(bar: Any, n: int) -> None:
    if n != bar.n:
        bar.n = n
        bar.refresh()


def _latest(history: list[TrialRecord]) -> list[TrialRecord]:
    """One record per architecture and step: a re-queued candidate replaces its dead attempt."""
    out: dict[tuple[str, int | None], TrialRecord] = {}
    for t in sorted(history, key=lambda t: t.number):
        out[(t.arch_hash, t.step)] = t
    return list(out.values())


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


def _loop(
    store: RunStore,
    strat: Any,
    ctx: SearchContext,
    dists: dict[str, Any],
    space: SearchSpace,
    workers: int,
    procs: list[subprocess.Popen],
    weights_dir: Path | None,
    timings: dict[str, float],
    log: Callable[[str], None],
    progress: bool | None,
    bars: _SearchBars,
) -> str:
    budget = space.stopping.latency_budget_ms
    while True:
        for number in store.reap_stale():
            log(f"a worker died; its candidate is queued again as trial #{number}")
        history = [TrialRecord.from_trial(t) for t in store.trials()]
        bars.update(history)
        decision: Decision = strat.propose(history, ctx)
        if decision.kind == "done":
            log(f"search finished: {decision.reason}")
            return decision.reason
        if decision.kind == "propose":
            for p in decision.proposals:
                lat = p.attrs.get("latency") or ctx.latency(p.arch)  # measured already by some strategies
                attrs = {**p.attrs, "latency": lat}
                over = budget is not None and lat["median_ms"] > budget and p.attrs.get("strategy") != "greedy"
                if over or p.attrs.get("over_budget"):
                    attrs.update(
                        over_budget=True,
                        fail_reason=f"over the latency budget ({lat['median_ms']:.2f} > {budget:g} ms), not trained",
                    )
                    store.study.add_trial(
                        optuna.trial.create_trial(
                            state=TrialState.FAIL,
                            params=arch_params(p.arch),
                            distributions=dists,
                            user_attrs={"arch": p.arch.to_dict(), "arch_hash": p.arch.arch_hash(), **attrs},
                            system_attrs=store.constraint_attrs(lat["median_ms"]),
                        )
                    )
                    continue
                number = store.add(p.arch, dists, attrs)
                log(
                    f"queued trial #{number} (step {p.attrs.get('step')}) {p.arch.inline()} at "
                    f"{lat['median_ms']:.2f} ms"
                )
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
                    run_dir=weights_dir.parent if weights_dir is not None else None,
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


def _start_workers(
    n: int, run_dir: Path, storage_url: str | None, study_name: str, weights_dir: Path | None
) -> list[subprocess.Popen]:
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
    if weights_dir is not None:
        cmd += ["--weights-dir", str(weights_dir), "--run-dir", str(run_dir)]
    return [subprocess.Popen(cmd) for _ in range(n)]


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
    log: Callable[[str], None] = lambda m: None,
    progress: bool | None = None,
) -> int:
    """Evaluate queued candidates of a study until the search finishes; returns how many were evaluated.

    Raises:
        UserError: Unreachable storage, or no such study.
    """
    storage = open_storage(storage_url, None)
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
        evaluate_claim(store, claim, training, weights_dir=weights_dir, run_dir=run_dir, log=log, progress=progress)
        done += 1
        idle_since = time.monotonic()
