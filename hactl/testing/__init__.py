"""Fakes shipped with the package, so every test tree uses the same ones."""

from __future__ import annotations
