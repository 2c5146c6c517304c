"""Growing a trained LPS-Net into a larger one without changing what it computes (issue 12, item 1).

Pure functions from (parent weights, parent architecture, child architecture) to the child's
weights, in the train form (conv + BatchNorm). What each kind of growth keeps:

- **width** (Net2Wider): a widened block's new channels copy existing ones of the same block, chosen
  by a seeded generator (a shuffled round-robin, so no channel is copied twice before every channel
  was copied once); conv rows and BatchNorm weight, bias and running statistics are copied, and the
  next layer's input weights of a copied channel are divided by how many copies it has. The next
  layer is the next block, the next stage's first block, or, after stage 5, the head's first layer
  (:data:`HEAD_INPUT_WEIGHT`), once per path segment of the concatenation. One channel choice per
  block serves every path, so the features the paths add to each other after stages 3 and 4 still
  line up channel by channel. Exact in eval mode, and in train mode too (a copy has its original's
  batch statistics). ``noise`` perturbs the copies' incoming conv weights, so copies can learn
  apart; it is the only change that is not exact.
- **depth**: new blocks are appended at the end of their stage (every block of a stage after the
  first maps the stage's width to itself, so an appended block fits whatever the width) and start
  as identities: a Dirac 3x3 kernel, and BatchNorm with ``weight = sqrt(running_var + eps)`` and
  ``bias = running_mean``, which passes its input through in eval mode whatever the running
  statistics; the input is a ReLU's output, so the block's own ReLU changes nothing. The running
  statistics are set to the moments of that input as the previous block's BatchNorm describes them
  (a rectified normal), so that in train mode, where batch statistics are used, the block starts
  close to an identity too (only close: train-mode BatchNorm normalises by the batch).
- **resolution**: weights are reused unchanged. This is *not* function-preserving: a path whose
  factor grows sees a larger input. Child paths are matched to parent paths (:func:`match_paths`):
  a factor the child keeps keeps its weights, grown factors take the remaining parent paths in rank
  order, and a new path starts as a copy of the parent path with the nearest factor. The paths'
  fusion has no weights of its own (features are added after stages 3 and 4, concatenated before
  the head), so the one change is in the head's input: the columns of a copied path are split
  between it and its copy (Net2Wider across paths), keeping the head's scale if the copy sees what
  its source sees. Not preserved: the new path's features are added into the other paths after
  stages 3 and 4, and the input of every grown path changes.
- **heads**: carried over tensor for tensor (a language-guided head's class embeddings and logit
  scale included); only the first layer's input columns change when the head's input widens.
- **a head change** (another kind, or other settings: a search's ``head`` operator): the backbone is
  grown as above and carried over; the new head starts from its own seeded initialisation (what
  :func:`~models.heads.build_head` builds with torch's generator seeded with ``seed``), as it would
  from scratch. This is *not* function-preserving: nothing of the old head is kept, except a
  language-guided head's class embeddings when the new head embeds the classes the same way (the
  same text encoder and prompt templates) or when they are given (``class_embeddings``); otherwise
  the new head holds its stand-in embeddings until it is pointed at its classes.

A child that is not a growth of its parent (a smaller width or depth, fewer paths, a smaller
factor, another class count) raises :class:`GrowthError` naming the difference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .arch import NUM_STAGES, ArchError, LPSNetArch
from .heads import HeadConfig, LanguageHead, build_head
from .lpsnet import PATH_NAMES, LPSNet

__all__ = ["HEAD_INPUT_WEIGHT", "GrowthError", "check_growth", "grow_model", "grow_state_dict", "match_paths"]

# The tensor that reads the concatenated paths, per head kind: a head kind added later needs its
# entry here before a child whose head input widens can be grown (other growth needs none).
HEAD_INPUT_WEIGHT: dict[str, str] = {
    "plain": "head.weight",
    "denseclip": "head.pixel.weight",
    "fusion": "head.visual_in.0.weight",
}
# nn.BatchNorm2d's default, which every block of models/lpsnet.py uses.
BN_EPS = 1e-5
# Factors closer than this are the same factor (they are sums of 1/8 steps).
_FACTOR_TOL = 1e-9
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class GrowthError(ArchError):
    """A child architecture that is not a growth of its parent, or weights that are not the parent's."""


def check_growth(parent: LPSNetArch, child: LPSNetArch) -> None:
    """Raise :class:`GrowthError` unless ``child`` only adds to ``parent`` (an equal child is fine).

    Growth keeps the class count, and never lowers a depth, a width, the number of paths or, taking
    the factors from high to low, any factor. The head may change (see the module docstring): a child
    that differs in its head alone, or in its head and a growth, passes.

    Raises:
        GrowthError: The first difference that is not growth, named with both values.
        TypeError: An architecture is not an :class:`LPSNetArch`.
    """
    for name, arch in (("parent", parent), ("child", child)):
        if not isinstance(arch, LPSNetArch):
            raise TypeError(f"{name} must be an LPSNetArch, got {type(arch).__name__}")
    where = f"{child.inline()} is not a growth of {parent.inline()}"
    if child.num_classes != parent.num_classes:
        raise GrowthError(f"{where}: num_classes {child.num_classes} != {parent.num_classes}")
    for field in ("depth", "width"):
        for i, (p, c) in enumerate(zip(getattr(parent, field), getattr(child, field), strict=True)):
            if c < p:
                raise GrowthError(f"{where}: {field}[{i}] shrinks from {p} to {c}")
    if child.num_paths < parent.num_paths:
        raise GrowthError(f"{where}: {parent.num_paths} paths become {child.num_paths}")
    for i, (p, c) in enumerate(zip(parent.resolution, child.resolution, strict=False)):
        if c < p - _FACTOR_TOL:
            raise GrowthError(f"{where}: the path-{i + 1} resolution factor falls from {p:g} to {c:g}")


def match_paths(parent: LPSNetArch, child: LPSNetArch) -> tuple[int, ...]:
    """For each child path (high to low factor), the parent path (0-based) whose weights it starts from.

    A factor the child keeps keeps its path; the parent paths whose factors grew take the remaining
    child factors in rank order; each child path left over is new and copies the parent path with the
    nearest factor (the higher one on a tie), whose index then appears twice.

    Raises:
        GrowthError: ``child`` is not a growth of ``parent`` (:func:`check_growth`).
    """
    check_growth(parent, child)
    sources: list[int | None] = [None] * child.num_paths
    unmatched = []
    for pi, pf in enumerate(parent.resolution):
        same = next(
            (ci for ci, cf in enumerate(child.resolution) if sources[ci] is None and abs(cf - pf) <= _FACTOR_TOL), None
        )
        if same is None:
            unmatched.append(pi)
        else:
            sources[same] = pi
    free = [ci for ci in range(child.num_paths) if sources[ci] is None]
    # Removing equal factors from both sides keeps the child's factors above the parent's rank by
    # rank, so a grown path lands on a factor at least its own.
    for pi, ci in zip(unmatched, free, strict=False):
        sources[ci] = pi
    for ci in free[len(unmatched) :]:
        cf = child.resolution[ci]
        sources[ci] = min(range(parent.num_paths), key=lambda pi: (abs(parent.resolution[pi] - cf), pi))
    return tuple(int(s) for s in sources if s is not None)


def grow_state_dict(
    parent_state: Mapping[str, torch.Tensor],
    parent_arch: LPSNetArch,
    child_arch: LPSNetArch,
    *,
    noise: float = 0.0,
    seed: int = 0,
    class_embeddings: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weights of ``child_arch`` grown from a train-form ``parent_state`` (see the module docstring).

    Args:
        parent_state: The parent's state dict (conv + BatchNorm form, as ``LPSNet(parent_arch)`` has).
        parent_arch: The parent's architecture.
        child_arch: A growth of it (:func:`check_growth`).
        noise: Standard deviation, relative to each widened conv's weight spread, of the normal noise
            added to the copied channels' incoming weights (drawn per path, a new path's too); 0 keeps
            the function exactly.
        seed: Seeds which channels are copied and the noise, and a new head's initialisation when the
            head changes: the same seed gives the same weights.
        class_embeddings: When the head changes to a language-guided one: its class embeddings
            (``K x D``, ``K`` = ``child_arch.num_classes``; normalised here). ``None``: the parent's,
            when its head is language-guided with the same text encoder and templates, else the new
            head's stand-ins. Ignored when the head does not change.

    Returns:
        A state dict that ``LPSNet(child_arch).load_state_dict`` takes strictly; the parent's tensors
        are not modified (and never shared).

    Raises:
        GrowthError: ``child_arch`` is not a growth of ``parent_arch``, ``parent_state`` does not fit
            ``parent_arch`` (deploy form included), or the head's input widens for a head kind
            missing from :data:`HEAD_INPUT_WEIGHT`.
        ValueError: ``noise`` is negative or not finite, or ``class_embeddings`` do not fit the new head.
    """
    sources = match_paths(parent_arch, child_arch)
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    _check_parent_state(parent_state, parent_arch)
    gen = torch.Generator().manual_seed(seed)
    maps = [
        [_channel_map(p, c, gen) for _ in range(d)]
        for p, c, d in zip(parent_arch.width, child_arch.width, parent_arch.depth, strict=True)
    ]
    parent_names, child_names = PATH_NAMES[parent_arch.num_paths], PATH_NAMES[child_arch.num_paths]
    out: dict[str, torch.Tensor] = {}
    for ci, pi in enumerate(sources):
        _grow_path(parent_state, parent_names[pi], child_names[ci], maps, parent_arch, child_arch, noise, gen, out)
    if child_arch.head == parent_arch.head:
        out.update(_grow_head(parent_state, parent_arch, child_arch, sources, maps[-1][-1]))
    else:
        out.update(_new_head(parent_state, parent_arch, child_arch, seed, class_embeddings))
    return out


def grow_model(parent: LPSNet, child_arch: LPSNetArch, *, noise: float = 0.0, seed: int = 0) -> LPSNet:
    """``parent`` grown to ``child_arch``: a new network on the parent's device and dtype, in its mode.

    A language-guided head keeps its class names. When the head changes to a language-guided one, it
    takes the parent's class embeddings and names if it embeds classes the same way, else the parent's
    class names embedded with its own text encoder (:meth:`~models.base.SegNet.set_classes`); after a
    plain parent it keeps its stand-in embeddings until ``set_classes`` is called. Arguments and errors
    as :func:`grow_state_dict`.

    Raises:
        GrowthError: Also when ``parent`` is in the deploy form (BatchNorm folded): grow the train
            form, then :func:`~models.lpsnet.reparameterize` the child.
        TypeError: ``parent`` is not an :class:`~models.lpsnet.LPSNet`.
        TextEncoderError: A new language-guided head's text encoder cannot embed the parent's classes.
    """
    if not isinstance(parent, LPSNet):
        raise TypeError(f"parent must be an LPSNet, got {type(parent).__name__}")
    if parent.deploy:
        raise GrowthError(
            f"{parent.arch.inline()} is in the deploy form (BatchNorm folded); grow the train form, "
            "then reparameterize the child"
        )
    state = grow_state_dict(parent.state_dict(), parent.arch, child_arch, noise=noise, seed=seed)
    child = LPSNet(child_arch)
    child.load_state_dict(state, strict=True)
    names = parent.class_names
    if isinstance(child.head, LanguageHead) and names is not None:
        if child_arch.head == parent.arch.head or _same_text(parent.arch.head, child_arch.head):
            child.head.class_names = names
        else:
            child.set_classes(list(names))
    ref = next(parent.parameters())
    return child.to(device=ref.device, dtype=ref.dtype).train(parent.training)


def _channel_map(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """Which old channel each of ``new`` channels copies: itself, then shuffled rounds of all of them."""
    picks: list[int] = []
    while len(picks) < new - old:
        picks.extend(torch.randperm(old, generator=gen).tolist())
    return torch.tensor(list(range(old)) + picks[: new - old], dtype=torch.long)


def _fan_in_split(channel_map: torch.Tensor, old: int) -> torch.Tensor:
    """Per new input channel, 1 / the copy count of the old channel it copies."""
    counts = torch.bincount(channel_map, minlength=old)
    return 1.0 / counts[channel_map].double()


def _widen_conv(
    weight: torch.Tensor, out_map: torch.Tensor, in_map: torch.Tensor, noise: float, gen: torch.Generator
) -> torch.Tensor:
    split = _fan_in_split(in_map, weight.shape[1]).to(weight).reshape(1, -1, *[1] * (weight.ndim - 2))
    grown = weight[out_map][:, in_map] * split
    old = weight.shape[0]
    if noise > 0 and len(out_map) > old:
        spread = float(weight.std()) if weight.numel() > 1 else 1.0
        extra = torch.randn(grown[old:].shape, generator=gen, dtype=torch.float64)
        grown[old:] += (noise * spread * extra).to(dtype=grown.dtype, device=grown.device)
    return grown


def _relu_moments(beta: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``relu(z)`` for ``z ~ N(beta, gamma^2)`` (a BatchNorm output, then ReLU)."""
    sigma = gamma.abs().clamp_min(1e-6)
    a = beta / sigma
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    mean = beta * cdf + sigma * pdf
    second = (beta * beta + sigma * sigma) * cdf + beta * sigma * pdf
    return mean, (second - mean * mean).clamp_min(0)


def _grow_path(
    src: Mapping[str, torch.Tensor],
    parent_name: str,
    child_name: str,
    maps: list[list[torch.Tensor]],
    parent_arch: LPSNetArch,
    child_arch: LPSNetArch,
    noise: float,
    gen: torch.Generator,
    out: dict[str, torch.Tensor],
) -> None:
    in_map = torch.arange(3)
    for s in range(NUM_STAGES):
        for b in range(parent_arch.depth[s]):
            p, c = f"{parent_name}.stages.{s}.{b}", f"{child_name}.stages.{s}.{b}"
            out_map = maps[s][b]
            out[f"{c}.0.weight"] = _widen_conv(src[f"{p}.0.weight"], out_map, in_map, noise, gen)
            for key in _BN_KEYS:
                out[f"{c}.1.{key}"] = src[f"{p}.1.{key}"][out_map].clone()
            out[f"{c}.1.num_batches_tracked"] = src[f"{p}.1.num_batches_tracked"].clone()
            in_map = out_map
        last = f"{child_name}.stages.{s}.{parent_arch.depth[s] - 1}.1"
        mean, var = _relu_moments(out[f"{last}.bias"], out[f"{last}.weight"])
        for b in range(parent_arch.depth[s], child_arch.depth[s]):
            out.update(_identity_block(f"{child_name}.stages.{s}.{b}", mean, var, out[f"{last}.num_batches_tracked"]))


def _identity_block(
    prefix: str, mean: torch.Tensor, var: torch.Tensor, tracked: torch.Tensor
) -> dict[str, torch.Tensor]:
    width = mean.shape[0]
    kernel = torch.zeros(width, width, 3, 3, dtype=mean.dtype, device=mean.device)
    kernel[torch.arange(width), torch.arange(width), 1, 1] = 1.0
    return {
        f"{prefix}.0.weight": kernel,
        f"{prefix}.1.weight": torch.sqrt(var + BN_EPS),
        f"{prefix}.1.bias": mean.clone(),
        f"{prefix}.1.running_mean": mean.clone(),
        f"{prefix}.1.running_var": var.clone(),
        f"{prefix}.1.num_batches_tracked": torch.zeros_like(tracked),
    }


def _grow_head(
    src: Mapping[str, torch.Tensor],
    parent_arch: LPSNetArch,
    child_arch: LPSNetArch,
    sources: tuple[int, ...],
    last_map: torch.Tensor,
) -> dict[str, torch.Tensor]:
    head = {k: v.clone() for k, v in src.items() if k.startswith("head.")}
    old = parent_arch.width[-1]
    if len(last_map) == old and sources == tuple(range(parent_arch.num_paths)):
        return head
    key = HEAD_INPUT_WEIGHT.get(parent_arch.head.kind)
    if key is None:
        raise GrowthError(
            f"head kind {parent_arch.head.kind!r} has no entry in models.grow.HEAD_INPUT_WEIGHT, so its input "
            f"cannot be widened from {parent_arch.inline()} to {child_arch.inline()}; add the name of the "
            "tensor that reads the backbone's features"
        )
    weight = head[key]
    copies = Counter(sources)
    columns = []
    for pi in sources:
        segment = weight[:, pi * old : (pi + 1) * old]
        columns.append(_widen_conv(segment, torch.arange(weight.shape[0]), last_map, 0.0, torch.Generator()))
        columns[-1] /= copies[pi]
    head[key] = torch.cat(columns, dim=1)
    return head


def _same_text(a: HeadConfig, b: HeadConfig) -> bool:
    """Whether two heads embed class names alike (so one's class embeddings serve the other)."""
    return a.language_guided and b.language_guided and (a.text_encoder, a.templates) == (b.text_encoder, b.templates)


def _new_head(
    src: Mapping[str, torch.Tensor],
    parent_arch: LPSNetArch,
    child_arch: LPSNetArch,
    seed: int,
    class_embeddings: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """The tensors of ``child_arch``'s head built afresh, seeded (a head change: nothing is grown)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = build_head(child_arch.head, child_arch.width[-1] * child_arch.num_paths, child_arch.num_classes)
    out = {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    key = "head.class_embeddings"
    if key in out and class_embeddings is not None:
        want = tuple(out[key].shape)
        if not isinstance(class_embeddings, torch.Tensor) or tuple(class_embeddings.shape) != want:
            shape = tuple(class_embeddings.shape) if isinstance(class_embeddings, torch.Tensor) else None
            raise ValueError(
                f"class_embeddings must be a {want[0]} x {want[1]} tensor for {child_arch.inline()}, got {shape}"
            )
        out[key] = F.normalize(class_embeddings.detach().to(dtype=out[key].dtype, device="cpu"), dim=-1)
    elif key in out and key in src and _same_text(parent_arch.head, child_arch.head):
        out[key] = src[key].detach().to(dtype=out[key].dtype, device="cpu").clone()
    ref = src[f"{PATH_NAMES[parent_arch.num_paths][0]}.stages.0.0.0.weight"]
    return {k: v.to(device=ref.device, dtype=ref.dtype if v.is_floating_point() else v.dtype) for k, v in out.items()}


def _check_parent_state(state: Mapping[str, torch.Tensor], arch: LPSNetArch) -> None:
    """Every backbone tensor of ``arch``'s train form is in ``state`` with its shape, and nothing else is."""
    names = PATH_NAMES[arch.num_paths]
    if f"{names[0]}.stages.0.0.1.weight" not in state and f"{names[0]}.stages.0.0.0.bias" in state:
        raise GrowthError(
            f"the weights of {arch.inline()} are in the deploy form (BatchNorm folded); grow the train form"
        )
    expected: dict[str, tuple[int, ...]] = {}
    for name in names:
        c_in = 3
        for s in range(NUM_STAGES):
            w = arch.width[s]
            for b in range(arch.depth[s]):
                p = f"{name}.stages.{s}.{b}"
                expected[f"{p}.0.weight"] = (w, c_in, 3, 3)
                expected.update({f"{p}.1.{k}": (w,) for k in _BN_KEYS})
                expected[f"{p}.1.num_batches_tracked"] = ()
                c_in = w
    for k, shape in expected.items():
        if k not in state:
            raise GrowthError(f"the weights are not those of {arch.inline()}: tensor {k!r} is missing")
        if tuple(state[k].shape) != shape:
            raise GrowthError(
                f"the weights are not those of {arch.inline()}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                f"expected {shape}"
            )
    key = HEAD_INPUT_WEIGHT.get(arch.head.kind)
    if key is not None and key in state:
        want = arch.width[-1] * arch.num_paths
        if state[key].ndim < 2 or state[key].shape[1] != want:
            raise GrowthError(
                f"the weights are not those of {arch.inline()}: {key} has shape {tuple(state[key].shape)}, "
                f"expected {want} input channels"
            )
    extra = [k for k in state if k not in expected and not k.startswith("head.")]
    if extra:
        raise GrowthError(f"the weights are not those of {arch.inline()}: unexpected tensor {extra[0]!r}")
