"""The family registry: what a family registers is all the tools need, and unknown families are clear errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from models import (
    ArchError,
    Family,
    HeadConfig,
    LPSNet,
    LPSNetArch,
    MobileNetV2Arch,
    MobileNetV2Seg,
    arch_from_dict,
    build_model,
    create_model,
    describe_model,
    family_names,
    get_arch,
    get_family,
    list_models,
    register_family,
    register_model,
    reparameterize,
    resolve_arch,
)
from models import registry as registry_mod
from models.arch import PLAIN_HEAD, ArchJSON
from models.base import SegNet
from models.heads import build_head


def test_the_built_in_families_are_registered():
    assert {"lpsnet", "mobilenetv2"} <= set(family_names())
    lps, mnv2 = get_family("lpsnet"), get_family("mobilenetv2")
    assert (lps.arch_class, lps.model_class) == (LPSNetArch, LPSNet)
    assert (mnv2.arch_class, mnv2.model_class) == (MobileNetV2Arch, MobileNetV2Seg)
    for name in list_models():
        assert type(get_arch(name)) in {get_family(f).arch_class for f in family_names()}


def test_unknown_family_errors_name_the_known_ones():
    with pytest.raises(ArchError, match=r"unknown family 'resnet' \(known: lpsnet, mobilenetv2"):
        get_family("resnet")
    with pytest.raises(ArchError, match=r"^arch.json: unknown family 'resnet' \(known: lpsnet, mobilenetv2"):
        arch_from_dict({"family": "resnet", "depth": 50}, source="arch.json")
    with pytest.raises(ArchError, match=r"no family 'resnet' \(known: lpsnet, mobilenetv2") as e:
        resolve_arch("resnet:d=50")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("spec", "rows"),
    [
        (
            "lpsnet_s",
            [
                ("depth", "1 3 3 10 10"),
                ("width", "8 24 48 96 96"),
                ("resolution", "0.75 0.25  (2 paths; inputs 72x98, 24x32)"),
            ],
        ),
        (
            "lpsnet_tiny",
            [("depth", "1 1 1 1 1"), ("width", "4 8 16 32 32"), ("resolution", "0.5  (1 path; inputs 48x65)")],
        ),
        (
            "mobilenetv2_050+fusion",
            [("backbone", "MobileNetV2-style, width x0.5 (output stride 16)"), ("channels", "16 8 16 16 32 48 80 160")],
        ),
        (
            "mobilenetv2:m=0.35;c=5",
            [("backbone", "MobileNetV2-style, width x0.35 (output stride 16)"), ("channels", "16 8 8 16 24 32 56 112")],
        ),
    ],
)
def test_structure_rows_are_what_scaler_info_printed(spec, rows):
    # The rows of `scaler info ... --input 97x131` before every family described itself.
    assert resolve_arch(spec).structure(97, 131) == rows


def test_a_dict_without_family_is_an_lpsnet():
    data = get_arch("lpsnet_tiny").to_dict()
    del data["family"]
    assert arch_from_dict(data) == get_arch("lpsnet_tiny")


def test_registering_a_family_twice_or_with_a_bad_name_is_refused(monkeypatch):
    monkeypatch.setattr(registry_mod, "_FAMILIES", dict(registry_mod._FAMILIES))
    lps = get_family("lpsnet")
    with pytest.raises(ValueError, match="'lpsnet' is already registered"):
        register_family(lps)
    with pytest.raises(ValueError, match="already registered as 'lpsnet'"):
        register_family(dataclasses.replace(lps, name="lpsnet2"))
    with pytest.raises(ValueError, match="lower-case word"):
        register_family(dataclasses.replace(lps, name="LPS:Net"))
    assert family_names() == list(registry_mod._FAMILIES)


def test_build_and_reparameterize_refuse_other_objects():
    with pytest.raises(TypeError, match="not an architecture: dict"):
        build_model({"family": "lpsnet"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"registered family \(LPSNet, MobileNetV2Seg.*got Conv2d"):
        reparameterize(nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]


# A whole new family, as a new module would define it: the registry needs nothing else.
@dataclasses.dataclass(frozen=True)
class ToyArch(ArchJSON):
    channels: int = 8
    num_classes: int = 19
    head: HeadConfig = PLAIN_HEAD

    FIELDS = ("family", "channels", "num_classes", "head")

    def __post_init__(self) -> None:
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ArchError(f"channels must be an integer >= 1, got {self.channels!r}")
        self._check_classes_and_head()

    def inline(self) -> str:
        return f"toy:c={self.channels};k={self.num_classes}" + (
            f";h={self.head.inline()}" if self.head.kind != "plain" else ""
        )

    def path_input_size(self, height: int, width: int) -> list[tuple[int, int]]:
        return [(height, width)]

    def check_input_size(self, height: int, width: int) -> None:
        if height < 2 or width < 2:
            raise ValueError(f"input {height}x{width} is too small; use at least 2x2")

    def head_size(self, height: int, width: int) -> tuple[int, int]:
        return (height - 1) // 2 + 1, (width - 1) // 2 + 1

    def structure(self, height: int, width: int) -> list[tuple[str, str]]:
        return [("backbone", f"one strided conv, {self.channels} channels")]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"family": "toy", "channels": self.channels, "num_classes": self.num_classes}
        if self.head.kind != "plain":
            out["head"] = self.head.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "architecture") -> ToyArch:
        cls._check_keys(data, source)
        return cls(data["channels"], data.get("num_classes", 19), data.get("head", PLAIN_HEAD))


def parse_toy(text: str) -> ToyArch:
    fields = dict(part.split("=", 1) for part in text.removeprefix("toy:").split(";"))
    head = HeadConfig.parse_inline(fields["h"]) if "h" in fields else PLAIN_HEAD
    return ToyArch(int(fields.get("c", 8)), int(fields.get("k", 19)), head)


class ToyNet(SegNet):
    def __init__(self, arch: ToyArch, *, deploy: bool = False) -> None:
        super().__init__()
        self.arch, self.deploy = arch, deploy
        norm = nn.Identity() if deploy else nn.BatchNorm2d(arch.channels)
        self.backbone = nn.Sequential(nn.Conv2d(3, arch.channels, 3, 2, 1, bias=deploy), norm, nn.ReLU())
        self.head = build_head(arch.head, arch.channels, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def fold_toy(model: ToyNet) -> ToyNet:
    conv, bn = model.backbone[0], model.backbone[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = ToyNet(model.arch, deploy=True)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    state["backbone.0.weight"] = conv.weight * scale.reshape(-1, 1, 1, 1)
    state["backbone.0.bias"] = bn.bias - bn.running_mean * scale
    fused.load_state_dict(state)
    return fused.eval()


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setattr(registry_mod, "_FAMILIES", dict(registry_mod._FAMILIES))
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    monkeypatch.setattr(registry_mod, "_DESCRIPTIONS", dict(registry_mod._DESCRIPTIONS))
    family = register_family(Family("toy", ToyArch, ToyNet, parse_toy, fold_toy))
    register_model("toy_8")(lambda: ToyArch(channels=8))
    return family


def test_a_new_family_works_everywhere_an_arch_goes(toy_family, tmp_path):
    assert "toy" in family_names() and "toy_8" in list_models()
    assert describe_model("toy_8") == ""  # a factory without a docstring registers too
    arch = resolve_arch("toy:c=6;k=4;h=denseclip")
    assert arch == ToyArch(6, 4, HeadConfig(kind="denseclip"))
    assert resolve_arch(arch.inline()) == arch
    assert arch_from_dict(arch.to_dict()) == arch
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    assert resolve_arch(str(path)) == arch
    assert resolve_arch("toy_8+fusion", num_classes=3) == ToyArch(8, 3, HeadConfig(kind="fusion"))

    torch.manual_seed(0)
    model = create_model("toy:c=6", num_classes=5)
    assert isinstance(model, ToyNet)
    x = torch.randn(2, 3, 19, 23)
    logits = model(x)
    assert logits.shape == (2, 5, 19, 23)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    deployed = reparameterize(model)
    assert deployed.deploy
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)
