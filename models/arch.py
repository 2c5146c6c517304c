"""The LPS-Net architecture as data: a frozen, validated, hashable, JSON round-trippable config.

An :class:`LPSNetArch` says everything needed to build the network and nothing about weights or how
it was measured. Changes go through :func:`dataclasses.replace`, which re-validates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from fractions import Fraction
from typing import Any

from .heads import HeadConfig, HeadError

__all__ = [
    "MAX_PATHS",
    "NUM_STAGES",
    "STAGE_STRIDES",
    "ArchError",
    "LPSNetArch",
    "format_inline",
    "parse_inline",
]

NUM_STAGES = 5
MAX_PATHS = 3
# Stride of the first block of each stage (the method's definition); output stride 16.
STAGE_STRIDES = (2, 2, 2, 2, 1)
FAMILY = "lpsnet"
PLAIN_HEAD = HeadConfig()


class ArchError(ValueError):
    """An architecture description that cannot be turned into a network."""


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArchError(f"{name} must be a list of {NUM_STAGES} integers, got {value!r}")
    items = list(value)
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise ArchError(f"{name}[{i}] must be an integer, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _as_factor(name: str, i: int, v: Any) -> float:
    if isinstance(v, bool):
        raise ArchError(f"{name}[{i}] must be a number, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(Fraction(v.strip()))
        except (ValueError, ZeroDivisionError):
            raise ArchError(f"{name}[{i}] must be a number such as 0.75 or 3/4, got {v!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ArchError(f"{name}[{i}] must be a finite number, got {v!r}")
    return float(v)


def loads_object(text: str, source: str) -> Any:
    """``json.loads(text)``, or one line naming ``source`` and where the JSON breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchError(f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


class ArchJSON:
    """Base of every family's architecture: what the tools rely on, whatever the backbone.

    A family's architecture is a frozen dataclass with at least ``num_classes`` and ``head``; it
    implements :meth:`to_dict` / :meth:`from_dict` (the ``family`` key names it), :meth:`inline`,
    the input-size methods and :meth:`structure`. JSON, the hash and the checks of the shared
    fields (``num_classes``, ``head``, the keys of a dict form) come from here.
    """

    FIELDS: tuple[str, ...] = ()
    num_classes: int
    head: HeadConfig

    def inline(self) -> str:
        """The inline spelling, ``FAMILY:...``, accepted everywhere an ARCH is."""
        raise NotImplementedError

    def path_input_size(self, height: int, width: int) -> list[tuple[int, int]]:
        """Input size of each of the network's paths for a ``height`` x ``width`` image."""
        raise NotImplementedError

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if a ``height`` x ``width`` image is too small for this network."""
        raise NotImplementedError

    def head_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the head's logits for a ``height`` x ``width`` image."""
        raise NotImplementedError

    def structure(self, height: int, width: int) -> list[tuple[str, str]]:
        """The backbone's shape for people, as ``(label, value)`` rows (``scaler info`` prints them).

        Args:
            height, width: The input size, for rows that depend on it (the paths' input sizes).
        """
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "architecture") -> Any:
        raise NotImplementedError

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, *, source: str = "architecture") -> Any:
        return cls.from_dict(loads_object(text, source), source=source)

    def arch_hash(self, *, length: int = 12) -> str:
        """Stable identifier of the architecture: same network, same hash, across processes and hosts."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:length]

    def _check_classes_and_head(self) -> None:
        """Validate ``num_classes`` and turn a head given as a kind or mapping into a HeadConfig."""
        nc = self.num_classes  # type: ignore[attr-defined]
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise ArchError(f"num_classes must be an integer >= 1, got {nc!r}")
        head = self.head  # type: ignore[attr-defined]
        if not isinstance(head, HeadConfig):
            try:
                object.__setattr__(self, "head", HeadConfig.from_dict(head))
            except HeadError as e:
                raise ArchError(str(e)) from None

    @classmethod
    def _check_keys(cls, data: Any, source: str) -> None:
        """``data`` must be a dict whose keys are all in ``FIELDS``."""
        if not isinstance(data, dict):
            raise ArchError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.FIELDS))
        if unknown:
            raise ArchError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(cls.FIELDS)})")


@dataclasses.dataclass(frozen=True)
class LPSNetArch(ArchJSON):
    """One LPS-Net: per-stage depth and width, per-path input resolution, number of classes.

    Args:
        depth: Blocks per stage, five integers >= 1.
        width: Channels per stage, five integers >= 1.
        resolution: One to three input scale factors in (0, 1]. Zeros mean "no path" and are
            dropped; the rest are stored sorted from high to low, so ``(0.25, 0.75)``,
            ``(0.75, 0.25, 0)`` and ``(0.75, 0.25)`` are the same architecture.
        num_classes: Output channels of the head (for a language-guided head, the number of classes
            it is built for; the class list can be swapped later).
        head: The head after the concatenated paths: LPS-Net's 1x1 conv (``plain``, the default)
            or a language-guided one (see :class:`~models.heads.HeadConfig`).

    Raises:
        ArchError: A field is malformed; the message names the field and the bad value.
    """

    depth: tuple[int, ...]
    width: tuple[int, ...]
    resolution: tuple[float, ...]
    num_classes: int = 19
    head: HeadConfig = PLAIN_HEAD

    FIELDS = ("family", "depth", "width", "resolution", "num_classes", "head")

    def __post_init__(self) -> None:
        depth = _as_int_tuple("depth", self.depth)
        width = _as_int_tuple("width", self.width)
        for name, values in (("depth", depth), ("width", width)):
            if len(values) != NUM_STAGES:
                raise ArchError(f"{name} must have {NUM_STAGES} entries, got {len(values)}: {list(values)}")
            for i, v in enumerate(values):
                if v <= 0:
                    raise ArchError(f"{name}[{i}] must be > 0, got {v}")
        if isinstance(self.resolution, (str, bytes)) or not hasattr(self.resolution, "__iter__"):
            raise ArchError(f"resolution must be a list of 1 to {MAX_PATHS} factors, got {self.resolution!r}")
        raw = [_as_factor("resolution", i, v) for i, v in enumerate(self.resolution)]
        if len(raw) > MAX_PATHS:
            raise ArchError(f"resolution may have at most {MAX_PATHS} entries, got {len(raw)}: {raw}")
        for i, r in enumerate(raw):
            if r < 0 or r > 1:
                raise ArchError(f"resolution[{i}] must be in (0, 1] (or 0 for no path), got {r}")
        factors = tuple(sorted((r for r in raw if r > 0), reverse=True))
        if not factors:
            raise ArchError(f"resolution must have at least one non-zero factor, got {raw}")
        self._check_classes_and_head()
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "resolution", factors)

    @property
    def num_paths(self) -> int:
        """How many parallel paths the network has (one per resolution factor)."""
        return len(self.resolution)

    def path_input_size(self, height: int, width: int) -> list[tuple[int, int]]:
        """Input size of each path for an image of ``height`` x ``width`` (``int(H*r)``, as defined)."""
        return [(int(height * r), int(width * r)) for r in self.resolution]

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if a ``height`` x ``width`` image leaves some path with an empty input."""
        for r, (h, w) in zip(self.resolution, self.path_input_size(height, width), strict=True):
            if h < 1 or w < 1:
                raise ValueError(
                    f"input {height}x{width} is too small for resolution factor {r:g} "
                    f"(path input would be {h}x{w}); use a larger input"
                )

    def head_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the head's logits (path 1's input after the four stride-2 stages)."""
        h, w = self.path_input_size(height, width)[0]
        for s in STAGE_STRIDES:
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
        return h, w

    def structure(self, height: int, width: int) -> list[tuple[str, str]]:
        """Depth, width, and the resolution factors with the paths' input sizes at ``height`` x ``width``."""
        inputs = ", ".join(f"{h}x{w}" for h, w in self.path_input_size(height, width))
        paths = f"{self.num_paths} path{'s' if self.num_paths > 1 else ''}"
        return [
            ("depth", " ".join(map(str, self.depth))),
            ("width", " ".join(map(str, self.width))),
            ("resolution", f"{' '.join(f'{r:g}' for r in self.resolution)}  ({paths}; inputs {inputs})"),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; :meth:`from_dict` inverts it. A plain head is left out (the paper's network)."""
        out: dict[str, Any] = {
            "family": FAMILY,
            "depth": list(self.depth),
            "width": list(self.width),
            "resolution": list(self.resolution),
            "num_classes": self.num_classes,
        }
        if self.head.kind != "plain":
            out["head"] = self.head.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "architecture") -> LPSNetArch:
        """Build from :meth:`to_dict` output; unknown or missing keys are errors naming ``source``."""
        cls._check_keys(data, source)
        family = data.get("family", FAMILY)
        if family != FAMILY:
            raise ArchError(f"{source}: family must be {FAMILY!r}, got {family!r}")
        missing = [k for k in ("depth", "width", "resolution") if k not in data]
        if missing:
            raise ArchError(f"{source}: missing key {missing[0]!r}")
        try:
            return cls(
                depth=data["depth"],
                width=data["width"],
                resolution=data["resolution"],
                num_classes=data.get("num_classes", 19),
                head=data.get("head", PLAIN_HEAD),
            )
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None

    def inline(self) -> str:
        """The inline spelling accepted everywhere an ARCH is, e.g. ``lpsnet:d=1,1,1,1,1;w=...;r=0.5``."""
        return format_inline(self)


def format_inline(arch: LPSNetArch) -> str:
    r = ",".join(f"{x:g}" for x in arch.resolution)
    text = f"lpsnet:d={','.join(map(str, arch.depth))};w={','.join(map(str, arch.width))};r={r}"
    if arch.num_classes != 19:
        text += f";c={arch.num_classes}"
    if arch.head.kind != "plain":
        text += f";h={arch.head.inline()}"
    return text


_INLINE_KEYS = {
    "d": "depth",
    "depth": "depth",
    "w": "width",
    "width": "width",
    "r": "resolution",
    "resolution": "resolution",
    "c": "num_classes",
    "classes": "num_classes",
    "num_classes": "num_classes",
    "h": "head",
    "head": "head",
}


def parse_inline(text: str) -> LPSNetArch:
    """Parse ``lpsnet:d=1,3,3,10,10;w=8,24,48,96,96;r=0.75,0.25[;c=19][;h=fusion]``.

    Resolution factors may be written as fractions (``3/4``). ``h`` names the head's kind and, for
    ``fusion``, sizes that differ from the defaults (``h=fusion/dim=96/layers=2``); the text encoder
    and prompt templates are the defaults (an ``arch.json`` can set them).

    Raises:
        ArchError: The text is malformed; the message names the part that is wrong.
    """
    if not text.startswith(f"{FAMILY}:"):
        raise ArchError(f"inline architecture must start with '{FAMILY}:', got {text!r}")
    body = text[len(FAMILY) + 1 :]
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _INLINE_KEYS:
            raise ArchError(f"inline architecture {text!r}: bad part {part!r} (expected d=..., w=..., r=... or c=...)")
        name = _INLINE_KEYS[key]
        if name in fields:
            raise ArchError(f"inline architecture {text!r}: {name} given twice")
        items = [v.strip() for v in value.split(",") if v.strip()]
        if name == "head":
            try:
                fields[name] = HeadConfig.parse_inline(value.strip())
            except HeadError as e:
                raise ArchError(f"inline architecture {text!r}: {e}") from None
        elif name == "resolution":
            fields[name] = items
        else:
            try:
                ints = [int(v) for v in items]
            except ValueError:
                raise ArchError(f"inline architecture {text!r}: {name} must be integers, got {value!r}") from None
            fields[name] = ints[0] if name == "num_classes" and len(ints) == 1 else ints
    for required in ("depth", "width", "resolution"):
        if required not in fields:
            raise ArchError(f"inline architecture {text!r}: missing {required} ({required[0]}=...)")
    try:
        return LPSNetArch(**fields)
    except ArchError as e:
        raise ArchError(f"inline architecture {text!r}: {e}") from None
