from __future__ import annotations

import dataclasses

import pytest

from models import HeadConfig, LPSNetArch, get_arch
from scaler.search.expand import (
    PAPER_OPERATORS,
    Constraints,
    Operator,
    Scored,
    apply_operator,
    grow_to_target,
    one_step_expansions,
    propose_step,
    select_next,
    target_expansions,
)

TINY = get_arch("lpsnet_tiny")
OPS = {op.name: op for op in PAPER_OPERATORS}


def macs_like(arch: LPSNetArch) -> float:
    """A deterministic stand-in for latency: grows with depth, width and resolution like MACs do."""
    total = 0.0
    for r in arch.resolution:
        c_in = 3
        for i, (d, w) in enumerate(zip(arch.depth, arch.width, strict=True)):
            scale = (r / 2**i) ** 2
            total += scale * (c_in * w + (d - 1) * w * w)
            c_in = w
    return total / 100


def test_the_method_has_ten_operators():
    assert len(PAPER_OPERATORS) == 10
    assert [op.kind for op in PAPER_OPERATORS].count("depth") == 3
    assert [op.kind for op in PAPER_OPERATORS].count("width") == 4
    assert [op.kind for op in PAPER_OPERATORS].count("resolution") == 3


def test_apply_depth_width_resolution():
    assert apply_operator(TINY, OPS["depth_2-5"], 2).depth == (1, 3, 3, 3, 3)
    assert apply_operator(TINY, OPS["width_3-5"], 1).width == (4, 8, 32, 64, 64)
    assert apply_operator(TINY, OPS["res_path1"], 3).resolution == (0.875,)
    assert apply_operator(TINY, OPS["res_path2"], 1).resolution == (0.5, 0.125)
    # A missing path 3 grows from zero as well: with one path it gives the same network as path 2.
    assert apply_operator(TINY, OPS["res_path3"], 1) == apply_operator(TINY, OPS["res_path2"], 1)
    three = apply_operator(apply_operator(TINY, OPS["res_path2"], 2), OPS["res_path3"], 1)
    assert three.resolution == (0.5, 0.25, 0.125)


def test_resolution_steps_are_exact_eighths():
    a = dataclasses.replace(TINY, resolution=(0.375,))
    grown = apply_operator(a, OPS["res_path1"], 1)
    assert grown.resolution == (0.5,)
    assert grown.arch_hash() == TINY.arch_hash()


def test_constraints_stop_growth():
    assert apply_operator(TINY, OPS["res_path1"], 5) is None  # 0.5 + 5/8 > 1
    c = Constraints(max_paths=1)
    assert apply_operator(TINY, OPS["res_path2"], 1, c) is None
    assert apply_operator(TINY, OPS["depth_4-5"], 8, Constraints(max_depth=8)) is None
    assert apply_operator(TINY, OPS["depth_4-5"], 7, Constraints(max_depth=8)).depth == (1, 1, 1, 8, 8)
    assert apply_operator(TINY, OPS["width_1-5"], 1, Constraints(width_divisor=8)).width == (8, 16, 32, 64, 64)
    assert apply_operator(TINY, OPS["width_3-5"], 1, Constraints(width_divisor=8)) is None  # stage 1 keeps 4
    assert Constraints(width_divisor=8).violation(TINY) == "width [4, 8, 16, 32, 32] not a multiple of 8"


def test_lpsnet_s_is_on_the_expansion_lattice():
    a = TINY
    for name, k in [
        ("depth_2-5", 2),
        ("depth_4-5", 7),
        ("width_1-5", 1),
        ("width_2-5", 1),
        ("res_path1", 2),
        ("res_path2", 2),
    ]:
        a = apply_operator(a, OPS[name], k)
    assert a == get_arch("lpsnet_s")


def test_grow_to_target_keeps_the_closer_of_the_last_two():
    lat = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    op = OPS["depth_4-5"]

    def latency(arch):
        return lat[arch.depth[3] - 1]

    assert grow_to_target(TINY, op, 2.9, latency)[1] == 3  # 3.0 is closer than 2.0
    assert grow_to_target(TINY, op, 2.4, latency)[1] == 2  # 2.0 is closer than 3.0
    assert grow_to_target(TINY, op, 2.0, latency)[1] == 2  # reached exactly
    assert grow_to_target(TINY, op, 0.5, latency)[1] == 1  # one step always
    # Capped by a constraint: the largest allowed step.
    assert grow_to_target(TINY, op, 100.0, latency, Constraints(max_depth=4))[1] == 3
    assert grow_to_target(TINY, OPS["res_path1"], 1.0, latency, Constraints(max_resolution=0.5)) is None


def test_propose_step_targets_the_slowest_one_step_expansion():
    candidates = propose_step(TINY, PAPER_OPERATORS, macs_like)
    one_step = [apply_operator(TINY, op, 1) for op in PAPER_OPERATORS]
    target = max(macs_like(a) for a in one_step)
    assert all(c.target_ms == pytest.approx(target) for c in candidates)
    by_op = {op: c for c in candidates for op in c.operators}
    # The operator that defines the target needs one step; the others grow towards it.
    slowest = max(PAPER_OPERATORS, key=lambda op: macs_like(apply_operator(TINY, op, 1)))
    assert by_op[slowest.name].steplen == 1
    for c in candidates:
        k = c.steplen
        op = OPS[c.operators[0]]
        lower = apply_operator(TINY, op, k - 1) if k > 1 else None
        upper = apply_operator(TINY, op, k + 1)
        if lower is not None:
            assert abs(macs_like(c.arch) - target) <= abs(macs_like(lower) - target)
        if upper is not None and macs_like(c.arch) < target:
            assert macs_like(upper) >= target
    # res_path2 and res_path3 give the same network from a one-path parent: merged into one candidate.
    merged = [c for c in candidates if "res_path2" in c.operators]
    assert len(merged) == 1 and merged[0].operators == ("res_path2", "res_path3")
    assert len({c.arch for c in candidates}) == len(candidates) == 9


def test_select_next_divides_by_the_parent_latency_difference():
    parent = Scored("p", 10.0, 0.40)
    cands = [Scored("a", 12.0, 0.44), Scored("b", 20.0, 0.50), Scored("c", 11.0, None)]
    sel = select_next(parent, cands, min_latency_gain_ms=0.1)
    assert sel.slopes["a"] == pytest.approx(0.04 / 2.0)
    assert sel.slopes["b"] == pytest.approx(0.10 / 10.0)
    assert sel.slopes["c"] is None
    assert sel.winner == "a"


def test_select_next_noise_floor_for_non_positive_latency_differences():
    parent = Scored("p", 10.0, 0.40)
    free_gain = Scored("free", 9.9, 0.41)
    paid_gain = Scored("paid", 10.5, 0.45)
    free_loss = Scored("loss", 9.0, 0.39)
    sel = select_next(parent, [paid_gain, free_gain, free_loss], min_latency_gain_ms=0.05)
    assert sel.slopes["free"] == pytest.approx(0.01 / 0.05)
    assert sel.slopes["loss"] == pytest.approx(-0.01 / 0.05)
    assert sel.winner == "free"


def test_select_next_stops_without_gain_or_results():
    parent = Scored("p", 10.0, 0.40)
    none_gain = select_next(parent, [Scored("a", 12.0, 0.40), Scored("b", 13.0, 0.35)], min_latency_gain_ms=0.1)
    assert none_gain.winner is None and "no candidate improves" in none_gain.reason
    all_failed = select_next(parent, [Scored("a", 12.0, None)], min_latency_gain_ms=0.1)
    assert all_failed.winner is None and all_failed.reason == "every candidate failed"
    with pytest.raises(ValueError, match="min_latency_gain_ms"):
        select_next(parent, [], min_latency_gain_ms=0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kind": "depth", "delta": (0, 0, 0, 0, 0)}, "not all 0"),
        ({"kind": "width", "delta": (1, 2, 3)}, "5 integers"),
        ({"kind": "resolution", "path": 4}, "path must be 1..3"),
        ({"kind": "colour"}, "kind must be depth, width, resolution or head"),
        ({"kind": "head"}, "operator 'x': head missing: name the head it switches to"),
        ({"kind": "head", "head": "fusoin"}, "operator 'x': head kind must be one of plain, denseclip, fusion"),
        ({"kind": "head", "head": {"kind": "fusion", "dim": 4}}, "operator 'x': head dim must be an integer >= 8"),
        ({"kind": "head", "head": "fusion", "path": 1}, "operator 'x': a head operator takes no delta or path"),
        ({"kind": "depth", "delta": (0, 0, 0, 1, 1), "head": "fusion"}, "operator 'x': head is for operators of kind"),
    ],
)
def test_bad_operators(kw, message):
    with pytest.raises(ValueError) as e:
        Operator(name="x", **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


# -- head operators ------------------------------------------------------------------------------
FUSION = HeadConfig(kind="fusion", dim=32, heads=2)
HEAD_FUSION = Operator("head_fusion", "head", head=FUSION)


def head_cost(arch: LPSNetArch) -> float:
    """``macs_like`` plus a head's cost: a fusion head is slower than any one-step expansion of tiny."""
    return macs_like(arch) + {"plain": 0.0, "denseclip": 5.0, "fusion": 40.0}[arch.head.kind]


def test_a_head_operator_switches_the_head_once_and_nothing_else():
    assert Operator("h", "head", head="fusion").head == HeadConfig(kind="fusion")
    assert Operator("h", "head", head={"kind": "fusion", "dim": 32, "heads": 2}) == Operator("h", "head", head=FUSION)
    assert not HEAD_FUSION.repeatable and all(op.repeatable for op in PAPER_OPERATORS)
    switched = apply_operator(TINY, HEAD_FUSION, 1)
    assert switched == dataclasses.replace(TINY, head=FUSION) and switched.arch_hash() != TINY.arch_hash()
    assert apply_operator(switched, HEAD_FUSION, 1) is None  # that head already: nothing to propose
    assert apply_operator(switched, Operator("p", "head", head="plain"), 1) == TINY
    with pytest.raises(ValueError, match="'head_fusion' switches the head: it is applied once, not 2 times"):
        apply_operator(TINY, HEAD_FUSION, 2)
    assert HEAD_FUSION.to_dict() == {"name": "head_fusion", "kind": "head", "head": FUSION.to_dict()}
    # The constraints still hold: a network that breaks them proposes nothing, whatever its head.
    assert apply_operator(TINY, HEAD_FUSION, 1, Constraints(max_width=16)) is None


def test_a_head_operator_is_one_candidate_at_its_own_latency_and_does_not_set_the_target():
    calls: list[LPSNetArch] = []

    def latency(arch: LPSNetArch) -> float:
        calls.append(arch)
        return head_cost(arch)

    ops = (*PAPER_OPERATORS, HEAD_FUSION)
    assert [op for op, _ in target_expansions(one_step_expansions(TINY, ops))] == list(PAPER_OPERATORS)
    candidates = propose_step(TINY, ops, latency)
    head = [c for c in candidates if c.operators == ("head_fusion",)]
    assert len(head) == 1 and head[0].steplen == 1
    assert head[0].arch == dataclasses.replace(TINY, head=FUSION)
    assert head[0].latency_ms == pytest.approx(head_cost(head[0].arch))
    # The target is the method's (the slowest one-step growth), far below the head switch's 40+ ms.
    target = max(macs_like(apply_operator(TINY, op, 1)) for op in PAPER_OPERATORS)
    assert all(c.target_ms == pytest.approx(target) for c in candidates)
    assert head[0].latency_ms > 10 * target
    # The growth candidates are exactly those of the method without the head operator.
    without = propose_step(TINY, PAPER_OPERATORS, head_cost)
    assert [(c.arch, c.steplen) for c in candidates if c not in head] == [(c.arch, c.steplen) for c in without]
    # Only the plain-head growths and the one switched network were timed: never a head switch x2.
    assert all(a.head.kind == "plain" for a in calls if a != head[0].arch)
    assert calls.count(head[0].arch) == 1
    # grow_to_target applies it once, however far the target is.
    assert grow_to_target(TINY, HEAD_FUSION, 1000.0, head_cost) == (head[0].arch, 1, head[0].latency_ms)


def test_head_operators_alone_set_the_target_and_a_network_with_the_head_proposes_none():
    denseclip = Operator("head_denseclip", "head", head="denseclip")
    candidates = propose_step(TINY, [denseclip, HEAD_FUSION], head_cost)
    assert [c.operators for c in candidates] == [("head_denseclip",), ("head_fusion",)]
    assert all(c.steplen == 1 and c.target_ms == pytest.approx(macs_like(TINY) + 40.0) for c in candidates)
    switched = dataclasses.replace(TINY, head=FUSION)
    assert [c.operators for c in propose_step(switched, [HEAD_FUSION], head_cost)] == []
    nxt = propose_step(switched, [OPS["depth_4-5"], HEAD_FUSION], head_cost)
    assert [c.operators for c in nxt] == [("depth_4-5",)] and nxt[0].arch.head == FUSION
