"""Function-preserving growth: every width and depth operator keeps the network's output exactly."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from models import (
    ArchError,
    GrowthError,
    HeadConfig,
    LPSNet,
    LPSNetArch,
    grow_model,
    grow_state_dict,
    match_paths,
    reparameterize,
)
from models.grow import BN_EPS, HEAD_INPUT_WEIGHT
from models.heads import build_head
from scaler.search.expand import PAPER_OPERATORS, apply_operator

# Tiny parents with one, two and three paths; uneven widths and depths so a mix-up shows.
PARENTS = {
    "1path": LPSNetArch(depth=(1, 1, 1, 1, 1), width=(2, 4, 4, 8, 8), resolution=(0.5,), num_classes=5),
    "2paths": LPSNetArch(depth=(1, 2, 1, 2, 1), width=(3, 4, 6, 8, 8), resolution=(0.5, 0.25), num_classes=5),
    "3paths": LPSNetArch(depth=(1, 1, 2, 1, 2), width=(2, 3, 4, 5, 6), resolution=(0.5, 0.375, 0.25), num_classes=5),
}
WIDTH_DEPTH_OPS = [op for op in PAPER_OPERATORS if op.kind in ("width", "depth")]
RES_OPS = [op for op in PAPER_OPERATORS if op.kind == "resolution"]
STEPLENS = (1, 2, 4)
INPUT = (2, 3, 64, 128)


def _trained_like(arch: LPSNetArch, seed: int) -> LPSNet:
    """A network whose BatchNorms have non-trivial affine parameters and running statistics."""
    torch.manual_seed(seed)
    model = LPSNet(arch)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.3
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(INPUT, generator=g) * 2 + 0.5)
    return model.eval()


def _rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def _outputs(parent: LPSNet, child: LPSNet, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref, out = parent(x, upsample=False), child(x, upsample=False)
    assert ref.abs().max() > 0
    return out, ref


@pytest.mark.parametrize("steplen", STEPLENS)
@pytest.mark.parametrize("op", WIDTH_DEPTH_OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_width_and_depth_growth_keeps_the_output(parent_name, op, steplen):
    parent_arch = PARENTS[parent_name]
    child_arch = apply_operator(parent_arch, op, steplen)
    parent = _trained_like(parent_arch, seed=steplen)
    child = grow_model(parent, child_arch)
    assert child.arch == child_arch and not child.training
    assert sum(p.numel() for p in child.parameters()) > sum(p.numel() for p in parent.parameters())
    out, ref = _outputs(parent, child)
    assert _rel_diff(out, ref) <= 1e-4


@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_widened_copies_keep_the_output_in_train_mode_too(parent_name):
    parent_arch = PARENTS[parent_name]
    parent = _trained_like(parent_arch, seed=3)
    child = grow_model(parent, apply_operator(parent_arch, PAPER_OPERATORS[3], 2))  # width_1-5
    parent.train()
    child.train()
    out, ref = _outputs(parent, child)
    assert _rel_diff(out, ref) <= 1e-4


def test_width_and_depth_together_and_the_deploy_form():
    parent_arch = PARENTS["2paths"]
    width = apply_operator(parent_arch, PAPER_OPERATORS[4], 1)  # width_2-5
    both = apply_operator(width, PAPER_OPERATORS[1], 3)  # depth_3-5
    parent = _trained_like(parent_arch, seed=4)
    child = grow_model(parent, both)
    out, ref = _outputs(parent, child)
    assert _rel_diff(out, ref) <= 1e-4
    out_deploy, _ = _outputs(parent, reparameterize(child))
    assert _rel_diff(out_deploy, ref) <= 1e-4


def test_identity_blocks_are_dirac_with_moments_of_the_previous_block():
    parent_arch = PARENTS["1path"]
    parent = _trained_like(parent_arch, seed=5)
    child_arch = apply_operator(parent_arch, PAPER_OPERATORS[2], 2)  # depth_4-5: stages 4 and 5 get 2 blocks more
    state = grow_state_dict(parent.state_dict(), parent_arch, child_arch)
    prev = "net.stages.4.0.1"
    for b in (1, 2):
        new = f"net.stages.4.{b}"
        kernel = state[f"{new}.0.weight"]
        assert torch.equal(kernel[:, :, 1, 1], torch.eye(8)) and kernel.abs().sum() == 8
        # Moments of relu(N(beta, gamma^2)), checked by sampling.
        beta, gamma = state[f"{prev}.bias"], state[f"{prev}.weight"]
        z = torch.relu(beta + gamma * torch.randn(200_000, 8, generator=torch.Generator().manual_seed(0)))
        torch.testing.assert_close(state[f"{new}.1.running_mean"], z.mean(0), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(state[f"{new}.1.running_var"], z.var(0), atol=1e-2, rtol=2e-2)
        torch.testing.assert_close(state[f"{new}.1.weight"], torch.sqrt(state[f"{new}.1.running_var"] + BN_EPS))
        assert torch.equal(state[f"{new}.1.bias"], state[f"{new}.1.running_mean"])
    assert int(state["net.stages.4.1.1.num_batches_tracked"]) == 0


def test_widening_copies_channels_and_splits_the_next_layer():
    parent_arch = PARENTS["1path"]
    parent = _trained_like(parent_arch, seed=6)
    child_arch = dataclasses.replace(parent_arch, width=(2, 4, 4, 8, 13))
    src, state = parent.state_dict(), grow_state_dict(parent.state_dict(), parent_arch, child_arch, seed=1)
    old, new = src["net.stages.4.0.0.weight"], state["net.stages.4.0.0.weight"]
    assert torch.equal(new[:8], old)
    # Each copy is a row of the original (no channel copied twice while another is not copied).
    copied = [next(i for i in range(8) if torch.equal(new[j], old[i])) for j in range(8, 13)]
    assert len(set(copied)) == 5
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(state[f"net.stages.4.0.1.{key}"][8:], src[f"net.stages.4.0.1.{key}"][copied])
    head_old, head_new = src["head.weight"], state["head.weight"]
    for j, i in zip(range(8, 13), copied, strict=True):
        torch.testing.assert_close(head_new[:, j], head_old[:, i] / 2)
        torch.testing.assert_close(head_new[:, i], head_old[:, i] / 2)
    untouched = [i for i in range(8) if i not in copied]
    assert torch.equal(head_new[:, untouched], head_old[:, untouched])


def test_noise_is_small_seeded_and_only_on_the_copies():
    parent_arch = PARENTS["2paths"]
    parent = _trained_like(parent_arch, seed=8)
    child_arch = apply_operator(parent_arch, PAPER_OPERATORS[3], 1)  # width_1-5
    sd = parent.state_dict()
    a = grow_state_dict(sd, parent_arch, child_arch, noise=0.01, seed=3)
    b = grow_state_dict(sd, parent_arch, child_arch, noise=0.01, seed=3)
    c = grow_state_dict(sd, parent_arch, child_arch, noise=0.01, seed=4)
    exact = grow_state_dict(sd, parent_arch, child_arch, noise=0.0, seed=3)
    assert a.keys() == b.keys() == c.keys() == exact.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    key = "netL.stages.3.1.0.weight"
    w = parent_arch.width[3]
    assert torch.equal(a[key][:w], exact[key][:w]) and not torch.equal(a[key][w:], exact[key][w:])
    child = LPSNet(child_arch)
    child.load_state_dict(a)
    out, ref = _outputs(parent, child.eval())
    assert 1e-4 < _rel_diff(out, ref) < 0.02  # about 0.4% here


@pytest.mark.parametrize(
    ("parent_res", "child_res", "sources"),
    [
        ((0.5,), (0.625,), (0,)),  # res_path1: the path grows
        ((0.5,), (0.5, 0.125), (0, 0)),  # res_path2 adds a path: a copy of the only one
        ((0.5, 0.25), (0.625, 0.5), (1, 0)),  # path 2 grows past path 1: the kept 0.5 keeps its weights
        ((0.5, 0.125), (0.5, 0.25, 0.125), (0, 1, 1)),  # a new 0.25 copies the nearer 0.125
        ((0.5, 0.375), (0.5, 0.375, 0.125), (0, 1, 1)),
        ((0.75, 0.25), (0.75, 0.5, 0.25), (0, 0, 1)),  # 0.5 is as near to 0.75 as to 0.25: the higher wins
        ((0.75, 0.25), (0.75, 0.5, 0.375), (0, 1, 1)),  # 0.25 grew to 0.5 (rank order); 0.375 copies it
    ],
)
def test_match_paths(parent_res, child_res, sources):
    arch = PARENTS["1path"]
    parent = dataclasses.replace(arch, resolution=parent_res)
    assert match_paths(parent, dataclasses.replace(arch, resolution=child_res)) == sources


@pytest.mark.parametrize("steplen", (1, 2))
@pytest.mark.parametrize("op", RES_OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("parent_name", list(PARENTS))
def test_resolution_growth_reuses_the_weights(parent_name, op, steplen):
    parent_arch = PARENTS[parent_name]
    child_arch = apply_operator(parent_arch, op, steplen)
    if child_arch is None:
        pytest.skip("the operator breaks a constraint here")
    parent = _trained_like(parent_arch, seed=9)
    child = grow_model(parent, child_arch)
    sources = match_paths(parent_arch, child_arch)
    src, state = parent.state_dict(), child.state_dict()
    for ci, pi in enumerate(sources):
        for key, value in getattr(parent, parent.path_names[pi]).state_dict().items():
            assert torch.equal(state[f"{child.path_names[ci]}.{key}"], value), (ci, key)
    width = parent_arch.width[-1]
    copies = [sources.count(pi) for pi in sources]
    for ci, pi in enumerate(sources):
        segment = state["head.weight"][:, ci * width : (ci + 1) * width]
        torch.testing.assert_close(segment, src["head.weight"][:, pi * width : (pi + 1) * width] / copies[ci])
    assert torch.equal(state["head.bias"], src["head.bias"])
    if child_arch.num_paths == parent_arch.num_paths and sources == tuple(range(len(sources))):
        assert all(torch.equal(state[k], src[k]) for k in src)
    out, _ = _outputs(parent, child)
    assert out.shape[:2] == (2, 5) and torch.isfinite(out).all()


LANGUAGE_HEADS = {
    "denseclip": HeadConfig(kind="denseclip"),
    "fusion": HeadConfig(kind="fusion", dim=16, layers=1, heads=2),
}


@pytest.mark.parametrize(("op_index", "steplen"), [(3, 1), (6, 2), (0, 2)])  # width_1-5, width_4-5, depth_2-5
@pytest.mark.parametrize("head", list(LANGUAGE_HEADS))
def test_language_guided_heads_carry_over(head, op_index, steplen):
    parent_arch = dataclasses.replace(PARENTS["2paths"], head=LANGUAGE_HEADS[head])
    parent = _trained_like(parent_arch, seed=10)
    names = ["road", "car", "tree", "sky", "person"]
    embeddings = torch.randn(5, parent.head.text_dim, generator=torch.Generator().manual_seed(11))
    parent.set_classes(names, embeddings=embeddings)
    child = grow_model(parent, apply_operator(parent_arch, PAPER_OPERATORS[op_index], steplen))
    assert child.class_names == tuple(names)
    assert torch.equal(child.head.class_embeddings, parent.head.class_embeddings)
    assert torch.equal(child.head.logit_scale, parent.head.logit_scale)
    out, ref = _outputs(parent, child)
    assert _rel_diff(out, ref) <= 1e-4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": (3, 4, 6, 8, 7)}, "width[4] shrinks from 8 to 7"),
        ({"depth": (1, 1, 1, 2, 1)}, "depth[1] shrinks from 2 to 1"),
        ({"num_classes": 6}, "num_classes 6 != 5"),
        ({"head": HeadConfig(kind="denseclip"), "width": (3, 4, 6, 8, 7)}, "width[4] shrinks from 8 to 7"),
        ({"resolution": (0.5,)}, "2 paths become 1"),
        ({"resolution": (0.625, 0.125)}, "the path-2 resolution factor falls from 0.25 to 0.125"),
    ],
)
def test_a_child_that_is_not_a_growth_is_one_clear_line(change, message):
    parent_arch = PARENTS["2paths"]
    parent = LPSNet(parent_arch)
    with pytest.raises(GrowthError) as e:
        grow_model(parent, dataclasses.replace(parent_arch, **change))
    assert message in str(e.value) and parent_arch.inline() in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ArchError)


def test_weights_that_are_not_the_parents_are_refused():
    parent_arch = PARENTS["2paths"]
    child_arch = apply_operator(parent_arch, PAPER_OPERATORS[3], 1)
    other = LPSNet(PARENTS["3paths"]).state_dict()
    with pytest.raises(GrowthError, match=re.escape("tensor 'netH.stages.0.0.0.weight' is missing")):
        grow_state_dict(other, parent_arch, child_arch)
    wrong_width = LPSNet(dataclasses.replace(parent_arch, width=(3, 4, 6, 8, 9))).state_dict()
    with pytest.raises(GrowthError, match=r"'netH.stages.4.0.0.weight' has shape \(9, 8, 3, 3\), expected \(8, 8"):
        grow_state_dict(wrong_width, parent_arch, child_arch)
    deeper = LPSNet(dataclasses.replace(parent_arch, depth=(1, 2, 1, 2, 2))).state_dict()
    with pytest.raises(GrowthError, match=re.escape("unexpected tensor 'netH.stages.4.1.0.weight'")):
        grow_state_dict(deeper, parent_arch, child_arch)
    deployed = reparameterize(LPSNet(parent_arch).eval())
    with pytest.raises(GrowthError, match="deploy form"):
        grow_model(deployed, child_arch)
    with pytest.raises(GrowthError, match="deploy form"):
        grow_state_dict(deployed.state_dict(), parent_arch, child_arch)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        grow_state_dict(LPSNet(parent_arch).state_dict(), parent_arch, child_arch, noise=-0.1)


def test_the_parent_is_left_alone_and_an_equal_child_is_a_copy():
    parent_arch = PARENTS["3paths"]
    parent = _trained_like(parent_arch, seed=12)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    same = grow_state_dict(parent.state_dict(), parent_arch, parent_arch)
    assert same.keys() == before.keys() and all(torch.equal(same[k], before[k]) for k in before)
    for v in same.values():
        v.add_(1)
    grow_model(parent, apply_operator(parent_arch, PAPER_OPERATORS[3], 2), noise=0.1)
    assert all(torch.equal(parent.state_dict()[k], before[k]) for k in before)


def _fresh_head(arch: LPSNetArch, seed: int) -> dict[str, torch.Tensor]:
    """The head of ``arch`` as a seeded fresh build makes it (what a head change starts from)."""
    torch.manual_seed(seed)
    head = build_head(arch.head, arch.width[-1] * arch.num_paths, arch.num_classes)
    return {f"head.{k}": v for k, v in head.state_dict().items()}


@pytest.mark.parametrize(
    ("old", "new"),
    [("plain", "denseclip"), ("plain", "fusion"), ("denseclip", "fusion"), ("fusion", "plain"), ("fusion", "fusion2")],
)
def test_a_head_change_keeps_the_backbone_and_starts_the_new_head_from_its_seeded_init(old, new):
    heads = {"plain": HeadConfig(), **LANGUAGE_HEADS, "fusion2": HeadConfig(kind="fusion", dim=32, heads=2)}
    parent_arch = dataclasses.replace(PARENTS["2paths"], head=heads[old])
    child_arch = dataclasses.replace(parent_arch, head=heads[new])
    parent = _trained_like(parent_arch, seed=20)
    src = parent.state_dict()
    state = grow_state_dict(src, parent_arch, child_arch, seed=3)
    backbone = [k for k in src if not k.startswith("head.")]
    assert backbone and all(torch.equal(state[k], src[k]) for k in backbone)
    fresh = _fresh_head(child_arch, seed=3)
    assert {k for k in state if k.startswith("head.")} == fresh.keys()
    assert all(torch.equal(state[k], fresh[k]) for k in fresh)
    key = HEAD_INPUT_WEIGHT[child_arch.head.kind]
    assert not torch.equal(state[key], _fresh_head(child_arch, seed=4)[key])  # the seed draws it
    child = LPSNet(child_arch)
    child.load_state_dict(state, strict=True)  # what a search's candidate trains from
    out, _ = _outputs(parent, child)
    assert out.shape[:2] == (2, 5) and torch.isfinite(out).all()


def test_a_head_change_with_a_growth_grows_the_backbone_and_draws_the_head_afresh():
    parent_arch = PARENTS["2paths"]
    parent = _trained_like(parent_arch, seed=21)
    grown = apply_operator(parent_arch, PAPER_OPERATORS[3], 1)  # width_1-5
    assert grown is not None
    child_arch = dataclasses.replace(grown, head=LANGUAGE_HEADS["denseclip"])
    state = grow_state_dict(parent.state_dict(), parent_arch, child_arch, seed=5)
    plain_growth = grow_state_dict(parent.state_dict(), parent_arch, grown, seed=5)
    backbone = [k for k in plain_growth if not k.startswith("head.")]
    assert all(torch.equal(state[k], plain_growth[k]) for k in backbone)
    fresh = _fresh_head(child_arch, seed=5)
    assert fresh["head.pixel.weight"].shape[1] == 2 * child_arch.width[-1]
    assert all(torch.equal(state[k], fresh[k]) for k in fresh)


def test_a_new_language_guided_head_takes_given_or_like_embedded_class_embeddings():
    names = ["road", "car", "tree", "sky", "person"]
    denseclip = dataclasses.replace(PARENTS["1path"], head=LANGUAGE_HEADS["denseclip"])
    parent = _trained_like(denseclip, seed=22)
    embeddings = torch.randn(5, parent.head.text_dim, generator=torch.Generator().manual_seed(23))
    parent.set_classes(names, embeddings=embeddings)
    fusion = dataclasses.replace(denseclip, head=LANGUAGE_HEADS["fusion"])
    # Same encoder and templates: the parent's embeddings (and names) serve the new head.
    child = grow_model(parent, fusion, seed=1)
    assert torch.equal(child.head.class_embeddings, parent.head.class_embeddings)
    assert child.class_names == tuple(names)
    assert torch.equal(child.head.visual_in[0].weight, _fresh_head(fusion, seed=1)["head.visual_in.0.weight"])
    # Given embeddings are normalised and used; ones that do not fit are refused.
    given = torch.randn(5, parent.head.text_dim, generator=torch.Generator().manual_seed(24)) * 3
    plain = dataclasses.replace(denseclip, head=HeadConfig())
    state = grow_state_dict(LPSNet(plain).state_dict(), plain, fusion, class_embeddings=given)
    torch.testing.assert_close(state["head.class_embeddings"], torch.nn.functional.normalize(given, dim=-1))
    with pytest.raises(ValueError, match=r"class_embeddings must be a 5 x 384 tensor"):
        grow_state_dict(LPSNet(plain).state_dict(), plain, fusion, class_embeddings=given[:4])
    # From a plain parent, nothing to carry: the new head keeps its stand-ins and has no class names yet.
    stand_in = grow_model(LPSNet(plain), fusion)
    assert torch.equal(stand_in.head.class_embeddings, _fresh_head(fusion, seed=0)["head.class_embeddings"])
    assert stand_in.class_names is None
