"""Per-test evidence: what the fixtures saw, kept so a failure can show it and archive it.

Fixtures append to the current test's `Evidence` (`item.stash[evidence_key]`); the report
plugin attaches it to failed tests' reports and copies files into `--mesh-artifacts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from pytest_meshconform.report.observations import Observations

if TYPE_CHECKING:
    from pytest_meshconform.mesh import LogPositions


@dataclass
class Evidence:
    """Files (pcaps), texts (curl output, XFCC, certs, logs), data kept only as files (Envoy
    config dumps) and the observations of one test."""

    files: dict[str, Path] = field(default_factory=dict)  # label -> path
    texts: dict[str, str] = field(default_factory=dict)  # label -> text
    # What the test did and saw, pass or fail (the report keeps it; a failure shows it first).
    observed: Observations = field(default_factory=Observations)
    # Where the mesh's logs stood when the test's fixtures were set up: its time window.
    log_positions: LogPositions | None = None
    # label -> (bytes, file suffix): evidence only kept as files, under --mesh-artifacts
    blobs: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def add_file(self, label: str, path: Path) -> None:
        self.files[_unique(label, self.files)] = path

    def add_text(self, label: str, text: str) -> None:
        self.texts[_unique(label, self.texts)] = text

    def add_blob(self, label: str, data: bytes, suffix: str) -> None:
        self.blobs[_unique(label, self.blobs)] = (data, suffix)


def _unique(label: str, taken: Mapping[str, object]) -> str:
    if label not in taken:
        return label
    n = 2
    while f"{label} #{n}" in taken:
        n += 1
    return f"{label} #{n}"


evidence_key: Final = pytest.StashKey[Evidence]()
"""`item.stash[evidence_key]`: the Evidence of a test item (created on first use)."""


def evidence_of(item: pytest.Item) -> Evidence:
    found = item.stash.get(evidence_key, None)
    if found is None:
        found = item.stash[evidence_key] = Evidence()
    return found
