"""What a test observed, pass or fail: the proof a report carries for each test.

The fixtures feed one `Observations` per test (`Evidence.observed`): the policies it applied,
each request (client, server, outcome, curl exit code and HTTP status), one line per captured
flow, the identities seen (XFCC, certificates), certificate rotations, and the tables a suite
asserts (`TableRecorder`, the `record_table` fixture). The report keeps them in compact form
(`to_dict`, checked back by `observations_from_dict`); a failure shows `summary()` first.

Standard library only: the report module imports it when the plugin loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = [
    "Observations",
    "ObservedTable",
    "RequestRecord",
    "RotationRecord",
    "TableRecorder",
    "observations_from_dict",
]

MISMATCH_MARK: Final = "(!)"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request a test made: who called what, and what came back. A TCP connection
    (`WorkloadHandle.tcp`) is one too: its url is ``tcp://host:port`` and `received` counts the
    bytes that came back."""

    client: str  # workload key, "sleep.foo"
    url: str
    server: str | None  # workload key of the target, when it is a workload of the mesh
    status: int | None  # HTTP status, None without a response
    exit_code: int  # curl's exit code
    outcome: str  # "HTTP 200", "reset (curl exit 56)", ...
    count: int = 1  # the same request with the same outcome, made this many times in a row
    received: int | None = None  # TCP connections: the bytes received; None for HTTP

    def line(self) -> str:
        target = self.server or self.url
        times = f" (x{self.count})" if self.count > 1 else ""
        return f"{self.client} -> {target} ({self.url}): {self.outcome}{times}"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"client": self.client, "url": self.url}
        if self.server is not None:
            data["server"] = self.server
        if self.status is not None:
            data["status"] = self.status
        data["curlExit"] = self.exit_code
        data["outcome"] = self.outcome
        if self.received is not None:
            data["received"] = self.received
        if self.count > 1:
            data["count"] = self.count
        return data


@dataclass(frozen=True, slots=True)
class RotationRecord:
    """A certificate rotation a test watched (times are RFC 3339, UTC)."""

    workload: str
    old_serial: str
    new_serial: str
    old_not_before: str
    old_not_after: str
    new_not_before: str
    new_not_after: str
    observed_at: str
    fraction: float  # of the old certificate's lifetime elapsed when the new one was seen
    requests_before: int
    requests_after: int
    failed_requests: int

    def line(self) -> str:
        return (
            f"{self.workload}: serial {self.old_serial[:16]} -> {self.new_serial[:16]} seen at"
            f" {self.observed_at} ({self.fraction:.3f} of the old lifetime); requests"
            f" {self.requests_before} before, {self.requests_after} after,"
            f" {self.failed_requests} failed"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "oldSerial": self.old_serial,
            "newSerial": self.new_serial,
            "oldNotBefore": self.old_not_before,
            "oldNotAfter": self.old_not_after,
            "newNotBefore": self.new_not_before,
            "newNotAfter": self.new_not_after,
            "observedAt": self.observed_at,
            "fractionElapsed": self.fraction,
            "requestsBefore": self.requests_before,
            "requestsAfter": self.requests_after,
            "failedRequests": self.failed_requests,
        }


@dataclass(frozen=True, slots=True, repr=False)
class ObservedTable:
    """A table a test asserts: expected and observed cell by cell (row, column)."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    expected: tuple[tuple[str, ...], ...]  # [row][column]
    observed: tuple[tuple[str, ...], ...]
    corner: str = ""  # what the rows and columns are ("client \\ server")

    def __post_init__(self) -> None:
        for name, grid in (("expected", self.expected), ("observed", self.observed)):
            if len(grid) != len(self.rows) or any(len(r) != len(self.columns) for r in grid):
                raise ValueError(
                    f"table {self.title!r}: {name} must have {len(self.rows)} rows of"
                    f" {len(self.columns)} cells"
                )

    @property
    def mismatches(self) -> tuple[tuple[str, str, str, str], ...]:
        """(row, column, expected, observed) of every cell that differs."""
        return tuple(
            (row, column, want, got)
            for row, wants, gots in zip(self.rows, self.expected, self.observed, strict=True)
            for column, want, got in zip(self.columns, wants, gots, strict=True)
            if want != got
        )

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def text(self) -> str:
        """Expected and observed as aligned plain-text grids, differing cells marked (!)."""
        marked = tuple(
            tuple(g if g == w else f"{g} {MISMATCH_MARK}" for w, g in zip(ws, gs, strict=True))
            for ws, gs in zip(self.expected, self.observed, strict=True)
        )
        cells = [c for grid in (self.expected, marked) for row in grid for c in row]
        width = max(len(c) for c in (*cells, *self.columns, "")) + 2
        first = max(len(c) for c in (*self.rows, self.corner, "")) + 2

        def grid(values: tuple[tuple[str, ...], ...]) -> list[str]:
            lines = [self.corner.ljust(first) + "".join(c.ljust(width) for c in self.columns)]
            for row, cells_of_row in zip(self.rows, values, strict=True):
                lines.append(row.ljust(first) + "".join(c.ljust(width) for c in cells_of_row))
            return [line.rstrip() for line in lines]

        return "\n".join(
            [f"{self.title}", "expected:", *grid(self.expected), "observed:", *grid(marked)]
        )

    def __repr__(self) -> str:  # short: pytest prints it under a failed `assert table.ok`
        verdict = "as expected" if self.ok else f"{len(self.mismatches)} cells differ"
        return f"<ObservedTable {self.title!r}: {verdict}>"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"title": self.title}
        if self.corner:
            data["corner"] = self.corner
        data["columns"] = list(self.columns)
        data["rows"] = [
            {"name": row, "expected": list(wants), "observed": list(gots)}
            for row, wants, gots in zip(self.rows, self.expected, self.observed, strict=True)
        ]
        return data


def cell_text(value: object) -> str:
    """A table cell in words: True and False are "yes" and "no", None is "none" (a report
    never shows a Python value); anything else as `str` gives it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class TableRecorder:
    """What the `record_table` fixture returns: record a table the test asserts, so that the
    reports show it (colour-coded in HTML) whether the test passes or fails.

    ``record_table(title, rows=..., columns=..., expected={(row, col): value},
    observed={(row, col): value})`` -> `ObservedTable` (its ``.ok``, ``.mismatches`` and
    ``.text()`` serve the assertion). Each value becomes its cell's text: a string as it is,
    True / False / None as "yes" / "no" / "none", anything else as `str` gives it.
    """

    def __init__(self, observations: Observations) -> None:
        self._observations = observations

    def __repr__(self) -> str:
        return f"<TableRecorder: {len(self._observations.tables)} table(s) recorded>"

    def __call__(
        self,
        title: str,
        *,
        rows: Sequence[str],
        columns: Sequence[str],
        expected: Mapping[tuple[str, str], object],
        observed: Mapping[tuple[str, str], object],
        corner: str = "",
    ) -> ObservedTable:
        __tracebackhide__ = True
        missing = [
            f"{name}[{row!r}, {column!r}]"
            for name, cells in (("expected", expected), ("observed", observed))
            for row in rows
            for column in columns
            if (row, column) not in cells
        ]
        if missing:
            raise ValueError(f"table {title!r}: no value for {', '.join(missing[:5])}")
        table = ObservedTable(
            title=title,
            rows=tuple(rows),
            columns=tuple(columns),
            expected=tuple(tuple(cell_text(expected[(r, c)]) for c in columns) for r in rows),
            observed=tuple(tuple(cell_text(observed[(r, c)]) for c in columns) for r in rows),
            corner=corner,
        )
        self._observations.tables.append(table)
        return table


@dataclass
class Observations:
    """Everything one test observed, in the order it happened."""

    workloads: list[str] = field(default_factory=list)  # keys of the workloads it touched
    policies: list[str] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    rotations: list[RotationRecord] = field(default_factory=list)
    tables: list[ObservedTable] = field(default_factory=list)

    def add_request(self, request: RequestRecord) -> bool:
        """Record a request; one that repeats the last one (same call, same outcome) only
        counts it again, so a request loop stays one line. True when it was new."""
        if self.requests:
            last = self.requests[-1]
            if replace(last, count=1) == replace(request, count=1):
                self.requests[-1] = replace(last, count=last.count + request.count)
                return False
        self.requests.append(request)
        return True

    def touch(self, *keys: str | None) -> None:
        for key in keys:
            if key and key not in self.workloads:
                self.workloads.append(key)

    def __bool__(self) -> bool:
        return any(
            (
                self.workloads,
                self.policies,
                self.requests,
                self.flows,
                self.identities,
                self.rotations,
                self.tables,
            )
        )

    def summary(self) -> str:
        """What the test did and saw, for a person: shown first with a failure."""
        lines: list[str] = []

        def section(title: str, items: Sequence[str]) -> None:
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items)

        section("workloads touched", [", ".join(self.workloads)] if self.workloads else [])
        section("policies applied", self.policies)
        section("requests", [r.line() for r in self.requests])
        section("captured flows", self.flows)
        section("identities seen", self.identities)
        section("certificate rotations", [r.line() for r in self.rotations])
        for table in self.tables:
            status = "as expected" if table.ok else f"{len(table.mismatches)} cells differ"
            lines.append(f"table {table.title}: {status}")
            lines.extend(
                f"  {row} -> {column}: expected {want}, observed {got}"
                for row, column, want, got in table.mismatches
            )
        return "\n".join(lines) or "(nothing observed)"

    def to_dict(self) -> dict[str, Any]:
        """Compact plain data for the report; empty parts are left out."""
        data: dict[str, Any] = {}
        if self.workloads:
            data["workloads"] = list(self.workloads)
        if self.policies:
            data["policies"] = list(self.policies)
        if self.requests:
            data["requests"] = [r.to_dict() for r in self.requests]
        if self.flows:
            data["flows"] = list(self.flows)
        if self.identities:
            data["identities"] = list(self.identities)
        if self.rotations:
            data["rotations"] = [r.to_dict() for r in self.rotations]
        if self.tables:
            data["tables"] = [t.to_dict() for t in self.tables]
        return data


# --- reading back (the report's strict loader) ------------------------------------------------


def _texts(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    values = data.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{where}.{key}: expected a list of non-empty strings")
    return list(values)


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}.{key}: missing")
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ValueError(f"{where}.{key}: unexpected {type(value).__name__}")
    return value


def _only(data: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in keys]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown field")


_TOP_KEYS: Final = (
    "workloads",
    "policies",
    "requests",
    "flows",
    "identities",
    "rotations",
    "tables",
)
_REQUEST_KEYS: Final = (
    "client",
    "url",
    "server",
    "status",
    "curlExit",
    "outcome",
    "count",
    "received",
)
_ROTATION_KEYS: Final = (
    "workload",
    "oldSerial",
    "newSerial",
    "oldNotBefore",
    "oldNotAfter",
    "newNotBefore",
    "newNotAfter",
    "observedAt",
    "fractionElapsed",
    "requestsBefore",
    "requestsAfter",
    "failedRequests",
)


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key}: expected a list")
    return value


def observations_from_dict(data: object, where: str = "observations") -> Observations:
    """Check and read back `Observations.to_dict()`; ValueError names the offending field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping")
    _only(data, _TOP_KEYS, where)
    found = Observations(
        workloads=_texts(data, "workloads", where),
        policies=_texts(data, "policies", where),
        flows=_texts(data, "flows", where),
        identities=_texts(data, "identities", where),
    )
    for index, item in enumerate(_list(data, "requests", where)):
        at = f"{where}.requests[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a mapping")
        _only(item, _REQUEST_KEYS, at)
        server = item.get("server")
        status = item.get("status")
        if server is not None and not isinstance(server, str):
            raise ValueError(f"{at}.server: expected a string")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError(f"{at}.status: expected an integer")
        found.requests.append(
            RequestRecord(
                client=_need(item, "client", str, at),
                url=_need(item, "url", str, at),
                server=server,
                status=status,
                exit_code=_need(item, "curlExit", int, at),
                outcome=_need(item, "outcome", str, at),
                count=_need(item, "count", int, at) if "count" in item else 1,
                received=_need(item, "received", int, at) if "received" in item else None,
            )
        )
    for index, item in enumerate(_list(data, "rotations", where)):
        at = f"{where}.rotations[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a mapping")
        _only(item, _ROTATION_KEYS, at)
        found.rotations.append(
            RotationRecord(
                workload=_need(item, "workload", str, at),
                old_serial=_need(item, "oldSerial", str, at),
                new_serial=_need(item, "newSerial", str, at),
                old_not_before=_need(item, "oldNotBefore", str, at),
                old_not_after=_need(item, "oldNotAfter", str, at),
                new_not_before=_need(item, "newNotBefore", str, at),
                new_not_after=_need(item, "newNotAfter", str, at),
                observed_at=_need(item, "observedAt", str, at),
                fraction=float(_need(item, "fractionElapsed", (int, float), at)),
                requests_before=_need(item, "requestsBefore", int, at),
                requests_after=_need(item, "requestsAfter", int, at),
                failed_requests=_need(item, "failedRequests", int, at),
            )
        )
    for index, item in enumerate(_list(data, "tables", where)):
        at = f"{where}.tables[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a mapping")
        _only(item, ("title", "corner", "columns", "rows"), at)
        columns = _texts(item, "columns", at)
        rows, expected, observed = [], [], []
        for row_index, row in enumerate(_list(item, "rows", at)):
            row_at = f"{at}.rows[{row_index}]"
            if not isinstance(row, dict):
                raise ValueError(f"{row_at}: expected a mapping")
            _only(row, ("name", "expected", "observed"), row_at)
            for key in ("expected", "observed"):
                _need(row, key, list, row_at)
            rows.append(_need(row, "name", str, row_at))
            expected.append(tuple(_texts(row, "expected", row_at)))
            observed.append(tuple(_texts(row, "observed", row_at)))
        corner = item.get("corner", "")
        if not isinstance(corner, str):
            raise ValueError(f"{at}.corner: expected a string")
        found.tables.append(
            ObservedTable(
                title=_need(item, "title", str, at),
                rows=tuple(rows),
                columns=tuple(columns),
                expected=tuple(expected),
                observed=tuple(observed),
                corner=corner,
            )
        )
    return found
