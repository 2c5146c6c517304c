"""Training-time augmentation and the fixed data stream every candidate of a search sees.

Every random draw is seeded by ``(seed, draw)``, where ``draw`` counts samples from the start of
training, so the images, crops, flips and colours a network trains on depend on the seed alone:
not on the architecture, the number of loader workers, or the order workers finish in. That is what
makes short-schedule mIoUs of different candidates comparable.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data import SegmentationDataset

__all__ = ["MEAN", "STD", "AugmentConfig", "TrainStream", "normalize", "resize_pair"]

# ImageNet statistics, the convention of the segmentation papers we compare with.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def normalize(image_u8: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., 3, H, W]`` → normalised ``float32``."""
    return (image_u8.float() / 255.0 - MEAN) / STD


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random scale, crop, flip and colour jitter, as in the real-time segmentation papers.

    Args:
        crop: Training crop ``(H, W)``.
        base_size: Size ``(H, W)`` an image is resized to before the random scale (the size the
            network sees at evaluation), or ``None`` to keep the image's own size.
        scale: Range of the random scale factor applied on top of ``base_size``.
        flip: Probability of a horizontal flip.
        jitter: Strength of brightness, contrast and saturation jitter (0 disables it).
    """

    crop: tuple[int, int]
    base_size: tuple[int, int] | None = None
    scale: tuple[float, float] = (0.5, 2.0)
    flip: float = 0.5
    jitter: float = 0.25


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a float image bilinearly and its mask by nearest neighbour to ``size``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    msk = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return img, msk


class TrainStream(Dataset):
    """Sample ``k`` of the training stream: dataset image ``order[k]``, augmented with seed ``(seed, k)``.

    Args:
        dataset: The training split.
        config: Augmentation settings.
        num_samples: Length of the stream (iterations x batch size).
        seed: Fixes the image order and every augmentation draw.
    """

    def __init__(self, dataset: SegmentationDataset, config: AugmentConfig, num_samples: int, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError("the training split is empty")
        self.dataset = dataset
        self.config = config
        self.num_samples = num_samples
        self.seed = seed
        n = len(dataset)
        epochs = -(-num_samples // n)
        perms = [np.random.default_rng([seed, 7, e]).permutation(n) for e in range(epochs)]
        self.order = np.concatenate(perms)[:num_samples]
        self.ignore_index = dataset.info.ignore_index

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 11, k])
        image_u8, mask = self.dataset[int(self.order[k])]
        return self.augment(image_u8, mask, rng)

    def augment(
        self, image_u8: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        image = image_u8.float() / 255.0
        h, w = image.shape[-2:]
        bh, bw = cfg.base_size or (h, w)
        s = rng.uniform(*cfg.scale)
        size = (max(1, round(bh * s)), max(1, round(bw * s)))
        image, mask = resize_pair(image, mask, size)
        image, mask = self._crop(image, mask, rng)
        if rng.random() < cfg.flip:
            image, mask = image.flip(-1), mask.flip(-1)
        if cfg.jitter > 0:
            image = _colour_jitter(image, rng, cfg.jitter)
        return (image - MEAN) / STD, mask

    def _crop(
        self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.config.crop
        h, w = image.shape[-2:]
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        if pad_h or pad_w:
            # Padding is ignored by the loss: its label is the ignore index.
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            h, w = image.shape[-2:]
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[:, top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


def _colour_jitter(image: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    b, c, s = (1.0 + rng.uniform(-strength, strength, size=3)).tolist()
    image = image * b
    mean = image.mean()
    image = (image - mean) * c + mean
    grey = image.mean(dim=0, keepdim=True)
    image = (image - grey) * s + grey
    return image.clamp_(0.0, 1.0)
