"""The real-dataset loaders on fixture trees in each dataset's own layout, written with PIL into tmp_path."""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaler.proxy.data import (
    IGNORE_INDEX,
    DataError,
    SegmentationDataset,
    ade20k,
    camvid,
    cityscapes,
    dataset_kinds,
    folder,
    open_dataset,
)
from scaler.proxy.data.files import LabelMap

H, W = 8, 12

# Raw mask values each fixture writes, tiled over the mask; every sample holds all of them.
CITYSCAPES_IDS = (7, 26, 0, 8, 33, 4, 9, 11, 23, 24)
CAMVID_VALUES = (0, 3, 8, 10, 11, 255)
ADE_VALUES = (0, 1, 2, 13, 150)
FOLDER_VALUES = (0, 1, 2, 255)


class Writer:
    """Writes images and masks; every image's pixels come from one seeded generator, so trees are reproducible."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def image(self, path: Path, size: tuple[int, int] = (H, W)) -> np.ndarray:
        """Write a random RGB image (format from the suffix) and return its pixels ``[H, W, 3]``."""
        pixels = self.rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(path)
        return pixels

    def mask(self, path: Path, values: Sequence[int] | np.ndarray, size: tuple[int, int] = (H, W)) -> np.ndarray:
        """Write an 8-bit (mode L) index mask: ``values`` tiled over ``size``; return the raw array."""
        raw = np.resize(np.asarray(values, dtype=np.uint8), size)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw, "L").save(path)
        return raw


@pytest.fixture
def write() -> Writer:
    return Writer()


@pytest.fixture
def cityscapes_root(tmp_path: Path, write: Writer) -> Path:
    """Official layout: 3 train images over two cities, 1 val image."""
    root = tmp_path / "cityscapes"
    for split, city, stem in [
        ("train", "aachen", "aachen_000000_000019"),
        ("train", "aachen", "aachen_000001_000019"),
        ("train", "bochum", "bochum_000000_000313"),
        ("val", "frankfurt", "frankfurt_000000_000294"),
    ]:
        write.image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        write.mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", CITYSCAPES_IDS)
        # The official download holds these siblings too; the loader must pick labelIds only.
        write.mask(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", (0,))
    return root


@pytest.fixture
def camvid_root(tmp_path: Path, write: Writer) -> Path:
    """SegNet layout: 3 train, 2 val, 1 test."""
    root = tmp_path / "CamVid"
    for split, stems in [
        ("train", ["0001TP_006690", "0001TP_006720", "0006R0_f00930"]),
        ("val", ["0016E5_07959", "0016E5_07961"]),
        ("test", ["Seq05VD_f00000"]),
    ]:
        for stem in stems:
            write.image(root / split / f"{stem}.png")
            write.mask(root / f"{split}annot" / f"{stem}.png", CAMVID_VALUES)
    return root


@pytest.fixture
def ade20k_root(tmp_path: Path, write: Writer) -> Path:
    """ADEChallengeData2016: 2 training, 1 validation, JPEG images."""
    root = tmp_path / "ADEChallengeData2016"
    for split_folder, stems in [
        ("training", ["ADE_train_00000001", "ADE_train_00000002"]),
        ("validation", ["ADE_val_00000001"]),
    ]:
        for stem in stems:
            write.image(root / "images" / split_folder / f"{stem}.jpg")
            write.mask(root / "annotations" / split_folder / f"{stem}.png", ADE_VALUES)
    return root


@pytest.fixture
def folder_root(tmp_path: Path, write: Writer) -> Path:
    """Generic layout with split folders: 3 classes, 2 train (one JPEG), 1 val."""
    root = tmp_path / "mydata"
    root.mkdir()
    (root / "classes.txt").write_text("background\nroad\ncar\n")
    for split, names in [("train", ["a.png", "b.jpg"]), ("val", ["c.png"])]:
        for name in names:
            write.image(root / "images" / split / name)
            write.mask(root / "masks" / split / f"{Path(name).stem}.png", FOLDER_VALUES)
    return root


@pytest.fixture
def flat_folder_root(tmp_path: Path, write: Writer) -> Path:
    """Generic flat layout: 7 samples written in shuffled order, 2 classes."""
    root = tmp_path / "flat"
    root.mkdir()
    (root / "classes.txt").write_text("sky\nground\n")
    for stem in ["s3", "s0", "s6", "s1", "s5", "s2", "s4"]:
        write.image(root / "images" / f"{stem}.png")
        write.mask(root / "masks" / f"{stem}.png", (0, 1))
    return root


def raises_data_error(*fragments: str) -> AbstractContextManager[pytest.ExceptionInfo[DataError]]:
    """Expect a one-line DataError whose message holds every fragment (literally)."""
    return pytest.raises(DataError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


def check_one_line(error: pytest.ExceptionInfo[DataError]) -> None:
    assert "\n" not in str(error.value)


def check_sample(dataset: SegmentationDataset, index: int = 0, size: tuple[int, int] = (H, W)) -> torch.Tensor:
    """Check the contract's shapes, dtypes and value range for one sample; return its mask."""
    image, mask = dataset[index]
    assert image.dtype == torch.uint8 and image.shape == (3, *size)
    assert mask.dtype == torch.int64 and mask.shape == size
    values = mask.unique()
    assert bool(((values >= 0) & (values < dataset.info.num_classes) | (values == IGNORE_INDEX)).all())
    return mask


def expected(raw_values: tuple[int, ...], mapping: dict[int, int]) -> torch.Tensor:
    return torch.from_numpy(np.resize(np.array([mapping[v] for v in raw_values], dtype=np.int64), (H, W)))


def test_every_kind_is_registered() -> None:
    assert {"cityscapes", "camvid", "ade20k", "folder"} <= set(dataset_kinds())


# Cityscapes


def test_cityscapes_splits_classes_and_samples(cityscapes_root: Path) -> None:
    train = open_dataset(f"cityscapes:{cityscapes_root}", "train")
    val = open_dataset(f"cityscapes:{cityscapes_root}", "val")
    assert (len(train), len(val)) == (3, 1)
    assert (train.split, val.split) == ("train", "val")
    assert train.info.name == "cityscapes" and train.info.ignore_index == 255
    assert train.info.num_classes == 19
    assert train.info.class_names[:3] == ("road", "sidewalk", "building")
    assert train.info.class_names[13] == "car" and train.info.class_names[18] == "bicycle"
    # Sorted by city, then name.
    assert [Path(image).parent.name for image, _ in train.samples] == ["aachen", "aachen", "bochum"]
    for index in range(len(train)):
        check_sample(train, index)
    assert "bochum_000000_000313_leftImg8bit.png" in train.describe(2)
    assert "bochum_000000_000313_gtFine_labelIds.png" in train.describe(2)


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root: Path) -> None:
    mask = check_sample(open_dataset(f"cityscapes:{cityscapes_root}", "val"))
    # road 7 -> 0, car 26 -> 13, unlabeled 0 -> 255, sidewalk 8 -> 1, bicycle 33 -> 18, static 4 -> 255,
    # parking 9 -> 255, building 11 -> 2, sky 23 -> 10, person 24 -> 11.
    mapping = {7: 0, 26: 13, 0: 255, 8: 1, 33: 18, 4: 255, 9: 255, 11: 2, 23: 10, 24: 11}
    assert torch.equal(mask, expected(CITYSCAPES_IDS, mapping))


def test_cityscapes_table_follows_cityscapesscripts() -> None:
    from cityscapesscripts.helpers.labels import labels

    for label in labels:
        if label.id >= 0:
            want = label.trainId if 0 <= label.trainId < 255 else 255
            assert cityscapes.LABEL_MAP.table[label.id] == want, label.name
    assert (cityscapes.LABEL_MAP.table[34:] == -1).all()


def test_cityscapes_image_pixels_survive(cityscapes_root: Path) -> None:
    dataset = open_dataset(f"cityscapes:{cityscapes_root}", "train")
    image_path, _ = dataset.samples[1]
    pixels = np.array(Image.open(image_path))
    assert torch.equal(dataset[1][0], torch.from_numpy(pixels).permute(2, 0, 1))


def test_cityscapes_unknown_label_id_names_file_and_values(cityscapes_root: Path, write: Writer) -> None:
    dataset = open_dataset(f"cityscapes:{cityscapes_root}", "val")
    _, mask_path = dataset.samples[0]
    write.mask(mask_path, (7, 34, 200))
    with raises_data_error("frankfurt_000000_000294_gtFine_labelIds.png", "34, 200", "label table") as error:
        dataset[0]
    check_one_line(error)


def test_cityscapes_image_without_mask(cityscapes_root: Path) -> None:
    (cityscapes_root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
    with raises_data_error("bochum_000000_000313_leftImg8bit.png", "has no mask", "_gtFine_labelIds.png"):
        open_dataset(f"cityscapes:{cityscapes_root}", "train")


def test_cityscapes_missing_folder_names_it_and_the_layout(cityscapes_root: Path) -> None:
    for path in sorted((cityscapes_root / "gtFine").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (cityscapes_root / "gtFine").rmdir()
    with raises_data_error(f"{cityscapes_root / 'gtFine' / 'val'}", "leftImg8bit/{train,val}/<city>") as error:
        open_dataset(f"cityscapes:{cityscapes_root}", "val")
    check_one_line(error)


def test_cityscapes_empty_split(cityscapes_root: Path) -> None:
    (cityscapes_root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png").unlink()
    with raises_data_error("val split is empty", "leftImg8bit"):
        open_dataset(f"cityscapes:{cityscapes_root}", "val")


# CamVid


def test_camvid_splits_classes_and_mapping(camvid_root: Path) -> None:
    train = open_dataset(f"camvid:{camvid_root}", "train")
    val = open_dataset(f"camvid:{camvid_root}", "val")
    assert (len(train), len(val)) == (3, 2)
    assert train.info.name == "camvid"
    assert train.info.class_names == (
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
    assert [Path(image).name for image, _ in val.samples] == ["0016E5_07959.png", "0016E5_07961.png"]
    mask = check_sample(val, 1)
    # 0..10 are the classes, 11 (void) and 255 are ignored.
    assert torch.equal(mask, expected(CAMVID_VALUES, {0: 0, 3: 3, 8: 8, 10: 10, 11: 255, 255: 255}))


def test_camvid_value_outside_classes(camvid_root: Path, write: Writer) -> None:
    write.mask(camvid_root / "trainannot/0001TP_006720.png", (3, 12))
    dataset = open_dataset(f"camvid:{camvid_root}", "train")
    check_sample(dataset, 0)
    with raises_data_error("0001TP_006720.png", "value 12", "11 (ignore)"):
        dataset[1]


def test_camvid_missing_annotation_folder(camvid_root: Path) -> None:
    for path in (camvid_root / "valannot").iterdir():
        path.unlink()
    (camvid_root / "valannot").rmdir()
    with raises_data_error(str(camvid_root / "valannot"), "trainannot"):
        open_dataset(f"camvid:{camvid_root}", "val")
    assert len(open_dataset(f"camvid:{camvid_root}", "train")) == 3


# ADE20K


def test_ade20k_splits_classes_and_mapping(ade20k_root: Path) -> None:
    train = open_dataset(f"ade20k:{ade20k_root}", "train")
    val = open_dataset(f"ade20k:{ade20k_root}", "val")
    assert (len(train), len(val)) == (2, 1)
    assert all("training" in str(image) for image, _ in train.samples)
    assert "validation" in str(val.samples[0][0])
    names = train.info.class_names
    assert len(names) == 150 == train.info.num_classes
    assert names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert names[44] == "chest of drawers" and names[149] == "flag"
    assert len(set(names)) == 150
    mask = check_sample(val)
    # 0 ("other") -> 255, v -> v - 1.
    assert torch.equal(mask, expected(ADE_VALUES, {0: 255, 1: 0, 2: 1, 13: 12, 150: 149}))


def test_ade20k_value_above_150(ade20k_root: Path, write: Writer) -> None:
    write.mask(ade20k_root / "annotations/validation/ADE_val_00000001.png", (0, 151, 255))
    with raises_data_error("ADE_val_00000001.png", "values 151, 255", "1..150") as error:
        open_dataset(f"ade20k:{ade20k_root}", "val")[0]
    check_one_line(error)


RELEASE_TXT_HEAD = (
    "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n2\t0.1072\t6046\t612\tbuilding, edifice\n"
)
CSV_HEAD = "Idx,Ratio,Train,Val,Stuff,Name\n1,0.1576,11664,1172,1,wall\n2,0.1072,6046,612,1,building;edifice\n"


def test_ade20k_names_from_release_txt(ade20k_root: Path) -> None:
    rows = [f"{i}\t0.001\t1\t1\t{name}, synonym " for i, name in enumerate(ade20k.CLASS_NAMES[2:], start=3)]
    rows[19] = "22 \t0.0074\t709\t75\tlake water"  # the release pads some Idx cells with a space
    (ade20k_root / "objectInfo150.txt").write_text(RELEASE_TXT_HEAD + "\n".join(rows) + "\n")
    names = open_dataset(f"ade20k:{ade20k_root}", "val").info.class_names
    assert names[:2] == ("wall", "building") and names[21] == "lake water"
    assert names[44] == "chest of drawers"


def test_ade20k_names_from_csv_keep_multi_word_names(ade20k_root: Path) -> None:
    rows = [
        f"{i},0.001,1,1,0,{';'.join(name.split())};synonym" for i, name in enumerate(ade20k.CLASS_NAMES[2:], start=3)
    ]
    (ade20k_root / "objectInfo150.csv").write_text(CSV_HEAD + "\n".join(rows) + "\n")
    assert open_dataset(f"ade20k:{ade20k_root}", "val").info.class_names == ade20k.CLASS_NAMES


def test_ade20k_malformed_class_table(ade20k_root: Path) -> None:
    (ade20k_root / "objectInfo150.txt").write_text(RELEASE_TXT_HEAD)
    with raises_data_error("objectInfo150.txt", "lists 2 classes"):
        open_dataset(f"ade20k:{ade20k_root}", "val")
    (ade20k_root / "objectInfo150.txt").write_text(RELEASE_TXT_HEAD + "4\t0.1\t1\t1\tfloor\n")
    with raises_data_error("objectInfo150.txt", "line 4 is not class 3"):
        open_dataset(f"ade20k:{ade20k_root}", "val")


def test_ade20k_missing_annotations_folder(ade20k_root: Path) -> None:
    (ade20k_root / "annotations/training/ADE_train_00000002.png").unlink()
    (ade20k_root / "annotations/training/ADE_train_00000001.png").unlink()
    (ade20k_root / "annotations/training").rmdir()
    with raises_data_error(str(ade20k_root / "annotations" / "training"), "images/{training,validation}/*.jpg"):
        open_dataset(f"ade20k:{ade20k_root}", "train")


# Generic folder


def test_folder_split_layout(folder_root: Path) -> None:
    train = open_dataset(f"folder:{folder_root}", "train")
    val = open_dataset(f"folder:{folder_root}", "val")
    assert (len(train), len(val)) == (2, 1)
    assert train.info.class_names == ("background", "road", "car")
    assert [Path(image).name for image, _ in train.samples] == ["a.png", "b.jpg"]
    for index in range(2):
        mask = check_sample(train, index)
        assert torch.equal(mask, expected(FOLDER_VALUES, {0: 0, 1: 1, 2: 2, 255: 255}))


def test_folder_flat_layout_puts_every_fifth_stem_in_val(flat_folder_root: Path) -> None:
    train = open_dataset(f"folder:{flat_folder_root}", "train")
    val = open_dataset(f"folder:{flat_folder_root}", "val", seed=7)
    assert [Path(image).stem for image, _ in val.samples] == ["s0", "s5"]
    assert [Path(image).stem for image, _ in train.samples] == ["s1", "s2", "s3", "s4", "s6"]
    assert open_dataset(f"folder:{flat_folder_root}", "val", seed=123).samples == val.samples
    assert train.info.class_names == ("sky", "ground")
    check_sample(val, 1)


def test_folder_flat_layout_too_small_for_two_splits(tmp_path: Path, write: Writer) -> None:
    (tmp_path / "classes.txt").write_text("a\n")
    write.image(tmp_path / "images/only.png")
    write.mask(tmp_path / "masks/only.png", (0,))
    assert len(open_dataset(f"folder:{tmp_path}", "val")) == 1
    with raises_data_error("train split is empty", "1 image", "images/train"):
        open_dataset(f"folder:{tmp_path}", "train")


def test_folder_value_outside_classes(folder_root: Path, write: Writer) -> None:
    write.mask(folder_root / "masks/val/c.png", (0, 3, 254, 255))
    with raises_data_error("c.png", "values 3, 254", "0..2 (classes)", "255 (ignore)") as error:
        open_dataset(f"folder:{folder_root}", "val")[0]
    check_one_line(error)


def test_folder_image_without_mask(folder_root: Path, write: Writer) -> None:
    write.image(folder_root / "images/train/d.jpeg")
    with raises_data_error("d.jpeg", "has no mask", str(folder_root / "masks" / "train" / "d.png")):
        open_dataset(f"folder:{folder_root}", "train")


def test_folder_two_images_with_one_stem(folder_root: Path, write: Writer) -> None:
    write.image(folder_root / "images/train/a.jpg")
    with raises_data_error("a.jpg", "a.png", "differ only in extension"):
        open_dataset(f"folder:{folder_root}", "train")


def test_folder_missing_split_folder(folder_root: Path) -> None:
    (folder_root / "masks/val/c.png").unlink()
    (folder_root / "masks/val").rmdir()
    with raises_data_error(str(folder_root / "masks" / "val"), "classes.txt"):
        open_dataset(f"folder:{folder_root}", "val")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ("missing", "classes.txt", "one class name per line")),
        ("", ("classes.txt", "is empty")),
        ("\n\n", ("classes.txt", "is empty")),
        ("road\n\ncar\n", ("classes.txt", "line 2 is empty")),
        ("road\ncar\nroad\n", ("classes.txt", "'road' twice", "lines 1 and 3")),
        ("".join(f"c{i}\n" for i in range(256)), ("classes.txt", "256 classes", "at most 255")),
    ],
)
def test_folder_bad_classes_txt(folder_root: Path, content: str | None, fragments: tuple[str, ...]) -> None:
    if content is None:
        (folder_root / "classes.txt").unlink()
    else:
        (folder_root / "classes.txt").write_text(content)
    with raises_data_error(*fragments) as error:
        open_dataset(f"folder:{folder_root}", "train")
    check_one_line(error)


def test_folder_classes_txt_trailing_blank_lines_and_crlf(folder_root: Path) -> None:
    (folder_root / "classes.txt").write_bytes(b"background\r\nroad\r\ncar\r\n\r\n")
    assert open_dataset(f"folder:{folder_root}", "train").info.class_names == ("background", "road", "car")


# Opening errors shared by every kind


@pytest.mark.parametrize("kind", ["cityscapes", "camvid", "ade20k", "folder"])
def test_missing_path(tmp_path: Path, kind: str) -> None:
    with raises_data_error(kind, str(tmp_path / "nowhere"), "does not exist") as error:
        open_dataset(f"{kind}:{tmp_path / 'nowhere'}", "train")
    check_one_line(error)


@pytest.mark.parametrize("kind", ["cityscapes", "camvid", "ade20k", "folder"])
def test_path_is_a_file(tmp_path: Path, kind: str) -> None:
    (tmp_path / "data.zip").write_bytes(b"PK")
    with raises_data_error(str(tmp_path / "data.zip"), "is a file, not a folder"):
        open_dataset(f"{kind}:{tmp_path / 'data.zip'}", "train")


@pytest.mark.parametrize("kind", ["cityscapes", "camvid", "ade20k", "folder"])
def test_missing_argument(kind: str) -> None:
    with raises_data_error(f"{kind}:PATH"):
        open_dataset(kind, "train")


def test_empty_split_folder(camvid_root: Path) -> None:
    for path in (camvid_root / "val").iterdir():
        path.unlink()
    with raises_data_error("val split is empty", str(camvid_root / "val")):
        open_dataset(f"camvid:{camvid_root}", "val")


def test_hidden_files_are_not_samples(folder_root: Path) -> None:
    (folder_root / "images/val/._c.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert len(open_dataset(f"folder:{folder_root}", "val")) == 1


# Loading a sample: decoding and checking (the same code serves every kind; the folder tree is the smallest)


def test_corrupt_image_names_the_file(folder_root: Path) -> None:
    (folder_root / "images/val/c.png").write_bytes(b"not a png at all")
    dataset = open_dataset(f"folder:{folder_root}", "val")
    with raises_data_error("cannot decode image", str(folder_root / "images" / "val" / "c.png")) as error:
        dataset[0]
    check_one_line(error)


def test_truncated_image_names_the_file(folder_root: Path) -> None:
    path = folder_root / "images/train/b.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with raises_data_error("cannot decode image", "b.jpg"):
        open_dataset(f"folder:{folder_root}", "train")[1]


def test_corrupt_mask_names_the_file(folder_root: Path) -> None:
    path = folder_root / "masks/val/c.png"
    path.write_bytes(path.read_bytes()[:45])  # header intact, pixel data cut
    with raises_data_error("cannot decode mask", str(path)) as error:
        open_dataset(f"folder:{folder_root}", "val")[0]
    check_one_line(error)


def test_mask_size_mismatch_names_both_sizes(folder_root: Path, write: Writer) -> None:
    write.mask(folder_root / "masks/val/c.png", (0,), size=(6, 10))
    with raises_data_error("c.png", "6x10", f"{H}x{W}") as error:
        open_dataset(f"folder:{folder_root}", "val")[0]
    check_one_line(error)


def test_colour_mask_is_refused(folder_root: Path) -> None:
    colours = np.zeros((H, W, 3), dtype=np.uint8)
    colours[:, :, 0] = 128  # CamVid's road colour is (128, 64, 128)
    colours[:, :, 1] = 64
    colours[:, :, 2] = 128
    Image.fromarray(colours, "RGB").save(folder_root / "masks/val/c.png")
    with raises_data_error("c.png", "RGB colour image", "index mask"):
        open_dataset(f"folder:{folder_root}", "val")[0]


def test_grey_mask_saved_as_rgb_is_read_as_ids(folder_root: Path) -> None:
    raw = np.resize(np.array(FOLDER_VALUES, dtype=np.uint8), (H, W))
    Image.fromarray(np.stack([raw] * 3, axis=-1), "RGB").save(folder_root / "masks/val/c.png")
    mask = check_sample(open_dataset(f"folder:{folder_root}", "val"))
    assert torch.equal(mask, torch.from_numpy(raw.astype(np.int64)))


def test_palette_mask_reads_indices_not_colours(folder_root: Path) -> None:
    raw = np.resize(np.array([0, 1, 2, 255], dtype=np.uint8), (H, W))
    mask_image = Image.fromarray(raw, "L").convert("P")
    mask_image.putpalette([200, 10, 10] * 256)
    mask_image.save(folder_root / "masks/val/c.png")
    assert Image.open(folder_root / "masks/val/c.png").mode == "P"
    mask = check_sample(open_dataset(f"folder:{folder_root}", "val"))
    assert torch.equal(mask, torch.from_numpy(raw.astype(np.int64)))


def test_sixteen_bit_mask(folder_root: Path) -> None:
    raw = np.resize(np.array([0, 2, 255], dtype=np.uint16), (H, W))
    Image.fromarray(raw).save(folder_root / "masks/val/c.png")
    assert torch.equal(open_dataset(f"folder:{folder_root}", "val")[0][1], torch.from_numpy(raw.astype(np.int64)))
    Image.fromarray(np.resize(np.array([1, 300, 1000], dtype=np.uint16), (H, W))).save(folder_root / "masks/val/c.png")
    with raises_data_error("c.png", "values 300, 1000"):
        open_dataset(f"folder:{folder_root}", "val")[0]


def test_many_bad_values_are_summarised(folder_root: Path, write: Writer) -> None:
    write.mask(folder_root / "masks/val/c.png", np.arange(3, 23))
    with raises_data_error("c.png", "values 3, 4, 5, 6, 7, 8, 9, 10 and 12 more") as error:
        open_dataset(f"folder:{folder_root}", "val")[0]
    check_one_line(error)


def test_grayscale_image_becomes_rgb(folder_root: Path) -> None:
    grey = np.full((H, W), 77, dtype=np.uint8)
    Image.fromarray(grey, "L").save(folder_root / "images/val/c.png")
    image, _ = open_dataset(f"folder:{folder_root}", "val")[0]
    assert image.shape == (3, H, W) and bool((image == 77).all())


def test_dataloader_batches_and_pickles(cityscapes_root: Path) -> None:
    dataset = open_dataset(f"cityscapes:{cityscapes_root}", "train")
    images, masks = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert images.shape == (3, 3, H, W) and masks.shape == (3, H, W)
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0][1], dataset[0][1])


def test_label_map_rejects_a_bad_table() -> None:
    with pytest.raises(ValueError, match="256 entries"):
        LabelMap(np.zeros(10), "none")
    assert camvid.LABEL_MAP.table[11] == 255 and folder.VAL_EVERY == 5
