"""Network definitions and their registry.

>>> from models import create_model, list_models
>>> list_models()
['lpsnet_l', 'lpsnet_m', 'lpsnet_s', 'lpsnet_tiny']
"""

from __future__ import annotations

from . import lpsnet
from .arch import MAX_PATHS, NUM_STAGES, ArchError, LPSNetArch, format_inline, load_arch_json, parse_inline
from .lpsnet import CheckpointError, LPSNet, from_reference_checkpoint, reparameterize
from .registry import create_model, describe_model, get_arch, list_models, register_model, resolve_arch

__all__ = [
    "MAX_PATHS",
    "NUM_STAGES",
    "ArchError",
    "CheckpointError",
    "LPSNet",
    "LPSNetArch",
    "create_model",
    "describe_model",
    "format_inline",
    "from_reference_checkpoint",
    "get_arch",
    "list_models",
    "load_arch_json",
    "lpsnet",
    "parse_inline",
    "register_model",
    "reparameterize",
    "resolve_arch",
]
