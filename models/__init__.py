"""Network definitions and their registry.

>>> from models import create_model, list_models
>>> list_models()
['lpsnet_l', 'lpsnet_m', 'lpsnet_s', 'lpsnet_tiny', 'mobilenetv2_050', 'mobilenetv2_100']
"""

from __future__ import annotations

from . import lpsnet
from .arch import MAX_PATHS, NUM_STAGES, ArchError, LPSNetArch, format_inline, parse_inline
from .heads import HEAD_KINDS, HeadConfig, HeadError, LanguageHead
from .lpsnet import CheckpointError, LPSNet, from_reference_checkpoint
from .mobilenetv2 import MobileNetV2Arch, MobileNetV2Seg
from .registry import (
    SegArch,
    SegModel,
    arch_from_dict,
    build_model,
    create_model,
    describe_model,
    get_arch,
    list_models,
    load_arch_json,
    portable_state_dict,
    register_model,
    reparameterize,
    resolve_arch,
)
from .text import DEFAULT_TEMPLATES, TextEncoderError, class_embeddings, get_text_encoder, save_embeddings

__all__ = [
    "DEFAULT_TEMPLATES",
    "HEAD_KINDS",
    "MAX_PATHS",
    "NUM_STAGES",
    "ArchError",
    "CheckpointError",
    "HeadConfig",
    "HeadError",
    "LPSNet",
    "LPSNetArch",
    "LanguageHead",
    "MobileNetV2Arch",
    "MobileNetV2Seg",
    "SegArch",
    "SegModel",
    "TextEncoderError",
    "arch_from_dict",
    "build_model",
    "class_embeddings",
    "create_model",
    "describe_model",
    "format_inline",
    "from_reference_checkpoint",
    "get_arch",
    "get_text_encoder",
    "list_models",
    "load_arch_json",
    "lpsnet",
    "parse_inline",
    "portable_state_dict",
    "register_model",
    "reparameterize",
    "resolve_arch",
    "save_embeddings",
]
