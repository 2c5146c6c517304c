"""Other processes' CPU share, measured on this machine with real busy processes (Linux only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaler.measure import load as machine_load
from scaler.measure.load import OthersCPU, busy_share, wait_for_quiet

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat (Linux)")

SPIN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end: pass\n"


def _spin_here(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def busy_process():
    """One other process spinning a whole core for a few seconds."""
    p = subprocess.Popen([sys.executable, "-c", SPIN.format(s=20)])
    time.sleep(0.3)  # let it start spinning
    yield p
    p.kill()
    p.wait()


def test_a_spinning_process_is_others_load(busy_process):
    cpus = os.cpu_count() or 1
    share = busy_share(1.0)
    # One of `cpus` cores fully busy (minus scheduling slack), plus whatever else runs here.
    assert share >= 0.8 / cpus
    with OthersCPU() as others:
        time.sleep(1.0)
    assert others.share >= 0.8 / cpus


def test_own_work_is_not_counted():
    cpus = os.cpu_count() or 1
    # Others' share while this process spins a full core, against windows just before and after where
    # it sleeps: counting our own core would add 1 / cpus; other processes (a busy CI machine) appear
    # in every window alike.
    with OthersCPU() as before:
        time.sleep(1.0)
    with OthersCPU() as spinning:
        _spin_here(1.0)
    with OthersCPU() as after:
        time.sleep(1.0)
    shares = (before.share, spinning.share, after.share)
    assert None not in shares
    assert spinning.share < max(before.share, after.share) + 0.5 / cpus, shares


def test_waited_children_are_own_work_only_when_asked():
    cpus = os.cpu_count() or 1
    with OthersCPU(children=True) as mine, OthersCPU() as theirs:
        subprocess.run([sys.executable, "-c", SPIN.format(s=1.0)], check=True)
    assert theirs.share >= 0.7 / cpus
    assert mine.share < theirs.share - 0.3 / cpus


def test_wait_for_quiet_gives_up_after_its_limit(busy_process):
    cpus = os.cpu_count() or 1
    started = time.perf_counter()
    busy, waited = wait_for_quiet(0.5 / cpus, 1.5, window_s=0.5)
    assert busy >= 0.5 / cpus
    assert 1.5 <= waited < 4.0 and time.perf_counter() - started == pytest.approx(waited, abs=0.2)


def test_quiet_machine_returns_after_one_window():
    busy, waited = wait_for_quiet(1.0, 10.0, window_s=0.2)
    assert busy is not None and 0.0 <= busy <= 1.0 and waited < 1.0


def test_unknown_off_linux(monkeypatch, tmp_path):
    monkeypatch.setattr(machine_load, "_PROC_STAT", tmp_path / "missing")
    assert busy_share(0.01) is None
    assert wait_for_quiet(0.0, 5.0, window_s=0.01)[0] is None
    with OthersCPU() as others:
        pass
    assert others.share is None
