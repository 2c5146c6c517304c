"""CamVid in the common 11-class SegNet layout.

``camvid:PATH``, PATH holding ``{train,trainannot,val,valannot,test,testannot}/*.png``: an annotation has its
image's name, values 0..10 are the 11 classes below and 11 is void (ignored). The tool's ``train`` and ``val``
splits are the folders of those names; ``test`` is left for the user's own final evaluation.
"""

from __future__ import annotations

from scaler.proxy.data.base import IGNORE_INDEX, DatasetInfo, SegmentationDataset, register_dataset
from scaler.proxy.data.files import FileSegmentationDataset, LabelMap, dataset_root, pair_by_stem, require_dir

__all__ = ["CLASS_NAMES", "LABEL_MAP", "open_camvid"]

# The SegNet tutorial's class order (annotation value = index).
CLASS_NAMES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
VOID = 11
LABEL_MAP: LabelMap = LabelMap.identity(len(CLASS_NAMES), {VOID: IGNORE_INDEX})
LAYOUT = "PATH/{train,trainannot,val,valannot,test,testannot}/*.png (annotations named like their images)"


@register_dataset("camvid")
def open_camvid(argument: str, split: str, seed: int) -> SegmentationDataset:
    """Open a CamVid split.

    Args:
        argument: PATH, the folder that holds ``train/``, ``trainannot/``, ``val/``, ``valannot/``.
        split: ``"train"`` or ``"val"``.
        seed: Unused: the split is fixed by the files.

    Returns:
        The split, sorted by file name; masks in the 11 classes, void (11) and 255 ignored.

    Raises:
        DataError: PATH or a split folder is missing, the split has no images, or an image has no annotation.
    """
    root = dataset_root("camvid", argument, "train/, trainannot/, val/ and valannot/")
    image_dir = require_dir(root / split, "camvid", LAYOUT)
    mask_dir = require_dir(root / f"{split}annot", "camvid", LAYOUT)
    samples = pair_by_stem("camvid", split, image_dir, mask_dir)
    info = DatasetInfo(name="camvid", class_names=CLASS_NAMES, ignore_index=IGNORE_INDEX)
    return FileSegmentationDataset(info, split, samples, LABEL_MAP)
