"""A throwaway PostgreSQL server on loopback, for the tests and benchmarks that need a real one.

``initdb`` a cluster in a fresh temporary folder, start it on a free port (as the ``postgres`` user
when this process is root: the server refuses to run as root), create one database, and stop the
server and remove the folder afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "pg_bin", "throwaway_postgres"]


def pg_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian's newest version first), or ``None``."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(bindir: Path, database: str = "search") -> Iterator[str]:
    """A running server with one empty database; yields its URL (``postgresql://scaler@127.0.0.1:PORT/DB``).

    Args:
        bindir: From :func:`pg_bin`.
        database: The database to create.
    """
    # Not under pytest's tmp folder: that is private to root, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="lps-scaler-pg-"))
    data = base / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "scaler", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
        options = f"-h 127.0.0.1 -p {port} -k {base}"
        subprocess.run(
            [*server, "-l", str(base / "server.log"), "-w", "-t", "60", "-o", options, "start"],
            check=True,
            capture_output=True,
            timeout=90,
        )
        try:
            subprocess.run(
                [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "scaler", database],
                check=True,
                capture_output=True,
                timeout=60,
            )
            yield f"postgresql://scaler@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run([*server, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
    finally:
        shutil.rmtree(base, ignore_errors=True)
