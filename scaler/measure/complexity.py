"""Static cost of an architecture: parameters (train and deploy form) and MACs counted with ptflops."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

import torch
from torch import nn

from models import SegArch, build_model, reparameterize
from models.lpsnet import FixedUpsample

__all__ = ["FLOPS_BACKENDS", "Complexity", "count_parameters", "measure_complexity"]

# ptflops' default backend changed between releases, so we always name it. 'aten' counts the
# convolutions and matrix products at the ATen level (what the paper's GFLOPs count); 'pytorch'
# hooks nn.Modules and functionals, so it also counts BatchNorm, ReLU, additions and resizes.
FLOPS_BACKENDS = ("aten", "pytorch")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclasses.dataclass(frozen=True)
class Complexity:
    """What :func:`measure_complexity` reports; every number says what it was measured on."""

    arch: SegArch
    input_hw: tuple[int, int]
    params_train: int
    params_deploy: int
    macs: int
    macs_form: str
    include_upsample: bool
    flops_backend: str
    ptflops_version: str
    path_inputs: list[tuple[int, int]]
    head_hw: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_dict(),
            "arch_hash": self.arch.arch_hash(),
            "inline": self.arch.inline(),
            "input": {"batch": 1, "channels": 3, "height": self.input_hw[0], "width": self.input_hw[1]},
            "path_inputs": [list(s) for s in self.path_inputs],
            "head_output": {"channels": self.arch.num_classes, "height": self.head_hw[0], "width": self.head_hw[1]},
            "params_train": self.params_train,
            "params_deploy": self.params_deploy,
            "macs": self.macs,
            "gmacs": round(self.macs / 1e9, 4),
            "macs_form": self.macs_form,
            "include_final_upsample": self.include_upsample,
            "flops_counter": {"name": "ptflops", "version": self.ptflops_version, "backend": self.flops_backend},
        }


def measure_complexity(
    arch: SegArch,
    input_hw: tuple[int, int] = (1024, 2048),
    *,
    flops_backend: str = "aten",
    include_upsample: bool = False,
) -> Complexity:
    """Count parameters and MACs of ``arch`` for one ``3 x H x W`` image.

    MACs are counted on the deploy form (what runs at inference), by default up to the head's
    logits without the final upsample, as the paper reports them.

    Raises:
        ValueError: Unknown ``flops_backend`` or an input too small for the architecture.
    """
    from ptflops import get_model_complexity_info

    if flops_backend not in FLOPS_BACKENDS:
        raise ValueError(f"flops backend must be one of {', '.join(FLOPS_BACKENDS)}, got {flops_backend!r}")
    h, w = input_hw
    arch.check_input_size(h, w)
    model = build_model(arch).eval()
    deploy = reparameterize(model)
    wrapped = FixedUpsample(deploy, include_upsample).eval()
    with torch.no_grad():
        macs, _ = get_model_complexity_info(
            wrapped,
            (3, h, w),
            as_strings=False,
            print_per_layer_stat=False,
            verbose=False,
            backend=flops_backend,
        )
    if macs is None:
        raise RuntimeError(f"ptflops ({flops_backend} backend) could not count this model")
    return Complexity(
        arch=arch,
        input_hw=(h, w),
        params_train=count_parameters(model),
        params_deploy=count_parameters(deploy),
        macs=int(macs),
        macs_form="deploy",
        include_upsample=include_upsample,
        flops_backend=flops_backend,
        ptflops_version=importlib.metadata.version("ptflops"),
        path_inputs=arch.path_input_size(h, w),
        head_hw=arch.head_size(h, w),
    )
