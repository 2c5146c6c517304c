"""A tiny dataset the training tests learn in seconds: coloured bands, three classes, a corner ignored."""

from __future__ import annotations

import numpy as np
import torch

from scaler.proxy.data import DataError, DatasetInfo, SegmentationDataset


class Stripes(SegmentationDataset):
    """Three classes told apart by colour: vertical bands at seeded positions; a corner is ignored."""

    def __init__(self, n: int = 12, size: tuple[int, int] = (48, 64), seed: int = 0, bad: int | None = None):
        self.info = DatasetInfo("stripes", ("red", "green", "blue"))
        self.split = "train"
        self.n, self.size, self.seed, self.bad = n, size, seed, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.bad:
            raise DataError(f"/data/masks/{i:04d}.png: label value 7 outside [0, 3) and not the ignore value 255")
        rng = np.random.default_rng([self.seed, i])
        h, w = self.size
        cuts = np.sort(rng.integers(8, w - 8, size=2))
        mask = np.zeros((h, w), np.int64)
        mask[:, cuts[0] : cuts[1]] = 1
        mask[:, cuts[1] :] = 2
        colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float64)
        image = colours[mask] + rng.normal(0, 20, size=(h, w, 3))
        mask[:4, :4] = 255
        image_u8 = torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
        return image_u8, torch.from_numpy(mask)
