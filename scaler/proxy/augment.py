"""Training-time augmentation and the fixed data stream every candidate of a search sees.

Every random draw is seeded by ``(seed, draw)``, where ``draw`` counts samples from the start of
training, so the images, crops, flips and colours a network trains on depend on the seed alone:
not on the architecture, the number of loader workers, or the order workers finish in. That is what
makes short-schedule mIoUs of different candidates comparable.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from scaler.proxy.data import SegmentationDataset

__all__ = ["MEAN", "STD", "AugmentConfig", "TrainStream", "colour_jitter", "normalize", "resize_pair"]

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
    # Nearest neighbour as a gather of rows and columns (PyTorch's 'nearest' rule): no float round trip.
    h, w = mask.shape
    rows = (torch.arange(size[0]) * (h / size[0])).long().clamp_(max=h - 1)
    cols = (torch.arange(size[1]) * (w / size[1])).long().clamp_(max=w - 1)
    return img, mask.index_select(0, rows).index_select(1, cols)


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

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image in [0, 1], mask, colour-jitter factors)``; :meth:`collate` finishes a batch."""
        rng = np.random.default_rng([self.seed, 11, k])
        image_u8, mask = self.dataset[int(self.order[k])]
        return self.augment(image_u8, mask, rng)

    def augment(
        self, image_u8: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        h, w = image_u8.shape[-2:]
        bh, bw = cfg.base_size or (h, w)
        s = rng.uniform(*cfg.scale)
        sh, sw = max(1, round(bh * s)), max(1, round(bw * s))
        ch, cw = cfg.crop
        # The crop's window in the scaled image; where the scaled image is smaller, the rest is padding.
        top = int(rng.integers(0, max(sh - ch, 0) + 1))
        left = int(rng.integers(0, max(sw - cw, 0) + 1))
        oh, ow = min(ch, sh), min(cw, sw)
        # Resize only the source region under the window, not the whole image: at scale 2 that is a
        # quarter of the work, and this loop runs in the training process.
        fy, fx = h / sh, w / sw
        y0, y1 = math.floor(top * fy), min(h, math.ceil((top + oh) * fy))
        x0, x1 = math.floor(left * fx), min(w, math.ceil((left + ow) * fx))
        image = image_u8[:, y0:y1, x0:x1].float().div_(255.0)
        image, mask = resize_pair(image, mask[y0:y1, x0:x1], (oh, ow))
        if oh < ch or ow < cw:
            # Padding is ignored by the loss: its label is the ignore index.
            image = F.pad(image, (0, cw - ow, 0, ch - oh), value=0.0)
            mask = F.pad(mask, (0, cw - ow, 0, ch - oh), value=self.ignore_index)
        if rng.random() < cfg.flip:
            image, mask = image.flip(-1), mask.flip(-1)
        jitter = torch.from_numpy(1.0 + rng.uniform(-cfg.jitter, cfg.jitter, size=3)).float()
        return image, mask, jitter

    @staticmethod
    def collate(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack a batch, then jitter colours and normalise it in a few whole-batch operations."""
        images = torch.stack([s[0] for s in samples])
        masks = torch.stack([s[1] for s in samples])
        factors = torch.stack([s[2] for s in samples])
        return (colour_jitter(images, factors) - MEAN) / STD, masks


def colour_jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of each image ``[B, 3, H, W]`` (in [0, 1]) scaled by its
    ``factors[b] = (brightness, contrast, saturation)``."""
    b, c, s = (factors[:, i].view(-1, 1, 1, 1) for i in range(3))
    images = images * b
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * c + mean
    grey = images.mean(dim=1, keepdim=True)
    images = (images - grey) * s + grey
    return images.clamp_(0.0, 1.0)
