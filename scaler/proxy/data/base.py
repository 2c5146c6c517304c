"""The dataset contract every loader meets, and the one entry point that opens a dataset by SPEC."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from scaler.errors import UserError

__all__ = [
    "CACHE_BYTES",
    "IGNORE_INDEX",
    "DataError",
    "DatasetInfo",
    "SampleCache",
    "SegmentationDataset",
    "dataset_kinds",
    "open_dataset",
    "register_dataset",
]

IGNORE_INDEX = 255
# Decoded or generated samples one dataset keeps in memory (see SampleCache); 256 MiB holds ~2,000 images
# of 256x512, or the whole train split of CamVid at its own size.
CACHE_BYTES = 256 * 2**20


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


Sample = tuple[torch.Tensor, torch.Tensor]


class SampleCache:
    """Samples a dataset has made once (decoded from files, or generated), kept in memory up to a byte budget.

    A sample is stored as its ``uint8`` image and its mask as ``uint8`` (class indices and the ignore index all
    fit), 4 bytes per pixel, and every access returns fresh copies, so a caller that augments in place never alters
    the stored sample. Samples are kept in the order they are first made until the budget is spent; later ones are
    made on every access. Filling first rather than evicting the least recent keeps the hit rate at budget/size
    under the random order of training, where an LRU cache smaller than the split would churn and hit no more.

    Data-loader workers: a forked worker starts with a copy of the samples cached so far and fills its own, lost
    when the loader ends; a spawned one receives a pickled dataset, and a pickled cache is empty (the recipe
    travels, not the pixels). Nothing is shared between processes, so nothing needs a lock; with workers, samples
    the training process itself has read are the ones every later loader starts with.

    Args:
        max_bytes: The budget; ``None``: :data:`CACHE_BYTES` as it is when the cache is made (tests lower it).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = CACHE_BYTES if max_bytes is None else int(max_bytes)
        self.nbytes = 0
        self._samples: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self._samples)

    def get(self, index: int, make: Callable[[], Sample]) -> Sample:
        """Sample ``index``: a copy of the stored one, or ``make()``'s, stored when it fits the budget.

        Args:
            index: The sample's index in its dataset.
            make: Decodes or generates the sample: ``(uint8 [3, H, W], integer [H, W] mask)``.

        Returns:
            ``(image, mask)``: ``uint8 [3, H, W]`` and ``int64 [H, W]``, never the stored tensors themselves.

        Raises:
            Whatever ``make`` raises; a sample that fails is not stored, so the next access fails the same way.
        """
        hit = self._samples.get(index)
        if hit is None:
            image, mask = make()
            size = image.numel() + mask.numel()
            if self.nbytes + size > self.max_bytes:
                return image, mask.long()
            # Masks hold class indices below 255 or the ignore index 255: uint8 stores them exactly, in 1/8 the bytes.
            hit = (image.contiguous(), _as_uint8(mask))
            self._samples[index] = hit
            self.nbytes += size
        return hit[0].clone(), hit[1].long()

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes, "nbytes": 0, "_samples": {}}


def _as_uint8(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.uint8:
        return mask.contiguous()
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f"a cached mask must hold values in [0, 255], got [{int(mask.min())}, {int(mask.max())}]")
    return mask.to(torch.uint8)


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
