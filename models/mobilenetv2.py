"""A MobileNetV2-style segmentation network: the second backbone family the heads attach to.

The backbone is MobileNetV2's (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018, Table 2), scaled by a width multiplier with channels rounded to multiples
of 8 as the paper's code does. For segmentation two things differ from the classifier: the
160-channel stage keeps stride 1, so features come out at output stride 16 as LPS-Net's do, and
the final 1x1 conv to 1280 channels is left out: the head reads the 320-channel (scaled) features.

Like :class:`~models.lpsnet.LPSNet`, ``forward(x)`` gives logits at the input's size and
``forward(x, upsample=False)`` the head's logits; :func:`reparameterize` folds every BatchNorm of
the backbone into its conv (the deploy form).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from .arch import PLAIN_HEAD, ArchError, ArchJSON
from .base import SegNet
from .heads import HeadConfig, HeadError, build_head
from .lpsnet import _fuse_conv_bn
from .registry import Family, register_family, register_model

__all__ = [
    "FAMILY",
    "MOBILENETV2",
    "MobileNetV2Arch",
    "MobileNetV2Seg",
    "adjust_channels",
    "parse_inline",
    "reparameterize",
]

FAMILY = "mobilenetv2"
# Rows of MobileNetV2's Table 2 (expansion t, channels c, repeats n, stride s); stage 6 (160
# channels) has stride 1 here instead of 2, for output stride 16.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1))
STEM_CHANNELS = 32
OUTPUT_STRIDE = 16


def adjust_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded to a multiple of ``divisor``, never more than 10% below it."""
    scaled = channels * width_mult
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if out < 0.9 * scaled:
        out += divisor
    return out


@dataclasses.dataclass(frozen=True)
class MobileNetV2Arch(ArchJSON):
    """One MobileNetV2-style segmentation network.

    Args:
        width_mult: Channel multiplier of every layer, in (0, 4].
        num_classes: Classes of the head.
        head: The head (see :class:`~models.heads.HeadConfig`).

    Raises:
        ArchError: A field is malformed; the message names it.
    """

    width_mult: float = 1.0
    num_classes: int = 19
    head: HeadConfig = PLAIN_HEAD

    FIELDS = ("family", "width_mult", "num_classes", "head")

    def __post_init__(self) -> None:
        m = self.width_mult
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or not 0 < m <= 4:
            raise ArchError(f"width_mult must be a number in (0, 4], got {m!r}")
        object.__setattr__(self, "width_mult", float(m))
        self._check_classes_and_head()

    @property
    def stem_channels(self) -> int:
        return adjust_channels(STEM_CHANNELS, self.width_mult)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(adjust_channels(c, self.width_mult) for _, c, _, _ in SETTINGS)

    def path_input_size(self, height: int, width: int) -> list[tuple[int, int]]:
        return [(height, width)]

    def check_input_size(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"input {height}x{width} is empty; use a larger input")

    def head_size(self, height: int, width: int) -> tuple[int, int]:
        h, w = height, width
        for s in (2, *(s for *_, s in SETTINGS)):
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
        return h, w

    def structure(self, height: int, width: int) -> list[tuple[str, str]]:
        """The backbone and its channels (stem, then each stage); the same at every input size."""
        return [
            ("backbone", f"MobileNetV2-style, width x{self.width_mult:g} (output stride {OUTPUT_STRIDE})"),
            ("channels", f"{self.stem_channels} {' '.join(map(str, self.stage_channels))}"),
        ]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"family": FAMILY, "width_mult": self.width_mult, "num_classes": self.num_classes}
        if self.head.kind != "plain":
            out["head"] = self.head.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "architecture") -> MobileNetV2Arch:
        cls._check_keys(data, source)
        if data.get("family") != FAMILY:
            raise ArchError(f"{source}: family must be {FAMILY!r}, got {data.get('family')!r}")
        try:
            return cls(
                width_mult=data.get("width_mult", 1.0),
                num_classes=data.get("num_classes", 19),
                head=data.get("head", PLAIN_HEAD),
            )
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None

    def inline(self) -> str:
        text = f"{FAMILY}:m={self.width_mult:g}"
        if self.num_classes != 19:
            text += f";c={self.num_classes}"
        if self.head.kind != "plain":
            text += f";h={self.head.inline()}"
        return text


def parse_inline(text: str) -> MobileNetV2Arch:
    """Parse ``mobilenetv2:m=0.5[;c=19][;h=fusion]``.

    Raises:
        ArchError: The text is malformed; the message names the part that is wrong.
    """
    if not text.startswith(f"{FAMILY}:"):
        raise ArchError(f"inline architecture must start with '{FAMILY}:', got {text!r}")
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text[len(FAMILY) + 1 :].split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        name = {"m": "width_mult", "width_mult": "width_mult", "c": "num_classes", "h": "head", "head": "head"}.get(key)
        if not sep or name is None:
            raise ArchError(f"inline architecture {text!r}: bad part {part!r} (expected m=..., c=... or h=...)")
        try:
            if name == "head":
                fields[name] = HeadConfig.parse_inline(value)
            elif name == "num_classes":
                fields[name] = int(value)
            else:
                fields[name] = float(value)
        except (ValueError, HeadError) as e:
            raise ArchError(f"inline architecture {text!r}: {key}: {e}") from None
    try:
        return MobileNetV2Arch(**fields)
    except ArchError as e:
        raise ArchError(f"inline architecture {text!r}: {e}") from None


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int, act: bool, deploy: bool) -> nn.Sequential:
    # Same indices in both forms (conv, norm, activation), so a folded state dict loads by name.
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=deploy)
    layers: list[nn.Module] = [conv, nn.Identity() if deploy else nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, deploy: bool) -> None:
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [_conv_bn(c_in, hidden, 1, 1, 1, True, deploy)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, hidden, True, deploy),
            _conv_bn(hidden, c_out, 1, 1, 1, False, deploy),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Seg(SegNet):
    """MobileNetV2-style backbone at output stride 16 with any head (see the module docstring)."""

    def __init__(self, arch: MobileNetV2Arch, *, deploy: bool = False) -> None:
        super().__init__()
        if not isinstance(arch, MobileNetV2Arch):
            raise TypeError(f"arch must be a MobileNetV2Arch, got {type(arch).__name__}")
        self.arch = arch
        self.deploy = deploy
        c = arch.stem_channels
        layers: list[nn.Module] = [_conv_bn(3, c, 3, 2, 1, True, deploy)]
        for (t, _, n, s), c_out in zip(SETTINGS, arch.stage_channels, strict=True):
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t, deploy))
                c = c_out
        self.backbone = nn.Sequential(*layers)
        self.head = build_head(arch.head, c, arch.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.arch.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
        return self.backbone(x)


@torch.no_grad()
def reparameterize(model: MobileNetV2Seg) -> MobileNetV2Seg:
    """The deploy form of ``model``: every backbone BatchNorm folded into its conv, in eval mode."""
    if model.deploy:
        return model
    fused = MobileNetV2Seg(model.arch, deploy=True)
    src = model.state_dict()
    dst = {k: v for k, v in src.items() if k.startswith("head.")}
    for name, module in model.backbone.named_modules():
        if isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(module[1], nn.BatchNorm2d):
            w, b = _fuse_conv_bn(module[0], module[1])
            dst[f"backbone.{name}.0.weight"] = w
            dst[f"backbone.{name}.0.bias"] = b
    fused.load_state_dict(dst)
    ref = next(model.parameters())
    return fused.to(device=ref.device, dtype=ref.dtype).eval()


MOBILENETV2 = register_family(
    Family(
        name=FAMILY,
        arch_class=MobileNetV2Arch,
        model_class=MobileNetV2Seg,
        parse_inline=parse_inline,
        reparameterize=reparameterize,
    )
)


@register_model("mobilenetv2_050")
def mobilenetv2_050() -> MobileNetV2Arch:
    """MobileNetV2-style network, width x0.5, output stride 16."""
    return MobileNetV2Arch(width_mult=0.5)


@register_model("mobilenetv2_100")
def mobilenetv2_100() -> MobileNetV2Arch:
    """MobileNetV2-style network, width x1.0, output stride 16."""
    return MobileNetV2Arch(width_mult=1.0)
