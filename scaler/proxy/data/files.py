"""Shared machinery for datasets stored as image and mask files: finding and pairing the files, decoding them,
mapping raw mask values to class indices, and the one dataset class every file-based loader returns.

Every problem a user can cause (a missing folder, an image without a mask, an undecodable file, a mask of the
wrong size or with a value that is no class) raises :class:`~scaler.proxy.data.base.DataError` with one line that names
the file and, for labels, the value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from scaler.proxy.data.base import IGNORE_INDEX, DataError, DatasetInfo, SampleCache, SegmentationDataset

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "FileSegmentationDataset",
    "LabelMap",
    "dataset_root",
    "list_files",
    "pair_by_stem",
    "pair_samples",
    "read_image",
    "read_index_mask",
    "require_dir",
    "require_samples",
    "unique_stems",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
MASK_SUFFIXES: tuple[str, ...] = (".png",)

# How many offending label values an error message lists before it says "and N more".
_MAX_VALUES_SHOWN = 8


def dataset_root(kind: str, argument: str, layout: str) -> Path:
    """The dataset folder named by a SPEC's argument, checked to exist and to be a folder.

    Args:
        kind: The SPEC kind (``"cityscapes"``, ...), for messages.
        argument: The part of the SPEC after ``kind:``.
        layout: One phrase describing what the folder must hold, for messages.

    Returns:
        The folder as a :class:`~pathlib.Path` (``~`` expanded).

    Raises:
        DataError: The argument is empty, the path does not exist, or it is a file.
    """
    if not argument:
        raise DataError(f"{kind} needs the dataset folder: use {kind}:PATH, PATH being the folder that holds {layout}")
    root = Path(argument).expanduser()
    if not root.exists():
        raise DataError(f"{kind}: dataset folder {root} does not exist; pass {kind}:PATH, PATH holding {layout}")
    if not root.is_dir():
        raise DataError(f"{kind}: {root} is a file, not a folder; pass {kind}:PATH, PATH holding {layout}")
    return root


def require_dir(path: Path, kind: str, layout: str) -> Path:
    """Check that a folder of the expected layout exists.

    Args:
        path: The folder the layout requires.
        kind: The SPEC kind, for messages.
        layout: The expected layout, for messages.

    Returns:
        ``path``.

    Raises:
        DataError: ``path`` is missing or not a folder; the message names it and the layout expected.
    """
    if not path.is_dir():
        raise DataError(f"{kind}: missing folder {path}; expected the layout {layout}")
    return path


def list_files(folder: Path, suffixes: Sequence[str], *, end: str = "") -> list[Path]:
    """The files directly in ``folder`` whose name ends with ``end`` + one of ``suffixes``, sorted by name.

    Suffixes match case-insensitively. Hidden files are skipped: they are operating-system debris (``._x.png``
    from macOS copies is not an image), never samples.

    Args:
        folder: The folder to list (not recursively).
        suffixes: Allowed file extensions, lower case with the dot.
        end: Text the name must end with before the extension (e.g. ``"_leftImg8bit"``).

    Returns:
        The matching files.
    """
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not entry.is_file():
                continue
            base, suffix = os.path.splitext(name)
            if suffix.lower() in suffixes and base.endswith(end):
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.name)


def unique_stems(kind: str, files: Iterable[Path]) -> dict[str, Path]:
    """Index files by stem, rejecting two files with the same stem (``a.png`` and ``a.jpg``).

    Args:
        kind: The SPEC kind, for messages.
        files: The files.

    Returns:
        ``{stem: file}``.

    Raises:
        DataError: Two files share a stem, so pairing by stem would be ambiguous.
    """
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise DataError(
                f"{kind}: {by_stem[path.stem]} and {path} differ only in extension; keep one so images and masks pair"
            )
        by_stem[path.stem] = path
    return by_stem


def pair_samples(
    kind: str, images: Sequence[Path], mask_for: Callable[[Path], Path], masks: Iterable[Path]
) -> list[tuple[Path, Path]]:
    """Pair every image with its mask.

    Args:
        kind: The SPEC kind, for messages.
        images: The images of the split, in sample order.
        mask_for: The mask path the layout expects for an image.
        masks: The mask files that exist (listed once, so pairing costs no file-system call per image).

    Returns:
        ``[(image, mask), ...]`` in the order of ``images``.

    Raises:
        DataError: An image has no mask; the message names the image and the mask expected.
    """
    available = set(masks)
    samples = []
    for image in images:
        mask = mask_for(image)
        if mask not in available:
            raise DataError(f"{kind}: image {image} has no mask; expected {mask}")
        samples.append((image, mask))
    return samples


def pair_by_stem(
    kind: str, split: str, image_dir: Path, mask_dir: Path, image_suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[tuple[Path, Path]]:
    """List a split whose masks are named like their images (``images/x.jpg`` ↔ ``masks/x.png``) and pair them.

    Args:
        kind: The SPEC kind, for messages.
        split: The split name, for messages.
        image_dir: The folder of the split's images.
        mask_dir: The folder of the split's masks (``.png``).
        image_suffixes: The image extensions accepted.

    Returns:
        ``[(image, mask), ...]`` sorted by image name.

    Raises:
        DataError: The split has no images, two files share a stem, or an image has no mask (named).
    """
    images = unique_stems(kind, list_files(image_dir, image_suffixes))
    require_samples(kind, split, images, f"{image_dir} (looked for *{'|*'.join(image_suffixes)})")
    masks = unique_stems(kind, list_files(mask_dir, MASK_SUFFIXES))
    samples = []
    for stem, image in images.items():
        mask = masks.get(stem)
        if mask is None:
            raise DataError(f"{kind}: image {image} has no mask; expected {mask_dir / stem}.png")
        samples.append((image, mask))
    return samples


def require_samples(kind: str, split: str, samples: Sequence[object] | dict[str, Path], where: str) -> None:
    """Reject an empty split.

    Args:
        kind: The SPEC kind, for messages.
        split: The split name.
        samples: The samples found.
        where: Where the images were looked for (folder and pattern), for messages.

    Raises:
        DataError: ``samples`` is empty.
    """
    if not samples:
        raise DataError(f"{kind}: the {split} split is empty: no images found in {where}")


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB.

    EXIF orientation is deliberately not applied: masks are drawn on the stored pixel grid, and rotating only the
    image would misalign them.

    Args:
        path: The image file.

    Returns:
        ``uint8`` array ``[H, W, 3]``.

    Raises:
        DataError: The file is missing, corrupt or not an image; the message names it.
    """
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode image {path}: {_reason(error)}; replace or remove the file") from None


def read_index_mask(path: Path) -> np.ndarray:
    """Decode a mask file whose pixel values are label ids (an index image), without any colour conversion.

    Modes ``L`` and ``P`` (the palette indices are the ids) are the norm; 16-bit and binary masks are read as
    their integer values. An RGB mask whose three channels are equal is a grey mask saved as RGB and is read as
    such; one with real colours cannot be read as ids.

    Args:
        path: The mask file.

    Returns:
        Integer array ``[H, W]`` (``uint8`` for 8-bit masks).

    Raises:
        DataError: The file is missing, corrupt, a colour mask, or of a mode that holds no ids.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.array(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode mask {path}: {_reason(error)}; replace or remove the file") from None
    if mode in ("L", "P"):
        return values
    if mode == "1":
        return values.astype(np.uint8)
    if mode == "I" or mode.startswith("I;16"):
        return values.astype(np.int64)
    if mode in ("RGB", "RGBA"):
        rgb = values[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0])
        raise DataError(
            f"mask {path} is an {mode} colour image; expected an index mask (mode L or P) holding one class id "
            "per pixel: convert the colours to class ids"
        )
    raise DataError(f"mask {path} has image mode {mode}; expected an index mask (mode L or P) holding class ids")


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not in an image format Pillow can read"
    return " ".join(str(error).split()) or type(error).__name__


class LabelMap:
    """Maps raw mask values (0..255) to class indices ``[0, K)`` or the ignore index, through a lookup table.

    Args:
        table: For each raw value 0..255, its class index, ``IGNORE_INDEX``, or -1 where the value is not a
            valid label of the dataset.
        valid: Which raw values are valid, in words, for error messages (e.g. ``"0..10 and 11 (void)"``).

    Raises:
        ValueError: ``table`` is not 256 entries of -1, a class index or ``IGNORE_INDEX``.
    """

    def __init__(self, table: Sequence[int] | np.ndarray, valid: str) -> None:
        lut = np.asarray(table, dtype=np.int64)
        if lut.shape != (256,) or lut.min() < -1 or lut.max() > IGNORE_INDEX:
            raise ValueError(f"a label table needs 256 entries in [-1, {IGNORE_INDEX}], got shape {lut.shape}")
        self.table = lut
        self.valid = valid

    @classmethod
    def identity(cls, num_classes: int, extra: dict[int, int] | None = None) -> LabelMap:
        """Raw value ``v`` is class ``v`` for ``v < num_classes``; 255 is ignore; ``extra`` adds raw → mapped.

        Args:
            num_classes: K.
            extra: More valid raw values and what they map to (e.g. ``{11: 255}`` for a void label).

        Returns:
            The map.
        """
        table = np.full(256, -1, dtype=np.int64)
        table[:num_classes] = np.arange(num_classes)
        table[IGNORE_INDEX] = IGNORE_INDEX
        for raw, mapped in (extra or {}).items():
            table[raw] = mapped
        parts = [f"0..{num_classes - 1} (classes)" if num_classes > 1 else "0 (the class)"]
        for raw, mapped in sorted((extra or {}).items()):
            parts.append(f"{raw} ({'ignore' if mapped == IGNORE_INDEX else f'class {mapped}'})")
        parts.append(f"{IGNORE_INDEX} (ignore)")
        return cls(table, ", ".join(parts))

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map a decoded mask to class indices, checking every value.

        Args:
            raw: The decoded mask (integer array).
            path: Its file, for messages.

        Returns:
            ``int64`` array of the same shape, values in ``[0, K)`` or ``IGNORE_INDEX``.

        Raises:
            DataError: The mask holds values that are no label; the message names the file and the values.
        """
        if raw.dtype != np.uint8:
            over = raw[(raw < 0) | (raw > 255)]
            if over.size:
                self._reject(np.unique(over), path)
            raw = raw.astype(np.uint8)
        # One bincount over the raw mask finds every value present without sorting the pixels.
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        bad = present[self.table[present] < 0]
        if bad.size:
            self._reject(bad, path)
        # np.take with a flat table is several times faster than fancy indexing on large masks.
        return np.take(self.table, raw)

    def _reject(self, values: np.ndarray, path: Path) -> None:
        shown = ", ".join(str(int(v)) for v in values[:_MAX_VALUES_SHOWN])
        more = f" and {values.size - _MAX_VALUES_SHOWN} more" if values.size > _MAX_VALUES_SHOWN else ""
        noun = "value" if values.size == 1 else "values"
        raise DataError(
            f"mask {path} holds label {noun} {shown}{more} outside the valid values {self.valid}; "
            "fix the mask or remove the sample"
        )


class FileSegmentationDataset(SegmentationDataset):
    """A split stored as ``(image file, mask file)`` pairs; decodes and checks a pair on its first ``dataset[i]``.

    Decoded samples are kept in memory up to :data:`~scaler.proxy.data.base.CACHE_BYTES` (a
    :class:`~scaler.proxy.data.base.SampleCache`), so later epochs do not decode the PNGs again; samples past the
    budget are decoded on every access. Files changed on disk after a sample was cached are not read again.

    Args:
        info: Name, class names and ignore index.
        split: ``"train"`` or ``"val"``.
        samples: ``[(image, mask), ...]``.
        label_map: Turns the mask's raw values into class indices.
    """

    def __init__(
        self, info: DatasetInfo, split: str, samples: Sequence[tuple[Path, Path]], label_map: LabelMap
    ) -> None:
        self.info = info
        self.split = split
        self.samples = list(samples)
        self.label_map = label_map
        self._cache = SampleCache()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index``: decoded from its files, or a copy of the decoded sample kept from an earlier access.

        Args:
            index: The sample.

        Returns:
            ``(image, mask)``: ``uint8 [3, H, W]`` RGB and ``int64 [H, W]`` class indices or the ignore index.

        Raises:
            DataError: A file cannot be decoded, the mask is not the image's size, or it holds a value that is no
                label; the message names the file (and the sizes or values).
        """
        index = range(len(self.samples))[index]  # one cache key per sample, -1 included; IndexError past the end
        return self._cache.get(index, lambda: self._decode(index))

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        raw = read_index_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"mask {mask_path} is {raw.shape[0]}x{raw.shape[1]} (HxW) but its image {image_path} is "
                f"{image.shape[0]}x{image.shape[1]}; a mask must match its image pixel for pixel"
            )
        mask = self.label_map.apply(raw, mask_path)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)

    def describe(self, index: int) -> str:
        """The files of sample ``index``."""
        image, mask = self.samples[index]
        return f"{self.info.name}[{self.split}] sample {index}: image {image}, mask {mask}"
