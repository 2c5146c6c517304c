"""The one ONNX export, and the one check that a runtime computes what PyTorch computes.

Both the latency runners that run ONNX (onnxruntime, TensorRT) and ``scaler export`` go through
here, so a network is exported the same way (TorchScript exporter, fixed opset, fixed input shape,
constants folded) whether it is timed or shipped; a shipped model may leave its batch dimension
free (``dynamic_batch``). Its height and width stay fixed: an LPS-Net resizes its input to each
path's ``int(H*r) x int(W*r)`` and its features to each other's sizes, computed in Python, so the
tracer records them as constants. Each caller keeps its own tolerance and wording:
:func:`check_output` raises :class:`OutputMismatch` with the shared part of the message, and the
caller adds where and why.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from scaler.errors import UserError

__all__ = ["ONNX_OPSET", "OutputCheck", "OutputMismatch", "check_output", "export_onnx", "onnx_bytes"]

ONNX_OPSET = 17


def _export(model: nn.Module, x: torch.Tensor, target: str | BinaryIO, *, dynamic_batch: bool = False) -> None:
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracer warns that shapes become constants: exactly what a fixed-shape export wants.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            target,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=["logits"],
            do_constant_folding=True,
            dynamic_axes=axes,
        )


def onnx_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    """``model`` exported to ONNX at input ``x``'s shape (input ``image``, output ``logits``), in memory.

    Args:
        model: The network, in eval mode.
        x: An example input; its shape becomes the model's fixed input shape.

    Returns:
        The serialized ONNX model.
    """
    buffer = io.BytesIO()
    _export(model, x, buffer)
    return buffer.getvalue()


def export_onnx(model: nn.Module, x: torch.Tensor, path: str | Path, *, dynamic_batch: bool = False) -> None:
    """``model`` exported to ONNX as :func:`onnx_bytes` does, written to ``path``.

    Args:
        model: The network, in eval mode.
        x: An example input; its shape becomes the model's fixed input shape.
        path: The file to write (replaced if it exists).
        dynamic_batch: Leave the batch dimension of ``image`` and ``logits`` free (named ``batch``);
            height and width stay ``x``'s (see the module's docstring).

    Raises:
        OSError: ``path`` cannot be written.
    """
    _export(model, x, str(path), dynamic_batch=dynamic_batch)


class OutputMismatch(UserError):
    """A runtime's output is not PyTorch's: another shape (``shape_differs``) or values beyond the tolerance."""

    def __init__(self, message: str, *, shape_differs: bool) -> None:
        super().__init__(message)
        self.shape_differs = shape_differs


@dataclasses.dataclass(frozen=True)
class OutputCheck:
    """A passed :func:`check_output`: the largest absolute difference and the tolerance it met."""

    max_abs_diff: float
    tolerance: float


def check_output(runtime: str, out: torch.Tensor, ref: torch.Tensor, *, atol: float, rtol: float) -> OutputCheck:
    """Check that ``out`` (from ``runtime``) matches PyTorch's ``ref``: same shape, and
    max |out - ref| <= ``atol`` + ``rtol`` * max |ref|.

    Args:
        runtime: Names the runtime in the message, e.g. ``"onnxruntime 1.20.1"``.
        out: The runtime's output (any device or float dtype).
        ref: PyTorch's output on the same input.
        atol, rtol: The tolerance, absolute and relative to the largest reference value.

    Returns:
        The difference and the tolerance.

    Raises:
        OutputMismatch: The shapes differ, or the difference exceeds the tolerance (or is NaN).
    """
    out = out.detach().float().cpu()
    ref = ref.detach().float().cpu()
    if tuple(out.shape) != tuple(ref.shape):
        raise OutputMismatch(
            f"{runtime} output has shape {tuple(out.shape)}, PyTorch's {tuple(ref.shape)}", shape_differs=True
        )
    diff = float((out - ref).abs().max())
    tol = atol + rtol * float(ref.abs().max())
    if not diff <= tol:  # also catches NaN
        raise OutputMismatch(
            f"{runtime} output differs from PyTorch's by {diff:.3g} (tolerance {tol:.3g})", shape_differs=False
        )
    return OutputCheck(max_abs_diff=diff, tolerance=tol)
