"""The run's journal file, made durable: a cut-off last record is moved aside, never written onto.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` (Optuna 5) appends each batch of
records as JSON lines under its lock file, then flushes and fsyncs the file. Reading, it applies
every whole line and silently skips a last line that is cut off (no newline) or unparsable; an
unparsable line with more lines after it raises its ``JSONDecodeError`` (no record is skipped in
the middle). Appending, it writes after whatever the file ends with, so after a crash or a full
disk mid-write the next record lands on the partial line and the journal cannot be read any more.

:class:`DurableJournalBackend` keeps Optuna's format and locking and changes three things:

- reading stops at a damaged tail (one or more unreadable last records) and remembers where it
  begins; a damaged record with good records after it is one :class:`JournalDamagedError` line
  that names it and changes nothing (cut-off writes only ever damage the end, so that is not one);
- :meth:`~DurableJournalBackend.repair` moves a damaged tail aside to
  ``JOURNAL.damaged-<UTC time>`` beside the journal (written and fsynced before the journal is
  cut back to its last good record), under the journal's lock;
- every append first checks, under the lock, that the journal ends with a whole record (repairing
  it if another process died mid-write), then writes, flushes and fsyncs, as Optuna does;
- the lock is :class:`KernelLock`, an advisory lock (``flock``) on ``JOURNAL.flock`` that the
  kernel drops with its holder. Optuna's lock is a file that exists while it is held: a writer
  killed while holding it (SIGKILL, a crash; likely with many writers) left it behind, and every
  other process of the run waited Optuna's 30 s grace period before forcing it (measured: 8
  workers on one journal, one killed every few seconds, stalled 30 s at a time).

:func:`open_journal` opens a journal for a writer (repairing a damaged tail) or for a reader
(reading the good records, changing nothing, and saying that the next search repairs it).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock, get_lock_file

from scaler.errors import UserError
from scaler.files import atomic_write_bytes, damaged_path
from scaler.search.stops import uninterrupted

__all__ = ["DurableJournalBackend", "JournalDamagedError", "open_journal"]

_CHUNK = 1 << 16
# (journal, offset) pairs already reported in this process: a command that opens a run several
# times (a report reads it once per table) says so once.
_reported: set[tuple[str, int]] = set()


class JournalDamagedError(UserError):
    """A journal record in the middle of the file cannot be read; nothing was changed."""


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _parse(line: bytes) -> dict[str, Any] | None:
    """The record on ``line`` (with its newline), or ``None`` if it is cut off or unreadable."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return record if isinstance(record, dict) else None


def _line_start(f: BinaryIO, end: int) -> int:
    """Where the line that ends at ``end`` (its newline, if any, included) begins."""
    pos = end - 1  # a line's own newline is not its start
    while pos > 0:
        lo = max(0, pos - _CHUNK)
        f.seek(lo)
        found = f.read(pos - lo).rfind(b"\n")
        if found >= 0:
            return lo + found + 1
        pos = lo
    return 0


def _bad_tail_start(f: BinaryIO, size: int) -> int:
    """Where the run of unreadable last records begins: ``size`` when the last record is whole."""
    end = size
    while end > 0:
        start = _line_start(f, end)
        f.seek(start)
        if _parse(f.read(end - start)) is not None:
            return end
        end = start
    return 0


FLOCK_SUFFIX = ".flock"


class KernelLock(BaseJournalFileLock):
    """The journal's write lock: ``flock`` on ``JOURNAL.flock``, dropped by the kernel when its holder
    ends however it ends (see module). Linux emulates ``flock`` on NFS with the server's locks.

    One holder at a time per instance (Optuna's journal storage serialises its threads' writes).

    Args:
        journal_path: The journal; the lock file beside it is created on first use and kept.
    """

    def __init__(self, journal_path: str) -> None:
        self.path = journal_path + FLOCK_SUFFIX
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError("the journal's lock is not held")
        os.close(fd)  # drops the lock

    @staticmethod
    def held(journal_path: str | Path) -> bool:
        """Whether some process holds the lock of the journal at ``journal_path`` now (a write in progress)."""
        try:
            fd = os.open(str(journal_path) + FLOCK_SUFFIX, os.O_RDONLY)
        except OSError:  # no lock file: nothing ever wrote (or it cannot be read: assume no writer)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # drops the shared lock, if taken
        return False


class DurableJournalBackend(JournalFileBackend):
    """Optuna's journal file backend that never reads past, or writes onto, a damaged last record.

    Args:
        file_path: The journal; created (empty) if missing, as Optuna does.
        warn: Receives the one-line message when an append moves a damaged tail aside.

    Attributes:
        damaged_from: After a read, the byte offset where the journal's damaged tail begins (read
            up to there), or ``None`` when every record was whole.
    """

    def __init__(self, file_path: str, warn: Callable[[str], None] = _warn_stderr) -> None:
        super().__init__(file_path, lock_obj=KernelLock(file_path))
        self.path = Path(file_path)
        self.warn = warn
        self.damaged_from: int | None = None

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """The records from number ``log_number_from`` on, up to the first damaged one (see module).

        Raises:
            JournalDamagedError: A damaged record has whole records after it.
        """
        with open(self.path, "rb") as f:
            # Records appended while this reads are left for the next read (as Optuna does).
            size = os.fstat(f.fileno()).st_size
            number = 0
            if log_number_from in self._log_number_offset:
                number = log_number_from
            offset = self._log_number_offset[number]
            f.seek(offset)
            bad: tuple[int, int] | None = None  # (record number, offset) of the first damaged record
            for line in f:
                if offset + len(line) > size:
                    break
                record = _parse(line)
                if record is None:
                    bad = bad or (number, offset)
                elif bad is not None:
                    raise JournalDamagedError(self._middle_damage(*bad, good=number))
                else:
                    self._log_number_offset[number + 1] = offset + len(line)
                    if number >= log_number_from:
                        yield record
                offset += len(line)
                number += 1
            self.damaged_from = None if bad is None else bad[1]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` after the last whole record, then flush and fsync (Optuna 5 fsyncs too)."""
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        with uninterrupted(), get_lock_file(self._lock):
            with open(self.path, "rb+") as f:
                self._cut_damaged_tail(f)
            # Appending mode, as Optuna writes: a writer that ignores the lock still cannot overwrite.
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def repair(self) -> Path | None:
        """Move a damaged tail aside, under the journal's lock.

        Returns:
            The file now holding the damaged bytes, or ``None`` if the journal ended whole.

        Raises:
            OSError: The journal or its folder cannot be written.
        """
        with uninterrupted(), get_lock_file(self._lock), open(self.path, "rb+") as f:
            return self._cut_damaged_tail(f)

    def _cut_damaged_tail(self, f: BinaryIO) -> Path | None:
        # Only called under the lock: no writer is between its write and its newline now, so an
        # unreadable tail is a write that will never finish.
        size = os.fstat(f.fileno()).st_size
        start = _bad_tail_start(f, size)
        if start == size:
            return None
        f.seek(start)
        aside = damaged_path(self.path)
        # The bytes are safe on disk before the journal lets go of them.
        atomic_write_bytes(aside, f.read(size - start))
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
        self.damaged_from = None
        _reported.add((str(self.path), start))
        self.warn(
            f"warning: {self.path}: its last record was cut off (bytes {start}-{size}, a crash or a full disk "
            f"mid-write); moved it to {aside} and continued from the last whole record"
        )
        return aside

    def _middle_damage(self, number: int, offset: int, *, good: int) -> str:
        quoted = shlex.quote(str(self.path))
        return (
            f"{self.path}: record {number + 1} (line {number + 1}, byte {offset}) cannot be read, yet record "
            f"{good + 1} after it can: not a cut-off last write, so nothing was changed; keep a copy of the journal, "
            f"then delete that line (sed -i '{number + 1}d' {quoted}) or cut the journal there "
            f"(truncate -s {offset} {quoted})"
        )


def open_journal(
    path: Path, *, repair: bool, warn: Callable[[str], None] = _warn_stderr
) -> optuna.storages.JournalStorage:
    """Open the journal at ``path`` as Optuna storage, coping with a damaged tail.

    Args:
        path: The journal file (created if missing).
        repair: A writer (the search, a worker): move a damaged tail aside now (one warning line).
            A reader: read up to it, change nothing, and say once that the next search repairs it
            (unless another process is writing, whose record may simply not be whole yet).
        warn: Receives the one-line warnings.

    Raises:
        JournalDamagedError: A record in the middle of the journal cannot be read.
        OSError: The journal cannot be opened, or (``repair``) written.
    """
    backend = DurableJournalBackend(str(path), warn=warn)
    storage = optuna.storages.JournalStorage(backend)
    start = backend.damaged_from
    if start is None:
        return storage
    if repair:
        backend.repair()
    elif (str(path), start) not in _reported and not KernelLock.held(path):
        _reported.add((str(path), start))
        size = path.stat().st_size
        warn(
            f"warning: {path}: its last record is cut off (bytes {start}-{size}, a crash or a full disk "
            "mid-write); read the records before it; the next 'scaler search' on this run moves it aside"
        )
    return storage
