"""The user-facing fixtures, exercised the way users write suites (pytester, real local mesh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_helpers import (
    alive,
    assert_runs_left_nothing,
    needs_local_mesh,
    subprocess_env,
    traces_of,
    wait_for,
)

SUITE = r'''
import pytest

STRICT_FOO = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "foo"},
    "spec": {"mtls": {"mode": "STRICT"}},
}

def test_policy_applied_then_failing(apply_policy, naked_sleep, httpbin, mesh):
    apply_policy(STRICT_FOO)
    assert [m["metadata"]["name"] for m in mesh.policies()] == ["default"]
    assert naked_sleep.curl(httpbin).exit_code == 56
    raise AssertionError("deliberate failure after applying STRICT")

def test_policy_was_removed_even_after_failure(naked_sleep, httpbin, mesh):
    assert mesh.policies() == []
    assert naked_sleep.curl(httpbin).ok

def test_yaml_text_and_restore(apply_policy, mesh):
    apply_policy("""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: bar}
spec: {mtls: {mode: STRICT}}
""")
    assert sorted(m["metadata"]["namespace"] for m in mesh.policies()) == ["bar", "foo"]

def test_mesh_wide_needs_marker(apply_policy):
    apply_policy({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    })

def test_invalid_policy_names_the_field(apply_policy):
    with pytest.raises(Exception, match="spec.mtls.mode"):
        apply_policy({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "bad", "namespace": "foo"},
            "spec": {"mtls": {"mode": "SOMETIMES"}},
        })

def test_xfcc_absent_for_plaintext_present_for_mtls(xfcc, sleep, naked_sleep, httpbin):
    assert xfcc(naked_sleep, httpbin) is None
    seen = xfcc(sleep, httpbin)
    assert seen[0].uri == ("spiffe://cluster.local/ns/foo/sa/sleep",)

def test_cert_of(cert_of, httpbin, naked_sleep):
    cert = cert_of(httpbin)
    assert str(cert.spiffe_id) == "spiffe://cluster.local/ns/foo/sa/httpbin"
    with pytest.raises(Exception, match="has no sidecar"):
        cert_of(naked_sleep)

def test_empty_capture_is_an_error(capture, httpbin):
    from pytest_meshconform.plugin.capture import EmptyCaptureError
    with pytest.raises(EmptyCaptureError, match="saw no TCP flow to port 8080"):
        with capture(httpbin):
            pass

def test_capture_sees_plaintext(capture, naked_sleep, httpbin):
    with capture(httpbin) as cap:
        assert naked_sleep.curl(httpbin).ok
    assert cap.pcap_path.exists()
    [flow] = cap.flows_from(naked_sleep)
    assert flow.http_requests[0].target == "/headers"

def test_policy_in_a_missing_namespace_is_an_error(apply_policy, mesh):
    from pytest_meshconform import UnmatchedPolicyError
    with pytest.raises(UnmatchedPolicyError, match=(
        r"PeerAuthentication fo/default would apply to nothing: namespace 'fo' does not exist"
        r" in the mesh \(namespaces: bar, foo, legacy; root namespace istio-system\)"
    )):
        apply_policy({**STRICT_FOO, "metadata": {"name": "default", "namespace": "fo"}})
    assert mesh.policies() == []

def test_selector_matching_nothing_is_an_error(apply_policy, mesh):
    with pytest.raises(AssertionError, match=(
        r"selector \{'app': 'htpbin'\} matches no workload in foo \(workloads:"
        r" sleep: \{'app': 'sleep'\}; httpbin: \{'app': 'httpbin'\}\)\. Fix the policy,"
        r" or pass allow_unmatched=True"
    )):
        apply_policy({**STRICT_FOO, "spec": {"selector": {"matchLabels": {"app": "htpbin"}}}})
    assert mesh.policies() == []

def test_root_namespace_selector_policy_is_an_error(apply_policy):
    with pytest.raises(AssertionError, match="istiod ignores a PeerAuthentication with a"
                       " selector in the root namespace istio-system"):
        apply_policy({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "httpbin", "namespace": "istio-system"},
            "spec": {"selector": {"matchLabels": {"app": "httpbin"}},
                     "mtls": {"mode": "STRICT"}},
        })

@pytest.mark.mesh_wide
def test_root_namespace_authorization_policy_selects_everywhere(apply_policy, workload):
    apply_policy({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-httpbin", "namespace": "istio-system"},
        "spec": {"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY",
                 "rules": [{}]},
    })
    assert workload("sleep", "foo").curl(workload("httpbin", "bar")).status == 403

def test_root_namespace_authorization_policy_needs_marker(apply_policy):
    apply_policy({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-nothing", "namespace": "istio-system"},
        "spec": {"selector": {"matchLabels": {"app": "httpbin"}}},
    })

def test_unmatched_policy_on_purpose(apply_policy, mesh):
    apply_policy({**STRICT_FOO, "spec": {"selector": {"matchLabels": {"app": "nobody"}}}},
                 allow_unmatched=True)
    assert [m["metadata"]["name"] for m in mesh.policies()] == ["default"]

def test_capture_on_the_service_port_records_its_target_port(capture, naked_sleep, httpbin):
    from pytest_meshconform import ServicePortError
    with capture(httpbin, port=8000) as cap:  # Service port 8000 -> the pod's 8080
        assert naked_sleep.curl(httpbin).ok
    assert cap.port == 8080 and cap.flows_from(naked_sleep), cap
    with pytest.raises(ServicePortError, match=(
        r"capture\(httpbin.foo, port=8001\): the pod listens on 8080, 50051; httpbin.foo"
        r" exposes 8000 \(http\), 50051 \(grpc\); pass port=<one of them>"
    )):
        with capture(httpbin, port=8001):
            raise AssertionError("must not start")

def test_long_rotation_skips_at_once(rotation, httpbin):
    rotation.watch(httpbin)
    raise AssertionError("must not run")

@pytest.mark.mesh_min_version("99.0")
def test_too_new_skips():
    raise AssertionError("must not run")

@pytest.mark.mesh_min_version("1.20")
def test_old_enough_runs():
    pass
'''


@needs_local_mesh
def test_fixtures_on_the_local_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-rs")
    result.assert_outcomes(passed=14, failed=3, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*deliberate failure after applying STRICT*",
            "*applies a mesh-wide PeerAuthentication in istio-system but is not marked*",
            "*applies a mesh-wide AuthorizationPolicy in istio-system but is not marked*",
            "*needs mesh version >= 99.0*",
        ]
    )
    # A watch that would take hours skips at once, naming the TTL in force and the fix; the
    # time it names carries its date.
    result.stdout.re_match_lines(
        [
            r".*httpbin\.foo's certificate lives 24h \(--mesh-cert-ttl=24h\); Istio"
            r" would rotate it by \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, 1[12]h\d*m?\d*s? from"
            r" now, longer than this watch waits \(5m\): run with --mesh-cert-ttl=30s.*"
        ]
    )
    result.stdout.fnmatch_lines(["*local mesh * up in *s*"])  # progress is shown
    assert_runs_left_nothing(result.stdout.str())


def test_misspelled_feature_fails_collection(pytester: pytest.Pytester) -> None:
    """A typo in mesh_features must not skip a suite quietly: the run stops at collection."""
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.mesh_features("mtsl")
        def test_strict(mesh):
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: test_typo.py::test_strict: unknown mesh feature(s) 'mtsl' in"
            " @pytest.mark.mesh_features; known features: mtls, peer-authentication,"
            " port-level-mtls, destination-rule, xfcc, capture, certificates, rotation, mesh-wide,"
            " authorization, waypoint, grpc"
        ]
    )
    result.assert_outcomes()  # nothing ran, nothing skipped


def test_versionless_min_version_fails_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.mesh_min_version("latest")
        def test_new():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: test_typo.py::test_new: @pytest.mark.mesh_min_version needs a version such"
            " as '1.24', got ('latest',)"
        ]
    )


FAKE_MESH_CONFTEST = """
import pytest

class OnlyMtls:
    features = frozenset({"mtls"})
    istio_version = "1.24.0"

@pytest.fixture(scope="session")
def mesh():
    return OnlyMtls()
"""


def test_missing_feature_skips(pytester: pytest.Pytester) -> None:
    """A known feature the mesh lacks skips the test, naming it (and the flag for mesh-wide)."""
    pytester.makeconftest(FAKE_MESH_CONFTEST)
    pytester.makepyfile(
        test_features="""
        import pytest

        @pytest.mark.mesh_features("mtls", "capture")
        def test_capture():
            raise AssertionError("must not run")

        @pytest.mark.mesh_features("mesh-wide")
        def test_mesh_wide():
            raise AssertionError("must not run")

        @pytest.mark.mesh_features("mtls")
        def test_mtls():
            pass
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "*the mesh lacks feature(s): capture",
            "*the mesh lacks feature(s): mesh-wide (pass --mesh-allow-mesh-wide to allow it)",
        ]
    )


def test_unavailable_local_mesh_is_one_usage_error(pytester: pytest.Pytester) -> None:
    """Missing tools stop the run before any test, with the fix named, not a traceback."""
    pytester.makepyfile(test_one="def test_x(mesh):\n    pass\n")
    env_path = os.path.dirname(sys.executable)  # python and pytest only: no ip, tcpdump...
    pytester._monkeypatch.setenv("PATH", env_path)
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*the local mesh cannot start on this machine: *apt-get install -y*"]
    )
    assert "Traceback" not in result.stderr.str()


def test_no_mesh_no_cost(pytester: pytest.Pytester) -> None:
    """A run that never asks for a mesh never checks for one (and never imports a backend)."""
    pytester.makepyfile(
        test_plain="import sys\n"
        "def test_x():\n"
        "    assert 'pytest_meshconform.backends.local.backend' not in sys.modules\n"
    )
    pytester._monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


WAITING_SUITE = """
import json, os, threading

def test_waits_for_sigterm(mesh):
    with open(os.environ["MC_READY"], "w") as ready:
        json.dump({"run_id": mesh.run_id, "pids": mesh.pids()}, ready)
    threading.Event().wait(120)
"""


@needs_local_mesh
def test_sigterm_tears_the_mesh_down(tmp_path: Path) -> None:
    """A CI timeout's SIGTERM must not leave namespaces behind for the next run to sweep."""
    (tmp_path / "test_waiting.py").write_text(WAITING_SUITE)
    ready = tmp_path / "ready.json"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env=subprocess_env() | {"MC_READY": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (ready.exists() and ready.stat().st_size > 0) or run.poll() is not None,
            30,
            "the suite's mesh to come up",
        )
        assert run.poll() is None, run.communicate()[0].decode()
        info = json.loads(ready.read_text())
        run.terminate()  # SIGTERM, by the PID we started
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output.decode()
    assert traces_of(info["run_id"]) == []
    assert not any(alive(pid) for pid in info["pids"])


def test_the_closing_packets_of_an_earlier_connection_are_not_traffic_of_the_block() -> None:
    """A pooled connection an earlier test left can close (a listener drain) while a capture
    runs: its bare FIN/ACK carry nothing and must not make an empty capture look non-empty."""
    from wire_helpers import ethernet, pcap_file, tcp_packet

    from pytest_meshconform.evidence.wire import analyze_pcap
    from pytest_meshconform.plugin.capture import is_block_traffic

    client, server = ("10.244.0.12", 51086), ("10.244.0.11", 8080)
    fin, ack, syn = 0x01, 0x10, 0x02
    tail = [
        tcp_packet(client, server, 1000, fin | ack, ack=2000),
        tcp_packet(server, client, 2000, fin | ack, ack=1001),
        tcp_packet(client, server, 1001, ack, ack=2001),
    ]
    (closing,) = analyze_pcap(pcap_file(ethernet(p) for p in tail)).flows_to(8080)
    assert not is_block_traffic(closing)
    opened = [tcp_packet(("10.244.0.12", 51087), server, 5000, syn)]
    (new,) = analyze_pcap(pcap_file(ethernet(p) for p in opened)).flows_to(8080)
    assert is_block_traffic(new)
