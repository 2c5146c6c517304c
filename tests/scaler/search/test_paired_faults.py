"""Faults during the greedy step's paired timing: a device that fails mid-step stops the search with one
line and leaves the run resumable; a search killed (kill -9) in the middle of a paired pass resumes and
times again only the pass it was in (every finished pass is in the latency cache)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_search import FakeLatency, fake_train
from paired_standin import FakePaired

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from scaler.cli import main
from scaler.search.store import open_run

HELPERS = Path(__file__).resolve().parents[2] / "helpers"

SPACE = """\
name: faults
start: lpsnet_tiny
input_size: 64x128
dataset: synthetic:size=64x128,train=8,val=4
constraints: {width_divisor: 4, max_depth: 4, max_width: 64}
latency: {device: cpu, threads: 1, max_others_share: null}
stopping: {max_steps: 2}
"""


def _space(tmp_path: Path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


def _decisions(run_dir: Path) -> dict[str, object]:
    """Every step's plan and decision, without what only says when and how long (each candidate's latency
    record: its window, elapsed time; the machine's load)."""
    attrs = open_run(run_dir).study.user_attrs
    out = {}
    for k, v in attrs.items():
        if k.startswith("plan_"):
            v = {**v, "candidates": [{**c, "latency": None} for c in v["candidates"]], "others_cpu_share": None}
        if k.startswith(("plan_", "step_")):
            out[k] = v
    return out


class GoneOnCall:
    """``measure_paired`` on a device that fails from its ``n``-th call on (as CUDA does once it is gone)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.fake = FakePaired(noise_ms=0.02, drift_ms=0.05)

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("CUDA error: unspecified launch failure\nCUDA kernel errors might be reported later")
        return self.fake(*args, **kw)


def test_a_device_that_fails_mid_step_stops_the_search_with_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_train)
    space = _space(tmp_path)
    fake = FakePaired(noise_ms=0.02, drift_ms=0.05)
    monkeypatch.setattr(run_mod, "measure_paired", fake)
    ref = CliRunner().invoke(main, ["search", "--space", str(space), "--out", str(tmp_path / "ref"), "--quiet"])
    assert ref.exit_code == 0, ref.output
    # Step 1: four probes, its pass and a pass to part two close slopes; step 2: four probes and its pass.
    assert [(len(g), r) for g, r in fake.calls] == [
        (10, 5), (6, 5), (5, 5), (2, 5), (10, 15), (3, 30), (6, 5), (5, 5), (3, 5), (2, 5), (7, 15)
    ]  # fmt: skip

    run_dir = tmp_path / "run"
    # The device goes in step 2's second probe (5 networks).
    gone = GoneOnCall(8)
    monkeypatch.setattr(run_mod, "measure_paired", gone)
    r = CliRunner().invoke(main, ["search", "--space", str(space), "--out", str(run_dir), "--quiet"])
    assert r.exit_code != 0 and r.output.count("\n") == 1
    assert r.output == (
        "error: latency measurement on cpu failed while timing 5 networks together: CUDA error: unspecified launch "
        f"failure; the run in {run_dir} is intact: check the device, then run the same command to resume\n"
    )
    store = open_run(run_dir)
    assert store.get("plan_1") is not None and store.get("step_1") is not None and store.get("plan_2") is None
    assert store.get("status") == "running"  # not finished: a resume goes on from step 2

    monkeypatch.setattr(run_mod, "measure_paired", FakePaired(noise_ms=0.02, drift_ms=0.05))
    again = CliRunner().invoke(main, ["search", "--space", str(space), "--out", str(run_dir), "--quiet"])
    assert again.exit_code == 0, again.output
    assert _decisions(run_dir) == _decisions(tmp_path / "ref")
    assert open_run(run_dir).get("status") == "finished"


# A search in its own process whose paired passes are scripted (no real timing, so the numbers do not
# depend on the machine) and logged, one line per pass timed (cache hits time nothing); the pass
# numbered STOP_AT hangs after it is logged, so the test can kill the process inside it.
DRIVER = """\
import os, pathlib, sys, time
sys.path.insert(0, {helpers!r})
import scaler.measure.paired as paired_mod
import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from fake_search import FakeLatency, fake_ms, fake_train

log = pathlib.Path(os.environ["PASS_LOG"])
stop_at = int(os.environ.get("STOP_AT", "0"))

def scripted(group, settings, rounds, seed):
    done = len(log.read_text().splitlines()) if log.exists() else 0
    with log.open("a") as f:
        f.write(",".join(a.arch_hash() for a in group) + ":" + str(rounds) + "\\n")
    if done + 1 == stop_at:
        pathlib.Path(str(log) + ".inside").write_text("")
        time.sleep(600)
    rows = [[fake_ms(a) * (1 + 0.01 * ((r * 7 + i * 3) % 5)) for r in range(rounds)] for i, a in enumerate(group)]
    return rows, [None] * len(group)

paired_mod._time_group = scripted
run_mod.measure_latency = FakeLatency()
worker_mod.train_and_evaluate = fake_train
from scaler.cli import main
main()
"""


@pytest.mark.slow
def test_kill_9_inside_a_paired_pass_resumes_timing_only_that_pass(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(helpers=str(HELPERS)))
    space = _space(tmp_path)

    def search(out: Path, log: Path, cache: Path, stop_at: int = 0) -> subprocess.Popen:
        env = {**os.environ, "LPS_SCALER_CACHE": str(cache), "PASS_LOG": str(log), "STOP_AT": str(stop_at)}
        cmd = [sys.executable, str(driver), "search", "--space", str(space), "--out", str(out), "--quiet"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    ref_log = tmp_path / "ref.log"
    ref = search(tmp_path / "ref", ref_log, tmp_path / "ref-cache")
    assert ref.wait(timeout=300) == 0, ref.stdout.read() if ref.stdout else ""
    ref_passes = ref_log.read_text().splitlines()
    assert len(ref_passes) >= 8  # two steps of probes and passes

    # Killed inside the 7th pass (in step 2: step 1 took four probes, its pass and one to part two slopes).
    log = tmp_path / "run.log"
    proc = search(tmp_path / "run", log, tmp_path / "cache", stop_at=7)
    deadline = time.monotonic() + 300
    while not Path(str(log) + ".inside").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    assert before == ref_passes[:7]

    resumed = search(tmp_path / "run", log, tmp_path / "cache")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read() if resumed.stdout else ""
    after = log.read_text().splitlines()[7:]
    # Only the pass it was killed in, and what came after it, were timed again: the six finished
    # passes came from the cache.
    assert after == ref_passes[6:]
    assert _decisions(tmp_path / "run") == _decisions(tmp_path / "ref")
    assert open_run(tmp_path / "run").get("status") == "finished"
