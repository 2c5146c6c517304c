"""Datasets: the embedded synthetic street scenes and loaders for real datasets in their own layouts."""

from __future__ import annotations

from scaler.proxy.data.base import (
    IGNORE_INDEX,
    DataError,
    DatasetInfo,
    SegmentationDataset,
    dataset_kinds,
    open_dataset,
    register_dataset,
)

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "DatasetInfo",
    "SegmentationDataset",
    "dataset_kinds",
    "open_dataset",
    "register_dataset",
]
