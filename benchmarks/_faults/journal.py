"""Part (b) of the fault suite: a finished run's journal cut at random byte offsets, resumed and read."""

from __future__ import annotations

import csv
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from _common import machine_line

from _faults.common import SPACE, env_with, scaler_cli
from scaler.search.run_folder import DAMAGED_JOURNALS, JOURNAL_NAME


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
    r = scaler_cli(["frontier", str(run), "--json"], env)
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
    r = scaler_cli(["search", "--space", str(space), "--out", str(copy)], env)
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
    env = env_with(work)
    space = work / "space.yaml"
    space.write_text(SPACE)
    run = work / "run"
    print("the uninterrupted search ...", flush=True)
    started = time.perf_counter()
    r = scaler_cli(["search", "--space", str(space), "--out", str(run)], env)
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
        f"`benchmarks/_faults/common.py` (2 greedy steps, real latency and training), {res['journal_records']} "
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
