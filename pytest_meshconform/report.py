"""Conformance reports, artifacts and baseline comparison (placeholder until issue 6 lands)."""

from __future__ import annotations

import pytest


def configure(config: pytest.Config) -> None:
    """Register the report plugin for this run (nothing yet)."""
