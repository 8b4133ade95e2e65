"""hactl: a health-checking high-availability controller for Linux load-balancer directors."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
