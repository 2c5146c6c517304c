"""A generic dataset folder: ``images/`` + ``masks/`` + ``classes.txt``.

``folder:PATH``, PATH holding:

- ``classes.txt``: one class name per line; line 1 names mask value 0, line 2 value 1, and so on (at most 255
  classes, since 255 is the ignore value).
- Either split folders ``images/train``, ``images/val`` and ``masks/train``, ``masks/val``, or flat folders
  ``images/`` and ``masks/``. A flat folder is split deterministically: the samples sorted by file stem, every
  5th one from the first (positions 0, 5, 10, ...) is ``val``, the rest ``train``; so any tree of two or more
  samples has both splits, and the split never depends on the seed.

Images are ``.png``/``.jpg``/``.jpeg``; masks are ``.png`` index images named like their image (``x.jpg`` ↔
``x.png``); mask values are class indices or 255 (ignore).
"""

from __future__ import annotations

from pathlib import Path

from scaler.proxy.data.base import IGNORE_INDEX, DataError, DatasetInfo, SegmentationDataset, register_dataset
from scaler.proxy.data.files import FileSegmentationDataset, LabelMap, dataset_root, pair_by_stem, require_dir

__all__ = ["VAL_EVERY", "open_folder", "read_class_names"]

VAL_EVERY = 5
LAYOUT = "PATH/classes.txt with PATH/images/{train,val}/ + PATH/masks/{train,val}/, or flat PATH/images/ + PATH/masks/"


@register_dataset("folder")
def open_folder(argument: str, split: str, seed: int) -> SegmentationDataset:
    """Open a split of a generic dataset folder.

    Args:
        argument: PATH, the folder that holds ``images/``, ``masks/`` and ``classes.txt``.
        split: ``"train"`` or ``"val"``.
        seed: Unused: the split is fixed by the files (and by the stems, for a flat folder).

    Returns:
        The split; masks are checked against the classes of ``classes.txt``.

    Raises:
        DataError: PATH, a layout folder or ``classes.txt`` is missing, ``classes.txt`` is empty or malformed,
            the split has no images, or an image has no mask.
    """
    root = dataset_root("folder", argument, "images/, masks/ and classes.txt")
    class_names = read_class_names(root / "classes.txt")
    image_root = require_dir(root / "images", "folder", LAYOUT)
    mask_root = require_dir(root / "masks", "folder", LAYOUT)
    if (image_root / "train").is_dir() or (image_root / "val").is_dir():
        image_dir = require_dir(image_root / split, "folder", LAYOUT)
        mask_dir = require_dir(mask_root / split, "folder", LAYOUT)
        samples = pair_by_stem("folder", split, image_dir, mask_dir)
    else:
        everything = sorted(pair_by_stem("folder", split, image_root, mask_root), key=lambda pair: pair[0].stem)
        samples = [pair for i, pair in enumerate(everything) if (i % VAL_EVERY == 0) == (split == "val")]
        if not samples:
            raise DataError(
                f"folder: the {split} split is empty: {image_root} holds {len(everything)} image(s) and a flat "
                f"folder puts every {VAL_EVERY}th in val; add images or use images/train and images/val"
            )
    info = DatasetInfo(name="folder", class_names=class_names, ignore_index=IGNORE_INDEX)
    return FileSegmentationDataset(info, split, samples, LabelMap.identity(len(class_names)))


def read_class_names(path: Path) -> tuple[str, ...]:
    """Read ``classes.txt``: one class name per line, line i naming mask value i-1.

    Args:
        path: The file.

    Returns:
        The class names in value order.

    Raises:
        DataError: The file is missing, unreadable or empty, has a blank line among the names, repeats a name,
            or names more than 255 classes.
    """
    if not path.is_file():
        raise DataError(f"folder: missing {path}; write one class name per line (line 1 = mask value 0)")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"folder: cannot read {path}: {error}") from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"folder: {path} is empty; write one class name per line (line 1 = mask value 0)")
    if len(lines) > IGNORE_INDEX:
        raise DataError(
            f"folder: {path} names {len(lines)} classes; at most {IGNORE_INDEX} fit (values 0..{IGNORE_INDEX - 1}), "
            f"{IGNORE_INDEX} being ignore"
        )
    first_line: dict[str, int] = {}
    for number, name in enumerate(lines, start=1):
        if not name:
            raise DataError(f"folder: {path} line {number} is empty; every line up to the last names a class")
        if name in first_line:
            raise DataError(f"folder: {path} names {name!r} twice (lines {first_line[name]} and {number})")
        first_line[name] = number
    return tuple(lines)
