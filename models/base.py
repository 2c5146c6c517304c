"""What every network here shares: a backbone that ends in a feature map, then a head.

Subclasses build ``self.arch`` and ``self.head`` and implement :meth:`SegNet.features`; the logits,
the auxiliary logits of a language-guided head, and the class list come from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .arch import ArchError
from .heads import LanguageHead
from .text import class_embeddings

__all__ = ["FixedUpsample", "SegNet", "resize"]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (LPS-Net's definition); a no-op at the same size."""
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class FixedUpsample(nn.Module):
    """``model`` with ``upsample`` fixed, so tools that call ``module(x)`` (FLOP counters, exporters,
    graph capture) see the form that is meant: the head's logits, or logits at the input size."""

    def __init__(self, model: SegNet, upsample: bool) -> None:
        super().__init__()
        self.model = model
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, upsample=self.upsample)


class SegNet(nn.Module):
    """Base of the segmentation networks: ``features`` (backbone) then ``head``.

    ``forward(x)`` returns logits at the input's size (for training and mIoU);
    ``forward(x, upsample=False)`` the head's logits at output stride 16, what the paper times.
    """

    arch: Any
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        logits = self.head(self.features(x))
        if upsample:
            logits = resize(logits, (int(x.shape[-2]), int(x.shape[-1])))
        return logits

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the head's auxiliary logits (``None`` without them), both at the input's size."""
        size = (int(x.shape[-2]), int(x.shape[-1]))
        feats = self.features(x)
        if not isinstance(self.head, LanguageHead):
            return resize(self.head(feats), size), None
        logits, aux = self.head(feats, return_aux=True)
        return resize(logits, size), (None if aux is None else resize(aux, size))

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The classes a language-guided head was pointed at (``None``: not set, or a plain head)."""
        return self.head.class_names if isinstance(self.head, LanguageHead) else None

    def set_classes(self, class_names: Sequence[str], embeddings: torch.Tensor | None = None) -> None:
        """Point a language-guided head at these classes (embedded with the head's encoder unless given).

        ``arch.num_classes`` follows the new list, so the logits get one channel per class.

        Raises:
            ArchError: The head is ``plain`` (its classes are fixed by its weights).
            HeadError, TextEncoderError: Bad embeddings or class names, or an encoder that cannot load.
        """
        head = self.head
        if not isinstance(head, LanguageHead):
            raise ArchError(
                f"{self.arch.inline()} has a plain head: its classes are fixed by its weights; "
                "build it with a language-guided head (h=denseclip or h=fusion) to name classes"
            )
        if embeddings is None:
            cfg = self.arch.head
            embeddings = class_embeddings(cfg.text_encoder, list(class_names), cfg.templates)
        head.set_class_embeddings(embeddings, list(class_names))
        if self.arch.num_classes != head.num_classes:
            self.arch = dataclasses.replace(self.arch, num_classes=head.num_classes)
