"""lps-scaler: grow LPS-Nets for a device and a latency budget, measure them honestly, keep every result."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
