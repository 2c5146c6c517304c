"""Writing datasets in the ``folder:`` layout: any samples, an imbalanced one, and one whose class names mean something.

The imbalanced scenes are the case a short proxy training gets wrong on real data: one class covers nearly every
pixel, the others are a few small objects, so plain cross-entropy learns to predict the dominant class everywhere
(every candidate network then scores the same mIoU). Benchmarks and tests write it to a folder and open it with
``folder:PATH``, like a user's own data; nothing is downloaded, and the same seed writes the same files.

The named-shapes scenes (:func:`shapes_scene`) are the case language guidance is for: every class is a
colour and a shape ("red circle", "blue triangle", ...), so the class names share words exactly where
the classes share looks, which a sentence encoder's embeddings reflect. Some combinations are rare in
training and as common as the others in validation: a head that scores pixels against the names'
embeddings could borrow from "red square" and "blue triangle" to recognise "red triangle", where a 1x1
classifier has only the few red triangles it saw (measured in ``benchmarks/results/heads_cpu.md``: with
MiniLM's embeddings, no head did).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMBALANCED_CLASSES",
    "SHAPE_CLASSES",
    "SHAPE_RARE",
    "imbalanced_scene",
    "shapes_scene",
    "write_folder_dataset",
    "write_imbalanced_folder",
    "write_shapes_folder",
]

IMBALANCED_CLASSES: tuple[str, ...] = ("background", "red", "green", "blue")
# The object classes' colours; a scene's background is a random grey, far from all three.
_OBJECT_RGB = np.array([[200, 50, 50], [50, 180, 50], [60, 60, 210]], np.float64)

_SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 40),
    "green": (45, 165, 60),
    "blue": (50, 75, 215),
    "yellow": (225, 200, 45),
}
_SHAPES = ("circle", "square", "triangle")
# Class 0 is the background; then every colour with every shape, colour by colour.
SHAPE_CLASSES: tuple[str, ...] = ("background", *(f"{c} {s}" for c in _SHAPE_COLOURS for s in _SHAPES))
# Rare in training (each colour and each shape is still common in other classes): the combinations a
# head can only learn well by composing what it knows of their words.
SHAPE_RARE: tuple[str, ...] = ("red triangle", "green circle", "blue square", "yellow triangle")


def write_folder_dataset(
    root: str | Path, class_names: Sequence[str], splits: Mapping[str, Iterable[tuple[np.ndarray, np.ndarray]]]
) -> Path:
    """Write samples as a ``folder:`` dataset: ``classes.txt``, ``images/SPLIT/NNNNN.png``, ``masks/SPLIT/NNNNN.png``.

    Args:
        root: The folder to write (created; existing files of the same names are overwritten).
        class_names: One per class, mask value i naming ``class_names[i]``.
        splits: For each split (``train``, ``val``), its samples: ``uint8`` RGB ``[H, W, 3]`` and a ``[H, W]``
            mask of class indices or 255 (ignore).

    Returns:
        ``root`` as a :class:`~pathlib.Path`, ready for ``folder:ROOT``.

    Raises:
        ValueError: A mask is not the size of its image, or holds a value that is neither a class nor 255.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    for split, samples in splits.items():
        images, masks = root / "images" / split, root / "masks" / split
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i, (image, mask) in enumerate(samples):
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{split} sample {i}: mask {mask.shape} is not the image's size {image.shape[:2]}")
            bad = np.setdiff1d(np.unique(mask), [*range(len(class_names)), 255])
            if bad.size:
                raise ValueError(f"{split} sample {i}: mask values {bad.tolist()} are no class of {len(class_names)}")
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(images / f"{i:05d}.png")
            Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(masks / f"{i:05d}.png")
    return root


def imbalanced_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    objects: float = 0.2,
    side: tuple[int, int] = (12, 24),
    classes: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: a noisy grey background (class 0) and, now and then, small squares of each object class.

    Each object class has its own colour, so a network that attends to the rare pixels tells them apart easily;
    what makes the scene hard is only how few they are (with the defaults, under 1% of the pixels per class).

    Args:
        rng: Draws everything.
        height, width: Image size.
        objects: Mean number of squares per object class (Poisson): most scenes hold none of a class.
        side: Range of a square's side in pixels (inclusive).
        classes: Object classes drawn (1 to 3), the first ``classes`` of red, green, blue.

    Returns:
        ``(image uint8 [H, W, 3], mask uint8 [H, W])``.

    Raises:
        ValueError: ``classes`` is not 1 to 3, or ``side`` does not fit the image.
    """
    if not 1 <= classes <= len(_OBJECT_RGB):
        raise ValueError(f"classes must be 1 to {len(_OBJECT_RGB)}, got {classes}")
    if not 1 <= side[0] <= side[1] <= min(height, width):
        raise ValueError(f"side must be (low, high) with 1 <= low <= high <= {min(height, width)}, got {side}")
    grey = rng.uniform(70, 170)
    tint = rng.uniform(-15, 15, size=3)
    image = np.empty((height, width, 3), np.float64)
    image[:] = grey + tint
    ramp = np.linspace(-20, 20, width)[None, :, None] * rng.choice((-1.0, 1.0))
    image += ramp
    mask = np.zeros((height, width), np.uint8)
    for k, rgb in enumerate(_OBJECT_RGB[:classes], start=1):
        for _ in range(int(rng.poisson(objects))):
            s = int(rng.integers(side[0], side[1] + 1))
            top, left = int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))
            image[top : top + s, left : left + s] = rgb + rng.uniform(-20, 20, size=3)
            mask[top : top + s, left : left + s] = k
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_imbalanced_folder(
    root: str | Path,
    *,
    train: int = 64,
    val: int = 16,
    size: tuple[int, int] = (64, 128),
    seed: int = 0,
    objects: float = 0.2,
    side: tuple[int, int] = (12, 24),
    classes: int = 3,
) -> Path:
    """Write :func:`imbalanced_scene` samples as a ``folder:`` dataset of classes :data:`IMBALANCED_CLASSES`.

    Args:
        root: The folder to write.
        train, val: Samples per split.
        size: ``(height, width)``.
        seed: Sample ``i`` of a split is drawn from the generator seeded ``(seed, split, i)``.
        objects, side, classes: See :func:`imbalanced_scene`; the dataset's classes are the background and the
            first ``classes`` object classes of :data:`IMBALANCED_CLASSES`.

    Returns:
        ``root``.
    """

    def samples(code: int, n: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for i in range(n):
            rng = np.random.default_rng([seed, code, i])
            yield imbalanced_scene(rng, *size, objects=objects, side=side, classes=classes)

    splits = {"train": samples(0, train), "val": samples(1, val)}
    return write_folder_dataset(root, IMBALANCED_CLASSES[: 1 + classes], splits)


def shapes_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    objects: tuple[int, int] = (4, 8),
    radius: tuple[int, int] = (6, 18),
    rare_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene of coloured shapes on a cluttered background; the classes are :data:`SHAPE_CLASSES`.

    The background is a random muted colour with a brightness ramp and a few thin streaks of the
    objects' own colours (labelled background): colour alone does not find an object, its shape must
    agree. Objects may overlap (the later one is on top). Every image gets its own white balance and
    gain, and sensor noise, so no fixed colour threshold labels a class.

    Args:
        rng: Draws everything.
        height, width: Image size.
        objects: Range of the number of objects (inclusive).
        radius: Range of an object's half-size in pixels (inclusive).
        rare_weight: How likely a :data:`SHAPE_RARE` class is, relative to any other (1: as likely).

    Returns:
        ``(image uint8 [H, W, 3], mask uint8 [H, W])``.

    Raises:
        ValueError: ``radius`` does not fit the image, or ``rare_weight`` is not in [0, 1].
    """
    if not 2 <= radius[0] <= radius[1] or 2 * radius[1] >= min(height, width):
        raise ValueError(f"radius must be (low, high) with 2 <= low <= high < {min(height, width) // 2}, got {radius}")
    if not 0 <= rare_weight <= 1:
        raise ValueError(f"rare_weight must be in [0, 1], got {rare_weight}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3), np.float64)
    image[:] = rng.uniform(60, 150) + rng.uniform(-25, 25, size=3)
    image += (xx / width - 0.5)[..., None] * rng.uniform(-50, 50)
    mask = np.zeros((height, width), np.uint8)
    colours = np.array(list(_SHAPE_COLOURS.values()), np.float64)
    for _ in range(int(rng.integers(2, 5))):  # streaks of object colours that are not objects
        y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
        slope = rng.uniform(-1, 1)
        streak = np.abs((yy - y0) - slope * (xx - x0)) <= rng.uniform(0.5, 1.5)
        image[streak] = colours[rng.integers(len(colours))] + rng.uniform(-20, 20, size=3)
    names = SHAPE_CLASSES[1:]
    weights = np.array([rare_weight if n in SHAPE_RARE else 1.0 for n in names])
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        k = int(rng.choice(len(names), p=weights / weights.sum()))
        colour, shape = names[k].split(" ")
        r = float(rng.integers(radius[0], radius[1] + 1))
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        if shape == "circle":
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif shape == "square":
            inside = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
        else:  # an upright triangle, apex at the top
            inside = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) * 0.55)
        image[inside] = np.array(_SHAPE_COLOURS[colour], np.float64) + rng.uniform(-25, 25, size=3)
        mask[inside] = k + 1
    image *= rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.8, 1.2)  # white balance and gain
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_shapes_folder(
    root: str | Path,
    *,
    train: int = 400,
    val: int = 100,
    size: tuple[int, int] = (96, 192),
    seed: int = 0,
    rare_weight: float = 0.05,
) -> Path:
    """Write :func:`shapes_scene` samples as a ``folder:`` dataset of classes :data:`SHAPE_CLASSES`.

    Args:
        root: The folder to write.
        train, val: Samples per split.
        size: ``(height, width)``.
        seed: Sample ``i`` of a split is drawn from the generator seeded ``(seed, split, i)``.
        rare_weight: How likely a :data:`SHAPE_RARE` class is in *training* scenes, relative to any other;
            validation scenes draw every class alike.

    Returns:
        ``root``.
    """

    def samples(code: int, n: int, weight: float) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for i in range(n):
            rng = np.random.default_rng([seed, code, i])
            yield shapes_scene(rng, *size, rare_weight=weight)

    splits = {"train": samples(0, train, rare_weight), "val": samples(1, val, 1.0)}
    return write_folder_dataset(root, SHAPE_CLASSES, splits)
