"""One registry for named networks, and one resolver for every way a user can name an architecture.

An ARCH, wherever the tool takes one, is any of:

- a registered name (``lpsnet_s``; see :func:`list_models`), optionally with a head:
  ``lpsnet_s+fusion``, ``mobilenetv2_050+denseclip``,
- an inline spelling (``lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25``,
  ``mobilenetv2:m=0.5;h=fusion``),
- the path of an ``arch.json`` file,
- an architecture object (from Python).

Every backbone family registers itself in its own module with :func:`register_family` (its name,
architecture class, network class, inline parser and deploy-form fold) and its named variants
with :func:`register_model`; the functions here know families only through that table. Two are
registered: LPS-Net (:mod:`models.lpsnet`) and a MobileNetV2-style network (:mod:`models.mobilenetv2`).
A new family is one new module, imported by :mod:`models` so that it registers.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .arch import ArchError, ArchJSON, loads_object
from .base import SegNet
from .heads import HEAD_KINDS, HeadConfig, deploy_head

__all__ = [
    "Family",
    "SegArch",
    "SegModel",
    "arch_from_dict",
    "build_model",
    "create_model",
    "describe_model",
    "family_names",
    "get_arch",
    "get_family",
    "list_models",
    "load_arch_json",
    "portable_state_dict",
    "register_family",
    "register_model",
    "reparameterize",
    "resolve_arch",
]

SegArch = ArchJSON
SegModel = SegNet
ArchFactory = Callable[[], SegArch]
# arch.json files written before the ``family`` key existed all describe LPS-Nets.
_UNNAMED_FAMILY = "lpsnet"
_FAMILY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Family:
    """A backbone family: everything the registry needs to parse, build and fold its networks.

    Args:
        name: The ``family`` key of its ``to_dict`` form and the prefix of its inline spelling
            (``name:...``); a lower-case word.
        arch_class: Its architecture, an :class:`~models.arch.ArchJSON` dataclass.
        model_class: Its network, a :class:`~models.base.SegNet` built as ``model_class(arch, deploy=...)``.
        parse_inline: ``"name:..."`` to an ``arch_class``; raises ``ArchError`` naming the bad part.
        reparameterize: A trained ``model_class`` to its deploy form (BatchNorm folded, eval mode),
            computing what ``model.eval()`` computes.
    """

    name: str
    arch_class: type[ArchJSON]
    model_class: type[SegNet]
    parse_inline: Callable[[str], ArchJSON]
    reparameterize: Callable[[Any], SegNet]


_FAMILIES: dict[str, Family] = {}
_REGISTRY: dict[str, ArchFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the table every ARCH spelling and every build goes through.

    Raises:
        ValueError: The name is taken or not a lower-case word, or its classes are already another
            family's.
    """
    if not _FAMILY_NAME.match(family.name):
        raise ValueError(f"family name must be a lower-case word (it prefixes inline specs), got {family.name!r}")
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    for other in _FAMILIES.values():
        if family.arch_class is other.arch_class or family.model_class is other.model_class:
            raise ValueError(f"family {family.name!r}: its classes are already registered as {other.name!r}")
    _FAMILIES[family.name] = family
    return family


def family_names() -> list[str]:
    """Registered family names, in registration order (``lpsnet`` first)."""
    return list(_FAMILIES)


def get_family(name: str) -> Family:
    """The family registered as ``name``.

    Raises:
        ArchError: No such family; the message lists the registered ones.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ArchError(f"unknown family {name!r} (known: {', '.join(_FAMILIES)})") from None


def _family_of_arch(arch: Any) -> Family | None:
    return next((f for f in _FAMILIES.values() if isinstance(arch, f.arch_class)), None)


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
        # The first line of the docstring, or nothing: a factory without one still registers.
        _DESCRIPTIONS[name] = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted (each also takes ``+KIND`` for any registered head kind)."""
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The one-line description ``name`` was registered with."""
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
    family = data.get("family", _UNNAMED_FAMILY)
    if not isinstance(family, str) or family not in _FAMILIES:
        raise ArchError(f"{source}: unknown family {family!r} (known: {', '.join(_FAMILIES)})")
    return _FAMILIES[family].arch_class.from_dict(data, source=source)


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
        ArchError: The spec is malformed, names no registered model or family, or points at a bad file.
    """
    if _family_of_arch(spec) is not None:
        arch = spec
    elif isinstance(spec, Path):
        arch = load_arch_json(spec)
    elif isinstance(spec, str):
        arch = _resolve_text(spec.strip())
    else:
        raise ArchError(f"architecture must be a name, inline spec, path or architecture, got {type(spec).__name__}")
    if num_classes is not None and num_classes != arch.num_classes:
        try:
            arch = dataclasses.replace(arch, num_classes=num_classes)
        except ArchError as e:
            raise ArchError(f"--classes: {e}") from None
    return arch


def _resolve_text(text: str) -> SegArch:
    prefix, colon, _ = text.partition(":")
    if text.partition("+")[0] in _REGISTRY:
        return get_arch(text)
    if colon and prefix in _FAMILIES:
        return _FAMILIES[prefix].parse_inline(text)
    if text.endswith(".json") or Path(text).is_file():
        return load_arch_json(text)
    if colon and _FAMILY_NAME.match(prefix) and len(prefix) > 1:  # one letter could be a Windows drive
        raise ArchError(
            f"unknown architecture {text!r}: no family {prefix!r} (known: {', '.join(_FAMILIES)}); "
            "inline specs look like 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5'"
        )
    raise ArchError(
        f"unknown architecture {text!r}: give a registered name ({', '.join(list_models())}; "
        f"{' or '.join(f'NAME+{k}' for k in HEAD_KINDS if k != 'plain')} adds a language-guided head), "
        "an inline spec like 'lpsnet:d=1,1,1,1,1;w=4,8,16,32,32;r=0.5', or a path to an arch.json"
    )


def build_model(arch: SegArch, *, deploy: bool = False) -> SegModel:
    """The network of ``arch`` (randomly initialised, train mode), whatever its family.

    Raises:
        TypeError: ``arch`` is not an architecture of a registered family.
    """
    family = _family_of_arch(arch)
    if family is None:
        raise TypeError(f"not an architecture: {type(arch).__name__}")
    return family.model_class(arch, deploy=deploy)  # type: ignore[call-arg]


def reparameterize(model: SegModel) -> SegModel:
    """The deploy form of ``model`` (BatchNorm folded, the head in its deploy form: :func:`~models.heads.deploy_head`),
    computing what ``model.eval()`` computes.

    Raises:
        TypeError: ``model`` is not a network of a registered family.
    """
    family = next((f for f in _FAMILIES.values() if isinstance(model, f.model_class)), None)
    if family is None:
        known = ", ".join(f.model_class.__name__ for f in _FAMILIES.values())
        raise TypeError(f"reparameterize takes a network of a registered family ({known}), got {type(model).__name__}")
    fused = family.reparameterize(model)
    # The head's own deploy form (the fusion head folds its class constants); the families copy the
    # head as it is. ``model`` itself is returned when already deployed: never change it in place.
    head = getattr(model, "head", None)
    folded = deploy_head(head) if isinstance(head, nn.Module) else head
    if folded is not head:
        if fused is model:
            fused = copy.deepcopy(model)
        fused.head = folded
    return fused


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
