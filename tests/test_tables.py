"""The table runner (`call_table`), its outcomes, and the TLS prober's output reading, without a
mesh: stand-in workloads answer each call as a real curl result would."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from pytest_meshconform import (
    DENIED,
    MTLS,
    PLAINTEXT,
    RESET,
    UNAVAILABLE,
    Call,
    Outcome,
    ServicePortError,
)
from pytest_meshconform.evidence.curl import HttpResult
from pytest_meshconform.plugin.probes import read_probe_outputs
from pytest_meshconform.plugin.tables import NOT_CALLED, CallTable
from pytest_meshconform.report.observations import Observations, TableRecorder

PLAIN = PLAINTEXT
SLEEP_FOO = "spiffe://cluster.local/ns/foo/sa/sleep"


def echo(client: str, xfcc: str | None) -> HttpResult:
    """httpbin's /headers answer, with the X-Forwarded-Client-Cert it saw (if any)."""
    headers = {"Host": "httpbin"} | ({"X-Forwarded-Client-Cert": xfcc} if xfcc else {})
    body = json.dumps({"headers": headers}).encode()
    return HttpResult("http://httpbin.foo:8000/headers", client, 0, 200, body=body)


def test_an_outcome_checks_status_exit_code_and_what_it_names() -> None:
    client = Handle("sleep.foo", SLEEP_FOO)
    mtls = echo("sleep.foo", f"By=spiffe://cluster.local/ns/foo/sa/httpbin;URI={SLEEP_FOO}")
    plain = echo("sleep.foo", None)
    reset = HttpResult("http://httpbin.foo:8000/headers", "sleep.foo", 56, None)
    assert MTLS.matches(mtls, client) and not MTLS.matches(plain, client)
    assert PLAIN.matches(plain, client) and not PLAIN.matches(mtls, client)
    assert RESET.matches(reset, client) and not RESET.matches(plain, client)
    empty = HttpResult("http://httpbin.foo:8000/headers", "sleep.foo", 52, None)
    refused = HttpResult("http://httpbin.foo:8000/headers", "sleep.foo", 7, None)
    assert RESET.matches(empty, client) and not RESET.matches(refused, client)
    assert UNAVAILABLE.matches(HttpResult("u", "sleep.foo", 0, 503), client)
    someone_else = echo("sleep.foo", "URI=spiffe://cluster.local/ns/bar/sa/sleep")
    assert not MTLS.matches(someone_else, client) and not PLAIN.matches(someone_else, client)
    denied = HttpResult("u", "sleep.foo", 0, 403, body=b"RBAC: access denied\n")
    assert DENIED.matches(denied, client)
    assert not DENIED.matches(HttpResult("u", "sleep.foo", 0, 403, body=b"forbidden"), client)
    # mtls is checked only from an httpbin /headers echo: a body without one is no XFCC at all
    assert not MTLS.matches(HttpResult("u", "sleep.foo", 0, 200, body=b"<html>"), client)
    assert str(MTLS) == "mTLS"


@dataclass
class Handle:
    """A stand-in WorkloadHandle: its calls answer from `answers` (server key, method, path)."""

    key: str
    spiffe_id: str = ""
    answers: dict[tuple[str, str, str], HttpResult] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    ports: tuple[int | str, ...] = (8000, "http")

    def url(self, path: str = "/headers", *, port: int | str | None = None) -> str:
        if port is not None and port not in self.ports:
            raise ServicePortError(f"{self.key} exposes 8000 (http), not {port!r}")
        return f"http://{self.key}:8000{path}"

    def curl(self, target: Handle, *, port: int | str | None, method: str, path: str) -> HttpResult:
        target.url(path, port=port)
        self.made.append(f"{method} {path} -> {target.key}" + (f":{port}" if port else ""))
        return self.answers[(target.key, method, path)]


@dataclass
class Stage:
    """The runner's collaborators: workloads by key, the policies applied, the tables kept."""

    handles: dict[str, Handle]
    log: list[str] = field(default_factory=list)
    observations: Observations = field(default_factory=Observations)

    def lookup(self, name: str, namespace: str, *, skip_if_missing: bool) -> Handle:
        self.log.append(f"lookup {name}.{namespace} skip={skip_if_missing}")
        return self.handles[f"{name}.{namespace}"]

    def apply_policy(self, source: object) -> None:
        self.log.append(f"apply {source}")

    def runner(self) -> CallTable:
        return CallTable(self.lookup, self.apply_policy, TableRecorder(self.observations))  # type: ignore[arg-type]


def stage() -> Stage:
    foo = Handle("sleep.foo", SLEEP_FOO)
    legacy = Handle("sleep.legacy", "spiffe://cluster.local/ns/legacy/sa/sleep")
    httpbin = Handle("httpbin.foo")
    foo.answers[("httpbin.foo", "GET", "/headers")] = echo("sleep.foo", f"URI={SLEEP_FOO}")
    legacy.answers[("httpbin.foo", "GET", "/headers")] = echo("sleep.legacy", None)
    legacy.answers[("httpbin.foo", "GET", "/ip")] = HttpResult("u", "sleep.legacy", 0, 404)
    return Stage({"sleep.foo": foo, "sleep.legacy": legacy, "httpbin.foo": httpbin})


def test_a_table_as_istio_says_passes_and_is_recorded() -> None:
    s = stage()
    table = s.runner()(
        "under STRICT",
        [Call("sleep.foo", "httpbin.foo", MTLS), Call("sleep.legacy", "httpbin.foo", PLAIN)],
        policies=["a policy"],
        skip_if_missing=True,
    )
    assert table.ok and table.rows == ("sleep.foo", "sleep.legacy")
    assert table.columns == ("httpbin.foo",)
    assert table.observed == (("mTLS",), ("plaintext",))
    assert s.observations.tables == [table]
    # every workload is looked up (and may skip the test) before any policy is applied
    assert s.log == [
        "lookup sleep.foo skip=True",
        "lookup httpbin.foo skip=True",
        "lookup sleep.legacy skip=True",
        "apply a policy",
    ]


def test_a_differing_table_fails_naming_each_call_and_its_evidence() -> None:
    s = stage()
    with pytest.raises(AssertionError) as failed:
        s.runner()(
            "under STRICT",
            [Call("sleep.foo", "httpbin.foo", MTLS), Call("sleep.legacy", "httpbin.foo", RESET)],
        )
    text = str(failed.value)
    assert "observed differs from expected" in text
    assert (
        "sleep.legacy GET /headers -> httpbin.foo: expected reset: sleep.legacy ->"
        " http://httpbin.foo:8000/headers: HTTP 200" in text
    )
    (table,) = s.observations.tables  # kept in the reports, pass or fail
    # the observed cell names the outcome the call gave when it is none of the table's
    assert table.observed == (("mTLS",), ("HTTP 200",))
    assert table.mismatches == (("sleep.legacy", "httpbin.foo", "reset", "HTTP 200"),)


def test_the_observed_cell_is_another_outcome_of_the_table_when_one_matches() -> None:
    s = stage()
    with pytest.raises(AssertionError):
        s.runner()(
            "t",
            [Call("sleep.foo", "httpbin.foo", PLAIN), Call("sleep.legacy", "httpbin.foo", MTLS)],
        )
    assert s.observations.tables[0].observed == (("mTLS",), ("plaintext",))


def test_rows_carry_the_request_when_the_table_varies_it_and_gaps_are_marked() -> None:
    s = stage()
    table = s.runner()(
        "paths",
        [
            Call("sleep.legacy", "httpbin.foo", PLAIN),
            Call("sleep.legacy", "httpbin.foo", Outcome("404", status=404), "GET", "/ip"),
        ],
        corner="call",
    )
    assert table.rows == ("sleep.legacy GET /headers", "sleep.legacy GET /ip")
    assert table.corner == "call"
    s2 = stage()
    s2.handles["httpbin.bar"] = Handle("httpbin.bar")
    s2.handles["sleep.foo"].answers[("httpbin.bar", "GET", "/headers")] = echo("sleep.foo", None)
    sparse = s2.runner()(
        "sparse",
        [Call("sleep.foo", "httpbin.bar", PLAIN), Call("sleep.legacy", "httpbin.foo", PLAIN)],
    )
    assert sparse.expected == (("plaintext", NOT_CALLED), (NOT_CALLED, "plaintext"))
    assert sparse.ok


def test_a_table_refuses_two_calls_for_one_cell_and_bad_names() -> None:
    s = stage()
    twice = [Call("sleep.foo", "httpbin.foo", MTLS), Call("sleep.foo", "httpbin.foo", MTLS)]
    with pytest.raises(ValueError, match="two calls fill the cell"):
        s.runner()("t", twice, policies=["a policy"])
    assert s.log == []  # refused before it looked anything up, applied or called
    assert s.handles["sleep.foo"].made == []
    with pytest.raises(ValueError, match=r"<name>\.<namespace>"):
        s.runner()("t", [Call("sleep", "httpbin.foo", MTLS)])
    with pytest.raises(ValueError, match="no calls"):
        s.runner()("t", [])


def test_a_call_to_a_port_the_service_lacks_fails_before_any_policy() -> None:
    s = stage()
    calls = [
        Call("sleep.foo", "httpbin.foo", MTLS),
        Call("sleep.legacy", "httpbin.foo", RESET, port=80),
    ]
    with pytest.raises(ServicePortError, match=r"httpbin.foo exposes 8000 \(http\), not 80"):
        s.runner()("t", calls, policies=["a policy"])
    assert "apply a policy" not in s.log
    assert s.handles["sleep.foo"].made == [] and s.handles["sleep.legacy"].made == []


def test_calls_naming_ports_get_a_column_each() -> None:
    s = stage()
    table = s.runner()(
        "ports",
        [
            Call("sleep.foo", "httpbin.foo", MTLS, port="http"),
            Call("sleep.foo", "httpbin.foo", MTLS, port=8000),
        ],
    )
    assert table.columns == ("httpbin.foo:http", "httpbin.foo:8000") and table.ok
    assert s.handles["sleep.foo"].made == [
        "GET /headers -> httpbin.foo:http",
        "GET /headers -> httpbin.foo:8000",
    ]


def test_the_prober_reads_each_probe_by_its_marker() -> None:
    stdout = "curl: (35) alert protocol version\n@@ 0 35\n@@ 1 0\nsome\nlines\n@@ 2 56\n"
    assert read_probe_outputs(stdout) == {
        0: (35, "curl: (35) alert protocol version"),
        1: (0, ""),
        2: (56, "some\nlines"),
    }
    assert read_probe_outputs("no markers at all\n") == {}
