"""One registry for named networks, and one resolver for every way a user can name an architecture.

An ARCH, wherever the tool takes one, is any of:

- a registered name (``lpsnet_s``; see :func:`list_models`), optionally with a head:
  ``lpsnet_s+fusion``, ``mobilenetv2_050+denseclip``,
- an inline spelling (``lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25``,
  ``mobilenetv2:m=0.5;h=fusion``),
- the path of an ``arch.json`` file,
- an architecture object (from Python).

Two backbone families share every tool: LPS-Net (:class:`~models.arch.LPSNetArch`) and a
MobileNetV2-style network (:class:`~models.mobilenetv2.MobileNetV2Arch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from . import lpsnet, mobilenetv2
from .arch import FAMILY as LPSNET_FAMILY
from .arch import ArchError, LPSNetArch, loads_object, parse_inline
from .heads import HEAD_KINDS, HeadConfig
from .lpsnet import LPSNet
from .mobilenetv2 import MobileNetV2Arch, MobileNetV2Seg

__all__ = [
    "SegArch",
    "SegModel",
    "arch_from_dict",
    "build_model",
    "create_model",
    "describe_model",
    "get_arch",
    "list_models",
    "load_arch_json",
    "portable_state_dict",
    "register_model",
    "reparameterize",
    "resolve_arch",
]

SegArch = LPSNetArch | MobileNetV2Arch
SegModel = LPSNet | MobileNetV2Seg
ArchFactory = Callable[[], SegArch]
_FAMILIES: dict[str, Any] = {LPSNET_FAMILY: LPSNetArch, mobilenetv2.FAMILY: MobileNetV2Arch}

_REGISTRY: dict[str, ArchFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[ArchFactory], ArchFactory]:
    """Decorator registering a function that returns an architecture under ``name``.

    Raises:
        ValueError: ``name`` is already registered, or contains ``+`` (which attaches a head).
    """

    def wrap(fn: ArchFactory) -> ArchFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if "+" in name:
            raise ValueError(f"model name {name!r} may not contain '+' (NAME+KIND names a head)")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted (each also takes ``+denseclip`` or ``+fusion``)."""
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS[name]


def get_arch(name: str) -> SegArch:
    """The architecture registered under ``name``; ``NAME+KIND`` gives it the head ``KIND``.

    Raises:
        ArchError: No such name or head; the message lists the registered ones.
    """
    base, plus, kind = name.partition("+")
    try:
        arch = _REGISTRY[base]()
    except KeyError:
        raise ArchError(f"unknown model {base!r}; registered: {', '.join(list_models())}") from None
    if plus:
        if kind not in HEAD_KINDS:
            raise ArchError(f"unknown head {kind!r} in {name!r}; heads: {', '.join(HEAD_KINDS)}")
        arch = dataclasses.replace(arch, head=HeadConfig(kind=kind))
    return arch


def arch_from_dict(data: Any, *, source: str = "architecture") -> SegArch:
    """An architecture from its ``to_dict`` form, of the family it names (``lpsnet`` when none).

    Raises:
        ArchError: Unknown family or a malformed field; the message names ``source``.
    """
    if not isinstance(data, dict):
        raise ArchError(f"{source}: expected a JSON object, got {type(data).__name__}")
    family = data.get("family", LPSNET_FAMILY)
    if family not in _FAMILIES:
        raise ArchError(f"{source}: unknown family {family!r} (known: {', '.join(_FAMILIES)})")
    return _FAMILIES[family].from_dict(data, source=source)


def load_arch_json(path: str | Path) -> SegArch:
    """Read an ``arch.json`` (written by ``to_json`` or by ``scaler export``) of any family.

    Raises:
        ArchError: The file cannot be read, is not JSON, or does not describe an architecture.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ArchError(f"{path}: cannot read architecture file ({e.strerror})") from None
    return arch_from_dict(loads_object(text, str(path)), source=str(path))


def resolve_arch(spec: str | Path | SegArch, *, num_classes: int | None = None) -> SegArch:
    """Turn any ARCH spelling into an architecture, optionally with another class count.

    Raises:
        ArchError: The spec is malformed, names no registered model, or points at a bad file.
    """
    if isinstance(spec, (LPSNetArch, MobileNetV2Arch)):
        arch = spec
    elif isinstance(spec, Path):
        arch = load_arch_json(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        if text.partition("+")[0] in _REGISTRY:
            arch = get_arch(text)
        elif text.startswith(f"{LPSNET_FAMILY}:"):
            arch = parse_inline(text)
        elif text.startswith(f"{mobilenetv2.FAMILY}:"):
            arch = mobilenetv2.parse_inline(text)
        elif text.endswith(".json") or Path(text).is_file():
            arch = load_arch_json(text)
        else:
            raise ArchError(
                f"unknown architecture {text!r}: give a registered name ({', '.join(list_models())}; "
                "NAME+fusion or NAME+denseclip adds a language-guided head), an inline spec like "
                "'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', or a path to an arch.json"
            )
    else:
        raise ArchError(f"architecture must be a name, inline spec, path or architecture, got {type(spec).__name__}")
    if num_classes is not None and num_classes != arch.num_classes:
        try:
            arch = dataclasses.replace(arch, num_classes=num_classes)
        except ArchError as e:
            raise ArchError(f"--classes: {e}") from None
    return arch


def build_model(arch: SegArch, *, deploy: bool = False) -> SegModel:
    """The network of ``arch`` (randomly initialised, train mode), whatever its family."""
    if isinstance(arch, MobileNetV2Arch):
        return MobileNetV2Seg(arch, deploy=deploy)
    if isinstance(arch, LPSNetArch):
        return LPSNet(arch, deploy=deploy)
    raise TypeError(f"not an architecture: {type(arch).__name__}")


def reparameterize(model: SegModel) -> SegModel:
    """The deploy form of ``model`` (BatchNorm folded), computing what ``model.eval()`` computes."""
    if isinstance(model, MobileNetV2Seg):
        return mobilenetv2.reparameterize(model)
    if isinstance(model, LPSNet):
        return lpsnet.reparameterize(model)
    raise TypeError(f"reparameterize takes an LPSNet or a MobileNetV2Seg, got {type(model).__name__}")


def portable_state_dict(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` on the CPU and contiguous, ready for ``torch.save``."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def create_model(
    name_or_config: str | Path | SegArch,
    *,
    num_classes: int | None = None,
    deploy: bool = False,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> nn.Module:
    """Build a network from any ARCH spelling (randomly initialised, train mode).

    Args:
        name_or_config: A registered name (``+head`` allowed), inline spec, ``arch.json`` path or
            architecture object.
        num_classes: Replace the architecture's class count.
        deploy: Build the deploy form (no BatchNorm in the backbone; conv biases).
        class_names: For a language-guided head: embed these classes with its text encoder (the
            class count follows them).
    """
    if class_names:
        num_classes = len(class_names)
    model = build_model(resolve_arch(name_or_config, num_classes=num_classes), deploy=deploy)
    if class_names is not None:
        model.set_classes(list(class_names))
    return model


# The four networks of the paper, Table 4 (depth / width / resolution).
@register_model("lpsnet_tiny")
def lpsnet_tiny() -> LPSNetArch:
    """LPS-Net tiny: the start of progressive expansion (one path at 1/2)."""
    return LPSNetArch(depth=(1, 1, 1, 1, 1), width=(4, 8, 16, 32, 32), resolution=(1 / 2,))


@register_model("lpsnet_s")
def lpsnet_s() -> LPSNetArch:
    """LPS-Net-S: two paths at 3/4 and 1/4."""
    return LPSNetArch(depth=(1, 3, 3, 10, 10), width=(8, 24, 48, 96, 96), resolution=(3 / 4, 1 / 4))


@register_model("lpsnet_m")
def lpsnet_m() -> LPSNetArch:
    """LPS-Net-M: S's depth and width, two paths at 1 and 1/4."""
    return LPSNetArch(depth=(1, 3, 3, 10, 10), width=(8, 24, 48, 96, 96), resolution=(1, 1 / 4))


@register_model("lpsnet_l")
def lpsnet_l() -> LPSNetArch:
    """LPS-Net-L: wider last stages, two paths at 1 and 1/4."""
    return LPSNetArch(depth=(1, 3, 3, 10, 10), width=(8, 24, 64, 160, 160), resolution=(1, 1 / 4))


# A second backbone family for the language-guided heads (models/mobilenetv2.py).
@register_model("mobilenetv2_050")
def mobilenetv2_050() -> MobileNetV2Arch:
    """MobileNetV2-style network, width x0.5, output stride 16."""
    return MobileNetV2Arch(width_mult=0.5)


@register_model("mobilenetv2_100")
def mobilenetv2_100() -> MobileNetV2Arch:
    """MobileNetV2-style network, width x1.0, output stride 16."""
    return MobileNetV2Arch(width_mult=1.0)
