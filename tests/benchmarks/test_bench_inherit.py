"""The pure helpers of ``benchmarks/bench_inherit.py`` (``benchmarks/_inherit.py``): the modes' spaces,
the path a greedy run took, the latency interpolation of a path and Kendall's tau-b."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from models import LPSNetArch
from scaler.search.expand import PAPER_OPERATORS
from scaler.search.record import TrialRecord
from scaler.search.strategies.greedy import StepDecision

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _common import kendall_tau_b
from _inherit import fixed_set, miou_at_latency, mode_space, path_of

DEMO = Path(__file__).resolve().parents[2] / "search_spaces" / "lpsnet_demo.yaml"
TINY = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(4, 8, 16, 32, 32), resolution=(0.5,))


def _record(number: int, arch: LPSNetArch, step: int, operators: tuple[str, ...], steplen: int) -> TrialRecord:
    return TrialRecord(arch, strategy="greedy", step=step, operators=operators, steplen=steplen, number=number)


def test_path_of_names_each_winners_operators_and_flags_depth() -> None:
    deeper = LPSNetArch(depth=(1, 1, 1, 3, 3), width=(4, 8, 16, 32, 32), resolution=(0.5,))
    wider = LPSNetArch(depth=(1, 1, 1, 3, 3), width=(8, 16, 32, 64, 64), resolution=(0.5,))
    records = [
        TrialRecord(TINY, strategy="greedy", step=0, number=0),
        _record(1, deeper, 1, ("depth_4-5",), 2),
        _record(2, TINY, 1, ("res_path1",), 1),
        _record(3, wider, 2, ("width_1-5", "width_2-5"), 1),
    ]
    steps = [
        StepDecision(step=1, parent=0, candidates=(1, 2), slopes={1: 0.1, 2: 0.05}, winner=1, reason="best slope"),
        StepDecision(step=2, parent=1, candidates=(3,), slopes={3: 0.2}, winner=3, reason="best slope"),
        StepDecision(step=3, parent=3, candidates=(), slopes={}, winner=None, reason="no gain"),
    ]
    path = path_of(records, steps, PAPER_OPERATORS)
    assert [(p.step, p.winner, p.operators, p.steplen, p.depth) for p in path] == [
        (1, 1, ("depth_4-5",), 2, True),
        (2, 3, ("width_1-5", "width_2-5"), 1, False),
        (3, None, (), None, False),
    ]
    assert path[0].arch == deeper.inline() and path[2].arch is None and path[2].reason == "no gain"


def test_miou_at_latency_interpolates_between_path_networks() -> None:
    points = [(2.0, 0.40), (1.0, 0.30), (3.0, 0.45)]  # unsorted on purpose
    assert miou_at_latency(points, 1.5) == pytest.approx(0.35)
    assert miou_at_latency(points, 2.5) == pytest.approx(0.425)
    assert miou_at_latency(points, 3.0) == pytest.approx(0.45)
    assert miou_at_latency(points, 0.5) == pytest.approx(0.30)  # faster than the start: the start's
    assert miou_at_latency(points, 9.0) == pytest.approx(0.45)  # past the end: the end's
    assert miou_at_latency([], 1.0) is None


def test_kendall_tau_b_matches_hand_counts() -> None:
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # 5 concordant, 1 discordant pair, no ties: (5 - 1) / 6.
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # One tie in y: C=5, D=0, ties_y=1 -> 5 / sqrt(5 * 6).
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    assert kendall_tau_b([1, 1], [2, 3]) is None  # one ranking constant: undefined


def test_mode_space_sets_init_and_seed_and_reports_an_unknown_halving_option() -> None:
    scratch = mode_space(DEMO, "scratch", 2)
    inherit = mode_space(DEMO, "inherit", 1, 2, load_guard=False)
    assert not isinstance(scratch, str) and not isinstance(inherit, str)
    assert (scratch.training.init, scratch.training.seed) == ("scratch", 2)
    assert (inherit.training.init, inherit.training.seed, inherit.stopping.max_steps) == ("inherit", 1, 2)
    assert inherit.latency.max_others_share is None and scratch.latency.max_others_share is not None
    halving = mode_space(DEMO, "inherit+halving", 0)
    if isinstance(halving, str):  # until greedy.halving exists, the loader's one line says why
        assert "greedy.halving" in halving
    else:
        assert halving.training.init == "inherit"


def test_fixed_set_holds_the_start_and_its_depth_children() -> None:
    space = mode_space(DEMO, "scratch", 0)
    assert not isinstance(space, str)
    quick = fixed_set(space.start, space, quick=True)
    full = fixed_set(space.start, space, quick=False)  # res_path3 needs a second path first: 9 children
    assert quick[0] == space.start and len(quick) == 5
    assert [a.depth for a in quick[1:4]] == [(1, 2, 2, 2, 2), (1, 1, 2, 2, 2), (1, 1, 1, 2, 2)]
    assert len(full) == 1 + 9 + 3 and full[-1].depth == (1, 1, 1, 3, 3)


def test_the_depth_space_differs_from_the_demo_in_its_start_alone() -> None:
    # bench_inherit compares the two spaces: any other difference would be a second variable.
    demo = mode_space(DEMO, "scratch", 0)
    depth = mode_space(DEMO.with_name("lpsnet_depth.yaml"), "scratch", 0)
    assert not isinstance(demo, str) and not isinstance(depth, str)
    assert depth.start != demo.start and depth.start.resolution == (1.0,)
    a, b = demo.to_dict(), depth.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"name", "start"}
