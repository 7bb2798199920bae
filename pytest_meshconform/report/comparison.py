"""The comparison with ``--mesh-baseline`` as the report keeps it: the ``comparison`` field.

``comparison_to_dict`` writes a `BaselineComparison`; ``comparison_from_dict`` reads one back
for the strict loader (``formats.parse_report``), checking it against the report's own tests:
each change's outcome now is its test's, a removed test is not in the report, the result
agrees with the changes, and a failed comparison failed the run. A report without the field
(no baseline, or an older report) reads as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from pytest_meshconform.report.model import (
    BROKEN,
    OUTCOMES,
    PASSING,
    PHASES,
    BaselineComparison,
    ChangeRecord,
    CollectionError,
    ConformanceReport,
    Outcome,
    Phase,
    ReportError,
)

__all__ = ["comparison_from_dict", "comparison_to_dict"]

# (document key, BaselineComparison field), in document order
_CATEGORIES: Final = (
    ("regressions", "regressions"),
    ("infrastructure", "infrastructure"),
    ("fixes", "fixes"),
    ("newlySkipped", "newly_skipped"),
    ("otherChanges", "other_changes"),
    ("newTests", "new_tests"),
    ("removedTests", "removed_tests"),
)
_ERRORS: Final = (
    ("newCollectionErrors", "new_collection_errors"),
    ("fixedCollectionErrors", "fixed_collection_errors"),
)
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _change_dict(change: ChangeRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"id": change.id}
    if change.was is not None:
        data["was"] = change.was
    if change.was_phase is not None:
        data["wasPhase"] = change.was_phase
    if change.was_infrastructure:
        data["wasInfrastructure"] = True
    if change.now is not None:
        data["now"] = change.now
    return data


def comparison_to_dict(comparison: BaselineComparison) -> dict[str, Any]:
    """The comparison as plain data, every category present (an empty one as ``[]``)."""
    baseline: dict[str, Any] = {
        "report": comparison.baseline,
        "date": comparison.date,
        "mesh": comparison.mesh,
        "summary": comparison.summary,
    }
    if comparison.faults:
        baseline["faults"] = list(comparison.faults)
    data: dict[str, Any] = {"baseline": baseline, "result": comparison.result}
    for key, name in _CATEGORIES:
        data[key] = [_change_dict(c) for c in getattr(comparison, name)]
    for key, name in _ERRORS:
        data[key] = [{"nodeid": e.nodeid, "message": e.message} for e in getattr(comparison, name)]
    return data


# --- reading back ---------------------------------------------------------------------------


def _mapping(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ReportError(f"{where}: expected a mapping")
    return cast(dict[str, Any], data)


def _only(data: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    for key in data:
        if key not in keys:
            raise ReportError(f"{where}.{key}: unknown field")


def _text(data: Mapping[str, Any], key: str, where: str, required: bool = True) -> str | None:
    if key not in data:
        if required:
            raise ReportError(f"{where}.{key}: missing")
        return None
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ReportError(f"{where}.{key}: expected a non-empty string")
    return value


def _choice(
    data: Mapping[str, Any], key: str, accepted: Sequence[str], where: str, required: bool = False
) -> str | None:
    value = _text(data, key, where, required=required)
    if value is not None and value not in accepted:
        raise ReportError(
            f"{where}.{key}: invalid value {value!r}; accepted values: {', '.join(accepted)}"
        )
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    if key not in data:
        raise ReportError(f"{where}.{key}: missing")
    value = data[key]
    if not isinstance(value, list):
        raise ReportError(f"{where}.{key}: expected a list")
    return value


def _change(data: object, where: str) -> ChangeRecord:
    fields = _mapping(data, where)
    _only(fields, ("id", "was", "wasPhase", "wasInfrastructure", "now"), where)
    infrastructure = fields.get("wasInfrastructure")
    if infrastructure is not None and infrastructure is not True:
        raise ReportError(f"{where}.wasInfrastructure: expected true (omit it instead of false)")
    change = ChangeRecord(
        id=cast(str, _text(fields, "id", where)),
        was=cast(Outcome | None, _choice(fields, "was", OUTCOMES, where)),
        now=cast(Outcome | None, _choice(fields, "now", OUTCOMES, where)),
        was_phase=cast(Phase | None, _choice(fields, "wasPhase", PHASES, where)),
        was_infrastructure=infrastructure is True,
    )
    if change.was is None and (change.was_phase or change.was_infrastructure):
        raise ReportError(f"{where}: a test new in this run has no phase or flag before")
    return change


def _check_category(key: str, change: ChangeRecord, where: str) -> None:
    """Each category's own rule (``diff_reports``): what was before, what is now."""
    was, now = change.was, change.now
    if key == "newTests":
        ok, rule = was is None and now is not None, "only 'now'"
    elif key == "removedTests":
        ok, rule = was is not None and now is None, "only 'was'"
    elif was is None or now is None or (was == now and key != "infrastructure"):
        ok, rule = False, "'was' and 'now', which differ"
    elif key == "regressions":
        ok, rule = was in PASSING and now in BROKEN, "passed or xpassed before, broken now"
    elif key == "fixes":
        ok, rule = was in BROKEN and now in PASSING, "broken before, passed or xpassed now"
    elif key == "newlySkipped":
        ok, rule = now == "skipped", "skipped now"
    else:
        ok, rule = True, ""
    if not ok:
        raise ReportError(f"{where}: a change in {key} has {rule}")


def comparison_from_dict(data: object, report: ConformanceReport) -> BaselineComparison:
    """Check the ``comparison`` field against the report it is in, and read it back.

    Raises ReportError naming the offending field (``comparison.regressions[0].now: ...``).
    """
    where = "comparison"
    fields = _mapping(data, where)
    _only(fields, ("baseline", "result", *(k for k, _ in _CATEGORIES + _ERRORS)), where)
    baseline = _mapping(fields.get("baseline"), f"{where}.baseline")
    _only(baseline, ("report", "date", "mesh", "summary", "faults"), f"{where}.baseline")
    date = cast(str, _text(baseline, "date", f"{where}.baseline"))
    if not _DATE_RE.fullmatch(date):
        raise ReportError(f"{where}.baseline.date: expected UTC RFC 3339, got {date!r}")
    faults = baseline.get("faults", [])
    if not isinstance(faults, list) or not all(isinstance(f, str) and f for f in faults):
        raise ReportError(f"{where}.baseline.faults: expected a list of non-empty strings")
    if "faults" in baseline and not faults:
        raise ReportError(f"{where}.baseline.faults: omit the field instead of an empty list")
    tests = {test.id: test for test in report.tests}
    categories: dict[str, tuple[ChangeRecord, ...]] = {}
    seen: set[str] = set()
    for key, name in _CATEGORIES:
        changes = []
        for index, item in enumerate(_list(fields, key, where)):
            at = f"{where}.{key}[{index}]"
            change = _change(item, at)
            _check_category(key, change, at)
            if change.id in seen:
                raise ReportError(f"{at}.id: {change.id!r} is in another category too")
            seen.add(change.id)
            test = tests.get(change.id)
            if change.now is None and test is not None:
                raise ReportError(f"{at}.id: {change.id!r} is a test of this report")
            if change.now is not None and (test is None or test.outcome != change.now):
                found = "not in this report" if test is None else f"{test.outcome} here"
                raise ReportError(
                    f"{at}.now: {change.now!r} does not agree with the tests"
                    f" ({change.id!r} is {found})"
                )
            changes.append(change)
        categories[name] = tuple(changes)
    errors: dict[str, tuple[CollectionError, ...]] = {}
    for key, name in _ERRORS:
        found_errors = []
        for index, item in enumerate(_list(fields, key, where)):
            at = f"{where}.{key}[{index}]"
            error = _mapping(item, at)
            _only(error, ("nodeid", "message"), at)
            message = error.get("message")
            if not isinstance(message, str):
                raise ReportError(f"{at}.message: expected a string")
            found_errors.append(CollectionError(cast(str, _text(error, "nodeid", at)), message))
        errors[name] = tuple(found_errors)
    known = {error.nodeid for error in report.collection_errors}
    for index, new_error in enumerate(errors["new_collection_errors"]):
        if new_error.nodeid not in known:
            raise ReportError(
                f"{where}.newCollectionErrors[{index}].nodeid: {new_error.nodeid!r} is not among"
                " this report's collectionErrors"
            )
    comparison = BaselineComparison(
        baseline=cast(str, _text(baseline, "report", f"{where}.baseline")),
        date=date,
        mesh=cast(str, _text(baseline, "mesh", f"{where}.baseline")),
        summary=cast(str, _text(baseline, "summary", f"{where}.baseline")),
        faults=tuple(faults),
        regressions=categories["regressions"],
        infrastructure=categories["infrastructure"],
        fixes=categories["fixes"],
        newly_skipped=categories["newly_skipped"],
        other_changes=categories["other_changes"],
        new_tests=categories["new_tests"],
        removed_tests=categories["removed_tests"],
        new_collection_errors=errors["new_collection_errors"],
        fixed_collection_errors=errors["fixed_collection_errors"],
    )
    result = _choice(fields, "result", ("fail", "infrastructure", "ok"), where, required=True)
    if result != comparison.result:
        raise ReportError(
            f"{where}.result: {result!r} does not agree with the changes"
            f" (expected {comparison.result!r})"
        )
    if comparison.failed and report.exit_status == 0:
        raise ReportError(f"{where}.result: a failed comparison fails the run (run.exitStatus 0)")
    return comparison
