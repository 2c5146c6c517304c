"""Decoded samples kept in memory (SampleCache): decoded once, the same tensors as decoding, bounded by bytes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import scaler.proxy.data.base as base
import scaler.proxy.data.files as files
from scaler.proxy.data import DataError, open_dataset
from scaler.proxy.data.base import SampleCache
from scaler.proxy.data.generate import IMBALANCED_CLASSES, write_folder_dataset, write_imbalanced_folder

H, W = 16, 24
SAMPLE_BYTES = 4 * H * W  # uint8 image (3 bytes a pixel) + uint8 mask


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_imbalanced_folder(tmp_path / "imb", train=6, val=2, size=(H, W), seed=3, objects=1.0, side=(3, 6))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image and mask file decoded, by name, in order."""
    seen: list[str] = []
    read_image, read_mask = files.read_image, files.read_index_mask

    def image(path: Path) -> np.ndarray:
        seen.append(f"image {path.name}")
        return read_image(path)

    def mask(path: Path) -> np.ndarray:
        seen.append(f"mask {path.name}")
        return read_mask(path)

    monkeypatch.setattr(files, "read_image", image)
    monkeypatch.setattr(files, "read_index_mask", mask)
    return seen


def test_a_folder_sample_is_decoded_once(root: Path, reads: list[str]) -> None:
    data = open_dataset(f"folder:{root}", "train")
    for i in (0, 1, 0, 0, 1, -6):  # -6 is sample 0 again: one cache entry per sample
        data[i]
    assert reads == ["image 00000.png", "mask 00000.png", "image 00001.png", "mask 00001.png"]
    assert len(data._cache) == 2 and data._cache.nbytes == 2 * SAMPLE_BYTES


def test_cached_samples_equal_decoded_ones_and_are_copies(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = open_dataset(f"folder:{root}", "train")
    monkeypatch.setattr(base, "CACHE_BYTES", 0)
    uncached = open_dataset(f"folder:{root}", "train")
    for i in [*range(len(cached)), *range(len(cached))]:
        image, mask = cached[i]
        ref_image, ref_mask = uncached[i]
        assert image.dtype == torch.uint8 and mask.dtype == torch.int64 and image.shape == (3, H, W)
        assert torch.equal(image, ref_image) and torch.equal(mask, ref_mask)
    assert len(cached._cache) == len(cached) and len(uncached._cache) == 0
    assert sum(int((cached[i][1] > 0).sum()) for i in range(len(cached))) > 0  # the objects survive the cache
    image, mask = cached[2]
    image.zero_()
    mask.fill_(255)  # augmenting in place must not reach the stored sample
    assert torch.equal(cached[2][0], uncached[2][0]) and torch.equal(cached[2][1], uncached[2][1])


def test_the_byte_budget_is_respected_and_samples_past_it_are_decoded_each_time(
    root: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "CACHE_BYTES", 2 * SAMPLE_BYTES + SAMPLE_BYTES // 2)
    data = open_dataset(f"folder:{root}", "train")
    for i in (0, 1, 2, 3, 0, 1, 2, 3):
        data[i]
    assert len(data._cache) == 2 and data._cache.nbytes == 2 * SAMPLE_BYTES <= data._cache.max_bytes
    images = [r for r in reads if r.startswith("image")]
    assert images == [f"image 0000{i}.png" for i in (0, 1, 2, 3, 2, 3)]  # the first two stay; 2 and 3 decode again


def test_a_pickled_dataset_carries_no_pixels_and_gives_the_same_samples(root: Path) -> None:
    data = open_dataset(f"folder:{root}", "train")
    samples = [data[i] for i in range(len(data))]
    copy = pickle.loads(pickle.dumps(data))  # what a spawned DataLoader worker receives
    assert len(copy._cache) == 0 and copy._cache.nbytes == 0
    assert len(pickle.dumps(data)) < 4 * len(data) * SAMPLE_BYTES // 10
    for i, (image, mask) in enumerate(samples):
        assert torch.equal(copy[i][0], image) and torch.equal(copy[i][1], mask)


def test_a_sample_that_fails_is_not_stored_and_fails_again(tmp_path: Path) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    root = write_folder_dataset(tmp_path / "bad", IMBALANCED_CLASSES, {"train": [(image, np.zeros((H, W), np.uint8))]})
    (root / "masks/train/00000.png").write_bytes(b"not a png")
    data = open_dataset(f"folder:{root}", "train")
    for _ in range(2):
        with pytest.raises(DataError, match="cannot decode mask"):
            data[0]
    assert len(data._cache) == 0


def test_the_cache_stores_masks_as_bytes_and_refuses_values_that_do_not_fit() -> None:
    cache = SampleCache(max_bytes=10_000)
    mask = torch.tensor([[0, 3], [255, 1]])
    _, out = cache.get(0, lambda: (torch.ones(3, 2, 2, dtype=torch.uint8), mask))
    assert out.dtype == torch.int64 and torch.equal(out, mask) and cache.nbytes == 16
    assert cache._samples[0][1].dtype == torch.uint8
    with pytest.raises(ValueError, match=r"\[0, 255\], got \[-1, 0\]"):
        cache.get(1, lambda: (torch.ones(3, 1, 2, dtype=torch.uint8), torch.tensor([[-1, 0]])))
