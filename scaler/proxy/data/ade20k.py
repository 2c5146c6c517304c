"""ADE20K as released for the MIT Scene Parsing benchmark (ADEChallengeData2016), 150 classes.

``ade20k:PATH``, PATH being ``ADEChallengeData2016`` with ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png``. The tool's ``train``/``val`` are ``training``/``validation``. An
annotation value 0 is "other" (ignored); value v in 1..150 is class v-1.

Class names come from ``PATH/objectInfo150.txt`` (shipped with the release) or ``PATH/objectInfo150.csv`` when
present, the first name of each entry; otherwise from :data:`CLASS_NAMES`, the same first names.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from scaler.proxy.data.base import IGNORE_INDEX, DataError, DatasetInfo, SegmentationDataset, register_dataset
from scaler.proxy.data.files import FileSegmentationDataset, LabelMap, dataset_root, pair_by_stem, require_dir

__all__ = ["CLASS_NAMES", "LABEL_MAP", "open_ade20k", "read_object_info"]

# First name of each entry of the release's objectInfo150.txt, in class order (value v is entry v).
CLASS_NAMES: tuple[str, ...] = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

NUM_CLASSES = 150
LAYOUT = "PATH/images/{training,validation}/*.jpg and PATH/annotations/{training,validation}/*.png"
_SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def _label_map() -> LabelMap:
    table = np.full(256, -1, dtype=np.int64)
    table[0] = IGNORE_INDEX
    table[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
    return LabelMap(table, f"0 (other, ignored) and 1..{NUM_CLASSES} (classes 0..{NUM_CLASSES - 1})")


LABEL_MAP: LabelMap = _label_map()


@register_dataset("ade20k")
def open_ade20k(argument: str, split: str, seed: int) -> SegmentationDataset:
    """Open an ADE20K (SceneParsing) split.

    Args:
        argument: PATH, the ``ADEChallengeData2016`` folder.
        split: ``"train"`` (``training``) or ``"val"`` (``validation``).
        seed: Unused: the split is fixed by the files.

    Returns:
        The split, sorted by file name; masks in 150 classes, "other" as ignore.

    Raises:
        DataError: PATH or a layout folder is missing, the split has no images, an image has no annotation, or
            objectInfo150 is malformed.
    """
    root = dataset_root("ade20k", argument, "images/ and annotations/ (the ADEChallengeData2016 folder)")
    folder = _SPLIT_FOLDERS[split]
    image_dir = require_dir(root / "images" / folder, "ade20k", LAYOUT)
    mask_dir = require_dir(root / "annotations" / folder, "ade20k", LAYOUT)
    samples = pair_by_stem("ade20k", split, image_dir, mask_dir)
    info = DatasetInfo(name="ade20k", class_names=_class_names(root), ignore_index=IGNORE_INDEX)
    return FileSegmentationDataset(info, split, samples, LABEL_MAP)


def _class_names(root: Path) -> tuple[str, ...]:
    # The .txt keeps multi-word names intact ("chest of drawers"), so it wins over the .csv when both exist.
    for name in ("objectInfo150.txt", "objectInfo150.csv"):
        path = root / name
        if path.is_file():
            return read_object_info(path)
    return CLASS_NAMES


def read_object_info(path: Path) -> tuple[str, ...]:
    """Read the 150 class names from an ``objectInfo150`` table.

    Two formats circulate: the release's tab-separated ``.txt`` (``Idx Ratio Train Val Name``, synonyms joined by
    ", ") and a comma-separated ``.csv`` whose Name column joins every word with ";" (``chest;of;drawers;chest``).
    The class name is the first synonym; for the ``.csv`` a multi-word first name is recovered when it matches
    the standard name's words.

    Args:
        path: The table.

    Returns:
        The 150 names in class order.

    Raises:
        DataError: The file cannot be read, has no Idx/Name columns, or does not list classes 1..150 in order.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"ade20k: cannot read class table {path}: {error}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"ade20k: class table {path} is empty; delete it to use the standard 150 names")
    delimiter = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [cell.strip().lower() for cell in rows[0]]
    if "idx" not in header or "name" not in header:
        raise DataError(f"ade20k: class table {path} has no Idx and Name columns in its first line {lines[0]!r}")
    idx_col, name_col = header.index("idx"), header.index("name")
    names = []
    for number, row in enumerate(rows[1:], start=2):
        if len(names) == NUM_CLASSES:
            raise DataError(f"ade20k: class table {path} lists more than {NUM_CLASSES} classes (line {number})")
        if len(row) <= max(idx_col, name_col) or row[idx_col].strip() != str(len(names) + 1):
            raise DataError(f"ade20k: class table {path} line {number} is not class {len(names) + 1}: {row!r}")
        names.append(_first_name(row[name_col], len(names)))
    if len(names) != NUM_CLASSES:
        raise DataError(f"ade20k: class table {path} lists {len(names)} classes; ADE20K has {NUM_CLASSES}")
    return tuple(names)


def _first_name(cell: str, index: int) -> str:
    if ";" not in cell:
        return cell.split(",")[0].strip()
    words = [word.strip() for word in cell.split(";")]
    standard = CLASS_NAMES[index].split()
    return CLASS_NAMES[index] if words[: len(standard)] == standard else words[0]
