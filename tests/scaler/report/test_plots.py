from __future__ import annotations

import json
from pathlib import Path

import pytest
import run_builder as runs
from click.testing import CliRunner

from scaler.cli import main
from scaler.errors import UserError
from scaler.report import trials_frame
from scaler.report.draw import draw_frontier, draw_steps, plot_run
from scaler.report.plot_data import FrontierPlot, StepsPlot, frontier_plot_data, steps_plot_data


@pytest.fixture
def greedy_run(tmp_path: Path):
    run_dir = tmp_path / "greedy"
    return run_dir, runs.make_greedy_run(run_dir, budget_ms=5.0)


def test_frontier_plot_data(greedy_run):
    _, store = greedy_run
    data = frontier_plot_data(store, trials_frame(store), name="greedy")
    assert isinstance(data, FrontierPlot)
    assert [p.number for p in data.candidates] == [0, 1, 2, 4, 5, 6, 7]
    assert [(p.number, p.latency_ms, p.miou_pct) for p in data.failed] == [(3, 2.1, None)]
    assert data.over_budget == []
    assert [p.number for p in data.frontier] == [0, 1, 2, 4, 6]
    assert data.frontier[2].miou_pct == pytest.approx(30.0)
    path = [(p.step, p.number, p.dimension, p.operators) for p in data.path]
    assert path == [(0, 0, "", ""), (1, 2, "width", "width_1-5"), (2, 4, "depth", "depth_2-5")]
    assert [(n.name, n.number, n.reference) for n in data.named] == [("lpsnet_s", 8, True)]
    assert data.named[0].miou_pct == pytest.approx(50.0)
    info = data.info
    assert (info.name, info.space, info.dataset, info.budget_ms, info.strategy) == (
        "greedy",
        "test_space",
        "synthetic",
        5.0,
        "greedy",
    )
    setup = info.setup()
    for part in ("Test CPU 9000", "torch 2.13.0 eager", "fp32", "input 1x3x48x80", "no final upsample", "synthetic"):
        assert part in setup


def test_named_model_reached_by_the_search_is_annotated(tmp_path):
    from models import get_arch

    arch = get_arch("lpsnet_m")
    store = runs.make_run(tmp_path / "r", [{"arch": arch, "latency": 9.0, "miou": 0.6}])
    data = frontier_plot_data(store, trials_frame(store))
    assert [(n.name, n.reference) for n in data.named] == [("lpsnet_m", False)]


def test_over_budget_samples_are_not_failures(tmp_path):
    trials = [
        {"arch": runs.TINY, "latency": 1.0, "miou": 0.2, "attrs": {"step": None}},
        {
            "arch": runs.A_WIDTH,
            "latency": 9.0,
            "fail": "over the latency budget (9.00 > 5 ms), not trained",
            "attrs": {"step": None, "over_budget": True},
        },
    ]
    store = runs.make_run(tmp_path / "r", trials, strategy="random", budget_ms=5.0)
    data = frontier_plot_data(store, trials_frame(store))
    assert data.failed == [] and [p.number for p in data.over_budget] == [1]
    assert data.path == []


def test_frontier_plot_data_compare(tmp_path, greedy_run):
    _, store = greedy_run
    other = runs.make_run(tmp_path / "other", runs.GREEDY_TRIALS[:3], strategy="random")
    data = frontier_plot_data(store, trials_frame(store), compare=[("other", trials_frame(other))])
    assert [s.name for s in data.compare] == ["other"]
    assert [p.number for p in data.compare[0].points] == [0, 1, 2]


def test_steps_plot_data(greedy_run):
    _, store = greedy_run
    data = steps_plot_data(store, trials_frame(store))
    assert isinstance(data, StepsPlot)
    assert [p.step for p in data.path] == [0, 1, 2]
    assert sorted((s, p.number) for s, p in data.candidates) == [(0, 0), (1, 1), (1, 2), (2, 4), (2, 5), (2, 6), (3, 7)]
    assert [(s, p.number) for s, p in data.failed] == [(1, 3)]
    assert data.stopped == [(3, "no candidate gains mIoU")]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_drawing_writes_files(greedy_run, tmp_path, suffix):
    _, store = greedy_run
    df = trials_frame(store)
    other = runs.make_run(tmp_path / "other", runs.GREEDY_TRIALS[:3], strategy="random")
    front = draw_frontier(
        frontier_plot_data(store, df, compare=[("other", trials_frame(other))]), tmp_path / f"f{suffix}"
    )
    steps = draw_steps(steps_plot_data(store, df), tmp_path / "deep" / f"s{suffix}")
    for path in (front, steps):
        data = path.read_bytes()
        assert len(data) > 5000
        assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:1000]
    text = front.read_text() if suffix == ".svg" else ""
    if suffix == ".svg":
        for label in ("lpsnet_s", "Pareto frontier", "mIoU (%)", "latency (ms", "Test CPU 9000"):
            assert label in text


def test_drawing_an_empty_run(tmp_path):
    store = runs.make_run(tmp_path / "empty", [])
    df = trials_frame(store)
    assert draw_frontier(frontier_plot_data(store, df), tmp_path / "f.png").stat().st_size > 1000
    assert draw_steps(steps_plot_data(store, df), tmp_path / "s.png").stat().st_size > 1000


def test_bad_suffix_is_a_user_error(greedy_run, tmp_path):
    _, store = greedy_run
    with pytest.raises(UserError, match=r"must end in \.png or \.svg"):
        draw_frontier(frontier_plot_data(store, trials_frame(store)), tmp_path / "f.jpg")


def test_plot_run_default_paths(greedy_run):
    run_dir, _ = greedy_run
    paths = plot_run(run_dir)
    assert paths == {"frontier": run_dir / "plots" / "frontier.png", "steps": run_dir / "plots" / "steps.png"}
    assert all(p.stat().st_size > 1000 for p in paths.values())


def test_cli_plot(greedy_run, tmp_path):
    run_dir, _ = greedy_run
    other = tmp_path / "other"
    runs.make_run(other, runs.GREEDY_TRIALS[:3], strategy="random")
    runner = CliRunner()
    out = tmp_path / "figs" / "front.svg"
    r = runner.invoke(main, ["plot", str(run_dir), "--compare", str(other), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(out), str(out.with_name("front_steps.svg"))]
    assert out.is_file() and out.with_name("front_steps.svg").is_file()
    r = runner.invoke(main, ["plot", str(run_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["steps"] == str(run_dir / "plots" / "steps.png")


def test_cli_plot_errors(greedy_run, tmp_path):
    run_dir, _ = greedy_run
    runner = CliRunner()
    r = runner.invoke(main, ["plot", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    r = runner.invoke(main, ["plot", str(run_dir), "--compare", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such run folder" in r.output
    r = runner.invoke(main, ["plot", str(run_dir), "-o", str(tmp_path / "x.pdf")])
    assert r.exit_code == 2 and "must end in .png or .svg" in r.output
    assert "Traceback" not in r.output


HEADS_RUN = Path(__file__).resolve().parents[3] / "results" / "reference" / "lpsnet_demo_heads"


def test_a_run_that_switches_heads_shows_each_candidates_head(tmp_path):
    from scaler.search.store import open_run

    store = open_run(HEADS_RUN)
    df = trials_frame(store)
    front = frontier_plot_data(store, df)
    kinds = {k: sum(p.head == k for p in front.candidates) for k in ("plain", "denseclip", "fusion")}
    assert kinds == {"plain": 27, "denseclip": 3, "fusion": 3}
    assert {p.number for p in front.candidates if p.head == "fusion"} == {11, 22, 32}
    steps = steps_plot_data(store, df)
    assert sorted(s for s, p in steps.candidates if p.head == "denseclip") == [1, 2, 3]
    text = draw_frontier(front, tmp_path / "f.svg").read_text()
    for label in ("candidate, plain head (27)", "candidate, denseclip head (3)", "candidate, fusion head (3)"):
        assert label in text
    text = draw_steps(steps, tmp_path / "s.svg").read_text()
    assert "candidate of that step, fusion head" in text and "candidate of that step, plain head" in text


def test_a_run_with_one_head_kind_draws_its_candidates_as_before(greedy_run, tmp_path):
    _, store = greedy_run
    df = trials_frame(store)
    front = frontier_plot_data(store, df)
    assert {p.head for p in front.candidates} == {"plain"}
    text = draw_frontier(front, tmp_path / "f.svg").read_text()
    assert "candidate (7)" in text and " head (" not in text
    text = draw_steps(steps_plot_data(store, df), tmp_path / "s.svg").read_text()
    assert "candidate of that step" in text and "plain head" not in text
