"""``scaler explain``: every greedy step's candidates, gains, slopes, winner and certainty, read from
the run's records; on a run built with paired measurement, on the committed reference run (read
only), on a run that recorded only its decisions, and on a baseline run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_search import FakeLatency, fake_train
from paired_standin import FakePaired
from run_builder import make_greedy_run, make_run

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from scaler.cli import main
from scaler.report.explain import explain_run
from scaler.report.render import format_explain
from scaler.search.run import run_search
from scaler.search.space import space_from_dict
from scaler.search.store import open_run
from scaler.search.strategies import GreedyStrategy

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "results" / "reference" / "lpsnet_demo_128x256"


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in folder.rglob("*")
    }


def test_the_reference_run_is_explained_with_point_values_and_left_untouched():
    before = _files(DEMO)
    ex = explain_run(DEMO)
    r = CliRunner().invoke(main, ["explain", str(DEMO)])
    j = CliRunner().invoke(main, ["explain", str(DEMO), "--json"])
    assert _files(DEMO) == before  # not one byte written, no lock or table left behind

    assert r.exit_code == 0 and r.output == format_explain(ex) + "\n"
    assert j.exit_code == 0 and json.loads(j.output) == json.loads(json.dumps(ex.to_dict()))
    assert ex.strategy == "greedy" and ex.stop_reason == "step limit reached (3 steps)" and ex.noise_floor_ms == 0.05
    assert [(s.step, s.parent, s.winner) for s in ex.steps] == [(1, 0, 8), (2, 8, 14), (3, 14, 24)]
    assert all(not s.paired and s.certainty == "unknown (no paired measurement)" for s in ex.steps)
    decisions = GreedyStrategy.steps(open_run(DEMO).study.user_attrs)
    for s, d in zip(ex.steps, decisions, strict=True):
        assert [c.trial for c in s.candidates] == list(d.candidates)
        assert [c.slope for c in s.candidates] == [d.slopes[n] for n in d.candidates]
        assert [c.winner for c in s.candidates].count(True) == 1
        assert all(c.delta_low is None and c.slope_low is None for c in s.candidates)
    # Step 2's winner: timed faster than its parent in another window, its gain raised to the floor.
    win = next(c for c in ex.steps[1].candidates if c.trial == 14)
    assert win.delta_ms == pytest.approx(1.1167 - 1.1236, abs=5e-4) and win.miou_gain == pytest.approx(0.0305, abs=1e-4)
    assert win.notes == ("faster than its parent, unchecked", "below the noise floor: counted as +0.05 ms")
    assert win.slope == pytest.approx(win.miou_gain / 0.05)
    assert "step 2: parent #8 (1.124 ms, mIoU 28.51); target 1.193 ms" in r.output
    assert "  no paired measurement: point values from single measurements, each in its own time window" in r.output
    assert "  winner     #14: best mIoU gain per ms: 61 points/ms\n  certainty  unknown (no paired measurement)" in (
        r.output
    )


@pytest.fixture
def paired_run(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_mod, "measure_latency", FakeLatency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired(noise_ms=0.03, drift_ms=0.1))
    monkeypatch.setattr(worker_mod, "train_and_evaluate", fake_train)
    space = space_from_dict(
        {
            "name": "built",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic:size=64x128,train=8,val=4",
            "constraints": {"width_divisor": 4, "max_depth": 4, "max_width": 64},
            "stopping": {"max_steps": 3},
        }
    )
    run_search(space, tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_a_paired_run_is_explained_with_intervals_and_certainty(paired_run):
    store = open_run(paired_run)
    ex = explain_run(paired_run)
    plans = GreedyStrategy.plans(store.study.user_attrs)
    decisions = GreedyStrategy.steps(store.study.user_attrs)
    records = {t.number: t for t in store.records()}
    assert len(ex.steps) == 3 and all(s.paired and s.rounds == 15 for s in ex.steps)
    for s, plan, d in zip(ex.steps, plans, decisions, strict=True):
        assert s.parent_latency_ms == plan.parent_ms and s.winner == d.winner and s.certainty == d.certainty()
        assert s.actions == plan.actions + d.actions
        for c in s.candidates:
            trial = records[c.trial]
            assert c.latency_ms == trial.latency_ms and c.winner == (c.trial == d.winner)
            if trial.miou is None:
                assert c.slope is None and c.notes[0].startswith("failed: ")
                continue
            e = d.estimates[c.trial]  # the decision's last numbers, with their intervals
            assert (c.delta_ms, c.delta_low, c.delta_high) == (e.delta_ms, e.delta_low, e.delta_high)
            assert c.rounds == e.rounds
            assert (c.slope, c.slope_low, c.slope_high) == (e.slope, e.slope_low, e.slope_high)
            assert c.miou_gain == pytest.approx(trial.miou - records[s.parent].miou)
    # The seeded fakes give a sure first step and a last step the rounds could not settle.
    assert [(s.winner, s.sure) for s in ex.steps] == [(7, True), (14, True), (15, False)]
    last = ex.steps[2]
    assert last.overlap == decisions[2].overlap and [len(s.actions) for s in ex.steps] == [1, 1, 2]
    notes = {c.trial: c.notes for c in last.candidates}
    assert notes[15] == ("latency gain from 60 rounds",) and notes[20] == ("failed: fake: three paths fail",)

    text = CliRunner().invoke(main, ["explain", str(paired_run)]).output
    assert text == format_explain(ex) + "\n"
    assert "  timed with its parent in 15 paired rounds; other processes used 2% of the CPUs" in text
    row = next(line for line in text.splitlines() if line.startswith("  *    15  depth_2-5 x1 "))
    c15 = next(c for c in last.candidates if c.trial == 15)
    assert (
        f"{c15.delta_ms:+.3f} [{c15.delta_low:+.3f}, {c15.delta_high:+.3f}]" in row
        and f"{100 * c15.slope:.4g} [{100 * c15.slope_low:.4g}, {100 * c15.slope_high:.4g}]" in row
    )
    assert f"  certainty  {decisions[2].certainty()}" in text and "not sure: its 90% interval overlaps" in text
    assert "  did        #15 and #16: slope intervals overlapped (" in text
    # Paired probes grew the operators; every candidate is also known relative to the start network.
    assert "  grown to the target in 3 paired probes of 5 rounds" in text
    assert "parent = 1.495 x the start network" in text
    assert [s.probe_passes for s in ex.steps] == [4, 4, 3] and ex.steps[0].parent_start_ratio == 1.0
    assert all(c.start_ratio is not None and c.start_ratio > 1 for s in ex.steps for c in s.candidates)
    assert f"{c15.latency_ms:.3f}    {c15.start_ratio:.3f}  {c15.delta_ms:+.3f}" in row
    data = json.loads(CliRunner().invoke(main, ["explain", str(paired_run), "--json"]).output)
    assert data == json.loads(json.dumps(ex.to_dict()))
    assert data["steps"][2]["sure"] is False and data["steps"][2]["candidates"][0]["rounds"] == 60


def test_a_run_with_decisions_but_no_plans_is_explained_from_its_trials(tmp_path):
    make_greedy_run(tmp_path / "run")
    ex = explain_run(tmp_path / "run")
    assert [(s.step, s.winner, [c.trial for c in s.candidates]) for s in ex.steps] == [
        (1, 2, [1, 2, 3]),
        (2, 4, [4, 5, 6]),
        (3, None, [7]),
    ]
    first = ex.steps[0]
    assert [c.delta_ms for c in first.candidates] == pytest.approx([0.8, 1.0, 1.1])
    assert first.candidates[2].notes == ("failed: non-finite loss at iteration 3",)
    text = format_explain(ex)
    assert "  winner     none, the search stopped here: no candidate gains mIoU" in text


def test_a_baseline_run_has_nothing_to_explain(tmp_path):
    make_run(tmp_path / "run", [], strategy="random")
    r = CliRunner().invoke(main, ["explain", str(tmp_path / "run")])
    assert r.exit_code == 0 and r.output.splitlines()[1] == (
        "no greedy steps recorded: nothing to explain (only the greedy strategy records its decisions)"
    )


def test_explain_of_a_missing_run_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["explain", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output == f"error: {tmp_path / 'nope'}: no such run folder\n"
