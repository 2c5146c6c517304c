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

Planned, to be added as subcommands of this script: ``kill`` (part a: a search SIGKILLed at random
moments and resumed each time: resumes that succeed, trials lost or evaluated twice, the final path)
and ``load`` (part c: worker processes on one journal and one PostgreSQL study with a stand-in
evaluator, one killed every few seconds; and the time ``scaler frontier`` takes on a large run).

Every process is a separate ``python -m scaler.cli`` of this checkout; the search is the tiny
synthetic space below (real latency measurement and real proxy training, seconds per candidate),
resumed with the first run's latency cache so that latencies do not vary between resumes. About
15 minutes for 20 cuts on 2 CPUs (a cut early in the journal redoes most of the search).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine, machine_line, write_report

from scaler.search.run_folder import DAMAGED_JOURNALS, JOURNAL_NAME

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Subcommands: journal (part b). Planned: kill (part a, SIGKILL "
        "and resume), load (part c, many workers and a large run), added as further subcommands.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="fault", required=True, metavar="{journal}")
    p = sub.add_parser("journal", help="part b: a journal cut at random byte offsets, resumed and read")
    p.add_argument("--cuts", type=int, default=20, help="byte offsets to cut at (default 20)")
    p.add_argument("--seed", type=int, default=14, help="seed of the offsets (default 14)")
    p.add_argument("--out", default="benchmarks/results/faults_journal", help="writes OUT.json and OUT.md")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = journal_faults(args.cuts, args.seed, work)
    report = {"command": command_line(), "machine": machine(1), "seed": args.seed, "results": results}
    write_report(args.out, report, journal_markdown)


if __name__ == "__main__":
    main()
