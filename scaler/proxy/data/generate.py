"""Writing datasets in the ``folder:`` layout: any samples, and a generated imbalanced one.

The imbalanced scenes are the case a short proxy training gets wrong on real data: one class covers nearly every
pixel, the others are a few small objects, so plain cross-entropy learns to predict the dominant class everywhere
(every candidate network then scores the same mIoU). Benchmarks and tests write it to a folder and open it with
``folder:PATH``, like a user's own data; nothing is downloaded, and the same seed writes the same files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMBALANCED_CLASSES", "imbalanced_scene", "write_folder_dataset", "write_imbalanced_folder"]

IMBALANCED_CLASSES: tuple[str, ...] = ("background", "red", "green", "blue")
# The object classes' colours; a scene's background is a random grey, far from all three.
_OBJECT_RGB = np.array([[200, 50, 50], [50, 180, 50], [60, 60, 210]], np.float64)


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
