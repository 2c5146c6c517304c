"""Cityscapes in its official layout: fine annotations, labelIds mapped to the 19 train classes.

``cityscapes:PATH``, PATH holding ``leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png`` and
``gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png``. The labelId → trainId mapping and the class names come
from cityscapesscripts' label table, so they are the benchmark's own; trainIds 255 and -1 become the ignore index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from scaler.proxy.data.base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, register_dataset
from scaler.proxy.data.files import (
    FileSegmentationDataset,
    LabelMap,
    dataset_root,
    list_files,
    pair_samples,
    require_dir,
    require_samples,
)

__all__ = ["CLASS_NAMES", "LABEL_MAP", "open_cityscapes"]

LAYOUT = (
    "PATH/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png and "
    "PATH/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png"
)
_IMAGE_END = "_leftImg8bit"
_MASK_END = "_gtFine_labelIds"


def _train_classes() -> tuple[str, ...]:
    names: dict[int, str] = {}
    for label in CITYSCAPES_LABELS:
        if 0 <= label.trainId < IGNORE_INDEX:
            names.setdefault(label.trainId, label.name)
    # The table is meant to number its train classes 0..K-1 without gaps; check rather than trust.
    if sorted(names) != list(range(len(names))):
        raise RuntimeError(f"cityscapesscripts' label table has non-contiguous trainIds {sorted(names)}")
    return tuple(names[i] for i in range(len(names)))


def _label_map() -> LabelMap:
    table = np.full(256, -1, dtype=np.int64)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.id < 256:
            table[label.id] = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
    known = np.flatnonzero(table >= 0)
    return LabelMap(table, f"labelIds {known.min()}..{known.max()} of the Cityscapes label table")


CLASS_NAMES: tuple[str, ...] = _train_classes()
LABEL_MAP: LabelMap = _label_map()


@register_dataset("cityscapes")
def open_cityscapes(argument: str, split: str, seed: int) -> SegmentationDataset:
    """Open a Cityscapes split (fine annotations).

    Args:
        argument: PATH, the folder that holds ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"`` or ``"val"`` (the official folders of the same names).
        seed: Unused: the split is fixed by the files.

    Returns:
        The split, images sorted by city and name; masks in the 19 train classes, 255 ignore.

    Raises:
        DataError: PATH or a layout folder is missing, the split has no images, or an image has no labelIds mask.
    """
    root = dataset_root("cityscapes", argument, "leftImg8bit/ and gtFine/")
    image_dir = require_dir(root / "leftImg8bit" / split, "cityscapes", LAYOUT)
    mask_dir = require_dir(root / "gtFine" / split, "cityscapes", LAYOUT)
    images = [path for city in _cities(image_dir) for path in list_files(city, (".png",), end=_IMAGE_END)]
    require_samples("cityscapes", split, images, f"{image_dir}/<city>/*{_IMAGE_END}.png")
    masks = [path for city in _cities(mask_dir) for path in list_files(city, (".png",), end=_MASK_END)]

    def mask_for(image: Path) -> Path:
        stem = image.name[: -len(_IMAGE_END + image.suffix)]
        return mask_dir / image.parent.name / f"{stem}{_MASK_END}.png"

    samples = pair_samples("cityscapes", images, mask_for, masks)
    info = DatasetInfo(name="cityscapes", class_names=CLASS_NAMES, ignore_index=IGNORE_INDEX)
    return FileSegmentationDataset(info, split, samples, LABEL_MAP)


def _cities(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
