"""curl argv and output parsing (pure), and httpbin header extraction."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from pytest_meshconform.evidence.curl import (
    WRITE_OUT_MARKER,
    HttpError,
    curl_argv,
    header_from_httpbin,
    parse_curl_output,
)

URL = "http://httpbin.foo:8000/headers"


def _stdout(payload: bytes, **write_out: object) -> bytes:
    return payload + WRITE_OUT_MARKER.encode() + json.dumps(write_out).encode()


def test_argv_is_plain_curl() -> None:
    argv = curl_argv(URL, headers={"X-Test": "1"}, timeout=3)
    assert argv[:7] == ["curl", "-sS", "-i", "--max-time", "3", "-X", "GET"]
    assert argv[7:9] == ["-H", "X-Test: 1"]
    assert argv[-1] == URL


def test_ok_response() -> None:
    body = b'{"headers": {"Host": "httpbin.foo:8000"}}'
    out = _stdout(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: envoy\r\n\r\n" + body,
        http_code=200,
        time_total=0.012,
    )
    result = parse_curl_output(URL, "sleep.foo", 0, out, b"")
    assert result.ok and result.status == 200
    assert result.headers == {"content-type": "application/json", "server": "envoy"}
    assert result.body == body
    assert result.json() == {"headers": {"Host": "httpbin.foo:8000"}}
    assert result.time_total == 0.012


def test_final_response_after_100_continue() -> None:
    out = _stdout(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\n\r\n"
        b"upstream connect error",
        http_code=503,
    )
    result = parse_curl_output(URL, "sleep.foo", 0, out, b"")
    assert result.status == 503 and not result.ok
    assert result.headers == {"server": "envoy"}
    assert result.body == b"upstream connect error"


def test_reset_has_no_status() -> None:
    # What curl prints for plaintext into a STRICT sidecar (docs/istio-facts.md: 000, exit 56).
    out = _stdout(b"", http_code=0)
    stderr = b"curl: (56) Recv failure: Connection reset by peer\n"
    result = parse_curl_output(URL, "sleep.legacy", 56, out, stderr)
    assert result.status is None and result.exit_code == 56 and not result.ok
    assert "no HTTP response" in str(result) and "curl exit 56" in str(result)
    assert "Connection reset by peer" in str(result)


def test_repeated_headers_are_joined() -> None:
    out = _stdout(b"HTTP/1.1 200 OK\r\nVia: a\r\nVia: b\r\n\r\n", http_code=200)
    assert parse_curl_output(URL, "c", 0, out, b"").headers == {"via": "a, b"}


def test_non_json_body_is_a_clear_error() -> None:
    out = _stdout(b"HTTP/1.1 200 OK\r\n\r\nnot json", http_code=200)
    with pytest.raises(HttpError, match="not JSON"):
        parse_curl_output(URL, "c", 0, out, b"").json()


def test_httpbin_header_string_and_go_httpbin_array() -> None:
    xfcc = "By=spiffe://cluster.local/ns/foo/sa/httpbin;URI=spiffe://cluster.local/ns/foo/sa/sleep"
    # httpbin (Python) echoes a string, go-httpbin an array of strings.
    assert (
        header_from_httpbin(
            {"headers": {"X-Forwarded-Client-Cert": xfcc}}, "x-forwarded-client-cert"
        )
        == xfcc
    )
    assert (
        header_from_httpbin(
            {"headers": {"X-Forwarded-Client-Cert": [xfcc, xfcc]}}, "X-Forwarded-Client-Cert"
        )
        == f"{xfcc},{xfcc}"
    )
    assert header_from_httpbin({"headers": {"Host": "h"}}, "X-Forwarded-Client-Cert") is None
    with pytest.raises(HttpError, match="not an httpbin"):
        header_from_httpbin({"args": {}}, "Host")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=100), st.binary(max_size=50))
def test_any_output_parses(stdout: bytes, code: int, stderr: bytes) -> None:
    result = parse_curl_output(URL, "c", code, stdout, stderr)
    assert result.exit_code == code
