"""Imports every dataset module so that each registers its SPEC kind with :func:`register_dataset`."""

from __future__ import annotations

from . import synthetic  # noqa: F401
