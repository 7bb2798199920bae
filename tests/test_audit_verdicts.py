"""docs/audit-verdicts.md lists every value the audit writes, each with its meaning: each of its
tables holds exactly the values of the type its heading names, and the report's schema allows
the same values."""

from __future__ import annotations

import json
import re
from typing import Any, get_args

import pytest
from local_helpers import REPO

from pytest_meshconform.audit.discovery import Authz, Observed, Predicted
from pytest_meshconform.audit.engine import Verdict
from pytest_meshconform.audit.exceptions import ExceptionStatus
from pytest_meshconform.audit.pod_ports import PortClass
from pytest_meshconform.audit.report import AUDIT_SCHEMA
from pytest_meshconform.istio.api import AuthzAction

DOC = REPO / "docs" / "audit-verdicts.md"

TYPES: dict[str, tuple[str, ...]] = {
    "audit.engine.Verdict": get_args(Verdict),
    "audit.discovery.Predicted": get_args(Predicted),
    "audit.discovery.Observed": get_args(Observed),
    "audit.discovery.Authz": get_args(Authz),
    "audit.pod_ports.PortClass": get_args(PortClass),
    "audit.exceptions.ExceptionStatus": tuple(s.value for s in ExceptionStatus),
    "istio.api.AuthzAction": tuple(a.value for a in AuthzAction),
}


def _tables() -> dict[str, dict[str, str]]:
    """Each section's table, by the type its heading names: value -> meaning."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^## .*\(`([\w.]+)`\)$", line)
        if heading:
            current = heading.group(1)
            tables[current] = {}
        row = re.match(r"^\| `([^`]+)` \| (.+) \|$", line)
        if row and current is not None:
            tables[current][row.group(1)] = row.group(2)
    return tables


def test_every_type_has_a_table() -> None:
    assert sorted(_tables()) == sorted(TYPES)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_each_table_lists_exactly_the_types_values_with_a_meaning(name: str) -> None:
    table = _tables()[name]
    assert sorted(table) == sorted(TYPES[name])
    assert all(len(meaning) > 20 for meaning in table.values()), table


def _enums(schema: Any) -> list[list[Any]]:
    """Every ``enum`` list of the schema."""
    if isinstance(schema, dict):
        found = [schema["enum"]] if "enum" in schema else []
        return found + [e for value in schema.values() for e in _enums(value)]
    if isinstance(schema, list):
        return [e for value in schema for e in _enums(value)]
    return []


def test_the_report_schema_allows_the_same_values() -> None:
    enums = [sorted(map(str, e)) for e in _enums(json.loads(AUDIT_SCHEMA.read_text()))]
    for name in (
        "audit.engine.Verdict",
        "audit.discovery.Predicted",
        "audit.discovery.Observed",
        "audit.pod_ports.PortClass",
        "audit.exceptions.ExceptionStatus",
        "istio.api.AuthzAction",
    ):
        assert sorted(TYPES[name]) in enums, name
