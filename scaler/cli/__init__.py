"""The ``scaler`` command line. Thin: each command parses options into the library's config objects,
calls the library, and prints what it returns (text from :mod:`scaler.report`, or JSON)."""

from __future__ import annotations

from scaler.cli import bench, dashboard, explain, models_info, report, search, train  # noqa: F401  (each registers its commands)
from scaler.cli.main import main

__all__ = ["main"]
