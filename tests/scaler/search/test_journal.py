"""A damaged journal, latency cache entry or run.json, with real files and the real CLI.

One finished search (deterministic stand-ins for latency and training) is built once; each test
damages a copy of it the way a crash or a full disk does, then runs ``scaler search`` (resume) and
``scaler frontier`` on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_search import FakeLatency, fake_train, tiny_space
from paired_standin import FakePaired

import scaler.search.run as search_mod
import scaler.search.worker as worker_mod
from models import get_arch
from scaler.cli import main
from scaler.errors import UserError
from scaler.search.expand import Constraints
from scaler.search.journal import DurableJournalBackend, JournalDamagedError, KernelLock
from scaler.search.record import TrialRecord
from scaler.search.run_folder import DAMAGED_JOURNALS, JOURNAL_NAME, RUN_FILE
from scaler.search.stops import Stopped, stop_on_signals, uninterrupted
from scaler.search.store import RunStore, distributions, open_run, open_storage

SPACE = tiny_space("t", max_steps=2)


def _stand_ins(mp: pytest.MonkeyPatch, cache: Path) -> None:
    mp.setenv("LPS_SCALER_CACHE", str(cache))
    mp.setattr(search_mod, "measure_latency", FakeLatency())
    mp.setattr(search_mod, "measure_paired", FakePaired())
    mp.setattr(worker_mod, "train_and_evaluate", fake_train)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-step greedy run: (space file, run folder, its journal's bytes, its path.csv)."""
    root = tmp_path_factory.mktemp("finished")
    space = root / "space.yaml"
    space.write_text(SPACE)
    with pytest.MonkeyPatch.context() as mp:
        _stand_ins(mp, root / "latency-cache")
        r = CliRunner().invoke(main, ["search", "--space", str(space), "--out", str(root / "run")])
    assert r.exit_code == 0, r.output
    run = root / "run"
    return space, run, (run / JOURNAL_NAME).read_bytes(), (run / "path.csv").read_text()


@pytest.fixture
def run_copy(finished, tmp_path, monkeypatch):
    _, run, _, _ = finished
    _stand_ins(monkeypatch, tmp_path / "latency-cache")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _cut(run: Path, offset: int) -> None:
    with open(run / JOURNAL_NAME, "rb+") as f:
        f.truncate(offset)


def _line_start(data: bytes, offset: int) -> int:
    """Where the record holding byte ``offset`` (the first byte cut off) begins."""
    return data.rfind(b"\n", 0, offset) + 1


def _warnings(stderr: str) -> list[str]:
    """The warnings about the run's files (not, say, a busy machine's)."""
    return [line for line in stderr.splitlines() if line.startswith("warning:") and "cut off" in line]


def _trials(run: Path) -> list[tuple[int, str, tuple[float, ...] | None]]:
    return [(t.number, t.state.name, tuple(t.values) if t.values else None) for t in open_run(run).trials()]


def _check_recovered(run: Path, data: bytes, offset: int, stderr: str) -> None:
    """The search warned once, moved exactly the cut-off record aside and kept every record before it."""
    good = _line_start(data, offset)
    journal = (run / JOURNAL_NAME).read_bytes()
    assert journal[:good] == data[:good]  # 0 records lost beyond the damaged one
    assert journal.endswith(b"\n")
    aside = sorted(run.glob(DAMAGED_JOURNALS))
    if good == offset:  # cut between two records: nothing is damaged
        assert aside == [] and _warnings(stderr) == []
        return
    assert len(aside) == 1 and aside[0].read_bytes() == data[good:offset]
    (warning,) = _warnings(stderr)
    assert str(aside[0]) in warning and f"bytes {good}-{offset}" in warning


@pytest.mark.parametrize("where", ["first-byte", "middle", "newline-missing"])
def test_search_resumes_a_journal_whose_last_record_is_cut_off(finished, run_copy, where):
    space, _, data, path_csv = finished
    last = _line_start(data, len(data) - 1)
    offset = {"first-byte": last + 1, "middle": (last + len(data)) // 2, "newline-missing": len(data) - 1}[where]
    _cut(run_copy, offset)
    r = _invoke("search", "--space", space, "--out", run_copy)
    assert r.exit_code == 0, r.output
    _check_recovered(run_copy, data, offset, r.stderr)
    assert "Traceback" not in r.output
    f = _invoke("frontier", run_copy, "--json")
    assert f.exit_code == 0 and _warnings(f.stderr) == []
    assert json.loads(f.stdout)["trials"]["total"] == len(_trials(run_copy)) == len(_trials(finished[1]))
    assert (run_copy / "path.csv").read_text() == path_csv


def test_reading_a_damaged_run_changes_nothing_and_says_so_once(finished, run_copy):
    _, run, data, _ = finished
    last = _line_start(data, len(data) - 1)
    _cut(run_copy, last + 7)
    before = sorted(p.name for p in run_copy.iterdir())
    f = _invoke("frontier", run_copy, "--json")
    assert f.exit_code == 0, f.output
    (warning,) = _warnings(f.stderr)
    assert f"bytes {last}-{last + 7}" in warning and "the next 'scaler search'" in warning
    assert (run_copy / JOURNAL_NAME).read_bytes() == data[: last + 7]
    # Only frontier's own tables are new: no record moved aside, no journal lock left behind.
    new = set(p.name for p in run_copy.iterdir()) - set(before)
    assert new <= {"trials.csv", "frontier.csv", "path.csv"}
    assert _trials(run_copy) == _trials(run)[: len(_trials(run_copy))]
    p = _invoke("plot", run_copy, "-o", run_copy.parent / "f.png")
    assert p.exit_code == 0 and (run_copy / JOURNAL_NAME).read_bytes() == data[: last + 7]


def test_damage_in_the_middle_is_refused_and_changes_nothing(finished, run_copy):
    space, _, data, _ = finished
    lines = data.splitlines(keepends=True)
    k = len(lines) // 2
    damaged = b"".join([*lines[:k], lines[k][:10] + b"\n", *lines[k + 1 :]])
    (run_copy / JOURNAL_NAME).write_bytes(damaged)
    for args in (["frontier", run_copy], ["search", "--space", space, "--out", run_copy]):
        r = _invoke(*args)
        assert r.exit_code != 0 and "Traceback" not in r.output
        (line,) = r.stderr.strip().splitlines()[-1:]
        assert f"record {k + 1} (line {k + 1}, byte {len(b''.join(lines[:k]))}) cannot be read" in line
        assert "nothing was changed" in line and f"sed -i '{k + 1}d'" in line
        assert (run_copy / JOURNAL_NAME).read_bytes() == damaged
        assert not list(run_copy.glob(DAMAGED_JOURNALS))
    with pytest.raises(JournalDamagedError):
        open_run(run_copy)


def test_an_append_never_lands_on_a_partial_record(finished, run_copy, capsys):
    """Another process died mid-write while this one held the journal open: its next write repairs first."""
    _, _, data, _ = finished
    store = open_run(run_copy)
    with open(run_copy / JOURNAL_NAME, "ab") as f:
        f.write(b'{"op_code": 8, "worker_id": "dead')
    store.put("note", "after the crash")
    journal = (run_copy / JOURNAL_NAME).read_bytes()
    assert journal.startswith(data) and journal.endswith(b"\n")
    (aside,) = run_copy.glob(DAMAGED_JOURNALS)
    assert aside.read_bytes() == b'{"op_code": 8, "worker_id": "dead'
    (warning,) = _warnings(capsys.readouterr().err)
    assert str(aside) in warning
    assert open_run(run_copy).get("note") == "after the crash"


def test_a_finished_trial_is_on_disk_when_complete_returns(tmp_path, monkeypatch):
    store = RunStore(open_storage(None, tmp_path), "s", 19)
    store.add(TrialRecord(get_arch("lpsnet_tiny")), distributions(Constraints()))
    claim = store.claim()
    journal = tmp_path / JOURNAL_NAME
    before = journal.read_bytes().count(b"\n")
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    assert store.complete(claim, 2.0, 0.5, {"train": {"status": "ok"}})
    # One fsync per record written (the attributes, then the state and values).
    assert len(synced) == journal.read_bytes().count(b"\n") - before >= 2
    assert isinstance(store.storage._backend, DurableJournalBackend)


def test_worker_repairs_the_journal_it_joins(finished, run_copy, capsys):
    _, _, data, _ = finished
    last = _line_start(data, len(data) - 1)
    _cut(run_copy, last + 3)
    open_storage(f"journal:{run_copy / JOURNAL_NAME}", None, create=False)
    _check_recovered(run_copy, data, last + 3, capsys.readouterr().err)


# Seeded offsets anywhere in the journal: a crash can cut any record, not just a trial's last.
OFFSETS = random.Random(14).sample(range(1, 10_000), 10)


@pytest.mark.parametrize("fraction", [o / 10_000 for o in OFFSETS], ids=[f"at{o / 100:.2f}%" for o in OFFSETS])
def test_every_cut_recovers_with_nothing_lost(finished, run_copy, fraction):
    """The short version of benchmarks/bench_faults.py journal: resume, then read, after a cut anywhere."""
    space, _, data, path_csv = finished
    offset = int(len(data) * fraction)
    _cut(run_copy, offset)
    r = _invoke("search", "--space", space, "--out", run_copy)
    assert r.exit_code == 0, r.output
    _check_recovered(run_copy, data, offset, r.stderr)
    f = _invoke("frontier", run_copy)
    assert f.exit_code == 0 and _warnings(f.stderr) == []
    # The stand-ins are deterministic: the resumed search ends on the same greedy path. A trial that was
    # running at the cut is queued again under a new number, so the path is compared without numbers.
    assert _path_without_numbers((run_copy / "path.csv").read_text()) == _path_without_numbers(path_csv)


def _path_without_numbers(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{k: v for k, v in r.items() if k not in ("trial", "parent", "candidates")} for r in rows]


def test_a_damaged_run_json_is_one_line_saying_how_to_fix_it(finished, run_copy):
    space, _, _, _ = finished
    text = (run_copy / RUN_FILE).read_text()
    (run_copy / RUN_FILE).write_text(text[: len(text) // 2])
    for args in (["frontier", run_copy], ["search", "--space", space, "--out", run_copy]):
        r = _invoke(*args)
        assert r.exit_code != 0 and "Traceback" not in r.output
        (line,) = r.stderr.strip().splitlines()
        assert "run.json: cannot read the run's metadata, it is damaged" in line and "restore it from a copy" in line
    (run_copy / RUN_FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="it is damaged"):
        open_run(run_copy)
    assert (run_copy / RUN_FILE).read_bytes() == b"\xff\xfe"


def test_a_stop_while_the_journal_lock_is_held_waits_for_the_write(tmp_path, monkeypatch):
    # The signal lands the instant the lock is taken (before Optuna's `try` that releases it): raised
    # there, the lock stayed held by this process, and its own next write (marking the stopped trial)
    # waited on it for ever.
    journal = tmp_path / JOURNAL_NAME
    backend = DurableJournalBackend(str(journal))
    real = backend._lock.acquire

    def acquire_then_signal() -> bool:
        taken = real()
        assert KernelLock.held(journal)
        signal.raise_signal(signal.SIGTERM)
        return taken

    monkeypatch.setattr(backend._lock, "acquire", acquire_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stop, stop_on_signals():
        backend.append_logs([{"op_code": 0, "n": 1}])
    assert stop.value.name == "SIGTERM"
    assert not KernelLock.held(journal)
    assert [json.loads(line) for line in journal.read_text().splitlines()] == [{"op_code": 0, "n": 1}]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_writer_killed_holding_the_journal_lock_leaves_no_lock(tmp_path):
    # Optuna's lock (a file that exists while held) outlived a killed holder: every other process
    # then waited 30 s. The kernel drops this one with its process.
    journal = tmp_path / JOURNAL_NAME
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from scaler.search.journal import KernelLock; "
            f"KernelLock({str(journal)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert KernelLock.held(journal)
    started = time.monotonic()
    blocked = DurableJournalBackend(str(journal))
    holder.kill()
    holder.wait()
    blocked.append_logs([{"op_code": 0, "n": 1}])
    assert time.monotonic() - started < 5
    assert not KernelLock.held(journal)


def test_a_second_signal_during_a_held_back_stop_is_not_held_back():
    with pytest.raises(KeyboardInterrupt), stop_on_signals(), uninterrupted():
        signal.raise_signal(signal.SIGINT)  # held back until the block ends
        signal.raise_signal(signal.SIGINT)  # the user insists: Python's own Ctrl-C, now


def test_uninterrupted_blocks_nest_and_raise_once_at_the_outermost_end():
    ran = []
    with pytest.raises(Stopped), stop_on_signals():
        with uninterrupted():
            with uninterrupted():
                signal.raise_signal(signal.SIGTERM)
            ran.append("inner done")
        ran.append("never")
    assert ran == ["inner done"]
