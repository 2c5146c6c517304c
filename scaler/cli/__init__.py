"""The ``scaler`` command line. Thin: each command parses options into the library's config objects,
calls the library, and prints what it returns (text from :mod:`scaler.report`, or JSON)."""

from __future__ import annotations

from scaler.cli import (  # noqa: F401  (each registers its commands)
    bench,
    dashboard,
    explain,
    models_info,
    report,
    retrain,
    search,
    train,
)
from scaler.cli.main import main

__all__ = ["main"]
