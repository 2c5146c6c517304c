"""The one atomic-write helper: whole files or none, readable as the user's umask says, and plain JSON."""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

import pytest

from scaler.files import atomic_path, atomic_write_bytes, atomic_write_text, jsonable


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "run.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "trials.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("a,b\n")
        raise RuntimeError("disk full")
    assert path.read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def test_files_follow_the_umask_not_private_temp_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "frontier.csv", "x", fsync=False)
        with atomic_path(tmp_path / "plot.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    for name in ("frontier.csv", "plot.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_missing_folder_is_an_os_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "run.json", "x")
    assert list(tmp_path.iterdir()) == []


def test_jsonable_makes_plain_json_values():
    value = {"shape": (1, 3), "path": PurePosixPath("/x"), "n": 2, "none": None}
    assert jsonable(value) == {"shape": [1, 3], "path": "/x", "n": 2, "none": None}
