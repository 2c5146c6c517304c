"""LPS-Net (Zhang et al., arXiv 2207.13600) as the method defines it.

One to three parallel paths of five stages of 3x3 conv-BN-ReLU blocks, each path fed the image
resized by its own factor; after stages 3 and 4 every path adds the other paths' features, resized
to its own size; after stage 5 the lower paths are resized to path 1's size, concatenated, and a
1x1 conv gives the class logits at output stride 16.

Module and tensor names follow the reference implementation, so its checkpoints load unchanged:
``<path>.stages.<stage>.<block>.0`` is the conv, ``.1`` the BatchNorm, and ``<path>`` is ``net``,
``netH``/``netL`` or ``net1``/``net2``/``net3``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .arch import FAMILY, NUM_STAGES, STAGE_STRIDES, ArchError, LPSNetArch, parse_inline
from .base import FixedUpsample, SegNet, resize
from .heads import build_head
from .registry import Family, register_family, register_model

__all__ = [
    "INTERACTION_STAGES",
    "LPSNET",
    "PATH_NAMES",
    "CheckpointError",
    "FixedUpsample",
    "LPSNet",
    "from_reference_checkpoint",
    "reparameterize",
]

PATH_NAMES: dict[int, tuple[str, ...]] = {1: ("net",), 2: ("netH", "netL"), 3: ("net1", "net2", "net3")}
# Zero-based indices of the stages after which the paths exchange features (stages 3 and 4).
INTERACTION_STAGES = (2, 3)


class CheckpointError(ValueError):
    """A state dict that does not describe an LPS-Net, or not the one asked for."""


def _block(c_in: int, c_out: int, stride: int, deploy: bool) -> nn.Sequential:
    if deploy:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=True), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class LPSPath(nn.Module):
    """One path: five stages; the first block of stage i has stride ``STAGE_STRIDES[i]``."""

    def __init__(self, depth: tuple[int, ...], width: tuple[int, ...], *, deploy: bool = False) -> None:
        super().__init__()
        stages = []
        c_in = 3
        for d, c, s in zip(depth, width, STAGE_STRIDES, strict=True):
            blocks = []
            for b in range(d):
                blocks.append(_block(c_in, c, s if b == 0 else 1, deploy))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)


class LPSNet(SegNet):
    """LPS-Net built from an :class:`~models.arch.LPSNetArch`.

    Args:
        arch: The architecture.
        deploy: Build the inference form (BatchNorm folded into conv biases). Use
            :func:`reparameterize` to turn a trained network into this form.

    ``forward(x)`` returns logits at the input's size (for training and mIoU);
    ``forward(x, upsample=False)`` returns the head's logits at output stride 16, which is the
    reference network's output and what the paper times.

    With a language-guided head (``arch.head``), the logits are scores against class embeddings
    the head keeps: :meth:`set_classes` embeds a class list (any length) with the head's text
    encoder; until then they are seeded random stand-ins (enough to time the network).
    """

    def __init__(self, arch: LPSNetArch, *, deploy: bool = False) -> None:
        super().__init__()
        if not isinstance(arch, LPSNetArch):
            raise TypeError(f"arch must be an LPSNetArch, got {type(arch).__name__}")
        self.arch = arch
        self.deploy = deploy
        self.path_names = PATH_NAMES[arch.num_paths]
        for name in self.path_names:
            self.add_module(name, LPSPath(arch.depth, arch.width, deploy=deploy))
        self.head = build_head(arch.head, arch.width[-1] * arch.num_paths, arch.num_classes)

    @property
    def paths(self) -> list[LPSPath]:
        return [getattr(self, n) for n in self.path_names]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: path 1's stage-5 features concatenated with the lower paths' (resized)."""
        height, width = int(x.shape[-2]), int(x.shape[-1])
        self.arch.check_input_size(height, width)
        sizes = self.arch.path_input_size(height, width)
        feats = [resize(x, s) for s in sizes]
        paths = self.paths
        for i in range(NUM_STAGES):
            feats = [p.stages[i](f) for p, f in zip(paths, feats, strict=True)]
            if i in INTERACTION_STAGES and len(feats) > 1:
                feats = _interact(feats)
        top = (int(feats[0].shape[-2]), int(feats[0].shape[-1]))
        return torch.cat([feats[0]] + [resize(f, top) for f in feats[1:]], dim=1)


def _interact(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for i, f in enumerate(feats):
        size = (int(f.shape[-2]), int(f.shape[-1]))
        acc = f
        for j, g in enumerate(feats):
            if j != i:
                acc = acc + resize(g, size)
        out.append(acc)
    return out


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


@torch.no_grad()
def reparameterize(model: LPSNet) -> LPSNet:
    """Return the deploy form of ``model``: every BatchNorm folded into its conv, in eval mode.

    The result computes what ``model.eval()`` computes, to float tolerance. ``model`` is unchanged.
    """
    if model.deploy:
        return model
    fused = LPSNet(model.arch, deploy=True)
    src = model.state_dict()
    dst = {}
    for name in model.path_names:
        path: LPSPath = getattr(model, name)
        for si, stage in enumerate(path.stages):
            for bi, block in enumerate(stage):
                w, b = _fuse_conv_bn(block[0], block[1])
                dst[f"{name}.stages.{si}.{bi}.0.weight"] = w
                dst[f"{name}.stages.{si}.{bi}.0.bias"] = b
    # The head is copied as it is (a language-guided head's normalisations stay in eval mode).
    dst.update({k: v for k, v in src.items() if k.startswith("head.")})
    fused.load_state_dict(dst)
    ref = next(model.parameters())
    return fused.to(device=ref.device, dtype=ref.dtype).eval()


_CONV_KEY = re.compile(r"^(?P<path>[A-Za-z0-9_]+)\.stages\.(?P<stage>\d+)\.(?P<block>\d+)\.0\.weight$")
_WRAPPER_KEYS = ("state_dict", "model", "net", "module")


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in _WRAPPER_KEYS:
                if isinstance(obj.get(key), Mapping):
                    return _unwrap(obj[key], source)
            raise CheckpointError(f"{source}: no tensors found (keys: {', '.join(map(str, list(obj)[:8]))})")
        sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        return sd
    raise CheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")


def _infer_arch(sd: dict[str, torch.Tensor], source: str) -> tuple[tuple[str, ...], list[int], list[int], int]:
    blocks: dict[str, dict[int, dict[int, torch.Tensor]]] = {}
    for key, tensor in sd.items():
        m = _CONV_KEY.match(key)
        if m:
            stage = blocks.setdefault(m["path"], {}).setdefault(int(m["stage"]), {})
            stage[int(m["block"])] = tensor
    names = tuple(sorted(blocks))
    layout = next((v for v in PATH_NAMES.values() if sorted(v) == list(names)), None)
    if layout is None:
        raise CheckpointError(
            f"{source}: path names {list(names) or 'none'} match no LPS-Net layout "
            f"(expected one of {[list(v) for v in PATH_NAMES.values()]}, "
            "with tensors named <path>.stages.<stage>.<block>.0.weight)"
        )
    first = blocks[layout[0]]
    if sorted(first) != list(range(NUM_STAGES)):
        raise CheckpointError(f"{source}: {layout[0]} has stages {sorted(first)}, expected 0..{NUM_STAGES - 1}")
    depth, width = [], []
    for si in range(NUM_STAGES):
        stage = first[si]
        if sorted(stage) != list(range(len(stage))):
            raise CheckpointError(f"{source}: {layout[0]}.stages.{si} has blocks {sorted(stage)}, not 0..n-1")
        depth.append(len(stage))
        width.append(int(stage[0].shape[0]))
    if "head.weight" not in sd:
        raise CheckpointError(f"{source}: missing tensor 'head.weight'")
    num_classes = int(sd["head.weight"].shape[0])
    return layout, depth, width, num_classes


def from_reference_checkpoint(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | Path,
    resolution: tuple[float, ...] | list[float],
    num_classes: int | None = None,
) -> LPSNet:
    """Build an LPS-Net from a checkpoint saved by the LPS-Net reference code.

    Depth, width, number of paths and classes are read from the tensors; the resolution factors are
    not stored there and must be given (high to low, one per path). Train-form (conv + BN) and
    deploy-form (conv with bias) state dicts are accepted, bare or wrapped in ``{"state_dict": ...}``
    and with or without a DataParallel ``module.`` prefix.

    Args:
        state_dict_or_path: A state dict, or the path of a file holding one (loaded with
            ``torch.load(weights_only=True)``).
        resolution: The paths' input scale factors, e.g. ``(0.75, 0.25)`` for LPS-Net-S.
        num_classes: If given, must equal the head's output channels.

    Returns:
        The network in eval mode; ``model(x, upsample=False)`` gives the reference network's output.

    Raises:
        CheckpointError: The file cannot be read, or the tensors do not fit; the message names the
            first mismatched tensor.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        source = str(state_dict_or_path)
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{source}: no such checkpoint file") from None
        except Exception as e:  # torch.load raises many types for corrupt or unsafe files
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if found:
                raise CheckpointError(
                    f"{source}: holds a pickled {found.group(1)} besides tensors, which weights_only loading refuses; "
                    "if you trust the file, save its state dict alone, e.g. torch.save(torch.load(path, "
                    "weights_only=False)['state_dict'], 'weights.pth')"
                ) from None
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
            reason = detail.group(1) if detail else (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{source}: cannot load checkpoint, not a PyTorch state dict ({reason})") from None
    else:
        source = "checkpoint"
        obj = state_dict_or_path
    sd = _unwrap(obj, source)
    layout, depth, width, inferred_classes = _infer_arch(sd, source)
    if num_classes is not None and num_classes != inferred_classes:
        raise CheckpointError(
            f"{source}: head.weight has {inferred_classes} classes, but num_classes={num_classes} was asked for"
        )
    try:
        arch = LPSNetArch(depth=depth, width=width, resolution=resolution, num_classes=inferred_classes)
    except ArchError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if arch.num_paths != len(layout):
        raise CheckpointError(
            f"{source}: the checkpoint has {len(layout)} path(s) ({', '.join(layout)}) but "
            f"{arch.num_paths} resolution factor(s) were given: {list(arch.resolution)}"
        )
    deploy = f"{layout[0]}.stages.0.0.1.weight" not in sd and f"{layout[0]}.stages.0.0.0.bias" in sd
    model = LPSNet(arch, deploy=deploy)
    _load_exact(model, sd, source)
    return model.eval()


def _load_exact(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            if key.endswith("num_batches_tracked"):
                continue
            raise CheckpointError(f"{source}: missing tensor {key!r} (expected shape {tuple(ref.shape)})")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(sd[key].shape)}, expected {tuple(ref.shape)}"
            )
    extra = [k for k in sd if k not in expected]
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r} (not part of the inferred network)")
    model.load_state_dict({k: v for k, v in sd.items()}, strict=True)


LPSNET = register_family(
    Family(
        name=FAMILY,
        arch_class=LPSNetArch,
        model_class=LPSNet,
        parse_inline=parse_inline,
        reparameterize=reparameterize,
    )
)


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
