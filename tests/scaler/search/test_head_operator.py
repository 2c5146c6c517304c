"""Head operators in a greedy search: a step may switch the network's head (``kind: head``) beside
growing it; the switch is one candidate, scored by its slope like any other, and when it wins the next
step grows the network with its new head. With inherited weights, the backbone is the parent's and the
new head starts from its own seeded init, pointed at the run's classes. Seeded stand-ins time the
networks; the real run trains them (a few iterations) and stands in for their mIoU only."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from fake_search import fake_ms
from optuna.trial import TrialState
from paired_standin import FakePaired

import scaler.search.run as run_mod
import scaler.search.worker as worker_mod
from models import HeadConfig, LPSNetArch, class_embeddings, get_arch
from models.grow import HEAD_INPUT_WEIGHT
from models.heads import build_head
from scaler.cli import main
from scaler.report import trials_frame
from scaler.search.run import run_search
from scaler.search.space import load_space, space_from_dict
from scaler.search.store import open_run
from scaler.search.strategies import GreedyStrategy, SearchContext, StepDecision, StepPlan, TrialRecord

SPACES = Path(__file__).resolve().parents[3] / "search_spaces"
TINY = get_arch("lpsnet_tiny")
FUSION = HeadConfig(kind="fusion", dim=16, heads=2)


def head_ms(arch: LPSNetArch) -> float:
    """:func:`fake_ms` plus the head's cost: a fusion head costs 1 ms, more than any one-step growth of tiny."""
    return fake_ms(arch) + (1.0 if arch.head.kind == "fusion" else 0.0)


def head_miou(arch: LPSNetArch) -> float:
    """The fusion head is worth 8 points, a depth or width step 0.5: the switch has the best slope."""
    grown = (sum(arch.depth) - 5) + (sum(arch.width) - sum(TINY.width)) / 64
    return round(0.30 + (0.08 if arch.head.kind == "fusion" else 0.0) + 0.005 * grown, 6)


def head_space(paired_probes: int, *, max_steps: int = 2) -> Any:
    return space_from_dict(
        {
            "name": "heads",
            "start": "lpsnet_tiny",
            "input_size": "64x128",
            "dataset": "synthetic",
            "operators": [
                "depth_4-5",
                "width_4-5",
                {"name": "head_fusion", "kind": "head", "head": {"kind": "fusion", "dim": 16, "heads": 2}},
            ],
            "constraints": {"max_depth": 8, "max_width": 512},
            "stopping": {"max_steps": max_steps},
            "greedy": {"max_steplen": 8, "probe_rounds": paired_probes},
        }
    )


def drive(space: Any, ctx: SearchContext, miou: Callable[[LPSNetArch], float]) -> list[TrialRecord]:
    """The search loop in miniature: queue what the strategy proposes, 'train' it, until it stops."""
    strat = GreedyStrategy(space)
    history: list[TrialRecord] = []
    for _ in range(20):
        decision = strat.propose(history, ctx)
        if decision.kind == "done":
            return history
        for p in decision.proposals:
            rec = p if p.latency is not None else p.with_latency(ctx.latency(p.arch))
            history.append(
                dataclasses.replace(
                    rec, number=len(history), state=TrialState.COMPLETE, values=(rec.latency_ms, miou(rec.arch))
                )
            )
    raise AssertionError("the search did not stop")


@pytest.mark.parametrize(("paired", "probes"), [(False, 0), (True, 0), (True, 5)])
def test_the_head_switch_wins_a_step_and_the_next_step_grows_the_network_with_its_new_head(paired, probes):
    space = head_space(probes)
    kv: dict[str, Any] = {}
    fake = FakePaired(head_ms, noise_ms=0.01, drift_ms=0.05)
    ctx = SearchContext(
        space=space,
        latency=lambda a, refresh=False: {"median_ms": head_ms(a)},
        get=kv.get,
        put=kv.__setitem__,
        paired=(lambda archs, rounds: fake(archs, rounds=rounds, seed=len(archs) * 1000 + rounds)) if paired else None,
    )
    history = drive(space, ctx, head_miou)
    plan1, plan2 = StepPlan.from_dict(kv["plan_1"]), StepPlan.from_dict(kv["plan_2"])
    switch = [c for c in plan1.candidates if "head_fusion" in c.operators]
    assert len(switch) == 1 and switch[0].operators == ("head_fusion",) and switch[0].steplen == 1
    assert switch[0].arch == dataclasses.replace(TINY, head=FUSION)
    # The step's target is the growths' (the slowest one-step growth), not the head switch's cost.
    one_step = max(
        head_ms(dataclasses.replace(TINY, **g)) for g in ({"depth": (1, 1, 1, 2, 2)}, {"width": (4, 8, 16, 64, 64)})
    )
    assert plan1.target_ms == pytest.approx(one_step, rel=0.02) and plan1.target_ms < head_ms(switch[0].arch) - 0.3
    by_number = {t.number: t for t in history}
    step1 = StepDecision.from_dict(kv["step_1"])
    winner = by_number[step1.winner]
    assert winner.operators == ("head_fusion",) and winner.steplen == 1 and winner.arch.head == FUSION
    assert step1.slopes[winner.number] == max(v for v in step1.slopes.values() if v is not None)
    # Step 2 grows the fusion-headed winner: every candidate keeps its head, and no switch is proposed again.
    assert plan2.parent == winner.number and len(plan2.candidates) == 2
    assert all(c.arch.head == FUSION and "head_fusion" not in c.operators for c in plan2.candidates)
    assert {c.operators for c in plan2.candidates} == {("depth_4-5",), ("width_4-5",)}
    step2 = StepDecision.from_dict(kv["step_2"])
    assert by_number[step2.winner].arch.head == FUSION
    # The head switch was timed once, as one network: never applied twice.
    twice = dataclasses.replace(TINY, head=FUSION)
    assert all(
        a.head.kind == "plain" or a == twice or a.depth != TINY.depth or a.width != TINY.width
        for call in fake.calls
        for a in call[0]
    )


def test_the_demo_heads_space_is_the_demo_with_two_head_operators():
    demo, heads = load_space(SPACES / "lpsnet_demo.yaml"), load_space(SPACES / "lpsnet_demo_heads.yaml")
    ops = {op.name: op for op in heads.operators}
    assert heads.operators[:10] == demo.operators
    assert [op.name for op in heads.operators[10:]] == ["head_denseclip", "head_fusion"]
    embeddings = f"file:{SPACES / 'synthetic_minilm.pt'}"
    assert ops["head_denseclip"].head == HeadConfig(kind="denseclip", text_encoder=embeddings)
    assert ops["head_fusion"].head == HeadConfig(kind="fusion", text_encoder=embeddings)
    same = ("start", "input_size", "dataset", "constraints", "latency", "training", "stopping", "greedy")
    assert all(getattr(heads, k) == getattr(demo, k) for k in same)


@pytest.mark.slow
def test_a_real_inherited_search_switches_the_head_keeping_the_backbone(tmp_path, monkeypatch):
    """Real training (4 iterations) with inherited weights; the mIoU alone is stood in for (head_miou)."""
    monkeypatch.setenv("LPS_SCALER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LPS_SCALER_TEXT_CACHE", str(tmp_path / "text-cache"))

    class Latency:
        def __call__(self, arch: Any, settings: Any = None, **kw: Any) -> Any:
            ms = head_ms(arch)
            return type("R", (), {"to_dict": lambda self: {"median_ms": ms, "fingerprint": {"device": "fake"}}})()

    monkeypatch.setattr(run_mod, "measure_latency", Latency())
    monkeypatch.setattr(run_mod, "measure_paired", FakePaired(head_ms))
    started: dict[str, dict[str, torch.Tensor] | None] = {}
    saved: dict[str, dict[str, torch.Tensor]] = {}
    real = worker_mod.train_and_evaluate

    def train(arch, config, *, init_state=None, save=None, **kw):
        result = real(arch, config, init_state=init_state, save=save, **kw)
        # The first training of an architecture is its candidate's (a control, trained later, reads it again).
        key = arch.arch_hash()
        started.setdefault(key, None if init_state is None else {k: v.clone() for k, v in init_state.items()})
        if save is not None:
            saved.setdefault(key, torch.load(save, weights_only=True)["state_dict"])
        return dataclasses.replace(result, miou=head_miou(arch)) if result.ok else result

    monkeypatch.setattr(worker_mod, "train_and_evaluate", train)
    # The space file beside its embeddings file, named relatively, as the shipped spaces do.
    shutil.copy(SPACES / "synthetic_minilm.pt", tmp_path / "synthetic_minilm.pt")
    (tmp_path / "space.yaml").write_text(
        "name: heads\nstart: lpsnet_tiny\ninput_size: 64x128\ndataset: synthetic:size=64x128,train=8,val=4\n"
        "operators:\n  - depth_4-5\n  - width_4-5\n"
        "  - {name: head_fusion, kind: head, head: {kind: fusion, dim: 16, heads: 2, "
        "text_encoder: 'file:synthetic_minilm.pt'}}\n"
        "constraints: {max_depth: 8, max_width: 256}\nlatency: {device: cpu, threads: 1}\n"
        "training: {iters: 4, batch: 2, crop: 64x128, init: inherit}\n"
        "stopping: {max_steps: 2}\ngreedy: {max_steplen: 4}\n"
    )
    space = load_space(tmp_path / "space.yaml")
    run_dir = tmp_path / "run"
    run_search(space, run_dir, progress=False)
    store = open_run(run_dir)
    records = store.records()
    assert all(r.state == TrialState.COMPLETE for r in records), [r.fail_reason for r in records]
    by_number = {r.number: r for r in records}
    step1 = StepDecision.from_dict(store.get("step_1"))
    switch = by_number[step1.winner]
    assert switch.operators == ("head_fusion",) and switch.steplen == 1 and switch.arch.head.kind == "fusion"
    start = by_number[0]
    assert switch.inherited == {
        "from_trial": 0,
        "weights_artifact": start.weights_artifact,
        "growth_noise": 0.0,  # nothing of the backbone grows, so no channel is copied
        "new_head": "fusion/dim=16/heads=2",
    }
    key = switch.arch.arch_hash()
    init = started[key]
    assert init is not None
    parent = saved[start.arch.arch_hash()]
    backbone = [k for k in parent if not k.startswith("head.")]
    assert backbone and all(torch.equal(init[k], parent[k]) for k in backbone)
    # The new head: its own seeded init (the worker seeds it with the trial number), the run's classes.
    child = dataclasses.replace(switch.arch, num_classes=len(store.get("class_names")))
    torch.manual_seed(switch.number)
    fresh = build_head(child.head, child.width[-1] * child.num_paths, child.num_classes).state_dict()
    weight = HEAD_INPUT_WEIGHT["fusion"]
    assert torch.equal(init[weight], fresh[weight.removeprefix("head.")])
    names = list(store.get("class_names"))
    want = F.normalize(class_embeddings(child.head.text_encoder, names, child.head.templates), dim=-1)
    torch.testing.assert_close(init["head.class_embeddings"], want)
    # Step 2 grows the fusion-headed winner; its candidates start from its trained head.
    plan2 = StepPlan.from_dict(store.get("plan_2"))
    assert plan2.parent == switch.number
    assert all(c.arch.head == switch.arch.head and "head_fusion" not in c.operators for c in plan2.candidates)
    deep = next(r for r in records if r.step == 2 and r.operators == ("depth_4-5",))
    grown = started[deep.arch.arch_hash()]
    trained = saved[key]
    assert grown is not None and deep.inherited is not None and "new_head" not in deep.inherited
    assert all(torch.equal(grown[k], trained[k]) for k in trained if k.startswith("head."))
    # What the user reads names the dimension and the operator.
    df = trials_frame(store)
    assert df.set_index("number").loc[switch.number, "dimension"] == "head"
    r = CliRunner().invoke(main, ["explain", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert "head_fusion x1" in r.output
