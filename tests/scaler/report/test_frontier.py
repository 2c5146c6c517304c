from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from run_builder import A_WD, CLASSES, GREEDY_TRIALS, TINY, make_greedy_run, make_run

from scaler.cli import main
from scaler.errors import UserError
from scaler.report import (
    PATH_COLUMNS,
    TRIAL_COLUMNS,
    greedy_path,
    hypervolume,
    operator_dimension,
    pareto_front,
    reference_point,
    run_hypervolume,
    summarize_run,
    trials_frame,
    write_tables,
)
from scaler.search.store import RunStore, open_run

# ---------------------------------------------------------------------------------------------


@pytest.fixture
def greedy_run(tmp_path: Path) -> tuple[Path, RunStore]:
    run_dir = tmp_path / "run"
    return run_dir, make_greedy_run(run_dir)


def test_trials_frame_one_row_per_trial(greedy_run):
    _, store = greedy_run
    df = trials_frame(store)
    assert list(df.columns) == TRIAL_COLUMNS
    assert list(df["number"]) == list(range(10))
    assert list(df["state"]) == ["COMPLETE"] * 3 + ["FAIL"] + ["COMPLETE"] * 5 + ["WAITING"]
    start = df.iloc[0]
    assert start["arch"] == TINY.inline() and start["arch_hash"] == TINY.arch_hash()
    assert (start["d1"], start["w5"], start["r1"], start["r2"], start["num_paths"]) == (1, 32, 0.5, 0.0, 1)
    assert start["operators"] == "" and start["dimension"] == "" and start["step"] == 0
    assert pd.isna(start["parent"])
    failed = df.iloc[3]
    assert failed["fail_reason"] == "non-finite loss at iteration 3"
    assert failed["latency_ms"] == 2.1 and math.isnan(failed["miou"])
    assert failed["dimension"] == "resolution" and failed["steplen"] == 2
    assert df.iloc[2]["latency_p10_ms"] == pytest.approx(1.9) and df.iloc[2]["latency_p90_ms"] == pytest.approx(2.1)
    assert df.iloc[5]["r2"] == 0.125 and df.iloc[5]["num_paths"] == 2
    assert df.iloc[8]["reference"] == "lpsnet_s" and pd.isna(df.iloc[8]["step"])
    assert df.iloc[2]["device"] == "Test CPU 9000" and df.iloc[2]["train_seconds"] == 3.5
    assert df.iloc[9]["state"] == "WAITING" and math.isnan(df.iloc[9]["latency_ms"])


def test_trials_frame_per_class_columns_follow_class_names(greedy_run):
    _, store = greedy_run
    df = trials_frame(store, per_class=True)
    assert list(df.columns[-4:]) == [f"iou_{n}" for n in CLASSES]
    assert df.loc[2, "iou_road"] == pytest.approx(0.285)


def test_trials_frame_of_an_empty_run_has_the_columns(tmp_path):
    store = make_run(tmp_path / "empty", [])
    df = trials_frame(store)
    assert list(df.columns) == TRIAL_COLUMNS and len(df) == 0
    assert len(pareto_front(df)) == 0
    assert len(greedy_path(store, df)) == 0
    hv = run_hypervolume(store, df)
    assert hv.value == 0.0 and hv.ref_latency_ms is None


def test_operator_dimension():
    assert operator_dimension(["width_1-5"]) == "width"
    assert operator_dimension(["res_path2", "res_path1"]) == "resolution"
    assert operator_dimension(["depth_2-5", "width_2-5"]) == "depth+width"
    assert operator_dimension([]) == ""
    assert operator_dimension(["grow_a_lot"], {"grow_a_lot": "depth"}) == "depth"
    assert operator_dimension(["mystery"]) == "other"


def _frame(points: list[tuple[float, float]], *, states: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "number": range(len(points)),
            "state": states or ["COMPLETE"] * len(points),
            "reference": [None] * len(points),
            "latency_ms": [p[0] for p in points],
            "miou": [p[1] for p in points],
        }
    )


def test_pareto_front_known_points():
    pts = [(3.0, 0.5), (1.0, 0.2), (2.0, 0.4), (2.5, 0.3), (4.0, 0.5), (1.5, 0.1)]
    front = pareto_front(_frame(pts))
    # (2.5, .3) is beaten by (2.0, .4); (4.0, .5) by (3.0, .5); (1.5, .1) by (1.0, .2).
    assert list(front["number"]) == [1, 2, 0]
    assert list(front["latency_ms"]) == [1.0, 2.0, 3.0]


def test_pareto_front_ties():
    pts = [(2.0, 0.4), (2.0, 0.4), (2.0, 0.3), (1.0, 0.4), (3.0, 0.6), (3.0, 0.6)]
    front = pareto_front(_frame(pts))
    # Equal latency, lower mIoU is beaten; equal mIoU, higher latency is beaten; exact twins both stay.
    assert list(front["number"]) == [3, 4, 5]
    pts = [(1.0, 0.4), (1.0, 0.4)]
    assert list(pareto_front(_frame(pts))["number"]) == [0, 1]


def test_pareto_front_is_every_point_nothing_beats_on_many_random_points():
    # Coarse values, so equal latencies and equal mIoUs are common.
    rng = random.Random(3)
    lats = [rng.randint(1, 40) / 10 for _ in range(400)]
    pts = [(lat, round(lat / 8 + rng.randint(0, 10) / 100, 2)) for lat in lats]  # slower: better, mostly

    def beaten(i: int) -> bool:
        (li, mi) = pts[i]
        return any((lj <= li and mj > mi) or (lj < li and mj >= mi) for lj, mj in pts)

    expected = sorted((i for i in range(len(pts)) if not beaten(i)), key=lambda i: (pts[i][0], i))
    assert list(pareto_front(_frame(pts))["number"]) == expected
    assert 20 <= len(expected) < 60 and len({pts[i] for i in expected}) < len(expected)  # exact twins among them


def test_pareto_front_ignores_unfinished_and_reference_trials():
    df = _frame(
        [(1.0, 0.1), (0.5, float("nan")), (0.4, 0.9), (2.0, 0.3)], states=["COMPLETE", "FAIL", "RUNNING", "COMPLETE"]
    )
    assert list(pareto_front(df)["number"]) == [0, 3]
    df.loc[3, "reference"] = "lpsnet_m"
    assert list(pareto_front(df)["number"]) == [0]
    assert list(pareto_front(df, include_reference=True)["number"]) == [0, 3]


def test_pareto_front_of_the_run(greedy_run):
    _, store = greedy_run
    front = pareto_front(trials_frame(store))
    assert list(front["number"]) == [0, 1, 2, 4, 6]


def test_hypervolume_hand_computed():
    hv = hypervolume([(1.0, 1.0), (2.0, 2.0)], (3.0, 0.0))
    assert hv.value == pytest.approx(2 * 1 + 1 * 1) and hv.n_points == 2
    assert (hv.ref_latency_ms, hv.ref_miou, hv.rule) == (3.0, 0.0, "given")
    # Dominated, duplicate and out-of-box points add nothing.
    more = [(1.0, 1.0), (2.0, 2.0), (2.5, 0.5), (2.0, 2.0), (4.0, 5.0), (0.5, -1.0)]
    assert hypervolume(more, (3.0, 0.0)).value == pytest.approx(3.0)
    # A non-zero reference mIoU shifts the box.
    assert hypervolume([(1.0, 0.5), (2.0, 0.8)], (4.0, 0.25)).value == pytest.approx(3 * 0.25 + 2 * 0.3)
    assert hypervolume([], (3.0, 0.0)).value == 0.0


def test_hypervolume_default_reference():
    hv = hypervolume([(1.0, 0.5), (2.0, 0.6)])
    assert hv.ref_latency_ms == pytest.approx(2.2) and hv.ref_miou == 0.0
    assert hv.rule == "1.1 x the slowest completed trial"
    assert hv.value == pytest.approx(1.2 * 0.5 + 0.2 * 0.1)
    hv = hypervolume([(1.0, 0.5), (2.0, 0.6)], budget_ms=1.5)
    assert hv.ref_latency_ms == 1.5 and hv.rule == "the space's latency budget"
    assert hv.value == pytest.approx(0.5 * 0.5)
    assert hypervolume([]).ref_latency_ms is None
    assert reference_point([1.0], budget_ms=2.0, ref_latency_ms=9.0) == (9.0, "given")


def test_run_hypervolume(tmp_path):
    store = make_greedy_run(tmp_path / "a")
    df = trials_frame(store)
    hv = run_hypervolume(store, df)
    # Reference: 1.1 x 4.0 ms (trial 7; the 50 ms reference model does not count).
    assert hv.ref_latency_ms == pytest.approx(4.4) and hv.rule == "1.1 x the slowest completed trial"
    assert hv.value == pytest.approx(3.4 * 0.20 + 2.6 * 0.06 + 2.4 * 0.04 + 1.4 * 0.03)
    given = run_hypervolume(store, df, ref_latency_ms=5.0)
    assert given.rule == "given" and given.value == pytest.approx(4 * 0.2 + 3.2 * 0.06 + 3 * 0.04 + 2 * 0.03)
    budget = make_greedy_run(tmp_path / "b", budget_ms=5.0)
    hv = run_hypervolume(budget, trials_frame(budget))
    assert hv.rule == "the space's latency budget" and hv.value == pytest.approx(given.value)
    assert hv.to_dict()["reference"] == {"latency_ms": 5.0, "miou": 0.0}


def test_greedy_path_from_step_records(greedy_run):
    _, store = greedy_run
    path = greedy_path(store, trials_frame(store))
    assert list(path.columns) == PATH_COLUMNS
    assert list(path["step"]) == [0, 1, 2, 3]
    assert list(path["trial"].astype(object).where(path["trial"].notna(), None)) == [0, 2, 4, None]
    assert list(path["dimension"].fillna("")) == ["", "width", "depth", ""]
    assert path.loc[1, "slope"] == 0.1 and path.loc[2, "slope"] == 0.03
    assert path.loc[1, "candidates"] == "1 2 3" and path.loc[1, "parent"] == 0
    assert path.loc[2, "arch"] == A_WD.inline() and path.loc[2, "latency_ms"] == 3.0 and path.loc[2, "miou"] == 0.33
    assert path.loc[0, "reason"] == "start network" and path.loc[3, "reason"] == "no candidate gains mIoU"


def test_greedy_path_without_step_records_is_just_the_start(tmp_path):
    store = make_run(tmp_path / "r", GREEDY_TRIALS[:2])
    path = greedy_path(store, trials_frame(store))
    assert list(path["trial"]) == [0]


def test_write_tables(greedy_run):
    run_dir, store = greedy_run
    files = write_tables(run_dir, store)
    assert files == {name: run_dir / f"{name}.csv" for name in ("trials", "frontier", "path")}
    trials = pd.read_csv(files["trials"])
    assert len(trials) == 10 and "iou_sky" in trials.columns
    assert trials.loc[3, "fail_reason"] == "non-finite loss at iteration 3"
    frontier = pd.read_csv(files["frontier"])
    assert list(frontier["number"]) == [0, 1, 2, 4, 6]
    assert list(frontier["miou"]) == [0.2, 0.26, 0.3, 0.33, 0.33]
    path = pd.read_csv(files["path"])
    assert list(path["step"]) == [0, 1, 2, 3] and list(path["trial"].fillna(-1)) == [0, 2, 4, -1]
    assert not list(run_dir.glob(".*.tmp"))


def test_open_run(greedy_run, tmp_path):
    run_dir, _ = greedy_run
    store = open_run(run_dir)
    assert store.study_name == "test" and len(store.trials()) == 10
    # A journal alone (no run.json) is enough when it holds one study.
    (run_dir / "run.json").unlink()
    assert open_run(run_dir).study_name == "test"


def test_open_run_errors(tmp_path):
    with pytest.raises(UserError, match="no such run folder"):
        open_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a run folder"):
        open_run(empty)
    assert list(empty.iterdir()) == []
    (empty / "run.json").write_text('{"study_name": "x", "storage": "journal"}')
    with pytest.raises(UserError, match="journal is missing"):
        open_run(empty)
    assert sorted(p.name for p in empty.iterdir()) == ["run.json"]
    (empty / "run.json").write_text("{not json")
    with pytest.raises(UserError, match=r"run\.json: cannot read"):
        open_run(empty)


def test_open_run_wrong_study_name(greedy_run):
    run_dir, _ = greedy_run
    (run_dir / "run.json").write_text('{"study_name": "other", "storage": "journal"}')
    with pytest.raises(UserError, match="no study named 'other'"):
        open_run(run_dir)


def test_summarize_run(greedy_run):
    run_dir, store = greedy_run
    report = summarize_run(run_dir, store, write=False)
    assert report.files == {} and not (run_dir / "trials.csv").exists()
    assert report.counts == {
        "total": 10,
        "COMPLETE": 8,
        "FAIL": 1,
        "RUNNING": 0,
        "WAITING": 1,
        "PRUNED": 0,
        "STOPPED": 0,
        "DIED": 0,
        "INTERRUPTED": 0,
    }
    assert list(report.references["reference"]) == ["lpsnet_s"]
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["number"] for r in data["frontier"]] == [0, 1, 2, 4, 6]
    assert data["frontier"][0]["step"] == 0 and data["frontier"][0]["dimension"] == ""
    assert data["references"][0]["reference"] == "lpsnet_s" and data["references"][0]["step"] is None


def test_cli_frontier_table(greedy_run):
    run_dir, _ = greedy_run
    r = CliRunner().invoke(main, ["frontier", str(run_dir)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"{run_dir}: test_space, strategy greedy; 10 trials (8 complete, 1 failed, 1 queued)"
    assert "Test CPU 9000" in lines[1] and "no final upsample" in lines[1] and "dataset synthetic" in lines[1]
    rows = [line.split() for line in lines[3:9]]
    assert rows[0][:4] == ["trial", "latency", "ms", "p10-p90"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "4", "6"]
    assert rows[3][:4] == ["2", "2.000", "1.900-2.100", "30.00"] and rows[3][5] == "width"
    assert any(line.split()[:2] == ["lpsnet_s", "50.000"] for line in lines)
    hv = next(line for line in lines if line.startswith("hypervolume"))
    assert "0.974 " in hv and "latency 4.4 ms, mIoU 0%" in hv and "1.1 x the slowest completed trial" in hv
    assert lines[-1] == f"wrote {run_dir / 'trials.csv'}, {run_dir / 'frontier.csv'}, {run_dir / 'path.csv'}"
    assert all((run_dir / f"{n}.csv").is_file() for n in ("trials", "frontier", "path"))


def test_cli_frontier_json_with_reference(greedy_run):
    run_dir, _ = greedy_run
    r = CliRunner().invoke(main, ["frontier", str(run_dir), "--ref-latency", "5", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["hypervolume"]["reference"] == {"latency_ms": 5.0, "miou": 0.0}
    assert data["hypervolume"]["rule"] == "given"
    assert data["hypervolume"]["value"] == pytest.approx(4 * 0.2 + 3.2 * 0.06 + 3 * 0.04 + 2 * 0.03)
    assert data["files"]["path"] == str(run_dir / "path.csv")
    assert data["info"]["device"] == "Test CPU 9000 (cpu, 2 threads)"


def test_cli_frontier_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["frontier", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    (tmp_path / "plain").mkdir()
    r = runner.invoke(main, ["frontier", str(tmp_path / "plain")])
    assert r.exit_code == 2 and r.output.startswith(f"error: {tmp_path / 'plain'}: not a run folder")
    assert len(r.output.strip().splitlines()) == 1 and list((tmp_path / "plain").iterdir()) == []
    r = runner.invoke(main, ["frontier", str(tmp_path / "plain"), "--ref-latency", "-1"])
    assert r.exit_code == 2 and "--ref-latency" in r.output


def test_cli_frontier_of_an_empty_run(tmp_path):
    make_run(tmp_path / "empty", [])
    r = CliRunner().invoke(main, ["frontier", str(tmp_path / "empty")])
    assert r.exit_code == 0, r.output
    assert "no completed trials yet" in r.output and "hypervolume: no reference point" in r.output
