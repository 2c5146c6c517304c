"""Latency results on disk, keyed by architecture + fingerprint + stopping rule, shared between processes.

Paired results (:mod:`scaler.measure.paired`) live beside them under their own keys (prefix
``paired-``) and are marked as such in the entry, so a single-measurement lookup never returns one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaler.errors import UserError
from scaler.files import atomic_write_text, damaged_path
from scaler.measure.settings import LatencyResult

if TYPE_CHECKING:
    from scaler.measure.paired import PairedResult

__all__ = ["CACHE_ENV", "CACHE_FORMAT", "LatencyCache", "default_cache_dir"]

CACHE_ENV = "LPS_SCALER_CACHE"
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$LPS_SCALER_CACHE`` if set, else ``~/.cache/lps-scaler/latency``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lps-scaler" / "latency"


class LatencyCache:
    """Latency results on disk: one JSON file per key, written atomically.

    Each entry is written to a temporary file in the same folder and renamed over its final name,
    so any number of processes (on one host, or hosts sharing a POSIX file system) may read and
    write at once: a reader sees a whole old entry, a whole new one, or none. Two writers of the
    same key both succeed; the later rename wins.

    Args:
        path: The folder; default :func:`default_cache_dir`. Created on the first write.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_cache_dir()
        self._reported: set[Path] = set()

    def __repr__(self) -> str:
        return f"LatencyCache({str(self.path)!r})"

    def entry_path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-z-]+", key):
            raise ValueError(f"malformed latency cache key {key!r}")
        return self.path / f"{key}.json"

    def get(self, key: str) -> LatencyResult | None:
        """The stored single measurement for ``key`` (with ``from_cache=True``), or ``None``.

        A foreign entry (a paired one too) counts as missing; the next :meth:`put` replaces it. A
        damaged one (cut off, not JSON) is moved aside with a one-line warning and counts as missing.
        """
        data = self._read(key, "single")
        if data is None:
            return None
        try:
            result = LatencyResult.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return dataclasses.replace(result, from_cache=True)

    def get_paired(self, key: str) -> PairedResult | None:
        """The stored paired result for ``key`` (with ``from_cache=True``), or ``None``; as :meth:`get`."""
        from scaler.measure.paired import PairedResult  # paired builds on this module

        data = self._read(key, "paired")
        if data is None:
            return None
        try:
            result = PairedResult.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return dataclasses.replace(result, from_cache=True)

    def put(self, key: str, result: LatencyResult) -> Path:
        """Store ``result`` under ``key``, replacing any entry.

        Returns:
            The entry's path.

        Raises:
            UserError: The folder cannot be written; the message names it.
        """
        return self._write(key, "single", result.to_dict())

    def put_paired(self, key: str, result: PairedResult) -> Path:
        """Store a paired ``result`` under ``key`` (a ``paired-`` key), replacing any entry; as :meth:`put`."""
        return self._write(key, "paired", result.to_dict())

    def _read(self, key: str, kind: str) -> dict[str, Any] | None:
        path = self.entry_path(key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:  # cut off, or not JSON (UnicodeDecodeError is a ValueError too)
            self._move_aside(path, raw)
            return None
        try:
            # Entries written before paired results existed have no kind: they are single ones.
            if data.get("format") != CACHE_FORMAT or data.get("key") != key or data.get("kind", "single") != kind:
                return None
            return dict(data["result"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def _move_aside(self, path: Path, raw: bytes) -> None:
        """Move a damaged entry aside (``KEY.json.damaged-<UTC time>``), with one warning line on stderr.

        Entries are written atomically, so a damaged one is a damaged disk or a hand edit; its bytes
        are kept for a look, and the key counts as missing (measured again, then written anew).
        """
        if path in self._reported:
            return
        self._reported.add(path)
        aside = damaged_path(path)
        try:
            # Another process may have just replaced it with a whole entry: that one stays.
            if path.read_bytes() != raw:
                return
            os.rename(path, aside)
        except OSError as e:
            print(
                f"warning: latency cache entry {path} is damaged (cut off or not JSON) and could not be moved "
                f"aside ({e.strerror or e}); it is ignored and measured again",
                file=sys.stderr,
            )
            return
        print(
            f"warning: latency cache entry {path} was damaged (cut off or not JSON); moved it to {aside}; "
            "it is measured again",
            file=sys.stderr,
        )

    def _write(self, key: str, kind: str, result: dict[str, Any]) -> Path:
        final = self.entry_path(key)
        entry: dict[str, Any] = {"format": CACHE_FORMAT, "key": key}
        if kind != "single":  # single entries stay byte-for-byte as before
            entry["kind"] = kind
        entry["result"] = {**result, "from_cache": False}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(final, json.dumps(entry))
        except OSError as e:
            raise UserError(
                f"cannot write the latency cache in {self.path} ({e.strerror or e}); "
                f"set {CACHE_ENV} to a writable folder"
            ) from None
        return final

    def keys(self) -> list[str]:
        """Keys of the stored entries, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.keys())
