"""What the proxy measures: a model's confusion matrix over a validation split, and the scores from it.

Evaluation runs under ``torch.no_grad()``: each image is resized to the search's input size, and the
logits are resized back to the label's size, so every candidate is scored on the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scaler.proxy.augment import normalize
from scaler.proxy.data import SegmentationDataset

__all__ = ["confusion_matrix", "evaluate", "iou_from_confusion", "scores"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """``K x K`` int64 counts, rows = ground truth, columns = prediction; ignore pixels skipped."""
    valid = target != ignore_index
    idx = target[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    eval_size: tuple[int, int] | None,
    device: torch.device,
    limit: int | None = None,
    batch: int = 8,
    channels_last: bool = False,
    amp: bool = False,
) -> tuple[torch.Tensor, int]:
    """Confusion matrix of ``model`` over the split: each image resized to ``eval_size``, the logits
    resized back to the label's size. Returns the matrix and the number of images seen."""
    k = dataset.info.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64)
    model.eval()
    seen = 0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    i = 0
    while i < n:
        images, masks = [], []
        while i < n and len(images) < batch:
            img, msk = dataset[i]
            if images and (tuple(img.shape) != tuple(images[0].shape) or tuple(msk.shape) != tuple(masks[0].shape)):
                break
            images.append(img)
            masks.append(msk)
            i += 1
        x = normalize(torch.stack(images)).to(device)
        label_size = tuple(masks[0].shape)
        if eval_size is not None and tuple(x.shape[-2:]) != tuple(eval_size):
            x = F.interpolate(x, size=eval_size, mode="bilinear", align_corners=False)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(x)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != label_size:
            logits = F.interpolate(logits, size=label_size, mode="bilinear", align_corners=False)
        pred = logits.argmax(1).cpu()
        conf += confusion_matrix(pred, torch.stack(masks), k, dataset.info.ignore_index)
        seen += len(images)
    return conf, seen


def scores(conf: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU (over the classes present in ground truth or prediction), pixel accuracy and per-class IoU,
    named as :class:`~scaler.proxy.train.TrainResult` names them."""
    iou = iou_from_confusion(conf)
    total = conf.sum().item()
    return {
        "miou": float(np.nanmean(iou.numpy())) if not torch.isnan(iou).all() else 0.0,
        "pixel_accuracy": float(conf.diag().sum().item() / total) if total else 0.0,
        "per_class_iou": {
            n: (None if math.isnan(v) else float(v)) for n, v in zip(class_names, iou.tolist(), strict=True)
        },
    }
