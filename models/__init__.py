"""Network definitions and their registry.

>>> from models import create_model, list_models
>>> list_models()
['lpsnet_l', 'lpsnet_m', 'lpsnet_s', 'lpsnet_tiny', 'mobilenetv2_050', 'mobilenetv2_100']
"""

from __future__ import annotations

# Importing a family's module registers the family and its named variants: a new family is one
# more module imported here.
from . import lpsnet, mobilenetv2
from .arch import MAX_PATHS, NUM_STAGES, ArchError, LPSNetArch, format_inline, parse_inline
from .grow import HEAD_INPUT_WEIGHT, GrowthError, check_growth, grow_model, grow_state_dict, match_paths
from .heads import HEAD_KINDS, HeadConfig, HeadError, LanguageHead, head_kinds, register_head
from .lpsnet import CheckpointError, LPSNet, from_reference_checkpoint
from .mobilenetv2 import MobileNetV2Arch, MobileNetV2Seg
from .registry import (
    Family,
    SegArch,
    SegModel,
    arch_from_dict,
    build_model,
    create_model,
    describe_model,
    family_names,
    get_arch,
    get_family,
    list_models,
    load_arch_json,
    portable_state_dict,
    register_family,
    register_model,
    reparameterize,
    resolve_arch,
)
from .text import DEFAULT_TEMPLATES, TextEncoderError, class_embeddings, get_text_encoder, save_embeddings

__all__ = [
    "DEFAULT_TEMPLATES",
    "HEAD_INPUT_WEIGHT",
    "HEAD_KINDS",
    "MAX_PATHS",
    "NUM_STAGES",
    "ArchError",
    "CheckpointError",
    "Family",
    "GrowthError",
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
    "check_growth",
    "class_embeddings",
    "create_model",
    "describe_model",
    "family_names",
    "format_inline",
    "from_reference_checkpoint",
    "get_arch",
    "get_family",
    "get_text_encoder",
    "grow_model",
    "grow_state_dict",
    "head_kinds",
    "list_models",
    "load_arch_json",
    "lpsnet",
    "match_paths",
    "mobilenetv2",
    "parse_inline",
    "portable_state_dict",
    "register_family",
    "register_head",
    "register_model",
    "reparameterize",
    "resolve_arch",
    "save_embeddings",
]
