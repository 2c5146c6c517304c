"""The generated ``folder:`` datasets: the named-shapes scenes language guidance is benchmarked on."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scaler.proxy.data import open_dataset
from scaler.proxy.data.generate import SHAPE_CLASSES, SHAPE_RARE, shapes_scene, write_shapes_folder


def _class_pixels(seed: int, rare_weight: float, n: int = 60) -> np.ndarray:
    counts = np.zeros(len(SHAPE_CLASSES), np.int64)
    for i in range(n):
        _, mask = shapes_scene(np.random.default_rng([seed, i]), 64, 128, rare_weight=rare_weight)
        counts += np.bincount(mask.ravel(), minlength=len(SHAPE_CLASSES))
    return counts


def test_shapes_classes_are_colours_and_shapes_and_rare_ones_are_rare_only_where_asked():
    assert SHAPE_CLASSES[0] == "background" and len(SHAPE_CLASSES) == 13
    assert {name.split()[1] for name in SHAPE_CLASSES[1:]} == {"circle", "square", "triangle"}
    assert set(SHAPE_RARE) < set(SHAPE_CLASSES)
    rare = [SHAPE_CLASSES.index(c) for c in SHAPE_RARE]
    common = [k for k in range(1, len(SHAPE_CLASSES)) if k not in rare]
    even = _class_pixels(0, 1.0)
    skewed = _class_pixels(0, 0.05)
    assert (even[1:] > 0).all()  # every class is drawn
    # Drawn alike, rare and common classes cover similar areas; at 0.05 the rare ones under a tenth as much.
    assert 0.5 < even[rare].mean() / even[common].mean() < 2
    assert skewed[rare].mean() / skewed[common].mean() < 0.1


def test_shapes_scene_is_seeded_and_its_objects_are_where_their_colour_is():
    a = shapes_scene(np.random.default_rng(5), 64, 128)
    b = shapes_scene(np.random.default_rng(5), 64, 128)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    image, mask = a
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8 and mask.shape == (64, 128)
    # Red objects are redder than they are green or blue, on average over their pixels.
    for k, name in enumerate(SHAPE_CLASSES):
        if name.startswith("red") and (mask == k).sum() > 20:
            r, g, b_ = image[mask == k].astype(float).mean(0)
            assert r > g + 60 and r > b_ + 60


def test_shapes_folder_opens_as_a_folder_dataset_with_its_names(tmp_path):
    root = write_shapes_folder(tmp_path / "shapes", train=5, val=2, size=(48, 96), seed=2)
    train = open_dataset(f"folder:{root}", "train")
    val = open_dataset(f"folder:{root}", "val")
    assert train.info.class_names == SHAPE_CLASSES and len(train) == 5 and len(val) == 2
    x, y = train[0]
    assert tuple(x.shape) == (3, 48, 96) and int(y.max()) < len(SHAPE_CLASSES)
    digest = hashlib.sha256((root / "masks" / "train" / "00000.png").read_bytes()).hexdigest()[:12]
    again = write_shapes_folder(tmp_path / "again", train=1, val=1, size=(48, 96), seed=2)
    assert hashlib.sha256((again / "masks" / "train" / "00000.png").read_bytes()).hexdigest()[:12] == digest


def test_shapes_bad_settings_are_one_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="radius must be"):
        shapes_scene(rng, 20, 40, radius=(4, 12))
    with pytest.raises(ValueError, match="rare_weight must be in"):
        shapes_scene(rng, 64, 128, rare_weight=2.0)
