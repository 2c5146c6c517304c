"""One registry for named networks, and one resolver for every way a user can name an architecture.

An ARCH, wherever the tool takes one, is any of:

- a registered name (``lpsnet_s``; see :func:`list_models`),
- an inline spelling (``lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25``),
- the path of an ``arch.json`` file,
- an :class:`~models.arch.LPSNetArch` (from Python).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .arch import ArchError, LPSNetArch, load_arch_json, parse_inline
from .lpsnet import LPSNet

__all__ = ["create_model", "describe_model", "get_arch", "list_models", "register_model", "resolve_arch"]

ArchFactory = Callable[[], LPSNetArch]

_REGISTRY: dict[str, ArchFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[ArchFactory], ArchFactory]:
    """Decorator registering a function that returns an architecture under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def wrap(fn: ArchFactory) -> ArchFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    return _DESCRIPTIONS[name]


def get_arch(name: str) -> LPSNetArch:
    """The architecture registered under ``name``.

    Raises:
        ArchError: No such name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ArchError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def resolve_arch(spec: str | Path | LPSNetArch, *, num_classes: int | None = None) -> LPSNetArch:
    """Turn any ARCH spelling into an :class:`LPSNetArch`, optionally with another class count.

    Raises:
        ArchError: The spec is malformed, names no registered model, or points at a bad file.
    """
    if isinstance(spec, LPSNetArch):
        arch = spec
    elif isinstance(spec, Path):
        arch = load_arch_json(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        if text in _REGISTRY:
            arch = get_arch(text)
        elif text.startswith("lpsnet:"):
            arch = parse_inline(text)
        elif text.endswith(".json") or Path(text).is_file():
            arch = load_arch_json(text)
        else:
            raise ArchError(
                f"unknown architecture {text!r}: give a registered name ({', '.join(list_models())}), "
                "an inline spec like 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', or a path to an arch.json"
            )
    else:
        raise ArchError(f"architecture must be a name, inline spec, path or LPSNetArch, got {type(spec).__name__}")
    if num_classes is not None and num_classes != arch.num_classes:
        try:
            arch = dataclasses.replace(arch, num_classes=num_classes)
        except ArchError as e:
            raise ArchError(f"--classes: {e}") from None
    return arch


def create_model(
    name_or_config: str | Path | LPSNetArch, *, num_classes: int | None = None, deploy: bool = False
) -> nn.Module:
    """Build a network from any ARCH spelling (randomly initialised, train mode).

    Args:
        name_or_config: A registered name, inline spec, ``arch.json`` path or :class:`LPSNetArch`.
        num_classes: Replace the architecture's class count.
        deploy: Build the deploy form (no BatchNorm; conv biases).
    """
    return LPSNet(resolve_arch(name_or_config, num_classes=num_classes), deploy=deploy)


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
