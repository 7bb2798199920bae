"""The README's suite example runs as written."""

from __future__ import annotations

import re

import pytest
from local_helpers import REPO, needs_local_mesh

EXAMPLES = [
    block
    for block in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    if "def test_" in block
]


@needs_local_mesh
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_readme_suite_example_passes(pytester: pytest.Pytester, example: str) -> None:
    pytester.makepyfile(test_readme_example=example)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_readme_has_the_suite_examples() -> None:
    assert len(EXAMPLES) == 3  # the mTLS suite, a call table, the AuthorizationPolicy suite


def table_splits(text: str) -> list[int]:
    """Line numbers of table rows that follow a gap (blank line or text) without starting a new
    table (a header row followed by `|---`): rows Markdown renders as text."""
    lines = text.splitlines()
    splits = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or i == 0 or lines[i - 1].startswith("|"):
            continue
        if not (i + 1 < len(lines) and lines[i + 1].startswith("|-")):
            splits.append(i + 1)
    return splits


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("docs/*.md"))]
)
def test_no_table_is_split_by_a_paragraph(doc: str) -> None:
    """A blank line or text between two table rows ends the table: the rows after it render as
    text (the README's options table once lost four rows that way)."""
    assert table_splits((REPO / doc).read_text()) == []


def test_a_split_table_is_found() -> None:
    split = "| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n| 3 | 4 |\n"
    assert table_splits(split) == [6]
    assert table_splits("| a |\n|---|\n| 1 |\n\n| b |\n|---|\n| 2 |\n") == []
