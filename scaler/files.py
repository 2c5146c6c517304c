"""Writing records: plain-JSON values, and files that a reader never sees half of.

A file is written to a temporary name in its own folder, flushed to disk, and renamed over the final
name (an atomic step on POSIX file systems), so any number of processes may read while one writes:
they see the whole old file, the whole new one, or none. A crash mid-write leaves the old file (and
at worst a stray ``.NAME.*.tmp``), never a truncated one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DAMAGED_INFIX", "atomic_path", "atomic_write_bytes", "atomic_write_text", "damaged_path", "jsonable"]

# A damaged file's bytes are moved aside to NAME.damaged-<UTC time> beside it, never deleted.
DAMAGED_INFIX = ".damaged-"


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists; anything else JSON lacks, its ``str``)."""
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds.

    For writers that want a file name (``torch.save``, ``DataFrame.to_csv``, ``savefig``). The parent
    folder must exist. If the block raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: The final file.
        fsync: Flush the file (and the rename) to disk before returning, so the new content
            survives a power cut; off for files that are cheap to make again.

    Raises:
        OSError: The folder cannot be written; nothing is left behind.
    """
    path = Path(path)
    tmp = _new_temp(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path``'s content with ``data`` atomically (see :func:`atomic_path`). Returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Replace ``path``'s content with ``text`` (UTF-8) atomically (see :func:`atomic_path`). Returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def damaged_path(path: str | Path, now: datetime.datetime | None = None) -> Path:
    """A new name beside ``path`` for its damaged bytes: ``NAME.damaged-20260102T030405Z`` (UTC).

    Args:
        path: The damaged file.
        now: The time in the name (default: now); a name already taken gets ``-1``, ``-2``, ... added.

    Returns:
        A path that does not exist yet.
    """
    path = Path(path)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stem = f"{path.name}{DAMAGED_INFIX}{now.astimezone(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    aside = path.with_name(stem)
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stem}-{n}")
    return aside


def _new_temp(path: Path) -> Path:
    # Not tempfile.mkstemp: its files are private (0600), and a run folder's tables and plots are
    # meant to be read by whoever may read the folder; os.open's 0o666 follows the user's umask.
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some file systems cannot open a folder for that, which costs
    # durability there, never correctness.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
