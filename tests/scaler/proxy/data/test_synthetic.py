"""The embedded ``synthetic`` dataset: determinism, the sample contract, scene content and its options."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scaler.proxy.data.base as base
from scaler.proxy.data import DataError, dataset_kinds, open_dataset
from scaler.proxy.data.synthetic import (
    CLASS_NAMES,
    SyntheticOptions,
    SyntheticStreets,
    open_synthetic,
    parse_options,
    render_scene,
)

POLE, PERSON = CLASS_NAMES.index("pole"), CLASS_NAMES.index("person")
SMALL = SyntheticOptions(height=64, width=128, train=6, val=4)
REPO = Path(__file__).resolve().parents[5]


@pytest.fixture(scope="module")
def full_size_masks() -> list[np.ndarray]:
    """Masks of twelve default-size train images (seed 0)."""
    data = SyntheticStreets("train", seed=0, options=SyntheticOptions(train=12))
    return [data[i][1].numpy() for i in range(len(data))]


def _runs(where: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True along each row of a boolean array."""
    padded = np.pad(where, ((0, 0), (1, 1))).astype(np.int8)
    steps = np.diff(padded, axis=1)
    return np.flatnonzero(steps.ravel() == -1) - np.flatnonzero(steps.ravel() == 1)


def test_same_seed_gives_identical_samples_in_any_order() -> None:
    first = SyntheticStreets("train", seed=3, options=SMALL)
    second = SyntheticStreets("train", seed=3, options=SMALL)
    forward = [first[i] for i in range(len(first))]
    backward = {i: second[i] for i in reversed(range(len(second)))}
    for i, (image, mask) in enumerate(forward):
        assert torch.equal(image, backward[i][0])
        assert torch.equal(mask, backward[i][1])


def _digest(image: torch.Tensor, mask: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes() + mask.numpy().tobytes()).hexdigest()


def test_same_seed_gives_identical_samples_in_another_process() -> None:
    code = (
        "import hashlib; from scaler.proxy.data import open_dataset; "
        "image, mask = open_dataset('synthetic:size=64x128,train=2,val=2', 'val', seed=5)[1]; "
        "print(hashlib.sha256(image.numpy().tobytes() + mask.numpy().tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(*open_dataset("synthetic:size=64x128,train=2,val=2", "val", seed=5)[1])


def test_train_and_val_differ_and_seed_changes_the_data() -> None:
    train = SyntheticStreets("train", seed=0, options=SMALL)
    val = SyntheticStreets("val", seed=0, options=SMALL)
    other = SyntheticStreets("train", seed=1, options=SMALL)
    for i in range(len(val)):
        assert not torch.equal(train[i][0], val[i][0])
        assert not torch.equal(train[i][0], other[i][0])
        assert not torch.equal(train[i][1], other[i][1])
    assert not torch.equal(train[0][0], train[1][0])


@pytest.mark.parametrize(("height", "width"), [(64, 128), (33, 47), (96, 64)])
def test_samples_meet_the_contract(height: int, width: int) -> None:
    data = SyntheticStreets("val", seed=0, options=SyntheticOptions(height=height, width=width, train=1, val=3))
    allowed = set(range(len(CLASS_NAMES))) | {255}
    assert len(data) == 3
    for image, mask in (data[i] for i in range(len(data))):
        assert image.dtype == torch.uint8 and image.shape == (3, height, width)
        assert mask.dtype == torch.int64 and mask.shape == (height, width)
        assert set(mask.unique().tolist()) <= allowed
        assert image.float().std() > 10


def test_info_names_street_classes_and_the_ignore_label() -> None:
    info = SyntheticStreets().info
    assert info.name == "synthetic"
    assert info.num_classes == len(CLASS_NAMES) >= 8
    for name in ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole"):
        assert name in info.class_names
    assert info.ignore_index == 255


def test_default_options_and_lengths() -> None:
    train, val = SyntheticStreets("train"), SyntheticStreets("val")
    assert (len(train), len(val)) == (300, 60)
    assert train.options == SyntheticOptions(height=256, width=512, train=300, val=60)


def test_every_class_and_the_ignore_label_appear(full_size_masks: list[np.ndarray]) -> None:
    seen = np.zeros(256, dtype=np.int64)
    for mask in full_size_masks:
        seen += np.bincount(mask.ravel(), minlength=256)
    assert all(seen[k] > 0 for k in range(len(CLASS_NAMES))), dict(zip(CLASS_NAMES, seen.tolist(), strict=False))
    assert seen[255] > 0
    assert sum((mask == 255).any() for mask in full_size_masks) >= 3
    assert seen[len(CLASS_NAMES) : 255].sum() == 0


def test_poles_are_thin(full_size_masks: list[np.ndarray]) -> None:
    widths = np.concatenate([_runs(mask == POLE) for mask in full_size_masks])
    heights = np.concatenate([_runs((mask == POLE).T) for mask in full_size_masks])
    assert len(widths) > 500
    # Lamp arms are horizontal and poles at different distances can overlap; all else is 1-3 px wide.
    assert np.mean(widths <= 3) > 0.98
    assert np.bincount(widths, minlength=4)[1:4].min() > 100
    # Most pole pixels belong to tall vertical runs (the rest are lamp arms).
    assert heights[heights > 20].sum() > 0.7 * heights.sum()


def test_persons_include_small_distant_ones(full_size_masks: list[np.ndarray]) -> None:
    heights = np.concatenate([_runs((mask == PERSON).T) for mask in full_size_masks])
    assert len(heights) > 100
    assert np.mean(heights <= 16) > 0.2
    assert heights.max() < 0.5 * full_size_masks[0].shape[0]


def test_returned_samples_are_copies_of_the_cache() -> None:
    data = SyntheticStreets("train", seed=0, options=SMALL)
    image, mask = data[0]
    image.zero_()
    mask.fill_(255)
    again_image, again_mask = data[0]
    assert again_image.float().std() > 10
    assert (again_mask != 255).any()


def test_a_tiny_cache_still_gives_the_same_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = SyntheticStreets("train", seed=2, options=SMALL)
    monkeypatch.setattr(base, "CACHE_BYTES", 1)
    small_cache = SyntheticStreets("train", seed=2, options=SMALL)
    for i in (0, 1, 0, 2, 1):
        assert torch.equal(small_cache[i][0], reference[i][0]) and torch.equal(small_cache[i][1], reference[i][1])
    assert len(small_cache._cache) == 0 and len(reference._cache) == 3


def test_pickled_copy_gives_the_same_samples_without_the_cache() -> None:
    data = SyntheticStreets("train", seed=4, options=SMALL)
    image, mask = data[1]
    copy = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < 10_000
    assert torch.equal(copy[1][0], image) and torch.equal(copy[1][1], mask)


def test_indexing() -> None:
    data = SyntheticStreets("val", seed=0, options=SMALL)
    assert torch.equal(data[-1][0], data[len(data) - 1][0])
    with pytest.raises(IndexError):
        data[len(data)]
    assert "val" in data.describe(2) and "2" in data.describe(2)
    with pytest.raises(ValueError, match="split"):
        SyntheticStreets("test")


def test_render_scene_is_a_pure_function_of_the_generator() -> None:
    a = render_scene(np.random.default_rng(7), 48, 80)
    b = render_scene(np.random.default_rng(7), 48, 80)
    assert a[0].shape == (48, 80, 3) and a[0].dtype == np.uint8 and a[1].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("", SyntheticOptions()),
        ("size=128x256", SyntheticOptions(height=128, width=256)),
        ("size=128x256,train=200,val=40", SyntheticOptions(height=128, width=256, train=200, val=40)),
        (" val = 7 , TRAIN=9, ", SyntheticOptions(train=9, val=7)),
        ("size=64X96", SyntheticOptions(height=64, width=96)),
    ],
)
def test_parse_options(argument: str, expected: SyntheticOptions) -> None:
    assert parse_options(argument) == expected


@pytest.mark.parametrize(
    ("argument", "names"),
    [
        ("colour=red", ["'colour'", "'red'"]),
        ("size=256", ["'size'", "'256'"]),
        ("size=16x512", ["'size'", "'16x512'"]),
        ("size=axb", ["'size'", "'axb'"]),
        ("train=0", ["'train'", "'0'"]),
        ("val=-3", ["'val'", "'-3'"]),
        ("train=many", ["'train'", "'many'"]),
        ("train=5,train=6", ["'train'", "twice"]),
        ("size", ["'size'", "key=value"]),
    ],
)
def test_bad_options_raise_one_line_naming_key_and_value(argument: str, names: list[str]) -> None:
    with pytest.raises(DataError) as caught:
        parse_options(argument)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert "allowed keys: size, train, val" in message


def test_open_through_the_public_entry_point() -> None:
    assert "synthetic" in dataset_kinds()
    data = open_dataset("synthetic:size=64x128,train=5,val=3", "val")
    assert isinstance(data, SyntheticStreets)
    assert len(data) == 3 and data.split == "val"
    image, mask = data[2]
    assert image.shape == (3, 64, 128) and mask.shape == (64, 128)
    assert len(open_dataset("synthetic", "train")) == 300
    with pytest.raises(DataError, match="'bogus'"):
        open_dataset("synthetic:bogus=1")
    assert open_synthetic("train=2", "train", 0).seed == 0
