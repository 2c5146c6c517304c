"""Part (c) of the fault suite: load. Many worker processes on one study, one SIGKILLed every few
seconds; and the time ``scaler frontier`` takes to read a large run.

Workers: ``--workers`` real ``scaler worker`` processes (``tests/helpers/fake_cli.py``: the real
claim, heartbeat and recording, with a stand-in training that sleeps ``--train-s`` seconds) evaluate
``--candidates`` queued candidates of one study, on a journal file and on a PostgreSQL database (a
throwaway server started here when Debian's ``postgresql`` is installed). Every ``--kill-every``
seconds (seeded, 0.5x to 1.5x) one worker holding a trial is SIGKILLed and a new one started in
its place. This process plays the search's part: it reaps dead workers'
trials (``RunStore.reap_stale``, which queues a copy of each) every second, and says "finished" when
every candidate has a result. Counted from the store afterwards, by candidate (a copy counts for
the candidate it copies): candidates lost (no result), candidates with two results, results per
second. Goal: 0 lost, 0 twice.

Reading: a run of ``--read-trials`` trials (a real search's run folder, its study grown with
recorded trials of random architectures) is read by ``scaler frontier`` as a user runs it (a fresh
process, ``--json``), ``--read-repeats`` times; the median wall time is reported beside the time
of ``python -c "import scaler.cli"`` (what any command pays before it reads). Goal: under 5 s for
10,000 trials.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from _common import machine_line
from optuna.trial import TrialState

from _faults.common import FAKE_CLI, REPO, SPACE, env_with, scaler_cli
from models import LPSNetArch
from scaler.proxy.data import open_dataset
from scaler.search.expand import Constraints
from scaler.search.record import TrialRecord
from scaler.search.space import space_from_dict
from scaler.search.store import RunStore, arch_params, distributions, open_run, open_storage

STUDY = "load"
REAP_EVERY_S = 1.0


@dataclasses.dataclass
class _Workers:
    """The worker processes, started and killed; each one's stderr kept in ``logs``."""

    cmd: list[str]
    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    started: int = 0

    def start(self) -> None:
        self.started += 1
        with open(self.logs / f"worker-{self.started}.stderr", "wb") as err:
            self.procs.append(subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err))

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def stop(self, timeout_s: float) -> list[int]:
        """Wait for every worker to exit (killing what is left after ``timeout_s``); their exit codes."""
        deadline = time.monotonic() + timeout_s
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


def queue_candidates(url: str | None, run_dir: Path, n: int) -> tuple[RunStore, float]:
    """A study with ``n`` queued candidates (as a search queues them: latency measured), and the seconds it took."""
    started = time.perf_counter()
    space = space_from_dict(yaml.safe_load(SPACE))
    info = open_dataset(space.dataset, "val", seed=space.training.seed).info
    store = RunStore(open_storage(url, run_dir), STUDY, info.num_classes)
    store.put("space", space.to_dict())
    store.put("status", "running")
    dists = distributions(space.constraints)
    for i in range(n):
        latency = {"median_ms": round(1.0 + i * 1e-3, 4)}
        store.add(TrialRecord(space.start, strategy="load", step=0, parent=None, steplen=0, latency=latency), dists)
    return store, time.perf_counter() - started


def _roots(trials: list[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """Each trial's candidate: the first trial of its chain of copies (``retry_of``)."""
    of = {t.number: t.user_attrs.get("retry_of") for t in trials}
    roots = {}
    for t in trials:
        n = t.number
        while of.get(n) is not None:
            n = of[n]
        roots[t.number] = n
    return roots


def _results(store: RunStore, candidates: int) -> tuple[Counter[int], list[optuna.trial.FrozenTrial]]:
    trials = store.trials()
    roots = _roots(trials)
    done = Counter(roots[t.number] for t in trials if t.state == TrialState.COMPLETE)
    return Counter({c: done.get(c, 0) for c in range(candidates)}), trials


def load_run(
    url: str | None,
    work: Path,
    *,
    workers: int,
    candidates: int,
    kill_every_s: float,
    train_s: float,
    seed: int,
    timeout_s: float,
    log: Any = print,
) -> dict[str, Any]:
    """``workers`` workers evaluate ``candidates`` queued candidates on storage ``url`` (``None``: a
    journal in ``work``), one SIGKILLed every ``kill_every_s`` seconds; the figures counted afterwards."""
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    store, queue_s = queue_candidates(url, run_dir, candidates)
    storage = url or f"journal:{run_dir / 'study.journal'}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, str(FAKE_CLI), "worker", "--storage", storage, "--study", STUDY, "--quiet"]
    pool = _Workers(cmd, env_with(work, FAKE_TRAIN_S=str(train_s)), logs)
    rng = random.Random(seed)
    started = time.monotonic()
    for _ in range(workers):
        pool.start()
    kills: list[dict[str, Any]] = []
    requeued = 0
    next_kill = started + kill_every_s * rng.uniform(0.5, 1.5)
    next_reap = started + REAP_EVERY_S
    counts: Counter[int] = Counter()
    timed_out = False
    while True:
        now = time.monotonic()
        if now - started > timeout_s:
            timed_out = True
            break
        if now >= next_kill:
            # A worker that holds a trial (killing one still starting up would only slow the run);
            # when none does yet, the kill waits for one.
            running = store.trials(states=(TrialState.RUNNING,))
            holding = {int((t.user_attrs.get("owner") or {}).get("pid", -1)): t.number for t in running}
            busy = [p for p in pool.procs if p.pid in holding]
            if busy:
                victim = rng.choice(busy)
                pool.kill(victim)
                pool.start()
                kills.append({"at_s": round(now - started, 2), "trial": holding[victim.pid]})
                next_kill = now + kill_every_s * rng.uniform(0.5, 1.5)
        if now >= next_reap:
            requeued += len(store.reap_stale())
            counts, _ = _results(store, candidates)
            if all(counts.values()):
                break
            next_reap = now + REAP_EVERY_S
        time.sleep(0.05)
    wall_s = time.monotonic() - started
    store.put("status", "finished")
    codes = pool.stop(timeout_s=60)
    counts, trials = _results(store, candidates)
    states = Counter(t.state.name for t in trials)
    results = sum(counts.values())
    row = {
        "storage": "journal" if url is None else url.split(":", 1)[0],
        "workers": workers,
        "candidates": candidates,
        "queue_s": round(queue_s, 1),
        "wall_s": round(wall_s, 1),
        "timed_out": timed_out,
        "kills": len(kills),
        "workers_started": pool.started,
        "requeued": requeued,
        "trials": len(trials),
        "states": dict(states),
        "lost": sum(c == 0 for c in counts.values()),
        "twice": sum(c > 1 for c in counts.values()),
        "results_per_s": round(results / wall_s, 2),
        "worker_exit_codes": dict(Counter(codes)),
        "kill_times_s": [k["at_s"] for k in kills],
    }
    log(
        f"  {row['storage']}: {row['lost']} lost, {row['twice']} twice, {row['kills']} kills, "
        f"{row['results_per_s']} results/s, {row['wall_s']} s"
    )
    return row


# -- reading a large run --------------------------------------------------------------------------


def large_run(run_dir: Path, trials: int, seed: int) -> dict[str, Any]:
    """A real (stand-in) search's run folder, its study grown to ``trials`` trials of random architectures."""
    env = env_with(run_dir.parent)
    space = run_dir.parent / "space.yaml"
    space.write_text(SPACE)
    r = subprocess.run(
        [sys.executable, str(FAKE_CLI), "search", "--space", str(space), "--out", str(run_dir), "--quiet"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"the search to grow failed:\n{r.stderr}")
    store = open_run(run_dir)
    template = next(t for t in store.trials() if t.state == TrialState.COMPLETE)
    record = TrialRecord.from_trial(template)
    start = record.arch
    assert isinstance(start, LPSNetArch)
    constraints = Constraints(width_divisor=4, max_depth=4, max_width=64)
    dists = distributions(constraints)
    rng = random.Random(seed)
    started = time.perf_counter()
    new = []
    for i in range(trials - len(store.trials())):
        arch = dataclasses.replace(
            start,
            depth=[rng.randint(1, constraints.max_depth) for _ in start.depth],
            width=[4 * rng.randint(1, constraints.max_width // 4) for _ in start.width],
        )
        ms = round(rng.uniform(0.5, 5.0), 4)
        miou = round(rng.uniform(0.05, 0.45), 4)
        latency = {**(record.latency or {}), "median_ms": ms}
        train = {**(record.train or {}), "miou": miou}
        rec = dataclasses.replace(record, arch=arch, arch_hash="", latency=latency, train=train, step=1 + i // 50)
        new.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                values=[ms, miou],
                params=arch_params(arch),
                distributions=dists,
                user_attrs=json.loads(json.dumps(rec.to_user_attrs(), default=str)),
                system_attrs=dict(template.system_attrs),
            )
        )
    store.study.add_trials(new)
    return {
        "trials": len(store.trials()),
        "journal_mb": round((run_dir / "study.journal").stat().st_size / 2**20, 1),
        "build_s": round(time.perf_counter() - started, 1),
    }


def read_times(run_dir: Path, repeats: int) -> dict[str, Any]:
    """Wall seconds of ``scaler frontier RUN --json`` in fresh processes, and of importing the CLI alone."""
    env = env_with(run_dir.parent)
    frontier, imports = [], []
    total = None
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import scaler.cli"], env=env, cwd=REPO, check=True)
        imports.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = scaler_cli(["frontier", str(run_dir), "--json"], env)
        frontier.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"scaler frontier failed:\n{r.stderr}")
        total = json.loads(r.stdout)["trials"]["total"]
    return {
        "trials_read": total,
        "frontier_s": [round(s, 2) for s in frontier],
        "frontier_median_s": round(statistics.median(frontier), 2),
        "import_median_s": round(statistics.median(imports), 2),
    }


def load_faults(args: Any, work: Path, postgres_url: str | None, postgres_why: str | None) -> dict[str, Any]:
    """Part (c): the load runs (journal, then PostgreSQL when there is a server) and the large-run read."""
    runs = []
    settings = dict(
        workers=args.workers,
        candidates=args.candidates,
        kill_every_s=args.kill_every,
        train_s=args.train_s,
        seed=args.seed,
        timeout_s=args.timeout,
    )
    print(f"journal: {args.workers} workers, {args.candidates} candidates ...", flush=True)
    runs.append(load_run(None, work / "journal", **settings))
    if postgres_url is not None:
        print(f"PostgreSQL: {args.workers} workers, {args.candidates} candidates ...", flush=True)
        runs.append(load_run(postgres_url, work / "postgres", **settings))
    print(f"a run of {args.read_trials} trials ...", flush=True)
    big = work / "large" / "run"
    big.parent.mkdir(parents=True)
    built = large_run(big, args.read_trials, args.seed)
    read = read_times(big, args.read_repeats)
    print(f"  scaler frontier: {read['frontier_median_s']} s (import {read['import_median_s']} s)", flush=True)
    return {
        "settings": {**settings, "read_trials": args.read_trials, "read_repeats": args.read_repeats},
        "runs": runs,
        "postgres": postgres_why or "a throwaway server on loopback",
        "large_run": built,
        "read": read,
    }


READ_GOAL_S = 5.0


def load_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    s = res["settings"]
    lines = [
        "# Faults (c): many workers on one study, one killed every few seconds; reading a large run",
        "",
        f"Command: `{report['command']}`",
        "",
        machine_line(report["machine"]),
        "",
        f"{s['workers']} worker processes (the real `scaler worker`, stand-in training of {s['train_s']} s "
        f"per candidate) evaluate {s['candidates']} queued candidates; every {s['kill_every_s']} s "
        "(0.5x to 1.5x, seeded) one worker holding a trial is SIGKILLed and a new one started in its place. "
        "The benchmark plays the search: it reaps dead workers' trials every second (each "
        "queued again as a copy) and says finished when every candidate has a result. Counted by "
        "candidate (a copy counts for the one it copies).",
        "",
        "| storage | lost | twice | kills | results/s | wall s | trials (copies) | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        ok = r["lost"] == 0 and r["twice"] == 0 and not r["timed_out"]
        lines.append(
            f"| {r['storage']} | {r['lost']} | {r['twice']} | {r['kills']} | "
            f"{r['results_per_s']} | {r['wall_s']}{' (timed out)' if r['timed_out'] else ''} | "
            f"{r['trials']} ({r['requeued']}) | {'met' if ok else '**missed**'} |"
        )
    if len(res["runs"]) == 1:
        lines += ["", f"PostgreSQL: not measured ({res['postgres']})."]
    read, big = res["read"], res["large_run"]
    met = read["frontier_median_s"] < READ_GOAL_S
    lines += [
        "",
        "## Reading a large run",
        "",
        f"`scaler frontier RUN --json` on a run of {read['trials_read']} trials (journal {big['journal_mb']} MB): "
        f"median **{read['frontier_median_s']} s** over {len(read['frontier_s'])} fresh processes "
        f"({', '.join(str(x) for x in read['frontier_s'])}), of which importing the CLI takes "
        f"{read['import_median_s']} s. Goal under {READ_GOAL_S:.0f} s: {'met' if met else '**missed**'}.",
        "",
    ]
    return "\n".join(lines)
