"""Segmentation heads, attachable to any backbone that ends in a feature map.

- ``plain``: a 1x1 conv classifier (LPS-Net's own head).
- ``denseclip``: pixel embeddings projected to the text encoder's dimension; the logits are the
  cosine between each pixel and each class's text embedding times a learnable scale (the
  DenseCLIP/LSeg score map).
- ``fusion``: our reading of "CLIP for Lightweight Semantic Segmentation" (Jin and Yang, arXiv
  2310.07394): a conv branch on the visual map and a transformer branch on the class tokens with a
  two-way bridge in between; it lives in :mod:`models.heads_fusion` with its deploy form.

Language-guided heads keep their class embeddings (``K x D``, unit length) in a buffer, so a saved
state dict and an exported ONNX model carry them (the class names travel beside the state dict, in
the weights files the tool writes); :meth:`LanguageHead.set_class_embeddings` swaps in another
class list of any length, and loading a state dict made for another class list takes its K.

A language-guided head may have a deploy form (:meth:`LanguageHead.deploy_form`): what the families'
``reparameterize`` puts in the deployed network, computing the same logits with what depends only on
the class list folded into constants.

A head kind is registered with :func:`register_head` (a builder function, or a :class:`LanguageHead`
subclass); :func:`build_head` and :class:`HeadConfig` know only the registered kinds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .text import DEFAULT_TEMPLATES, TextEncoderError, check_spec, check_templates, encoder_dim

__all__ = [
    "FUSION_PARTS",
    "HEAD_INITS",
    "HEAD_KINDS",
    "HEAD_OPTIMIZERS",
    "LEGACY_RECIPE",
    "DenseCLIPHead",
    "FusionDeployHead",
    "FusionHead",
    "HeadBuilder",
    "HeadConfig",
    "HeadError",
    "LanguageHead",
    "build_head",
    "deploy_head",
    "head_kinds",
    "plain_head",
    "register_head",
]

# The CLIP temperature: logits = scale * cosine, scale starting at 1/0.07 and capped at 100.
INIT_SCALE = 1 / 0.07
MAX_SCALE = 100.0
# NAME+KIND/key=value parts: key -> (field, type).
_INLINE_FIELDS: dict[str, tuple[str, type]] = {
    "dim": ("dim", int),
    "layers": ("layers", int),
    "heads": ("heads", int),
    "aux": ("aux_weight", float),
    "opt": ("optimizer", str),
    "lr": ("lr", float),
    "wd": ("weight_decay", float),
    "warmup": ("warmup", float),
    "init": ("init", str),
    "ablate": ("ablate", str),
}
HEAD_OPTIMIZERS = ("adamw", "sgd")
HEAD_INITS = ("denseclip", "random")
# Parts of the fusion head an ablation can switch off (see FusionHead.switch_off).
FUSION_PARTS = ("text_self", "to_text", "to_pixels")
# What a language-guided head trained with before the recipe fields existed: a head read from a stored run
# or arch.json that does not name them is that head, so old runs resume and compare unchanged.
LEGACY_RECIPE: dict[str, Any] = {"optimizer": "sgd", "init": "random"}
# Fields that mean something only with the AdamW recipe.
_ADAMW_FIELDS = ("lr", "weight_decay", "warmup")


class HeadError(ValueError):
    """A head description that cannot be built; the message names the field and value."""


# (config, in_channels, num_classes) -> the head module.
HeadBuilder = Callable[["HeadConfig", int, int], nn.Module]
_HEADS: dict[str, HeadBuilder] = {}
_Registered = TypeVar("_Registered")


def register_head(kind: str) -> Callable[[_Registered], _Registered]:
    """Decorator registering a head under ``kind`` (what ``HeadConfig(kind=...)`` and ``NAME+KIND`` name).

    It takes a builder function ``(config, in_channels, num_classes) -> nn.Module``, or a class
    with a ``build`` classmethod of that signature (every :class:`LanguageHead` has one).

    Raises:
        ValueError: ``kind`` is already registered or is not a lower-case word, or the object has no
            builder.
    """

    def wrap(obj: _Registered) -> _Registered:
        if kind in _HEADS:
            raise ValueError(f"head kind {kind!r} is already registered")
        if not kind.isidentifier() or kind != kind.lower():
            raise ValueError(f"head kind must be a lower-case word (it is written in NAME+KIND), got {kind!r}")
        builder = getattr(obj, "build", None) if isinstance(obj, type) else obj
        if not callable(builder):
            raise ValueError(f"head {kind!r}: register a builder function or a class with a build classmethod")
        _HEADS[kind] = builder
        return obj

    return wrap


def head_kinds() -> tuple[str, ...]:
    """The registered head kinds, in registration order (``plain`` first)."""
    return tuple(_HEADS)


class _HeadKinds(Sequence[str]):
    """A read-only view of the registered kinds, so ``HEAD_KINDS`` never goes stale."""

    def __getitem__(self, index: Any) -> Any:
        return head_kinds()[index]

    def __len__(self) -> int:
        return len(_HEADS)

    def __iter__(self) -> Iterator[str]:
        return iter(head_kinds())

    def __contains__(self, kind: object) -> bool:
        return kind in _HEADS

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and tuple(other) == head_kinds()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(head_kinds())


HEAD_KINDS: Sequence[str] = _HeadKinds()


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Which head a network ends in, and its settings.

    Args:
        kind: A registered head kind (:data:`HEAD_KINDS`): ``plain``, ``denseclip``, ``fusion``, ...
        text_encoder: Encoder SPEC for the class names (``minilm``, ``open_clip:ARCH:CHECKPOINT``,
            ``file:PATH``); language-guided heads only.
        templates: Prompt templates, one ``{}`` each, averaged per class.
        dim: Width of the fused visual map and class tokens (``fusion``).
        layers: Fusion layers (``fusion``).
        heads: Attention heads; must divide ``dim`` (``fusion``).
        aux_weight: Weight of the auxiliary loss on the pre-fusion score map (``fusion``; 0 = off).
        optimizer: How a language-guided head's transformer parts train: ``adamw`` (its linear layers,
            LayerNorms and logit scale by AdamW with their own learning rate, warm-up and weight decay;
            convolutions and BatchNorms, the head's and the backbone's, by the training config's SGD) or
            ``sgd`` (every parameter by the training config's SGD, as before these fields existed).
        lr: Peak learning rate of the AdamW parameters (poly decay after the warm-up, like the SGD ones).
        weight_decay: AdamW's weight decay on the linear weights (never on norms, biases or the scale).
        warmup: The AdamW parameters' linear warm-up, as a fraction of the schedule (at least the SGD
            warm-up).
        init: How the fusion head starts: ``denseclip`` (every residual branch -- the conv branch, the text
            self-attention and MLP, both bridge directions, the text output -- starts at zero, so the head
            starts as a DenseCLIP score map between the projected pixels and the projected class
            embeddings and learns what the branches add) or ``random`` (PyTorch's default init).
        ablate: Fusion parts switched off, for ablations (:data:`FUSION_PARTS`): ``text_self`` (the class
            tokens' self-attention), ``to_text`` (the pixels -> text bridge direction), ``to_pixels``
            (text -> pixels). A part switched off has its output projection fixed at zero (not trained), so
            the network computes exactly what it would without it (its latency is not saved).

    A head read back from a stored run or arch.json that does not name ``optimizer``/``init`` is the head
    trained before those fields existed (:data:`LEGACY_RECIPE`: SGD, random init), so older runs resume as
    they were; a head written in a search space or an ARCH takes the defaults above.

    Raises:
        HeadError: A value is malformed; the message names it.
    """

    kind: str = "plain"
    text_encoder: str = "minilm"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    dim: int = 64
    layers: int = 1
    heads: int = 4
    aux_weight: float = 0.4
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    init: str = "denseclip"
    ablate: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _HEADS:
            raise HeadError(f"head kind must be one of {', '.join(_HEADS)}, got {self.kind!r}")
        try:
            object.__setattr__(self, "text_encoder", check_spec(self.text_encoder))
            object.__setattr__(self, "templates", check_templates(self.templates))
        except TextEncoderError as e:
            raise HeadError(f"head: {e}") from None
        for name, low in (("dim", 8), ("layers", 1), ("heads", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise HeadError(f"head {name} must be an integer >= {low}, got {v!r}")
        if self.dim % self.heads:
            raise HeadError(f"head dim ({self.dim}) must be a multiple of heads ({self.heads})")
        w = self.aux_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 10:
            raise HeadError(f"head aux_weight must be a number in [0, 10], got {w!r}")
        object.__setattr__(self, "aux_weight", float(w))
        if self.optimizer not in HEAD_OPTIMIZERS:
            raise HeadError(f"head optimizer must be one of {', '.join(HEAD_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.init not in HEAD_INITS:
            raise HeadError(f"head init must be one of {', '.join(HEAD_INITS)}, got {self.init!r}")
        for name, low, high in (("lr", 0.0, 10.0), ("weight_decay", 0.0, 10.0), ("warmup", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise HeadError(f"head {name} must be a number in [{low:g}, {high:g}], got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.lr == 0:
            raise HeadError("head lr must be > 0, got 0")
        # A tuple, or "to_text+text_self" as NAME+KIND/ablate=... writes it.
        a = self.ablate
        parts = tuple(p for p in a.split("+") if p) if isinstance(a, str) else tuple(a)
        bad = [p for p in parts if p not in FUSION_PARTS]
        if bad:
            raise HeadError(f"head ablate: unknown part {bad[0]!r} (parts: {', '.join(FUSION_PARTS)})")
        object.__setattr__(self, "ablate", tuple(sorted(set(parts))))
        # Settings a kind does not use are kept at their defaults, so equal heads compare and hash equal.
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = []
        if self.kind == "plain":
            unused = ["optimizer", *_ADAMW_FIELDS, "init"]
        elif self.optimizer == "sgd":
            unused = list(_ADAMW_FIELDS)
        if self.kind != "fusion":
            unused += ["init", "dim", "layers", "heads", "aux_weight", "ablate"]
        for name in unused:
            object.__setattr__(self, name, defaults[name])

    @property
    def language_guided(self) -> bool:
        return self.kind != "plain"

    @property
    def has_aux(self) -> bool:
        return self.kind == "fusion" and self.aux_weight > 0

    def describe(self) -> str:
        """One line for people: the kind and, for language-guided heads, the encoder and sizes."""
        if self.kind == "plain":
            return "plain (1x1 conv classifier)"
        sizes = (
            f"; dim {self.dim}, {self.layers} layer(s), {self.heads} attention heads" if self.kind == "fusion" else ""
        )
        aux = f"; auxiliary loss weight {self.aux_weight:g}" if self.has_aux else ""
        return (
            f"{self.kind} (language-guided: class names embedded by '{self.text_encoder}' with "
            f"{len(self.templates)} prompt templates{sizes}{aux}; {self.describe_recipe()})"
        )

    def describe_recipe(self) -> str:
        """How the head trains, in a few words (language-guided heads)."""
        if self.optimizer == "sgd":
            text = "trained with the backbone's SGD"
        else:
            text = (
                f"linear layers, norms and scale by AdamW (lr {self.lr:g}, weight decay {self.weight_decay:g}, "
                f"warm-up {self.warmup:.0%}), convolutions by the backbone's SGD"
            )
        if self.kind == "fusion":
            text += "; starts as DenseCLIP" if self.init == "denseclip" else "; random init"
            if self.ablate:
                text += f"; switched off: {', '.join(self.ablate)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; a plain head is just its kind, the settings that matter to the others follow."""
        if self.kind == "plain":
            return {"kind": "plain"}
        out: dict[str, Any] = {"kind": self.kind, "text_encoder": self.text_encoder, "templates": list(self.templates)}
        if self.kind == "fusion":
            out.update(dim=self.dim, layers=self.layers, heads=self.heads, aux_weight=self.aux_weight)
        # The recipe's fields only where they differ from the legacy recipe: a head of a run made before
        # them writes (and hashes) as it did.
        if self.optimizer != LEGACY_RECIPE["optimizer"]:
            out.update(optimizer=self.optimizer, **{name: getattr(self, name) for name in _ADAMW_FIELDS})
        if self.kind == "fusion" and self.init != LEGACY_RECIPE["init"]:
            out["init"] = self.init
        if self.ablate:
            out["ablate"] = list(self.ablate)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "head", stored: bool = True) -> HeadConfig:
        """The head a :meth:`to_dict` mapping, a kind string or a search space's ``head:`` describes.

        Args:
            data: A kind (``"fusion"``) or a mapping of fields.
            source: Named in error messages.
            stored: ``data`` was written by :meth:`to_dict` (a run, an arch.json): a language-guided head
                that names no ``optimizer``/``init`` trained with :data:`LEGACY_RECIPE`. ``False`` (what a
                user writes in a search space): missing fields take the current defaults.

        Raises:
            HeadError: Not a kind or a mapping, an unknown key, or a bad value.
        """
        if isinstance(data, str):  # a kind alone names no recipe: today's defaults, whatever ``stored`` says
            data, stored = {"kind": data}, False
        if not isinstance(data, dict):
            raise HeadError(f"{source}: expected a head kind or a mapping, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise HeadError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
        kw = dict(data)
        if stored and kw.get("kind") != "plain":
            for name, value in LEGACY_RECIPE.items():
                kw.setdefault(name, value)
        for name in ("templates", "ablate"):
            if name in kw and isinstance(kw[name], list):
                kw[name] = tuple(kw[name])
        try:
            return cls(**kw)
        except (HeadError, TypeError) as e:
            raise HeadError(f"{source}: {e}") from None

    def inline(self) -> str:
        """``fusion`` or ``fusion/dim=96/layers=2/opt=sgd`` (settings that differ from the defaults)."""
        default = HeadConfig(kind=self.kind)
        parts = [self.kind]
        for key, (attr, cast) in _INLINE_FIELDS.items():
            value = getattr(self, attr)
            if value == getattr(default, attr):
                continue
            if isinstance(value, tuple):
                parts.append(f"{key}={'+'.join(value)}")
            else:
                parts.append(f"{key}={value:g}" if cast is not str else f"{key}={value}")
        return "/".join(parts)

    @classmethod
    def parse_inline(cls, text: str) -> HeadConfig:
        kind, *rest = [p.strip() for p in text.split("/")]
        kw: dict[str, Any] = {}
        for part in rest:
            key, sep, value = part.partition("=")
            if not sep or key not in _INLINE_FIELDS:
                raise HeadError(
                    f"head {text!r}: bad part {part!r} (expected {', '.join(k + '=...' for k in _INLINE_FIELDS)})"
                )
            attr, cast = _INLINE_FIELDS[key]
            try:
                kw[attr] = cast(value)
            except ValueError:
                raise HeadError(f"head {text!r}: {key} must be a number, got {value!r}") from None
        return cls(kind=kind, **kw)


def build_head(config: HeadConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The head module ``config.kind`` names, reading ``in_channels`` features, ``num_classes`` outputs.

    Raises:
        HeadError: ``config.kind`` is not a registered kind; the message lists the registered ones.
    """
    builder = _HEADS.get(config.kind)
    if builder is None:
        raise HeadError(f"unknown head kind {config.kind!r}; registered: {', '.join(_HEADS)}")
    return builder(config, in_channels, num_classes)


@register_head("plain")
def plain_head(config: HeadConfig, in_channels: int, num_classes: int) -> nn.Module:
    """LPS-Net's head: a bare 1x1 ``nn.Conv2d`` (its tensors are ``head.weight``/``head.bias``, as in the
    reference checkpoints, and FLOP counters that match module types exactly count it)."""
    return nn.Conv2d(in_channels, num_classes, 1, 1, 0, bias=True)


def _random_unit(num_classes: int, dim: int) -> torch.Tensor:
    # Stand-ins until real class embeddings are set: seeded, so identical builds are identical
    # networks (latency does not depend on the values; predictions do, so training sets them).
    g = torch.Generator().manual_seed(num_classes * 1009 + dim)
    return F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)


class LanguageHead(nn.Module):
    """Base of the language-guided heads: class embeddings in a buffer, a learnable logit scale.

    Subclasses implement :meth:`forward` (``features -> logits``, and the auxiliary logits when
    asked and they have them) and are registered with :func:`register_head`, which builds them
    through :meth:`build`.
    """

    def __init__(self, config: HeadConfig, in_channels: int, text_dim: int, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.text_dim = text_dim
        self.register_buffer("class_embeddings", _random_unit(num_classes, text_dim))
        self.class_names: tuple[str, ...] | None = None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(INIT_SCALE)))

    @classmethod
    def build(cls, config: HeadConfig, in_channels: int, num_classes: int) -> LanguageHead:
        """The head for ``config``, sized for its text encoder's embeddings (what :func:`build_head` calls)."""
        return cls(config, in_channels, encoder_dim(config.text_encoder), num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def set_class_embeddings(
        self, embeddings: torch.Tensor, class_names: list[str] | tuple[str, ...] | None = None
    ) -> None:
        """Use these ``K x D`` class embeddings (any K); they are L2-normalised here.

        Raises:
            HeadError: Not a ``K x D`` tensor with this head's ``D``, or names that do not match K.
        """
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] < 1:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise HeadError(f"class embeddings must be a K x {self.text_dim} tensor with K >= 1, got {shape}")
        if embeddings.shape[1] != self.text_dim:
            raise HeadError(
                f"class embeddings have dimension {embeddings.shape[1]}, but this head was built for its text "
                f"encoder's {self.text_dim} ({self.config.text_encoder}); embed the classes with the same encoder"
            )
        if class_names is not None and len(class_names) != embeddings.shape[0]:
            raise HeadError(f"{embeddings.shape[0]} class embeddings but {len(class_names)} class names")
        ref = self.class_embeddings
        self.class_embeddings = F.normalize(embeddings.detach().to(device=ref.device, dtype=ref.dtype), dim=-1)
        self.class_names = None if class_names is None else tuple(str(n) for n in class_names)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A state dict saved for another class list holds K' x D embeddings: take its K.
        key = prefix + "class_embeddings"
        incoming = state_dict.get(key)
        if isinstance(incoming, torch.Tensor) and incoming.ndim == 2 and incoming.shape[1] == self.text_dim:
            self.class_embeddings = torch.empty_like(incoming, device=self.class_embeddings.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def deploy_form(self) -> nn.Module:
        """This head in its deploy form (what a deployed network ends in); a head without one returns itself.

        Subclasses whose per-image work can be cut by folding class-list constants return a new module
        computing the same logits (in eval mode); ``self`` is never changed.

        Returns:
            The deploy-form head (``self`` here).
        """
        return self

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(MAX_SCALE)).exp()

    def score_map(self, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosine between every pixel (``B x D x H x W``) and class (``K x D`` or ``B x K x D``), scaled."""
        b, d, h, w = pixels.shape
        p = F.normalize(pixels, dim=1).reshape(b, d, h * w)
        t = F.normalize(text, dim=-1)
        if t.ndim == 2:
            t = t.unsqueeze(0).expand(b, -1, -1)
        return (torch.matmul(t, p) * self.scale()).reshape(b, t.shape[1], h, w)


@register_head("denseclip")
class DenseCLIPHead(LanguageHead):
    """Pixels projected to the text dimension; logits = scale x cosine(pixel, class text)."""

    def __init__(self, config: HeadConfig, in_channels: int, text_dim: int, num_classes: int) -> None:
        super().__init__(config, in_channels, text_dim, num_classes)
        self.pixel = nn.Conv2d(in_channels, text_dim, 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> Any:
        logits = self.score_map(self.pixel(x), self.class_embeddings)
        return (logits, None) if return_aux else logits


def deploy_head(head: nn.Module) -> nn.Module:
    """The deploy form of any head: :meth:`LanguageHead.deploy_form`, or ``head`` itself (``plain``).

    The families' deploy forms go through here (:func:`models.reparameterize`), so what is timed and
    exported is this form.

    Args:
        head: A network's head (``head`` is not changed).

    Returns:
        A new module, or ``head`` itself when it has no other deploy form.
    """
    form = getattr(head, "deploy_form", None)
    return form() if callable(form) else head


# The fusion head is big enough for a module of its own; importing it registers the kind after
# plain and denseclip (the registration order is the order error messages list the kinds in). It
# imports this module's names, so it comes last.
from .heads_fusion import FusionDeployHead, FusionHead  # noqa: E402
