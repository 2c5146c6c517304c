"""Imports every dataset module so that each registers its SPEC kind with :func:`register_dataset`."""

from __future__ import annotations

from scaler.proxy.data import ade20k, camvid, cityscapes, folder, synthetic  # noqa: F401
