"""Tables a suite asserts: literal rows of calls, one runner that makes, compares and records them.

A table suite is data: each row a `Call` (`sleep.foo` calls `httpbin.bar`, GET /headers) and the
`Outcome` Istio documents for it (`Outcome("mTLS", status=200, mtls=True)`), under the case's
policies. `call_table(title, calls, policies=...)` applies the policies, makes every call, names
what each one gave, keeps the expected and observed table in the reports, and fails the test
naming every cell that differs with curl's evidence. In the spirit of Istio's echo framework
(`Call(CallOptions{To, Check})`, small checks such as `OK()`) and Gateway API conformance (one
`ExpectedResponse`, one compare function): a platform team's table reads like the built-in
suites', and runs through the same code.

The outcomes the built-in suites share are public (`MTLS`, `PLAINTEXT`, `RESET`,
`UNAVAILABLE`, `DENIED`), so a platform team's table uses the same words.

`record_table` keeps a table whose cells a test observes itself (TLS probes, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import pytest

from pytest_meshconform.evidence.curl import HttpError, HttpResult, header_from_httpbin
from pytest_meshconform.plugin.policies import PolicyApplier, PolicySource
from pytest_meshconform.plugin.workloads import WorkloadHandle, WorkloadLookup
from pytest_meshconform.report.exhibits import evidence_of
from pytest_meshconform.report.observations import ObservedTable, TableRecorder

__all__ = [
    "DENIED",
    "MTLS",
    "PLAINTEXT",
    "RESET",
    "UNAVAILABLE",
    "Call",
    "CallTable",
    "Outcome",
    "call_table",
    "record_table",
]

NOT_CALLED = "-"
"""The cell of a (row, column) pair that no call of the table fills."""


@final
@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call should give, named as its table cell shows it.

    Every check must hold: the HTTP status (None: no HTTP response at all) and curl's exit code
    always (``curl_exit``: one code, or a tuple of the codes that qualify, as `RESET`'s 56 and
    52); ``mtls`` when set (True: the server saw an X-Forwarded-Client-Cert naming the
    client's SPIFFE ID, read from httpbin's /headers echo; False: it saw none); ``body`` when
    set (the response body, whitespace stripped).
    """

    label: str
    status: int | None
    curl_exit: int | tuple[int, ...] = 0
    mtls: bool | None = None
    body: str | None = None

    def matches(self, result: HttpResult, client: WorkloadHandle) -> bool:
        """Whether `result`, of a call `client` made, is this outcome."""
        exits = (self.curl_exit,) if isinstance(self.curl_exit, int) else self.curl_exit
        if result.status != self.status or result.exit_code not in exits:
            return False
        if self.body is not None and result.body.decode(errors="replace").strip() != self.body:
            return False
        if self.mtls is None:
            return True
        xfcc = _xfcc(result)
        if xfcc is None:
            return not self.mtls
        return self.mtls and client.spiffe_id in xfcc

    def __str__(self) -> str:
        return self.label


# The outcomes the built-in suites share, as Istio's reachability test and docs name them.
MTLS: Final = Outcome("mTLS", status=200, mtls=True)
"""200, and the server saw an X-Forwarded-Client-Cert naming the client's SPIFFE ID."""
PLAINTEXT: Final = Outcome("plaintext", status=200, mtls=False)
"""200 without X-Forwarded-Client-Cert: the request reached the app in plaintext."""
RESET: Final = Outcome("reset", status=None, curl_exit=(56, 52))
"""No HTTP response: the connection was reset or closed (curl exit 56 or 52, `HttpResult.reset`),
what a STRICT sidecar does to plaintext (no filter chain matches). Not `refused` (exit 7: nothing
listened), which no table should mistake for it."""
UNAVAILABLE: Final = Outcome("503", status=503)
"""503 from the client's own sidecar: it could not reach the upstream (plaintext towards STRICT,
mTLS towards a server without a sidecar)."""
DENIED: Final = Outcome("403 RBAC", status=403, body="RBAC: access denied")
"""An AuthorizationPolicy denied the HTTP request: 403 with Envoy RBAC's body."""


def _xfcc(result: HttpResult) -> str | None:
    """The X-Forwarded-Client-Cert httpbin echoed (None without one, or without an echo)."""
    try:
        return header_from_httpbin(result.json(), "X-Forwarded-Client-Cert")
    except HttpError:
        return None


def _describe(result: HttpResult, client: WorkloadHandle) -> str:
    """A cell for a call that gave none of the table's outcomes: what happened instead."""
    if result.ok:
        xfcc = _xfcc(result)
        if xfcc is not None and client.spiffe_id not in xfcc:
            return f"mTLS as someone else ({xfcc})"
    return result.outcome  # `HTTP 404`, `refused`, `timeout`, `no response (curl exit 18)`


@final
@dataclass(frozen=True, slots=True)
class Call:
    """One row of a table: `client` requests `server`'s Service and should get `expect`.

    Workloads are named `<name>.<namespace>`, the namespace as the suites spell it
    (`sleep.foo`). `port` is a port of the server's Service, by number or name (as
    `WorkloadHandle.curl` takes it; by default its only HTTP port); with one, the table's
    column is `<server>:<port>`.
    """

    client: str
    server: str
    expect: Outcome
    method: str = "GET"
    path: str = "/headers"
    port: int | str | None = None

    @property
    def request(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def column(self) -> str:
        """The table column of this call: the server, and the port when the call names one."""
        return self.server if self.port is None else f"{self.server}:{self.port}"

    def __str__(self) -> str:
        return f"{self.client} {self.request} -> {self.column}"


def _workload(lookup: WorkloadLookup, key: str, skip_if_missing: bool) -> WorkloadHandle:
    __tracebackhide__ = True
    name, dot, namespace = key.rpartition(".")
    if not dot or not name or not namespace:
        raise ValueError(f"a table names workloads <name>.<namespace> (sleep.foo), got {key!r}")
    return lookup(name, namespace, skip_if_missing=skip_if_missing)


@final
class CallTable:
    """What `call_table` returns: ``call_table(title, calls, policies=(), corner=,
    skip_if_missing=False)`` -> `ObservedTable`.

    Applies `policies` (through `apply_policy`: validated, awaited, restored after the test),
    makes each call from the client's pod, and names what it gave: the expected outcome when it
    matches, else the first of the table's other outcomes that does, else what happened
    (`HTTP 404`, `refused`, `timeout`: `HttpResult.outcome`). Rows are the clients (with the
    request when the table's calls vary it), columns the servers (`server:port` for a call
    naming a port). Every call's port is checked against its server's Service
    (`ServicePortError`) before any policy is applied. The table goes into the reports, pass
    or fail; a table that differs fails the test with every differing call and curl's evidence.
    ``skip_if_missing=True`` skips the test, naming the workload, when the topology lacks one.
    """

    def __init__(
        self, lookup: WorkloadLookup, apply_policy: PolicyApplier, recorder: TableRecorder
    ) -> None:
        self._lookup = lookup
        self._apply_policy = apply_policy
        self._recorder = recorder

    def __repr__(self) -> str:
        return f"<CallTable {self._recorder!r}>"

    def __call__(
        self,
        title: str,
        calls: Sequence[Call],
        *,
        policies: Sequence[PolicySource] = (),
        corner: str = "client \\ server",
        skip_if_missing: bool = False,
    ) -> ObservedTable:
        __tracebackhide__ = True
        if not calls:
            raise ValueError(f"table {title!r} has no calls")
        varied = len({call.request for call in calls}) > 1
        cells = [
            (f"{call.client} {call.request}" if varied else call.client, call.column)
            for call in calls
        ]
        twice = sorted({cell for cell in cells if cells.count(cell) > 1})
        if twice:
            raise ValueError(f"table {title!r}: two calls fill the cell(s) {twice}")
        handles = {
            key: _workload(self._lookup, key, skip_if_missing)
            for key in dict.fromkeys(k for call in calls for k in (call.client, call.server))
        }
        for call in calls:  # a port the Service does not expose: before anything is applied
            handles[call.server].url(call.path, port=call.port)
        for source in policies:
            self._apply_policy(source)
        outcomes = list(dict.fromkeys(call.expect for call in calls))
        expected: dict[tuple[str, str], str] = {}
        observed: dict[tuple[str, str], str] = {}
        differ: list[str] = []
        for call, cell in zip(calls, cells, strict=True):
            client = handles[call.client]
            result = client.curl(
                handles[call.server], port=call.port, method=call.method, path=call.path
            )
            got = next((o for o in (call.expect, *outcomes) if o.matches(result, client)), None)
            expected[cell] = call.expect.label
            observed[cell] = got.label if got is not None else _describe(result, client)
            if got != call.expect:
                differ.append(f"  {call}: expected {call.expect}: {result}")
        rows = list(dict.fromkeys(row for row, _ in expected))
        columns = list(dict.fromkeys(column for _, column in expected))
        for cell in ((row, column) for row in rows for column in columns):
            if cell not in expected:
                expected[cell] = observed[cell] = NOT_CALLED
        table = self._recorder(
            title, rows=rows, columns=columns, expected=expected, observed=observed, corner=corner
        )
        assert table.ok, f"{table.text()}\nobserved differs from expected:\n" + "\n".join(differ)
        return table


@pytest.fixture
def record_table(request: pytest.FixtureRequest) -> TableRecorder:
    """`record_table(title, rows=, columns=, expected=, observed=)`: a table the test asserts,
    kept in the reports (expected vs observed, colour-coded in HTML), pass or fail."""
    return TableRecorder(evidence_of(request.node).observed)


@pytest.fixture
def call_table(
    workload: WorkloadLookup, apply_policy: PolicyApplier, record_table: TableRecorder
) -> CallTable:
    """`call_table(title, calls, policies=...)`: make a table of calls, compare each with its
    literal `Outcome`, keep the table in the reports, fail naming every cell that differs."""
    return CallTable(workload, apply_policy, record_table)
