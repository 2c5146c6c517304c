"""Part (a) of the fault suite: a search SIGKILLed at random moments and resumed each time."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import machine_line
from optuna.trial import TrialState

from _faults.common import FAKE_CLI, REPO, SPACE, env_with
from scaler.search.record import DIED, TrialRecord, int_or_none
from scaler.search.run_folder import JOURNAL_NAME
from scaler.search.store import open_run

KILL_SPACE = SPACE.replace("max_steps: 2", "max_steps: 3")
EARLY_SHARE = 0.25  # kills aimed at the moments right after a start
RESUME_S = 1.0  # from a resume's first journal write to its first training (reaping, proposing), measured


def _own_complete(records: list[TrialRecord]) -> Counter[str]:
    """Complete trials of the search's own candidates, by architecture (second readings left out)."""
    return Counter(
        r.arch_hash
        for r in records
        if r.complete and not (r.is_reference or r.is_seed_replica or r.is_control or r.is_retrain)
    )


def _path_without_numbers(run: Path) -> list[dict[str, str]]:
    """``path.csv`` without trial numbers (a resumed run numbers its trials differently)."""
    path = run / "path.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("trial", "parent", "candidates")} for r in csv.DictReader(f)]


class _Search:
    """The search command as a process in its own group (so that SIGKILL takes every child with it)."""

    def __init__(self, space: Path, run: Path, env: dict[str, str], logs: Path) -> None:
        self.cmd = [sys.executable, str(FAKE_CLI), "search", "--space", str(space), "--out", str(run), "--quiet"]
        self.env, self.logs, self.starts = env, logs, 0

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.starts += 1
        err = self.logs / f"start-{self.starts}.stderr"
        with open(err, "wb") as f:
            proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True
            )
        return proc, err


def _held_by(record: TrialRecord, pid: int) -> bool:
    """Whether the process ``pid`` was evaluating this trial (a trial a killed start left stays RUNNING)."""
    return record.state == TrialState.RUNNING and int_or_none((record.owner or {}).get("pid")) == pid


def _where(records: list[TrialRecord], pid: int, status: str | None, wrote: bool) -> str:
    """Where the search started as ``pid`` was when killed, read from what it had written."""
    if any(_held_by(r, pid) for r in records):
        return "training"
    if not wrote:
        return "starting"
    if status == "finished":
        return "writing results"
    return "between trials"


def kill_faults(kills: int, seed: int, train_s: float, work: Path) -> dict[str, Any]:
    """Part (a): SIGKILL one search ``kills`` times at seeded random moments, resuming it each time."""
    env = env_with(work, FAKE_TRAIN_S=str(train_s))
    space = work / "space.yaml"
    space.write_text(KILL_SPACE)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    print("the uninterrupted search ...", flush=True)
    ref_run = work / "reference"
    ref = _Search(space, ref_run, env, logs)
    started = time.perf_counter()
    proc, err = ref.start()
    startup_s = None
    while proc.poll() is None:
        if startup_s is None and (ref_run / JOURNAL_NAME).is_file():
            startup_s = time.perf_counter() - started
        time.sleep(0.02)
    ref_s = time.perf_counter() - started
    if proc.returncode != 0 or startup_s is None:
        raise SystemExit(f"the uninterrupted search failed:\n{err.read_text()}")
    ref_records = open_run(ref_run).records()
    ref_own = _own_complete(ref_records)
    ref_path = _path_without_numbers(ref_run)
    work_s = ref_s - startup_s

    rng = random.Random(seed)
    early = [rng.random() < EARLY_SHARE for _ in range(kills)]
    run = work / "killed"
    search = _Search(space, run, env, logs)
    rows: list[dict[str, Any]] = []
    stderrs: list[Path] = []
    finished_early = None
    journal = run / JOURNAL_NAME
    for i in range(kills):
        u = rng.random()
        held = _own_complete(open_run(run).records()) if journal.is_file() else Counter()
        # After a start: a moment before the reference's journal existed (imports, opening the run).
        # Later: a moment after this start's first journal write (a resume's start-up is longer than a
        # first start's), in a window of twice the remaining work's share per kill left plus the time a
        # resume takes to reach its first training, so that the kills reach the last step and the files.
        left = max(0.0, 1 - sum(held.values()) / sum(ref_own.values()))
        window = 2 * ((work_s * left + 0.5) / (sum(not e for e in early[i:]) + 1) + RESUME_S)
        delay = 0.1 + u * (startup_s - 0.1) if early[i] else u * window
        size = journal.stat().st_size if journal.is_file() else 0
        proc, err = search.start()
        stderrs.append(err)
        t0 = time.perf_counter()
        wrote = None
        deadline = t0 + delay if early[i] else None
        while proc.poll() is None:
            now = time.perf_counter()
            if wrote is None and journal.is_file() and journal.stat().st_size != size:
                wrote = now - t0
                deadline = deadline if early[i] else now + delay
            if (deadline is not None and now >= deadline) or now - t0 > 300:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        if proc.returncode != -signal.SIGKILL:
            finished_early = {"start": search.starts, "exit": proc.returncode, "after_s": round(elapsed, 2)}
            print(f"  start {search.starts} ended by itself (exit {proc.returncode}) before kill {i + 1}", flush=True)
            break
        records = open_run(run).records() if journal.is_file() else []
        status = open_run(run).get("status") if records else None
        row = {
            "kill": i + 1,
            "aimed": "after start" if early[i] else "later",
            "after_s": round(elapsed, 2),
            "first_write_s": None if wrote is None else round(wrote, 2),
            "complete": sum(_own_complete(records).values()),
            "running": sum(r.state == TrialState.RUNNING for r in records),
            "held": sum(_held_by(r, proc.pid) for r in records),
            "trials": len(records),
            "where": _where(records, proc.pid, status, wrote is not None),
            "traceback": "Traceback" in err.read_text(),
        }
        rows.append(row)
        print(
            f"  kill {i + 1}/{kills} after {row['after_s']} s ({row['aimed']}): {row['where']}, "
            f"{row['complete']} complete, {row['running']} running",
            flush=True,
        )

    print("the last start, left to finish ...", flush=True)
    proc, err = search.start()
    stderrs.append(err)
    try:
        final_rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        final_rc = proc.wait()
    tracebacks = [p.name for p in stderrs if "Traceback" in p.read_text()]
    records = open_run(run).records()
    own = _own_complete(records)
    lost = sorted(set(ref_own) - set(own))
    twice = {a: n for a, n in own.items() if n > max(1, ref_own.get(a, 0))}
    resumes = len(stderrs) - 1
    failed_resumes = sum(p.name in tracebacks for p in stderrs[1:]) + (final_rc != 0)
    return {
        "train_s": train_s,
        "reference": {
            "seconds": round(ref_s, 1),
            "startup_s": round(startup_s, 2),
            "trials": len(ref_records),
            "complete": sum(ref_own.values()),
            "steps": len(ref_path) - 1,
        },
        "kills": rows,
        "finished_before_kill": finished_early,
        "final_exit": final_rc,
        "final_stderr": err.read_text().strip()[-500:] if final_rc != 0 else "",
        "starts": len(stderrs),
        "resumes": resumes,
        "resumes_ok": resumes - failed_resumes,
        "tracebacks": tracebacks,
        "trials": len(records),
        "complete": sum(own.values()),
        "worker_died": sum(r.interrupted == DIED for r in records),
        "trials_lost": len(lost),
        "lost": lost,
        "evaluated_twice": len(twice),
        "twice": twice,
        "same_path": _path_without_numbers(run) == ref_path and bool(ref_path),
        "path": [row["arch"] for row in ref_path],
    }


def kill_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    ref = res["reference"]
    n = len(res["kills"])
    lines = [
        "# Faults: a search SIGKILLed at random moments and resumed each time (issue 14, part a)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Seed {report['seed']}. The search: the tiny synthetic space "
        f"of `benchmarks/_faults/common.py` with {ref['steps']} greedy steps, run by `tests/helpers/fake_cli.py` "
        f"(the real `scaler search`, each its own process; deterministic stand-ins for latency and training, "
        f"each training sleeping {res['train_s']} s). Uninterrupted: {ref['trials']} trials ({ref['complete']} "
        f"complete), {ref['seconds']} s, {ref['startup_s']} s of it before the run's journal existed. The killed "
        "run: started, SIGKILLed (its process group) after a seeded random delay, started again with the same "
        f"command, {n} times; then left to finish. A quarter of the kills (seeded) aim at the moments after a "
        "start (imports, opening the run, reaping the dead worker's trial); the others at a seeded moment in a "
        "window over the work still to do. 'Where' is read from the run after the kill: a trial held by a worker "
        "(training), nothing written yet by this start (starting), the search marked finished (writing results), "
        "else between trials (reaping, proposing, measuring, closing a step, writing the journal).",
        "",
        "| kill | aimed | after s | first journal write s | where | complete trials | running trials (held by "
        "this start) | trials in the study | traceback |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["kills"]:
        lines.append(
            f"| {r['kill']} | {r['aimed']} | {r['after_s']} | {r['first_write_s'] or '-'} | {r['where']} "
            f"| {r['complete']} | {r['running']} ({r['held']}) | {r['trials']} | {'YES' if r['traceback'] else 'no'} |"
        )
    if res["finished_before_kill"]:
        f = res["finished_before_kill"]
        lines += ["", f"Start {f['start']} ended by itself (exit {f['exit']}) after {f['after_s']} s, before its kill."]
    share = res["resumes_ok"] / res["resumes"] if res["resumes"] else 0.0
    goals = [
        ("resumes that succeeded", f"{res['resumes_ok']} of {res['resumes']} ({share:.0%})", "100%", share == 1),
        ("trials lost", str(res["trials_lost"]), "0", res["trials_lost"] == 0),
        ("trials evaluated twice", str(res["evaluated_twice"]), "0", res["evaluated_twice"] == 0),
        ("final path equal to the uninterrupted run's", "yes" if res["same_path"] else "no", "yes", res["same_path"]),
    ]
    lines += [
        "",
        f"Kills made: {n}. The last start exited {res['final_exit']}; tracebacks in any start's stderr: "
        f"{len(res['tracebacks'])}. The killed run ends with {res['trials']} trials ({res['complete']} complete "
        f"search trials, as the uninterrupted run's {ref['complete']}), {res['worker_died']} of them 'worker died': "
        "a trial running at a kill, failed by the next start and queued again (expected, not a loss).",
        "",
        "| figure | measured | goal | verdict |",
        "|---|---|---|---|",
        *[f"| {name} | {got} | {goal} | {'met' if ok else 'MISSED'} |" for name, got, goal, ok in goals],
        "",
        "Trials lost: an architecture complete in the uninterrupted run but never in the killed one. Evaluated "
        "twice: an architecture with more complete trials among the search's own (seed replicas, controls, "
        "retrains and references left out) than in the uninterrupted run. The path is `path.csv` without trial "
        "numbers (step, architecture, operators, latency, mIoU, slope, reason).",
        "",
    ]
    if res["final_stderr"]:
        lines += ["Last start's stderr:", "", "```", res["final_stderr"], "```", ""]
    return "\n".join(lines)
