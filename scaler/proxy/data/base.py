"""The dataset contract every loader meets, and the one entry point that opens a dataset by SPEC."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from scaler.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "DatasetInfo",
    "SegmentationDataset",
    "dataset_kinds",
    "open_dataset",
    "register_dataset",
]

IGNORE_INDEX = 255


class DataError(UserError):
    """Bad data: a missing dataset, a corrupt image or mask, or a label outside the classes.

    The message names the file (and the bad value, for labels), so a user can find and fix it.
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on the dataset needs to know: class names and the ignore label."""

    name: str
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class SegmentationDataset(Dataset):
    """A split of a segmentation dataset.

    ``dataset[i]`` returns ``(image, mask)``: ``image`` a ``uint8`` tensor ``[3, H, W]`` (RGB),
    ``mask`` an ``int64`` tensor ``[H, W]`` whose values are class indices in ``[0, K)`` or
    ``info.ignore_index``. Loading a sample whose image or mask cannot be decoded, or whose mask
    holds another value, raises :class:`DataError` naming the file (and the value).
    """

    info: DatasetInfo
    split: str

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (its files), for error messages."""
        return f"{self.info.name}[{self.split}] sample {index}"


Opener = Callable[[str, str, int], SegmentationDataset]
_OPENERS: dict[str, Opener] = {}


def register_dataset(kind: str) -> Callable[[Opener], Opener]:
    """Register ``opener(argument, split, seed)`` for SPECs of the form ``kind`` or ``kind:argument``."""

    def wrap(fn: Opener) -> Opener:
        if kind in _OPENERS:
            raise ValueError(f"dataset kind {kind!r} is already registered")
        _OPENERS[kind] = fn
        return fn

    return wrap


def dataset_kinds() -> list[str]:
    """The registered SPEC kinds."""
    from scaler.proxy.data import loaders  # noqa: F401  (registers the kinds)

    return sorted(_OPENERS)


def open_dataset(spec: str, split: str = "train", *, seed: int = 0) -> SegmentationDataset:
    """Open a dataset split from a SPEC: ``synthetic[:k=v,...]``, ``cityscapes:PATH``, ``camvid:PATH``,
    ``ade20k:PATH`` or ``folder:PATH``.

    Raises:
        DataError: Unknown kind, missing path, or a tree not in the expected layout (one line saying
            what is missing where).
    """
    from scaler.proxy.data import loaders  # noqa: F401  (registers the kinds)

    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    kind, _, argument = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _OPENERS:
        raise DataError(
            f"unknown dataset {spec!r}: use one of synthetic, cityscapes:PATH, camvid:PATH, ade20k:PATH, folder:PATH"
        )
    return _OPENERS[kind](argument.strip(), split, seed)
