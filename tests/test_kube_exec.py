"""Exec in pods: the status channel's exit codes, and the official client's binary stream.

``parse_exec_status`` follows client-go's ``errorDecoderV4``; the stream tests run the real
kubernetes client (``KubeApi.open_exec``: ``stream(..., binary=True, _preload_content=False)``)
against a loopback API server replaying recorded exec sessions (tests/data/kube/).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from kube_fakes import (
    KUBE_VERSION,
    ExecCall,
    ExecChannel,
    FakeApiServer,
    kubeconfig_text,
    load_exec_recording,
    replay,
    status_not_found,
)
from kubernetes.client.exceptions import ApiException

from pytest_meshconform.backends.capture import capture_filter, is_pcap
from pytest_meshconform.backends.kube.client import ExecSession, KubeApi, KubeApiError
from pytest_meshconform.backends.kube.execproto import (
    CAPTURE_SCRIPT,
    ExecStatus,
    ExecStatusError,
    capture_argv,
    parse_exec_status,
    strip_request_newline,
)

# --- the status channel ---------------------------------------------------------------------


def test_success_is_zero() -> None:
    assert parse_exec_status(b'{"metadata":{},"status":"Success"}') == ExecStatus(0, "", "")


def test_non_zero_exit_code_comes_from_the_exitcode_cause() -> None:
    status = load_exec_recording("curl-reset")["frames"][-1]
    assert status[0] == 3
    parsed = parse_exec_status(status[1])
    assert parsed.returncode == 56
    assert parsed.reason == "NonZeroExitCode"
    assert parsed.message == (
        "command terminated with non-zero exit code: command terminated with exit code 56"
    )


def test_a_command_that_never_ran_has_no_returncode() -> None:
    status = load_exec_recording("not-found")["frames"][-1][1]
    parsed = parse_exec_status(status)
    assert parsed.returncode is None
    assert parsed.reason == "InternalError"
    assert 'exec: "tcpdump": executable file not found in $PATH' in parsed.message


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "empty status channel"),
        (b"{not json", "status is not JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"status":"Pending"}', "status.status 'Pending'"),
        (b'{"status":"Failure","reason":"NonZeroExitCode"}', "without details.causes"),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}',
            "without an ExitCode cause",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode",'
            b'"details":{"causes":[{"reason":"ExitCode","message":"256"}]}}',
            "invalid exit code value '256'",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode",'
            b'"details":{"causes":[{"reason":"ExitCode","message":"-1"}]}}',
            "invalid exit code value '-1'",
        ),
        # str.isdigit() accepts these; Go's strconv.ParseUint(s, 10, 8) does not
        (
            b'{"status":"Failure","reason":"NonZeroExitCode",'
            b'"details":{"causes":[{"reason":"ExitCode","message":"\\u00b2"}]}}',
            "invalid exit code value '\u00b2'",
        ),
        (
            b'{"status":"Failure","reason":"NonZeroExitCode",'
            b'"details":{"causes":[{"reason":"ExitCode","message":"\\u0661"}]}}',
            "invalid exit code value '\u0661'",
        ),
    ],
)
def test_malformed_statuses_are_rejected_naming_the_fragment(payload: bytes, fragment: str) -> None:
    with pytest.raises(ExecStatusError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        parse_exec_status(payload)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_arbitrary_status_bytes_give_a_status_or_the_typed_error(payload: bytes | str) -> None:
    try:
        result = parse_exec_status(payload)
    except ExecStatusError:
        return
    assert result.returncode is None or 0 <= result.returncode <= 255


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6))
def test_any_exit_code_text_gives_a_code_or_the_typed_error(code: str) -> None:
    payload = json.dumps(
        {
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code}]},
        }
    )
    try:
        result = parse_exec_status(payload)
    except ExecStatusError:
        return
    assert result.returncode == int(code) and code.isascii()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=255))
def test_every_exit_code_round_trips(code: int) -> None:
    payload = json.dumps(
        {
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    )
    assert parse_exec_status(payload).returncode == code


def test_pilot_agent_request_newline_is_dropped_once() -> None:
    assert strip_request_newline(b'{"a": 1}\n') == b'{"a": 1}'
    assert strip_request_newline(b"body\n\n") == b"body\n"
    assert strip_request_newline(b"") == b""


# --- the capture script and filter -----------------------------------------------------------


def test_filter_for_one_port() -> None:
    assert capture_filter(8080, "172.18.0.2") == (
        "(tcp port 8080) or (udp and dst host 172.18.0.2 and dst port 9)"
    )


def test_filter_for_all_tcp_leaves_out_the_mesh_plumbing() -> None:
    assert capture_filter(None, "10.89.0.2") == (
        "(tcp and not (port 15010 or port 15012 or port 15014 or port 15017 or port 15020 or"
        " port 15021 or port 15090)) or (udp and dst host 10.89.0.2 and dst port 9)"
    )


def test_filter_rejects_bad_ports() -> None:
    with pytest.raises(ValueError, match="port 0"):
        capture_filter(0, "172.18.0.2")


def test_capture_argv_passes_filter_and_marker_host_as_arguments() -> None:
    argv = capture_argv("tcp port 80", "172.18.0.2")
    assert argv == [
        "bash",
        "-c",
        CAPTURE_SCRIPT,
        "meshconform-capture",
        "tcp port 80",
        "172.18.0.2",
    ]


def test_pcap_magic() -> None:
    recorded = Path(__file__).resolve().parent / "data" / "kube" / "httpbin-eth0.pcap"
    assert is_pcap(recorded.read_bytes())
    assert not is_pcap(b"tcpdump: listening")


# --- the real client against a loopback API server -------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def api(fake_server: FakeApiServer, tmp_path: Path) -> KubeApi:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(fake_server.url))
    return KubeApi.connect(kubeconfig, "fake")


def run(api: KubeApi, argv: list[str], container: str = "sleep") -> tuple[bytes, bytes, ExecStatus]:
    session = api.open_exec("mc-1a2b3c-foo", "sleep-6c8f9d7b5-0q2w", container, argv)
    try:
        assert session.wait_finished(10)
        return bytes(session.stdout), bytes(session.stderr), session.status()
    finally:
        session.close()


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io"])
def test_binary_stdout_comes_back_byte_for_byte(
    fake_server: FakeApiServer, api: KubeApi, protocol: str
) -> None:
    recording = load_exec_recording("binary-stdout")
    fake_server.protocol = protocol
    fake_server.exec_handler = replay(recording)
    stdout, stderr, status = run(api, recording["argv"])
    # every byte value, a UTF-8 sequence split across frames, invalid UTF-8, CR LF
    expected = bytes(range(128)) + b"\xc3\xa9" + bytes(range(128, 256)) + b"\xff\xfe\x00\r\n"
    assert stdout == expected
    assert stderr == b""
    assert status == ExecStatus(0, "", "")


def test_request_carries_pod_container_and_argv(fake_server: FakeApiServer, api: KubeApi) -> None:
    recording = load_exec_recording("curl-reset")
    fake_server.exec_handler = replay(recording)
    stdout, stderr, status = run(api, recording["argv"])
    assert (stdout, stderr) == (b"000", b"curl: (56) Recv failure: Connection reset by peer\n")
    assert status.returncode == 56
    [call] = fake_server.exec_calls
    assert call == ExecCall(
        namespace="mc-1a2b3c-foo",
        pod="sleep-6c8f9d7b5-0q2w",
        container="sleep",
        command=recording["argv"],
        stdin=False,
        protocol="v4.channel.k8s.io",
    )
    [request] = fake_server.requests
    assert request.startswith(
        "GET /api/v1/namespaces/mc-1a2b3c-foo/pods/sleep-6c8f9d7b5-0q2w/exec?"
    )


def test_multi_frame_json_is_joined(fake_server: FakeApiServer, api: KubeApi) -> None:
    recording = load_exec_recording("headers-mtls")
    fake_server.exec_handler = replay(recording)
    stdout, _, status = run(api, recording["argv"])
    headers = json.loads(stdout)["headers"]
    assert headers["X-Forwarded-Client-Cert"][0].endswith(
        'Subject="";URI=spiffe://cluster.local/ns/mc-1a2b3c-foo/sa/sleep'
    )
    assert status.returncode == 0


def test_command_that_cannot_start(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.exec_handler = replay(load_exec_recording("not-found"))
    _, _, status = run(api, ["tcpdump", "--version"], container="mc-capture")
    assert status.returncode is None
    assert "executable file not found" in status.message


def test_stream_without_status_is_an_error(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.exec_handler = lambda call, channel: channel.send(1, b"partial")
    session = api.open_exec("ns", "pod", "c", ["true"])
    try:
        assert session.wait_finished(10)
        with pytest.raises(KubeApiError, match="empty status channel"):
            session.status()
    finally:
        session.close()


def test_stdin_reaches_the_process_and_wait_for_sees_output(
    fake_server: FakeApiServer, api: KubeApi
) -> None:
    def echo(call: ExecCall, channel: ExecChannel) -> None:
        channel.send(2, b"ready\n")
        assert channel.wait_stdin(lambda data: b"\n" in data)
        channel.send(1, bytes(channel.stdin).upper())
        channel.send_status({"metadata": {}, "status": "Success"})

    fake_server.exec_handler = echo
    session = api.open_exec("ns", "pod", "c", ["cat"], stdin=True)
    try:
        assert session.wait_for(lambda s: b"ready" in s.stderr, 10)
        session.write_stdin(b"marker\n")
        assert session.wait_for(lambda s: s.stdout == b"MARKER\n", 10)
        assert session.wait_finished(10)
        assert session.status().returncode == 0
    finally:
        session.close()
    assert fake_server.exec_calls[0].stdin is True


def test_close_ends_a_running_stream_quickly(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.exec_handler = lambda call, channel: channel.stdin_closed.wait(10)
    session = api.open_exec("ns", "pod", "c", ["sleep", "infinity"])
    assert not session.wait_finished(0.3)
    started = time.monotonic()
    session.close()
    assert time.monotonic() - started < 2
    assert session.finished


def test_rest_calls_deserialize_real_models(fake_server: FakeApiServer, api: KubeApi) -> None:
    fake_server.routes["GET /version"] = KUBE_VERSION
    fake_server.routes["GET /api/v1/namespaces/istio-system/configmaps/istio"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": "trustDomain: example.org\n"},
    }
    assert api.server_version() == "v1.32.2"
    config_map = api.read_config_map("istio-system", "istio")
    assert config_map is not None and config_map["data"] == {"mesh": "trustDomain: example.org\n"}
    assert api.read_config_map("istio-system", "absent") is None


def test_exec_refused_in_the_handshake_keeps_the_http_status(
    fake_server: FakeApiServer, api: KubeApi
) -> None:
    # The API server answers an exec for a pod that is gone with 404 and a metav1.Status
    # instead of switching protocols; the client wraps it in ApiException(status=0)
    # (ws_client.websocket_call), and the backend's "pod was replaced" retry needs the 404.
    fake_server.refused_pods["sleep-gone"] = (404, status_not_found("pods", "sleep-gone"))
    with pytest.raises(KubeApiError) as refused:
        api.open_exec("mc-1a2b3c-foo", "sleep-gone", "sleep", ["true"])
    assert refused.value.status == 404
    assert str(refused.value) == (
        'exec `true` in mc-1a2b3c-foo/sleep-gone [sleep]: HTTP 404 pods "sleep-gone" not found'
    )


def test_rest_calls_during_an_exec_handshake_stay_rest(
    fake_server: FakeApiServer, api: KubeApi
) -> None:
    # kubernetes.stream.stream() swaps api_client.call_api for a WebSocket transport while it
    # connects; a REST call from another thread (the rotation watcher's request loop) must not
    # be sent through that swap.
    fake_server.upgrade_gate = gate = threading.Event()
    fake_server.exec_handler = lambda call, channel: channel.send_status(
        {"metadata": {}, "status": "Success"}
    )
    fake_server.routes["GET /api/v1/namespaces/mc-1a2b3c-foo/pods"] = {
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": "12"},
        "items": [],
    }
    sessions: list[ExecSession] = []
    opener = threading.Thread(
        target=lambda: sessions.append(api.open_exec("mc-1a2b3c-foo", "sleep-0", "sleep", ["true"]))
    )
    opener.start()
    try:
        deadline = time.monotonic() + 10
        while not fake_server.exec_calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_server.exec_calls, "the exec handshake never reached the server"
        assert api.list_pods("mc-1a2b3c-foo") == []
    finally:
        gate.set()
        opener.join(10)
    [session] = sessions
    try:
        assert session.wait_finished(10)
        assert session.status().returncode == 0
    finally:
        session.close()
    assert fake_server.requests.count("GET /api/v1/namespaces/mc-1a2b3c-foo/pods") == 1
    assert "call_api" not in vars(api.api_client)  # the REST client was never swapped


def test_ctrl_c_during_an_exec_handshake_stays_an_interrupt(
    api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ws_client.websocket_call: `except (Exception, KeyboardInterrupt, SystemExit) as e: raise
    # ApiException(status=0, reason=str(e))`; this stands in for that transport.
    def interrupted_handshake(*args: object, **kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as error:
            raise ApiException(status=0, reason=str(error)) from None

    monkeypatch.setattr("pytest_meshconform.backends.kube.client.stream", interrupted_handshake)
    with pytest.raises(KeyboardInterrupt):
        api.open_exec("ns", "pod", "c", ["true"])
