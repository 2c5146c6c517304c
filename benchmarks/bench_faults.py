"""Faults a run survives, measured with real processes and real files (issue 14).

    python benchmarks/bench_faults.py journal --cuts 20 --seed 14 --out benchmarks/results/faults_journal

Subcommands, one per kind of fault:

- ``journal`` (part b): a finished search's journal is cut at ``--cuts`` seeded random byte
  offsets, as a crash or a full disk mid-write leaves it. For each cut, on a copy of the run:
  ``scaler frontier`` (a reader: it must read the records before the cut and change nothing), then
  ``scaler search`` (resume: it must move the cut-off record aside, keep every record before it and
  finish), then ``scaler frontier`` again. Reported: runs recovered, records lost beyond the
  damaged one (goal: all, 0), whether the reader left the journal as it was, and whether the
  resumed run ends on the uninterrupted run's greedy path.

- ``kill`` (part a): one search, SIGKILLed (its whole process group) at ``--kills`` seeded random
  moments and started again with the same command after each, until it finishes; beside it one
  uninterrupted search of the same space. A kill lands right after a start (imports, opening the
  run, reaping the dead worker's trial) or later in the search (during training, between trials,
  while the journal or the result files are written). Reported per kill: when, what the run held
  (complete and running trials), where it was; and overall: resumes that succeeded (no traceback,
  exit 0 at the end), trials lost, trials evaluated twice, and whether ``path.csv`` equals the
  uninterrupted run's (goal: 100%, 0, 0, yes).

Planned, to be added as a subcommand of this script: ``load`` (part c: worker processes on one
journal and one PostgreSQL study with a stand-in evaluator, one killed every few seconds; and the
time ``scaler frontier`` takes on a large run).

Every process is a separate process of this checkout's command line. ``journal`` runs
``python -m scaler.cli`` on the tiny synthetic space below (real latency measurement and real proxy
training, seconds per candidate), resumed with the first run's latency cache so that latencies do
not vary between resumes: about 15 minutes for 20 cuts on 2 CPUs (a cut early in the journal redoes
most of the search). ``kill`` runs ``tests/helpers/fake_cli.py`` (the real ``scaler search`` with
deterministic stand-ins for latency and training, each training sleeping ``--train-s`` seconds) on
the same space with 3 greedy steps, so that decisions depend on the architecture alone and the
paths of the two runs must match exactly: about a minute for 20 kills.
A little over 500 lines: one script for the issue's one fault suite, a subcommand per part.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import command_line, machine, machine_line, write_report
from optuna.trial import TrialState

from scaler.search.record import DIED, TrialRecord, int_or_none
from scaler.search.run_folder import DAMAGED_JOURNALS, JOURNAL_NAME
from scaler.search.store import open_run

REPO = Path(__file__).resolve().parents[1]
SPACE = """\
name: faults
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {width_divisor: 4, max_depth: 4, max_width: 64}
latency: {device: cpu, threads: 1, min_samples: 3, max_samples: 10, time_cap_s: 0.3}
training: {iters: 4, batch: 2, crop: 64x96, lr: 0.05, seed: 0}
stopping: {max_steps: 2}
"""


def _scaler(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "scaler.cli", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)


def _journal_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:") and JOURNAL_NAME in line]


def _path(run: Path) -> list[tuple[str, str]]:
    """The greedy path as (step, architecture): latencies measured again may differ, the path may not."""
    path = run / "path.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(row["step"], row["arch"]) for row in csv.DictReader(f)]


def _record_start(data: bytes, offset: int) -> int:
    """Where the record holding byte ``offset`` (the first byte cut off) begins."""
    return data.rfind(b"\n", 0, offset) + 1


def _frontier(run: Path, env: dict[str, str]) -> tuple[int, int | None, list[str]]:
    """``scaler frontier``'s exit code, the trials it read and its journal warnings."""
    r = _scaler(["frontier", str(run), "--json"], env)
    total = json.loads(r.stdout)["trials"]["total"] if r.returncode == 0 else None
    return r.returncode, total, _journal_warnings(r.stderr) if r.returncode == 0 else [r.stderr.strip()[-300:]]


def _cut_and_resume(
    run: Path, space: Path, data: bytes, path: list[tuple[str, str]], offset: int, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    copy = work / f"cut-{offset}"
    shutil.copytree(run, copy)
    journal = copy / JOURNAL_NAME
    with open(journal, "rb+") as f:
        f.truncate(offset)
    good = _record_start(data, offset)
    row: dict[str, Any] = {
        "offset": offset,
        "record": data[:offset].count(b"\n") + 1,
        "records": data.count(b"\n"),
        "damaged_bytes": offset - good,
    }
    started = time.perf_counter()
    rc, total, warnings = _frontier(copy, env)
    row["reader_ok"] = rc == 0 and journal.read_bytes() == data[:offset] and not list(copy.glob(DAMAGED_JOURNALS))
    row["reader_trials"], row["reader_warnings"] = total, len(warnings)
    r = _scaler(["search", "--space", str(space), "--out", str(copy)], env)
    row["resume_rc"] = r.returncode
    row["resume_warnings"] = len(_journal_warnings(r.stderr))
    after = journal.read_bytes()
    aside = sorted(copy.glob(DAMAGED_JOURNALS))
    # Every whole record before the cut must still be there, byte for byte, at the same place.
    kept = next((i for i, (a, b) in enumerate(zip(after[:good], data[:good], strict=True)) if a != b), good)
    row["records_before"] = data[:good].count(b"\n")
    row["records_lost"] = row["records_before"] - data[:kept].count(b"\n")
    row["moved_aside_ok"] = [p.read_bytes() for p in aside] == (
        [data[good:offset]] if offset > good else []
    ) and after.endswith(b"\n")
    rc2, total2, warnings2 = _frontier(copy, env)
    row["frontier_rc"], row["frontier_trials"], row["frontier_warnings"] = rc2, total2, len(warnings2)
    row["same_path"] = _path(copy) == path
    row["recovered"] = (
        r.returncode == 0 and rc2 == 0 and row["moved_aside_ok"] and row["records_lost"] == 0 and not warnings2
    )
    row["seconds"] = round(time.perf_counter() - started, 1)
    if not row["recovered"]:
        row["stderr"] = r.stderr.strip()[-500:]
    shutil.rmtree(copy)
    return row


def journal_faults(cuts: int, seed: int, work: Path) -> dict[str, Any]:
    """Part (b): cut a finished run's journal at ``cuts`` seeded offsets; resume and read each."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LPS_SCALER_CACHE": str(work / "latency-cache")}
    space = work / "space.yaml"
    space.write_text(SPACE)
    run = work / "run"
    print("the uninterrupted search ...", flush=True)
    started = time.perf_counter()
    r = _scaler(["search", "--space", str(space), "--out", str(run)], env)
    if r.returncode != 0:
        raise SystemExit(f"the uninterrupted search failed:\n{r.stderr}")
    first_s = time.perf_counter() - started
    data = (run / JOURNAL_NAME).read_bytes()
    path = _path(run)
    offsets = sorted(random.Random(seed).sample(range(1, len(data)), cuts))
    rows = []
    for i, offset in enumerate(offsets):
        row = _cut_and_resume(run, space, data, path, offset, work, env)
        rows.append(row)
        print(
            f"  cut {i + 1}/{cuts} at byte {offset} (record {row['record']}/{row['records']}): "
            f"{'recovered' if row['recovered'] else 'NOT recovered'}, {row['records_lost']} lost, {row['seconds']} s",
            flush=True,
        )
    return {
        "journal_bytes": len(data),
        "journal_records": data.count(b"\n"),
        "uninterrupted_s": round(first_s, 1),
        "cuts": rows,
        "recovered": sum(r["recovered"] for r in rows),
        "records_lost": sum(r["records_lost"] for r in rows),
        "readers_unchanged": sum(r["reader_ok"] for r in rows),
        "same_path": sum(r["same_path"] for r in rows),
        "path": [arch for _, arch in path],
    }


def journal_markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    n = len(res["cuts"])
    lines = [
        "# Faults: a journal cut at random byte offsets (issue 14, part b)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine_line(report['machine'])}. Seed {report['seed']}. The run: the tiny synthetic space of "
        f"`benchmarks/bench_faults.py` (2 greedy steps, real latency and training), {res['journal_records']} "
        f"records, {res['journal_bytes']} bytes, {res['uninterrupted_s']} s uninterrupted. Each cut is made on a "
        "copy of the finished run; then `scaler frontier`, `scaler search` (resume) and `scaler frontier` run on "
        "it as separate processes.",
        "",
        "| byte cut | record cut | bytes moved aside | reader: journal unchanged, trials read, warnings "
        "| resume exit, warnings | records lost | frontier after: trials, warnings | same path | recovered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["cuts"]:
        lines.append(
            f"| {r['offset']} | {r['record']} of {r['records']} | {r['damaged_bytes']} "
            f"| {'yes' if r['reader_ok'] else 'NO'}, {r['reader_trials']}, {r['reader_warnings']} "
            f"| {r['resume_rc']}, {r['resume_warnings']} | {r['records_lost']} "
            f"| {r['frontier_trials']}, {r['frontier_warnings']} | {'yes' if r['same_path'] else 'no'} "
            f"| {'yes' if r['recovered'] else 'NO'} |"
        )
    met = res["recovered"] == n and res["records_lost"] == 0
    lines += [
        "",
        f"Runs recovered: {res['recovered']} of {n}; records lost beyond the damaged one: {res['records_lost']} "
        f"(goal: all, 0: {'met' if met else 'MISSED'}). Readers left the journal unchanged in "
        f"{res['readers_unchanged']} of {n}; the resumed run ended on the uninterrupted run's greedy path (the "
        f"same architectures step by step; latencies measured again may differ) in {res['same_path']} of {n}.",
        "",
        "A cut exactly between two records damages nothing (0 bytes moved aside, no warning). A cut inside a "
        "record moves that record's bytes to `study.journal.damaged-<UTC time>` with one warning; the records "
        "before it are kept byte for byte, and a record lost with the cut (say, a finished trial) is redone by "
        "the resumed search as after any crash. A resumed run with one trial more than the others had a trial "
        "running at the cut: the resume fails it as 'worker died' and queues it again (issue 14, item 4).",
        "",
    ]
    return "\n".join(lines)


# -- kill (part a) ---------------------------------------------------------------------------------

FAKE_CLI = REPO / "tests" / "helpers" / "fake_cli.py"
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
    helpers = REPO / "tests" / "helpers"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(helpers)]),
        "LPS_SCALER_CACHE": str(work / "latency-cache"),
        "FAKE_TRAIN_S": str(train_s),
    }
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
        f"of `benchmarks/bench_faults.py` with {ref['steps']} greedy steps, run by `tests/helpers/fake_cli.py` "
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Subcommands: journal (part b), kill (part a). Planned: load "
        "(part c, many workers and a large run), added as a further subcommand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="fault", required=True, metavar="{journal,kill}")
    p = sub.add_parser("journal", help="part b: a journal cut at random byte offsets, resumed and read")
    p.add_argument("--cuts", type=int, default=20, help="byte offsets to cut at (default 20)")
    p.add_argument("--seed", type=int, default=14, help="seed of the offsets (default 14)")
    p.add_argument("--out", default="benchmarks/results/faults_journal", help="writes OUT.json and OUT.md")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    k = sub.add_parser("kill", help="part a: a search SIGKILLed at random moments and resumed each time")
    k.add_argument("--kills", type=int, default=20, help="kills to make (default 20)")
    k.add_argument("--seed", type=int, default=14, help="seed of the moments (default 14)")
    k.add_argument("--train-s", type=float, default=0.5, help="seconds each stand-in training takes (default 0.5)")
    k.add_argument("--out", default="benchmarks/results/faults_kill", help="writes OUT.json and OUT.md")
    k.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.fault == "kill":
            results, markdown = kill_faults(args.kills, args.seed, args.train_s, work), kill_markdown
        else:
            results, markdown = journal_faults(args.cuts, args.seed, work), journal_markdown
    report = {"command": command_line(), "machine": machine(1), "seed": args.seed, "results": results}
    write_report(args.out, report, markdown)


if __name__ == "__main__":
    main()
