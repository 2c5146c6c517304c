"""Device names (``cpu``, ``cuda``, ``cuda:N``): the one parser and the one availability check."""

from __future__ import annotations

import re

import torch

from scaler.errors import UserError

__all__ = ["parse_device", "resolve_device"]

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(spec: object) -> str:
    """``spec`` normalised (``"CUDA:0 "`` → ``"cuda:0"``); checks the spelling, not the machine.

    Raises:
        UserError: Not ``cpu``, ``cuda`` or ``cuda:N``.
    """
    device = str(spec).strip().lower()
    if not _DEVICE_RE.match(device):
        raise UserError(f"unknown device {spec!r}; use cpu, cuda or cuda:N")
    return device


def resolve_device(spec: object) -> torch.device:
    """The device ``spec`` names, made concrete (``cuda`` → ``cuda:<current>``) and checked to exist here.

    Raises:
        UserError: A malformed name, CUDA asked for where it is not available, or no such GPU.
    """
    device = torch.device(parse_device(spec))
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = (
            f"torch {torch.__version__} was built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise UserError(f"CUDA is not available ({why}); use --device cpu")
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= count:
        raise UserError(f"device {spec!r} does not exist: {count} CUDA device(s) visible (cuda:0..{count - 1})")
    return torch.device("cuda", index)
