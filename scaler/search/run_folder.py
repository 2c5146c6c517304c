"""A run folder: the names of what it holds, and the checks that keep one search's folder its own.

```
RUN/run.json          which study and storage the run uses, its strategy and space hash
RUN/study.journal     the Optuna study (default storage), every candidate a trial
RUN/study.journal.damaged-<UTC time>   a cut-off last record, moved aside when the search reopened the run
RUN/artifacts/        files attached to the study (plots, model cards): Optuna's artifact store
RUN/weights/          proxy-trained weights, with --keep-weights
RUN/trials.csv, frontier.csv, path.csv, plots/   written by the report at the end of a session
RUN/.search.lock      held by the search process while it runs
```

Whether a run's search is still running is read from its lock (:func:`search_is_running`), not
from the status the study records: a search killed outright (SIGKILL, a crash, a lost machine)
never gets to write "stopped", but the kernel releases its lock the moment the process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaler.errors import UserError
from scaler.files import DAMAGED_INFIX, atomic_write_text

__all__ = [
    "ARTIFACTS_DIR",
    "DAMAGED_JOURNALS",
    "FRONTIER_CSV",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "PATH_CSV",
    "PLOTS_DIR",
    "RUN_FILE",
    "TRIALS_CSV",
    "WEIGHTS_DIR",
    "check_run_dir",
    "exclusive",
    "pid_alive",
    "read_record",
    "search_is_running",
    "write_record",
]

RUN_FILE = "run.json"
JOURNAL_NAME = "study.journal"
# Glob of the journal's damaged tails moved aside (scaler.search.journal), named by UTC time.
DAMAGED_JOURNALS = f"{JOURNAL_NAME}{DAMAGED_INFIX}*"
LOCK_NAME = ".search.lock"
ARTIFACTS_DIR = "artifacts"
WEIGHTS_DIR = "weights"
PLOTS_DIR = "plots"
TRIALS_CSV = "trials.csv"
FRONTIER_CSV = "frontier.csv"
PATH_CSV = "path.csv"
_LOCK_WAIT_S = 1.0


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``run.json`` as a dict, or ``None`` when the folder has none.

    Raises:
        UserError: It exists but cannot be read, or is not a JSON object naming a study. It names
            the run's study and storage, which nothing else may guess: the message says how to fix it.
    """
    marker = run_dir / RUN_FILE
    if not marker.is_file():
        return None
    # run.json is written atomically: damage is a damaged disk or a hand edit, never a cut-off write.
    fix = (
        f"restore it from a copy (it names the run's study, storage and strategy, as 'scaler search' wrote it), "
        f"or move it aside to read the run from its {JOURNAL_NAME} alone (scaler frontier, plot, explain)"
    )
    try:
        record = json.loads(marker.read_bytes())
    except OSError as e:
        raise UserError(f"{marker}: cannot read the run's metadata ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{marker}: cannot read the run's metadata, it is damaged ({e}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("study_name"), str):
        raise UserError(f"{marker}: expected a JSON object with a 'study_name' string; {fix}")
    return record


def check_run_dir(run_dir: Path, record: dict[str, Any]) -> bool:
    """Check that ``run_dir`` is new, empty, or holds this very search; ``True`` if it holds none yet.

    Nothing is written to a run that belongs to another search.

    Raises:
        UserError: The folder holds another search, is a file, holds other files, or cannot be written.
    """
    existing = read_record(run_dir)
    if existing is not None:
        for key in ("strategy", "study_name", "storage"):
            if existing.get(key) != record[key]:
                raise UserError(
                    f"{run_dir} is a run with {key} {existing.get(key)!r}, not {record[key]!r}; "
                    "use the same options to resume it, or another --out for a new run"
                )
        return False
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder")
    # Left behind by an attempt that stopped before its first write (say, unreachable storage).
    journal = run_dir / JOURNAL_NAME
    leftovers = {LOCK_NAME} | ({JOURNAL_NAME} if journal.exists() and journal.stat().st_size == 0 else set())
    if run_dir.exists() and any(p.name not in leftovers for p in run_dir.iterdir()):
        raise UserError(
            f"--out {run_dir} is a non-empty folder that holds no run ({RUN_FILE} missing); "
            "choose an empty or new folder"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {run_dir}: cannot write the run folder ({e.strerror})") from None
    return True


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``run.json`` (atomically)."""
    atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=2))


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block: one search process per run folder.

    Raises:
        UserError: Another search holds it, or the folder cannot be written (a read-only file
            system, say): a search must be able to write to the run it resumes.
    """
    path = run_dir / LOCK_NAME
    try:
        f = open(path, "w")  # noqa: SIM115  (closed by the with below, after the error check)
    except OSError as e:
        raise UserError(
            f"{run_dir}: cannot take the run's lock {LOCK_NAME} ({e.strerror}); a search writes to its run "
            "folder, so resume it where the folder is writable (reading it needs none: scaler frontier, plot, explain)"
        ) from None
    with f:
        # A reader testing the lock (search_is_running) holds it for a moment: wait that out.
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{run_dir}: another search is running on this run folder") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def search_is_running(run_dir: Path) -> bool | None:
    """Whether a search process holds the run folder's lock now.

    The lock is the simplest reliable sign of an owner: the kernel drops it when the process ends,
    however it ends, and it needs no clock or heartbeat. (Optuna's own heartbeat,
    ``fail_stale_trials``, covers trials, and only in a database.) The test takes a shared lock for
    an instant; :func:`exclusive` waits that out.

    Returns:
        ``True`` while a search holds it, ``False`` when none does (never started here, finished,
        stopped or killed), ``None`` when the lock cannot be read (no access).
    """
    path = run_dir / LOCK_NAME
    try:
        f = open(path)  # noqa: SIM115  (closed by the with below)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host exists (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
