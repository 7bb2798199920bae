"""Options of the kube backend (added to the meshconform option group)."""

from __future__ import annotations

import pytest


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """No kube-specific options yet."""
