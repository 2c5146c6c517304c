"""Faults a run survives, measured with real processes and real files (issue 14).

    python benchmarks/bench_faults.py journal --cuts 20 --seed 14 --out benchmarks/results/faults_journal
    python benchmarks/bench_faults.py kill --kills 20 --seed 14 --out benchmarks/results/faults_kill
    python benchmarks/bench_faults.py load --workers 8 --candidates 1000 --out benchmarks/results/faults_load

Subcommands, one per part of the suite (each a module of ``benchmarks/_faults/``, whose docstring
says what it does and counts):

- ``journal`` (part b): a finished search's journal is cut at ``--cuts`` seeded random byte
  offsets, as a crash or a full disk mid-write leaves it; each cut is read by ``scaler frontier``
  and resumed by ``scaler search``. Reported: runs recovered, records lost beyond the damaged one
  (goal: all, 0), readers that changed nothing, resumed runs on the uninterrupted run's path.
  About 15 minutes for 20 cuts on 2 CPUs (real latency and training on a tiny space).
- ``kill`` (part a): one search, SIGKILLed at ``--kills`` seeded random moments (right after a
  start, during training, between trials, while writing) and started again each time; beside it
  one uninterrupted search. Reported: resumes that succeeded, trials lost, trials evaluated twice,
  and whether ``path.csv`` equals the uninterrupted run's (goal: 100%, 0, 0, yes). About a minute
  (deterministic stand-ins for latency and training, so the paths must match exactly).
- ``load`` (part c): ``--workers`` worker processes on one journal and on one PostgreSQL study (a
  throwaway server, when Debian's ``postgresql`` is installed) evaluate ``--candidates`` queued
  candidates with a stand-in training, one SIGKILLed every few seconds. Reported: candidates lost,
  evaluated twice (goal: 0, 0), results per second; and the time ``scaler frontier`` takes to read
  a run of ``--read-trials`` trials (goal: under 5 s for 10,000).

Every process is a separate process of this checkout's command line; ``tests/helpers/fake_cli.py``
is that command line with deterministic stand-ins for latency and training.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _common import command_line, machine, write_report
from _faults.journal import journal_faults, journal_markdown
from _faults.kill import kill_faults, kill_markdown
from _faults.load import load_faults, load_markdown


@contextlib.contextmanager
def _postgres(wanted: bool) -> Iterator[tuple[str | None, str | None]]:
    """A throwaway PostgreSQL server's URL, or ``None`` and why there is none."""
    if not wanted:
        yield None, "--no-postgres"
        return
    from throwaway_pg import pg_bin, throwaway_postgres  # the tests' helper (on the path via _faults.common)

    bindir = pg_bin()
    if bindir is None:
        yield None, "PostgreSQL is not installed (apt-get install postgresql)"
        return
    with throwaway_postgres(bindir) as url:
        yield url, None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Subcommands: journal (part b), kill (part a), load (part c).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="fault", required=True, metavar="{journal,kill,load}")
    p = sub.add_parser("journal", help="part b: a journal cut at random byte offsets, resumed and read")
    p.add_argument("--cuts", type=int, default=20, help="byte offsets to cut at (default 20)")
    p.add_argument("--seed", type=int, default=14, help="seed of the offsets (default 14)")
    p.add_argument("--out", default="benchmarks/results/faults_journal", help="writes OUT.json and OUT.md")
    k = sub.add_parser("kill", help="part a: a search SIGKILLed at random moments and resumed each time")
    k.add_argument("--kills", type=int, default=20, help="kills to make (default 20)")
    k.add_argument("--seed", type=int, default=14, help="seed of the moments (default 14)")
    k.add_argument("--train-s", type=float, default=0.5, help="seconds each stand-in training takes (default 0.5)")
    k.add_argument("--out", default="benchmarks/results/faults_kill", help="writes OUT.json and OUT.md")
    ld = sub.add_parser("load", help="part c: many workers on one study, one killed every few seconds; a large read")
    ld.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    ld.add_argument("--candidates", type=int, default=1000, help="queued candidates per storage (default 1000)")
    ld.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills, on average (default 3)")
    ld.add_argument("--train-s", type=float, default=0.2, help="seconds each stand-in training takes (default 0.2)")
    ld.add_argument("--timeout", type=float, default=1800, help="give up on a storage after this (default 1800 s)")
    ld.add_argument("--read-trials", type=int, default=10_000, help="trials of the run read (default 10000)")
    ld.add_argument("--read-repeats", type=int, default=5, help="fresh `scaler frontier` processes (default 5)")
    ld.add_argument("--no-postgres", action="store_true", help="the journal only")
    ld.add_argument("--seed", type=int, default=14, help="seed of the kills and the large run (default 14)")
    ld.add_argument("--out", default="benchmarks/results/faults_load", help="writes OUT.json and OUT.md")
    for s in (p, k, ld):
        s.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.fault == "kill":
            results, markdown = kill_faults(args.kills, args.seed, args.train_s, work), kill_markdown
        elif args.fault == "journal":
            results, markdown = journal_faults(args.cuts, args.seed, work), journal_markdown
        else:
            with _postgres(not args.no_postgres) as (url, why):
                results, markdown = load_faults(args, work, url, why), load_markdown
    report = {"command": command_line(), "machine": machine(1), "seed": args.seed, "results": results}
    write_report(args.out, report, markdown)


if __name__ == "__main__":
    main()
