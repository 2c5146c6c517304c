"""Heads on every backbone: shapes, gradients, deploy form, class lists, and the configs' validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import (
    HEAD_KINDS,
    ArchError,
    HeadConfig,
    HeadError,
    LanguageHead,
    LPSNetArch,
    MobileNetV2Arch,
    TextEncoderError,
    build_model,
    create_model,
    family_names,
    get_arch,
    heads,
    parse_inline,
    reparameterize,
    resolve_arch,
)
from models.heads import DenseCLIPHead, FusionHead, build_head, head_kinds, register_head
from models.mobilenetv2 import adjust_channels

# Tiny test variants of every registered family (a new family adds its own here; a test below
# checks that none is missing).
BACKBONES = {
    "lpsnet_1path": LPSNetArch(depth=(1, 1, 1, 1, 1), width=(4, 8, 16, 32, 32), resolution=(0.5,), num_classes=5),
    "lpsnet_3paths": LPSNetArch(
        depth=(1, 2, 1, 2, 1), width=(4, 8, 8, 16, 16), resolution=(1, 0.5, 0.25), num_classes=5
    ),
    "mobilenetv2": MobileNetV2Arch(width_mult=0.25, num_classes=5),
}
# Small settings for the head kinds that have sizes; every registered kind is tested. The fusion head
# starts with random weights everywhere (as a trained one has them): its DenseCLIP start zeroes the
# residual branches, which tests/models/test_head_recipe.py covers.
HEAD_SETTINGS = {"fusion": {"dim": 16, "layers": 2, "heads": 2, "init": "random"}}
HEADS = {kind: HeadConfig(kind=kind, **HEAD_SETTINGS.get(kind, {})) for kind in HEAD_KINDS}


def _arch(backbone: str, head: str):
    return dataclasses.replace(BACKBONES[backbone], head=HEADS[head])


def test_every_registered_family_and_head_kind_is_tested():
    assert {a.to_dict()["family"] for a in BACKBONES.values()} == set(family_names())
    assert {"plain", "denseclip", "fusion"} <= set(HEADS)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_shapes_gradients_and_deploy_form(backbone, head):
    torch.manual_seed(0)
    arch = _arch(backbone, head)
    model = build_model(arch)
    x = torch.randn(2, 3, 67, 93)  # odd sizes on purpose
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 5, 67, 93)
    assert (aux is not None) == arch.head.has_aux
    loss = logits.square().mean() + (aux.square().mean() if aux is not None else 0)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Every parameter of the head learns something from this loss.
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("head."))
    model.eval()
    with torch.no_grad():
        head_out = model(x, upsample=False)
        assert head_out.shape == (2, 5, *arch.head_size(67, 93))
        deployed = reparameterize(model)
        assert deployed.deploy and type(deployed) is type(model)
        backbone_bn = [
            n for n, m in deployed.named_modules() if isinstance(m, nn.BatchNorm2d) and n.split(".")[0] != "head"
        ]
        assert backbone_bn == []
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)


def test_plain_head_keeps_the_paper_network():
    # The parameter counts of DESIGN.md, and hashes and names that runs and caches already hold.
    s = get_arch("lpsnet_s")
    assert sum(p.numel() for p in build_model(s).parameters()) == 3_375_363
    assert s.arch_hash() == "ad758a42bb25" and "head" not in s.to_dict()
    assert [k for k in build_model(s).state_dict() if k.startswith("head.")] == ["head.weight", "head.bias"]


def test_named_models_take_a_head_and_inline_round_trips():
    a = resolve_arch("lpsnet_s+fusion")
    assert a.head == HeadConfig(kind="fusion") and a.depth == get_arch("lpsnet_s").depth
    assert a.inline() == "lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25;h=fusion"
    assert resolve_arch(a.inline()) == a
    b = parse_inline("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;c=4;h=fusion/dim=32/layers=2/aux=0")
    assert (b.head.dim, b.head.layers, b.head.aux_weight, b.num_classes) == (32, 2, 0.0, 4)
    assert resolve_arch(b.inline()) == b and LPSNetArch.from_dict(b.to_dict()) == b
    m = resolve_arch("mobilenetv2_050+denseclip")
    assert m.inline() == "mobilenetv2:m=0.5;h=denseclip" and resolve_arch(m.inline()) == m
    assert a.arch_hash() != get_arch("lpsnet_s").arch_hash()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lpsnet_s+clip", "unknown head 'clip'"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;h=fusion/dim=30/heads=4", "dim (30) must be a multiple of heads (4)"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;h=fusion/depth=2", "bad part 'depth=2'"),
        ("lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5;h=fusion/dim=x", "dim must be a number"),
        ("mobilenetv2:m=9", "width_mult must be a number in (0, 4]"),
    ],
)
def test_bad_head_specs_are_one_line_arch_errors(spec, message):
    with pytest.raises(ArchError) as e:
        resolve_arch(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "mlp"}, "head kind must be one of plain, denseclip, fusion"),
        ({"kind": "fusion", "layers": 0}, "head layers must be an integer >= 1"),
        ({"kind": "fusion", "templates": ("a photo",)}, "must contain '{}' exactly once"),
        ({"kind": "fusion", "templates": ()}, "non-empty list"),
        ({"kind": "fusion", "aux_weight": -1}, "aux_weight must be a number in [0, 10]"),
        ({"kind": "denseclip", "text_encoder": "bert"}, "unknown text encoder 'bert'"),
        ({"kind": "denseclip", "text_encoder": "open_clip:ViT-B-32"}, "write open_clip:ARCH:CHECKPOINT"),
    ],
)
def test_head_config_validation(kwargs, message):
    with pytest.raises(HeadError, match=None) as e:
        HeadConfig(**kwargs)
    assert message in str(e.value)


def test_head_config_dict_round_trip_and_unknown_keys():
    h = HeadConfig(kind="fusion", dim=32, layers=3, heads=8, aux_weight=0.0, templates=("a {}.", "the {}."))
    assert HeadConfig.from_dict(h.to_dict()) == h
    assert HeadConfig.from_dict("denseclip") == HeadConfig(kind="denseclip")
    with pytest.raises(HeadError, match="unknown key 'width'"):
        HeadConfig.from_dict({"kind": "fusion", "width": 3})
    assert HeadConfig().to_dict() == {"kind": "plain"}


def _emb(k: int, d: int = 384, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", ["lpsnet_1path", "mobilenetv2"])
@pytest.mark.parametrize("head", ["denseclip", "fusion"])
def test_class_list_can_change_and_shapes_follow(backbone, head):
    torch.manual_seed(0)
    model = build_model(_arch(backbone, head)).eval()
    x = torch.randn(1, 3, 64, 96)
    assert model(x).shape[1] == 5
    names = ["road", "car", "sky", "tree", "person", "bus", "pole"]
    model.set_classes(names, embeddings=_emb(7))
    assert model(x).shape == (1, 7, 64, 96) and model(x, upsample=False).shape[1] == 7
    assert model.class_names == tuple(names) and model.arch.num_classes == 7
    # The saved state carries the class embeddings: a network built for 5 classes loads it and has 7.
    fresh = build_model(_arch(backbone, head)).eval()
    fresh.load_state_dict(model.state_dict())
    assert fresh.head.num_classes == 7
    torch.testing.assert_close(fresh(x), model(x))
    model.set_classes(names[:2], embeddings=_emb(2))
    assert model(x).shape[1] == 2


def test_class_list_errors():
    model = build_model(_arch("lpsnet_1path", "fusion"))
    with pytest.raises(HeadError, match="dimension 512, but this head was built for its text encoder's 384"):
        model.set_classes(["a", "b"], embeddings=_emb(2, d=512))
    with pytest.raises(HeadError, match="2 class embeddings but 3 class names"):
        model.set_classes(["a", "b", "c"], embeddings=_emb(2))
    with pytest.raises(TextEncoderError, match="the class list is empty"):
        model.set_classes([])
    with pytest.raises(TextEncoderError, match="class name 1 is blank"):
        model.set_classes(["road", " "])
    plain = build_model(_arch("lpsnet_1path", "plain"))
    with pytest.raises(ArchError, match="has a plain head"):
        plain.set_classes(["a"], embeddings=_emb(1))


def test_denseclip_logits_are_scaled_cosines():
    torch.manual_seed(0)
    head = DenseCLIPHead(HeadConfig(kind="denseclip"), in_channels=6, text_dim=384, num_classes=3)
    head.set_class_embeddings(_emb(3), ["a", "b", "c"])
    x = torch.randn(2, 6, 5, 7)
    pixels = F.normalize(head.pixel(x), dim=1)
    expected = torch.einsum("bdhw,kd->bkhw", pixels, F.normalize(_emb(3), dim=-1)) / 0.07
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)
    assert head.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        head.logit_scale.fill_(math.log(1000.0))
    assert head.scale().item() == pytest.approx(100.0)  # capped as CLIP does


def test_fusion_treats_classes_as_a_set():
    # No order among the class tokens: permuting the classes permutes the logit channels, nothing else.
    torch.manual_seed(0)
    head = FusionHead(HeadConfig(kind="fusion", dim=16, heads=2, layers=2), in_channels=8, text_dim=384, num_classes=4)
    head.eval()
    x = torch.randn(2, 8, 6, 9)
    emb = _emb(4)
    perm = torch.tensor([2, 0, 3, 1])
    head.set_class_embeddings(emb)
    out = head(x)
    head.set_class_embeddings(emb[perm])
    torch.testing.assert_close(head(x), out[:, perm], rtol=1e-5, atol=1e-5)
    # ... and the text matters: other embeddings give other logits.
    head.set_class_embeddings(_emb(4, seed=1))
    assert (head(x) - out).abs().max() > 1e-2


def test_fusion_aux_loss_is_optional():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with_aux = build_model(_arch("lpsnet_1path", "fusion"))
    no_aux_arch = dataclasses.replace(_arch("lpsnet_1path", "fusion"), head=HeadConfig(kind="fusion", aux_weight=0))
    no_aux = build_model(no_aux_arch)
    assert with_aux.forward_with_aux(x)[1].shape == (1, 5, 64, 64)
    assert no_aux.forward_with_aux(x)[1] is None and no_aux.head.aux_pixel is None
    assert isinstance(with_aux.head, LanguageHead)


def test_mobilenetv2_backbone_follows_the_paper_table():
    assert [adjust_channels(c, 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == [16, 8, 16, 16, 32, 48, 80, 160]
    assert adjust_channels(32, 0.35) == 16  # never more than 10% below the scaled width
    a = MobileNetV2Arch(width_mult=1.0)
    assert (a.stem_channels, a.stage_channels) == (32, (16, 24, 32, 64, 96, 160, 320))
    model = build_model(a)
    # MobileNetV2's 1.0 feature extractor without the last 1x1 conv to 1280 (2,223,872 parameters
    # in torchvision's, minus that conv and its BatchNorm: 409,600 + 2,560), plus the 1x1 classifier.
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == 2_223_872 - 409_600 - 2_560
    assert sum(p.numel() for p in model.head.parameters()) == 320 * 19 + 19
    assert a.head_size(1024, 2048) == (64, 128) and a.head_size(65, 97) == (5, 7)
    assert create_model("mobilenetv2_050")(torch.randn(1, 3, 32, 48)).shape == (1, 19, 32, 48)


def test_head_kinds_come_from_the_registry():
    assert {"plain", "denseclip", "fusion"} <= set(HEAD_KINDS) == set(head_kinds())
    assert "nope" not in HEAD_KINDS
    assert list(HEAD_KINDS) == list(head_kinds())


def test_an_unknown_head_kind_is_an_error_naming_the_registered_ones():
    with pytest.raises(HeadError, match=r"head kind must be one of plain, denseclip, fusion.*got 'nope'"):
        HeadConfig(kind="nope")
    config = HeadConfig(kind="fusion")
    object.__setattr__(config, "kind", "gone")  # a config whose kind is no longer registered
    with pytest.raises(HeadError, match=r"unknown head kind 'gone'; registered: plain, denseclip, fusion"):
        build_head(config, 8, 3)


def test_a_new_head_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(heads, "_HEADS", dict(heads._HEADS))

    @register_head("mean")
    class MeanHead(LanguageHead):
        """Scores the pooled features against every class: one logit map per class, constant in space."""

        def __init__(self, config, in_channels, text_dim, num_classes):
            super().__init__(config, in_channels, text_dim, num_classes)
            self.pixel = nn.Conv2d(in_channels, text_dim, 1)

        def forward(self, x, return_aux=False):
            logits = self.score_map(self.pixel(x).mean((2, 3), keepdim=True).expand(-1, -1, *x.shape[-2:]),
                                    self.class_embeddings)  # fmt: skip
            return (logits, None) if return_aux else logits

    assert "mean" in HEAD_KINDS
    model = create_model("lpsnet_tiny+mean", num_classes=4)
    assert isinstance(model.head, MeanHead) and model.head.text_dim == 384
    logits = model(torch.randn(2, 3, 33, 47))
    assert logits.shape == (2, 4, 33, 47)
    logits.sum().backward()
    assert model.head.pixel.weight.grad is not None
    assert resolve_arch("mobilenetv2:m=0.25;h=mean").head.kind == "mean"
    with pytest.raises(ValueError, match="'mean' is already registered"):
        register_head("mean")(MeanHead)
    with pytest.raises(ValueError, match="lower-case word"):
        register_head("Mean+x")(MeanHead)
