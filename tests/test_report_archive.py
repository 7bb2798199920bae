"""report.archive: stable test ids (suite after module and class, independent of where the
suites are installed) and portable file names for each test's evidence."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from pytest_meshconform.report import (
    assign_test_ids,
    safe_name,
)


def test_test_ids_name_suites_after_modules_and_classes() -> None:
    assert assign_test_ids(
        [
            "conformance/test_strict.py::test_naked_refused",
            "conformance/test_identity.py::TestCert::test_uri[foo-foo]",
            "suites/checks_test.py::test_x",
            "docs/guide.md",
        ]
    ) == {
        "conformance/test_strict.py::test_naked_refused": (
            "strict",
            "strict::test_naked_refused",
            "test_naked_refused",
            "conformance/test_strict.py",
        ),
        "conformance/test_identity.py::TestCert::test_uri[foo-foo]": (
            "identity::TestCert",
            "identity::TestCert::test_uri[foo-foo]",
            "test_uri[foo-foo]",
            "conformance/test_identity.py",
        ),
        "suites/checks_test.py::test_x": (
            "checks",
            "checks::test_x",
            "test_x",
            "suites/checks_test.py",
        ),
        "docs/guide.md": ("guide", "guide::guide.md", "guide.md", "docs/guide.md"),
    }


def test_test_ids_do_not_depend_on_where_the_suites_are_installed() -> None:
    checkout = assign_test_ids(["conformance/test_strict.py::test_x"])
    wheel = assign_test_ids(
        [".venv/lib/python3.12/site-packages/pytest_meshconform/conformance/test_strict.py::test_x"]
    )
    assert checkout["conformance/test_strict.py::test_x"][1] == "strict::test_x"
    assert next(iter(wheel.values()))[1] == "strict::test_x"


def test_modules_sharing_a_name_fall_back_to_their_paths() -> None:
    ids = assign_test_ids(["a/test_x.py::test_t", "b/test_x.py::test_t", "c/test_y.py::test_t"])
    assert [value[1] for value in ids.values()] == [
        "a/test_x::test_t",
        "b/test_x::test_t",
        "y::test_t",
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from("ab/_.:[]t"), min_size=1, max_size=16), unique=True))
def test_distinct_node_ids_get_distinct_test_ids(nodeids: list[str]) -> None:
    ids = [value[1] for value in assign_test_ids(nodeids).values()]
    assert len(set(ids)) == len(nodeids)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (
            "conformance/test_strict.py::test_naked[foo-bar]",
            "conformance_test_strict.py__test_naked_foo-bar",
        ),
        (
            "curl sleep.legacy -> http://httpbin.foo:8000/headers",
            "curl_sleep.legacy_-_http_httpbin.foo_8000_headers",
        ),
        ("../..", "_"),
        ("", "_"),
        (".hidden", "hidden"),
    ],
)
def test_safe_name(text: str, name: str) -> None:
    assert safe_name(text) == name


def test_long_safe_names_stay_distinct() -> None:
    first, second = safe_name("x" * 300 + "a"), safe_name("x" * 300 + "b")
    assert len(first) == len(second) == 120
    assert first != second


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_safe_names_are_portable_file_names(text: str) -> None:
    name = safe_name(text)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}", name), name
