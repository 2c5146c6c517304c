"""The training recipe of language-guided heads: parameter groups, their schedules, DenseCLIP start, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from stripes import Stripes
from torch import nn

from models import HeadConfig, LPSNetArch, build_model, save_embeddings
from models.heads import LEGACY_RECIPE, HeadError
from scaler.proxy.recipe import Optimizers, param_groups
from scaler.proxy.train import Checkpoint, TrainConfig, poly_lr, train_and_evaluate

NET = LPSNetArch(depth=(1, 1, 1, 1, 1), width=(8, 8, 16, 16, 16), resolution=(1,), num_classes=3)


def _model(**head):
    return build_model(dataclasses.replace(NET, head=HeadConfig(**head)))


def _groups(model, head, iters=100):
    return param_groups(model, head, lr=0.05, weight_decay=5e-4, warmup_iters=5, iters=iters)


def test_fusion_groups_split_transformer_parts_from_convolutions():
    head = HeadConfig(kind="fusion", dim=16, heads=2, layers=2)
    model = _model(kind="fusion", dim=16, heads=2, layers=2)
    groups = {g.name: g for g in _groups(model, head)}
    assert list(groups) == ["sgd", "adamw", "adamw_no_decay"]
    # Every trainable parameter is in exactly one group.
    names = [n for g in groups.values() for n in g.names]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(names) == len(set(names))
    sgd, decay, no_decay = (set(groups[k].names) for k in ("sgd", "adamw", "adamw_no_decay"))
    # Convolutions and BatchNorms, the head's and the backbone's, stay with SGD.
    assert {"head.visual_in.0.weight", "head.visual_in.1.weight", "head.layers.1.conv.0.weight"} <= sgd
    assert {"head.pixel_out.weight", "head.aux_pixel.bias"} <= sgd
    transformer = {
        f"{module_name}.{name}"
        for module_name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.LayerNorm))
        for name, _ in m.named_parameters(recurse=False)
    }
    assert sgd == set(names) - transformer - {"head.logit_scale"}
    # Linear weights decay; their biases, LayerNorms and the logit scale do not.
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert decay == linear_weights
    assert {"head.text_in.weight", "head.layers.0.to_text.q.weight", "head.layers.1.text_mlp.2.weight"} <= decay
    assert {"head.logit_scale", "head.layers.0.text_norm1.weight", "head.layers.0.to_pixels.out.bias"} <= no_decay
    assert groups["adamw"].weight_decay == 1e-4 and groups["adamw_no_decay"].weight_decay == 0.0
    assert groups["sgd"].lr == 0.05 and groups["adamw"].lr == 1e-3
    # The AdamW warm-up is 10% of the schedule, at least the SGD warm-up.
    assert groups["sgd"].warmup_iters == 5 and groups["adamw"].warmup_iters == 10
    assert _groups(model, head, iters=20)[1].warmup_iters == 5


def test_denseclip_plain_and_sgd_recipes_group_as_expected():
    dense = _model(kind="denseclip")
    groups = _groups(dense, HeadConfig(kind="denseclip"))
    assert [(g.name, g.names) for g in groups[1:]] == [("adamw_no_decay", ["head.logit_scale"])]
    assert "head.pixel.weight" in groups[0].names
    plain = _model()
    assert [g.name for g in _groups(plain, HeadConfig())] == ["sgd"]
    legacy = HeadConfig(kind="fusion", optimizer="sgd")
    (only,) = _groups(_model(kind="fusion", optimizer="sgd"), legacy)
    assert only.name == "sgd" and len(only.names) == len(list(_model(kind="fusion").parameters()))


def test_each_group_follows_its_own_peak_and_warm_up():
    head = HeadConfig(kind="fusion", lr=2e-3, warmup=0.2)
    opt = Optimizers(_groups(_model(kind="fusion", lr=2e-3, warmup=0.2), head, iters=50), momentum=0.9)
    for it in (0, 4, 9, 30, 49):
        sgd_lr = opt.set_lr(lambda base, warmup, it=it: poly_lr(it, base_lr=base, iters=50, warmup=warmup))
        assert sgd_lr == poly_lr(it, base_lr=0.05, iters=50, warmup=5)
        assert opt.adamw.param_groups[0]["lr"] == poly_lr(it, base_lr=2e-3, iters=50, warmup=10)
    assert isinstance(opt.adamw, torch.optim.AdamW) and isinstance(opt.sgd, torch.optim.SGD)
    assert opt.sgd.param_groups[0]["momentum"] == 0.9


def test_the_denseclip_start_is_a_denseclip_score_map_and_every_branch_learns():
    torch.manual_seed(0)
    model = _model(kind="fusion", dim=16, heads=2, layers=2).eval()
    head = model.head
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model(x, upsample=False)  # the logits at the head's size
        # What the head computes at the start: the projected pixels against the projected class text.
        backbone_out = {}
        handle = head.register_forward_pre_hook(lambda m, args: backbone_out.setdefault("x", args[0]))
        model(x, upsample=False)
        handle.remove()
        expected = head.score_map(
            head.pixel_out(head.visual_in(backbone_out["x"])), head.text_in(head.class_embeddings)
        )
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    # A random start is not that map.
    torch.manual_seed(0)
    other = _model(kind="fusion", dim=16, heads=2, layers=2, init="random").eval()
    assert (other(x, upsample=False) - expected).abs().max() > 1e-2
    # Three steps of the recipe and every head parameter has had a gradient: the zeroed outputs first, then
    # what feeds them (the text self-attention reaches the logits through two zeroed layers: itself and
    # text_out). The auxiliary conv learns from the auxiliary loss only, which this loss leaves out.
    model.train()
    opt = Optimizers(_groups(model, head.config), momentum=0.9)
    opt.set_lr(lambda base, warmup: base)
    seen = {n: False for n, _ in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        logits = model(x)
        nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 64, 96), generator=torch.Generator())).backward()
        for n, p in model.named_parameters():
            seen[n] |= bool(p.grad is not None and p.grad.abs().sum() > 0)
        opt.step(torch.amp.GradScaler("cpu", enabled=False))
    assert [n for n, ok in seen.items() if n.startswith("head.") and not ok and "aux" not in n] == []


def test_head_recipe_config_round_trips_and_old_heads_read_as_the_legacy_recipe():
    head = HeadConfig(kind="fusion", lr=3e-4, warmup=0.05, weight_decay=0.01)
    assert HeadConfig.from_dict(head.to_dict()) == head
    assert head.to_dict()["optimizer"] == "adamw" and head.to_dict()["init"] == "denseclip"
    assert HeadConfig.parse_inline(head.inline()) == head
    assert head.inline() == "fusion/lr=0.0003/wd=0.01/warmup=0.05"
    legacy = HeadConfig(kind="fusion", optimizer="sgd", init="random")
    assert legacy.inline() == "fusion/opt=sgd/init=random"
    assert HeadConfig.parse_inline(legacy.inline()) == legacy
    # A head written before the recipe fields (as stored runs and arch.json files hold them) is the legacy
    # recipe, and writes back exactly as it was (its hashes do not move).
    old = {"kind": "fusion", "text_encoder": "minilm", "templates": ["a {}."], "dim": 64, "layers": 1}
    old.update(heads=4, aux_weight=0.4)
    assert HeadConfig.from_dict(old) == dataclasses.replace(legacy, templates=("a {}.",))
    assert HeadConfig.from_dict(old).to_dict() == old
    assert {k: getattr(HeadConfig.from_dict(old), k) for k in LEGACY_RECIPE} == LEGACY_RECIPE
    # What a user writes in a search space takes today's defaults.
    assert HeadConfig.from_dict({"kind": "fusion"}, stored=False).optimizer == "adamw"
    # Settings a kind does not use do not make heads differ.
    assert HeadConfig(kind="denseclip", init="random", dim=32) == HeadConfig(kind="denseclip")
    assert HeadConfig(kind="fusion", optimizer="sgd", lr=0.5) == HeadConfig(kind="fusion", optimizer="sgd")
    assert HeadConfig(optimizer="sgd") == HeadConfig()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fusion", "optimizer": "adam"}, "head optimizer must be one of adamw, sgd, got 'adam'"),
        ({"kind": "fusion", "init": "zeros"}, "head init must be one of denseclip, random, got 'zeros'"),
        ({"kind": "fusion", "lr": 0}, "head lr must be > 0"),
        ({"kind": "fusion", "warmup": 1.5}, "head warmup must be a number in [0, 1], got 1.5"),
        ({"kind": "fusion", "weight_decay": float("nan")}, "head weight_decay must be a number in [0, 10]"),
    ],
)
def test_bad_recipe_values_are_one_clear_error(kwargs, message):
    with pytest.raises(HeadError) as e:
        HeadConfig(**kwargs)
    assert message in str(e.value)


def test_a_two_optimiser_training_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("LPS_SCALER_TEXT_CACHE", str(tmp_path / "text-cache"))
    emb = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    encoder = f"file:{save_embeddings(tmp_path / 'classes.pt', emb, ['red', 'green', 'blue'])}"
    arch = dataclasses.replace(NET, head=HeadConfig(kind="fusion", dim=16, heads=2, text_encoder=encoder))
    config = TrainConfig(dataset="stripes", iters=12, batch=2, crop=(32, 48), scale=(1.0, 1.0), jitter=0.0, seed=3)
    kw = dict(progress=False, train_set=Stripes(), val_set=Stripes(n=6, seed=99))
    straight = train_and_evaluate(arch, config, save=tmp_path / "straight.pt", **kw)
    first = train_and_evaluate(arch, config, until=5, checkpoint=tmp_path / "c5.pt", **kw)
    c5 = Checkpoint.read(tmp_path / "c5.pt")
    assert set(c5.optimizer) == {"sgd", "adamw"}
    rest = train_and_evaluate(arch, config, resume=c5, save=tmp_path / "rest.pt", **kw)
    assert straight.ok and first.ok and rest.ok
    assert rest.loss_curve == straight.loss_curve and rest.miou == straight.miou
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "rest.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # AdamW's moments are part of it: without them the run parts from the straight one.
    bare = dataclasses.replace(c5, optimizer={**c5.optimizer, "adamw": {**c5.optimizer["adamw"], "state": {}}})
    other = train_and_evaluate(arch, config, resume=bare, save=tmp_path / "bare.pt", **kw)
    c = torch.load(tmp_path / "bare.pt", weights_only=True)["state_dict"]
    assert other.ok and not all(torch.equal(a[k], c[k]) for k in a)
    # A single-SGD checkpoint does not load into a two-optimiser recipe.
    opt = Optimizers(_groups(build_model(arch), arch.head), momentum=0.9)
    with pytest.raises(ValueError, match="not for adamw \\+ sgd"):
        opt.load_state_dict(c5.optimizer["sgd"])


def test_an_ablated_part_stays_off_through_training_and_the_config_says_so():
    head = HeadConfig(kind="fusion", dim=16, heads=2, ablate=("to_pixels", "text_self"))
    assert head.ablate == ("text_self", "to_pixels")
    assert HeadConfig.parse_inline(head.inline()) == head and "ablate=text_self+to_pixels" in head.inline()
    assert HeadConfig.from_dict(head.to_dict()) == head and head.to_dict()["ablate"] == ["text_self", "to_pixels"]
    assert "switched off: text_self, to_pixels" in head.describe()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(NET, head=head))
    names = [n for g in _groups(model, head) for n in g.names]
    assert "head.layers.0.to_pixels.out.weight" not in names and "head.layers.0.text_self.out.bias" not in names
    assert "head.layers.0.to_text.out.weight" in names
    opt = Optimizers(_groups(model, head), momentum=0.9)
    opt.set_lr(lambda base, warmup: base)
    x = torch.randn(2, 3, 32, 64)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step(torch.amp.GradScaler("cpu", enabled=False))
    layer = model.head.layers[0]
    assert layer.to_pixels.out.weight.abs().sum() == 0 and layer.text_self.out.bias.abs().sum() == 0
    assert layer.to_text.out.weight.abs().sum() > 0
    with pytest.raises(HeadError, match="head ablate: unknown part 'bridge'"):
        HeadConfig(kind="fusion", ablate=("bridge",))
    # Other kinds have no parts to switch off.
    assert HeadConfig(kind="denseclip", ablate=("to_text",)) == HeadConfig(kind="denseclip")
