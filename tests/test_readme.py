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
