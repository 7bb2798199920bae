"""The README's suite example runs as written."""

from __future__ import annotations

import re

import pytest
from local_helpers import REPO, needs_local_mesh


@needs_local_mesh
def test_readme_suite_example_passes(pytester: pytest.Pytester) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "def test_" in b)
    pytester.makepyfile(test_readme_example=example)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
