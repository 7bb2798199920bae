"""KubeMesh against an in-memory cluster with Istio (REST side) and a loopback API server
(exec side, through the real kubernetes client): bring-up, namespaces, policies and their
propagation, mesh-wide safety, Envoy admin, captures and cleanup.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_fakes import (
    DATA_DIR,
    DEFAULT_MESH_CONFIG,
    HOST_IP,
    PROXY_IMAGE,
    SHARED_SECRETS,
    config_map_json,
    istiod_deployment,
    root_pem_from_istio_dump,
    status_not_found,
)
from kube_world import (
    BAR,
    FOO,
    LEGACY,
    RUN,
    World,
    authz,
    dest_rule,
    fake_world,
    peer_auth,
    proxy_id,
    sidecar_pods,
)

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.istio.injection import is_distroless_image as image_is_distroless
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.mesh import (
    Mesh,
    MeshError,
    MeshWideNotAllowed,
    PropagationTimeout,
    Workload,
    tunnels_over_hbone,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fake_world(tmp_path) as world:
        yield world


@pytest.fixture
def started(world: World) -> Iterator[KubeMesh]:
    mesh = world.mesh()
    mesh.start()
    yield mesh
    mesh.close()


# --- bring-up ---------------------------------------------------------------------------------


def test_start_creates_the_run_topology(world: World, started: KubeMesh) -> None:
    assert isinstance(started, Mesh)
    assert sorted(world.cluster.namespaces) == sorted([FOO, BAR, LEGACY])
    labels = {name: ns["metadata"]["labels"] for name, ns in world.cluster.namespaces.items()}
    assert labels[FOO]["istio-injection"] == "enabled"
    assert labels[BAR]["istio-injection"] == "enabled"
    assert labels[LEGACY]["istio-injection"] == "disabled"
    for value in labels.values():
        assert value["meshconform.dev/run"] == RUN
        assert value["app.kubernetes.io/managed-by"] == "meshconform"
        assert value["pod-security.kubernetes.io/enforce"] == "privileged"
    deployment = world.cluster.objects[("apps", "Deployment", FOO, "sleep")]
    template = deployment["spec"]["template"]
    assert json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"]) == {
        "holdApplicationUntilProxyStarts": True,
        "proxyMetadata": {"SECRET_TTL": "40s"},
    }
    assert template["spec"]["containers"][0]["command"] == ["/bin/sleep", "infinity"]
    assert template["spec"]["containers"][0]["image"] == "docker.io/curlimages/curl:8.11.1"
    legacy = world.cluster.objects[("apps", "Deployment", LEGACY, "httpbin")]
    assert "annotations" not in legacy["spec"]["template"]["metadata"]
    service = world.cluster.objects[("", "Service", BAR, "httpbin")]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": 8080}]
    # every sleep reached its own httpbin before start() returned
    # the DNS domain was read from a pod, then every sleep reached its own httpbin
    resolv, *curls = world.exec_commands("sleep")
    assert resolv == ["cat", "/etc/resolv.conf"]
    assert [c[-1] for c in curls] == [
        f"http://httpbin.{ns}.svc.cluster.local:8000/status/200" for ns in (FOO, BAR, LEGACY)
    ]
    assert world.messages[-1].startswith(f"kube mesh {RUN} ready in ")


def test_identity_facts_come_from_istiod_and_its_mesh_config(started: KubeMesh) -> None:
    assert started.version == "istio 1.25.1"
    assert started.istio_version == "1.25.1"
    assert started.revision is None
    assert started.trust_domain == "cluster.local"
    assert started.root_namespace == "istio-system"
    assert started.backend == "existing"
    assert started.name == "fake"
    assert "mesh-wide" not in started.features


def test_root_cert_is_the_istio_ca_root_cert_configmap(world: World) -> None:
    if not SHARED_SECRETS.is_dir():
        pytest.skip("shared test data not available")
    world.cluster.root_pem = root_pem_from_istio_dump()
    mesh = world.mesh()
    mesh.start()
    try:
        assert mesh.root_cert == world.cluster.root_pem
        assert mesh.root_cert.startswith("-----BEGIN CERTIFICATE-----")
    finally:
        mesh.close()


def test_workloads_carry_real_namespaces(started: KubeMesh) -> None:
    sleep = started.workload("sleep", "foo")
    assert sleep.namespace == FOO
    assert started.workload("sleep", FOO) == sleep
    assert sleep.spiffe_id(started.trust_domain) == f"spiffe://cluster.local/ns/{FOO}/sa/sleep"
    assert started.workload("httpbin", "legacy").has_sidecar is False
    assert started.workload("httpbin", "bar").container_ports == (8080,)
    assert [s.fqdn for s in started.services()] == [
        f"httpbin.{ns}.svc.cluster.local" for ns in (FOO, BAR, LEGACY)
    ]
    assert started.logical_namespace(sleep) == "foo"
    assert started.logical_namespace(BAR) == "bar"
    assert started.logical_namespace("istio-system") == "istio-system"
    with pytest.raises(MeshError, match="'default' is not part of this run"):
        started.workload("sleep", "default")
    with pytest.raises(MeshError, match="no workload 'curl'"):
        started.workload("curl", "foo")


def test_pod_ip_and_logs(world: World, started: KubeMesh) -> None:
    httpbin = started.workload("httpbin", "foo")
    assert started.pod_ip(httpbin) == "10.244.0.17"
    logs = started.logs(httpbin)
    assert sorted(logs) == ["httpbin", "istio-proxy"]
    assert logs["istio-proxy"].startswith(f"log of {FOO}/httpbin-")
    assert sorted(started.logs(started.workload("sleep", "legacy"))) == ["sleep"]


def test_logs_since_ask_for_the_test_window_only(
    world: World, started: KubeMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_meshconform.backends.kube.backend as kube_backend

    httpbin = started.workload("httpbin", "foo")
    positions = started.log_positions()
    later = positions.at + 41.2
    monkeypatch.setattr(kube_backend.time, "time", lambda: later)
    world.cluster.log_requests.clear()
    window = started.logs_since(httpbin, positions)
    assert sorted(window) == ["httpbin", "istio-proxy"]
    # 41.2 s ago, rounded up, plus a second so that no line of the window is missed
    assert {since for *_, since in world.cluster.log_requests} == {43}
    assert window["istio-proxy"].endswith("since 43s\n")


def test_requests_name_their_server_in_either_namespace_spelling(started: KubeMesh) -> None:
    """A handle's URL carries the run's real namespace; suites may write `foo`: the
    observations name the server workload either way."""
    from pytest_meshconform.plugin.workloads import WorkloadHandle
    from pytest_meshconform.report.exhibits import Evidence

    sleep = WorkloadHandle(started, started.workload("sleep", "foo"), Evidence())
    assert sleep._workload_of(f"http://httpbin.{BAR}:8000/headers") == f"httpbin.{BAR}"
    assert sleep._workload_of("http://httpbin.bar.svc.cluster.local:8000/") == f"httpbin.{BAR}"
    assert sleep._workload_of("http://example.com/") is None


def test_revision_picks_its_istiod_and_labels_namespaces(world: World) -> None:
    world.cluster.deployments["istio-system"] = [
        istiod_deployment(image="docker.io/istio/pilot:1.21.2"),
        istiod_deployment(revision="canary", image="docker.io/istio/pilot:1.22.8-distroless"),
    ]
    world.cluster.config_maps[("istio-system", "istio-canary")] = config_map_json(
        "istio-system", "istio-canary", {"mesh": "trustDomain: canary.example\n"}
    )
    world.cluster.pods["istio-system"][0]["metadata"]["labels"]["istio.io/rev"] = "canary"
    mesh = world.mesh(revision="canary")
    mesh.start()
    try:
        assert world.cluster.namespaces[FOO]["metadata"]["labels"]["istio.io/rev"] == "canary"
        assert "istio-injection" not in world.cluster.namespaces[FOO]["metadata"]["labels"]
        assert mesh.version == "istio 1.22.8 (revision canary)"
        assert mesh.revision == "canary"
        assert mesh.trust_domain == "canary.example"
    finally:
        mesh.close()


@pytest.mark.parametrize(
    "image",
    [
        "docker.io/istio/pilot:1.22.8",
        "docker.io/istio/pilot:1.25.1",  # no config distribution tracking since 1.23
        "registry.example/istio/pilot:main-0c3a3b8",  # a custom build: version unknown
    ],
)
def test_any_istio_version_can_be_driven(world: World, image: str) -> None:
    world.cluster.deployments["istio-system"] = [istiod_deployment(image=image)]
    mesh = world.mesh()
    mesh.start()
    try:
        mesh.apply(peer_auth("foo", "STRICT"))
    finally:
        mesh.close()


def test_a_revision_only_istio_labels_namespaces_with_the_revision_it_picked(
    world: World,
) -> None:
    """No --mesh-revision and one istiod of revision 1-25-1 (no default revision, no tag):
    its injector selects only istio.io/rev=1-25-1 (mutatingwebhook.yaml), so that is the
    label of the injected namespaces; legacy stays out with istio-injection=disabled."""
    world.cluster.deployments["istio-system"] = [istiod_deployment(revision="1-25-1")]
    world.cluster.config_maps[("istio-system", "istio-1-25-1")] = config_map_json(
        "istio-system", "istio-1-25-1", {"mesh": "trustDomain: rev.example\n"}
    )
    mesh = world.mesh()
    mesh.start()
    try:
        for namespace in (FOO, BAR):
            labels = world.cluster.namespaces[namespace]["metadata"]["labels"]
            assert labels["istio.io/rev"] == "1-25-1" and "istio-injection" not in labels
        legacy = world.cluster.namespaces[LEGACY]["metadata"]["labels"]
        assert legacy["istio-injection"] == "disabled" and "istio.io/rev" not in legacy
        assert mesh.revision == "1-25-1" and mesh.trust_domain == "rev.example"
    finally:
        mesh.close()


def test_a_pod_without_sidecar_says_which_revisions_exist_and_the_flag(world: World) -> None:
    world.cluster.deployments["istio-system"] = [
        istiod_deployment(),
        istiod_deployment(revision="canary"),
    ]
    world.cluster.inject = False
    with pytest.raises(MeshError) as failure:
        world.mesh().start()
    assert str(failure.value).startswith(f"pod sleep-6c8f9d7b5-0q2w in {FOO} has no istio-proxy:")
    assert (
        "the injection webhook of istiod revision default did not inject it (namespace labelled"
        " istio-injection=enabled; is that istiod running and its webhook configured?);"
        " istiod revisions in istio-system: canary, default: pass --mesh-revision=REV"
    ) in str(failure.value)


DISCOVERY_BY_LABEL = DEFAULT_MESH_CONFIG + (
    "discoverySelectors:\n- matchLabels:\n    istio-discovery: enabled\n"
)
DISCOVERY_BY_NAME = DEFAULT_MESH_CONFIG + (
    "discoverySelectors:\n- matchExpressions:\n  - key: kubernetes.io/metadata.name\n"
    "    operator: In\n    values: [shop, payments]\n"
)


def test_discovery_selectors_with_match_labels_label_the_run_namespaces(world: World) -> None:
    """istiod publishes the mesh root only into namespaces its discoverySelectors select
    (namespacecontroller.go): each run namespace gets the selector's matchLabels."""
    world.cluster.config_maps[("istio-system", "istio")] = config_map_json(
        "istio-system", "istio", {"mesh": DISCOVERY_BY_LABEL}
    )
    mesh = world.mesh()
    mesh.start()
    try:
        for namespace in (FOO, BAR, LEGACY):
            labels = world.cluster.namespaces[namespace]["metadata"]["labels"]
            assert labels["istio-discovery"] == "enabled", namespace
        assert mesh.root_cert == world.cluster.root_pem
    finally:
        mesh.close()


def test_discovery_selectors_no_label_can_meet_refuse_the_run_at_once(world: World) -> None:
    world.cluster.config_maps[("istio-system", "istio")] = config_map_json(
        "istio-system", "istio", {"mesh": DISCOVERY_BY_NAME}
    )
    started = time.monotonic()
    with pytest.raises(MeshError) as failure:
        world.mesh().start()
    assert time.monotonic() - started < 2  # not --mesh-ready-timeout (5s here)
    message = str(failure.value)
    assert message.startswith(
        f"istiod would not discover namespace {FOO}: the mesh config (configmap"
        " istio-system/istio) has discoverySelectors {matchExpressions: [{key:"
        " kubernetes.io/metadata.name, operator: In, values: [shop, payments]}]}"
    )
    assert "add a selector with matchLabels" in message
    assert not [c for c in world.cluster.calls if c.startswith("create namespace")]


def test_cert_ttl_above_istiods_maximum_is_refused_before_anything_is_created(
    world: World,
) -> None:
    """istiod's CA refuses a CSR asking more than MAX_WORKLOAD_CERT_TTL (TTLError,
    security/pkg/pki/ca/ca.go): the run stops at once, naming the maximum and the flag."""
    world.cluster.deployments["istio-system"] = [istiod_deployment(max_cert_ttl="1h0m0s")]
    with pytest.raises(MeshError) as failure:
        world.mesh(cert_ttl=timedelta(hours=2)).start()
    assert str(failure.value) == (
        "--mesh-cert-ttl 2h is above the longest workload certificate istiod signs"
        " (MAX_WORKLOAD_CERT_TTL=1h of deployment istio-system/istiod): istiod would refuse"
        " every sidecar's certificate request and no pod would become ready; pass"
        " --mesh-cert-ttl=1h or less"
    )
    assert world.cluster.namespaces == {} and world.cluster.calls == []


def test_the_clusters_dns_domain_is_read_not_assumed(world: World) -> None:
    """A cluster whose kubelets run with --cluster-domain=corp.example: Services are
    httpbin.<ns>.svc.corp.example (the pods' resolv.conf search path says so), the reachability
    check asks for that name and the propagation wait finds Envoy's clusters under it."""
    world.cluster.dns_domain = "corp.example"
    mesh = world.mesh()
    mesh.start()
    try:
        assert mesh.dns_domain == "corp.example"
        assert {s.fqdn for s in mesh.services()} == {
            f"httpbin.{ns}.svc.corp.example" for ns in (FOO, BAR, LEGACY)
        }
        curls = [c for c in world.exec_commands("sleep") if c[0] == "curl"]
        assert curls[0][-1] == f"http://httpbin.{FOO}.svc.corp.example:8000/status/200"
        rule = dest_rule("foo", "DISABLE")
        rule["spec"]["host"] = "httpbin.foo.svc.corp.example"
        mesh.apply(rule)  # the clients' cluster towards httpbin.foo lost its TLS
    finally:
        mesh.close()


def test_transient_api_and_exec_errors_are_retried_within_the_deadline(world: World) -> None:
    world.cluster.flaky = {"list pods": 2, "exec": 1}
    mesh = world.mesh()
    mesh.start()
    mesh.close()
    assert world.cluster.flaky == {"list pods": 0, "exec": 0}


def test_transient_errors_past_the_deadline_are_named(world: World) -> None:
    world.cluster.flaky = {"list pods": 10_000}
    with pytest.raises(MeshError) as failure:
        world.mesh().start()
    message = str(failure.value)
    assert message.startswith("pods not ready after 0:00:05: ?; recent warnings: none; ")
    assert message.endswith("transient errors, the last: list pods: HTTP 503 Service Unavailable")


def test_a_permanent_api_error_is_not_retried(world: World) -> None:
    world.cluster.forbidden = {"list pods"}
    started = time.monotonic()
    with pytest.raises(MeshError, match="list pods: HTTP 403 Forbidden"):
        world.mesh().start()
    assert time.monotonic() - started < 2


def test_cert_ttl_at_istiods_maximum_runs(world: World) -> None:
    world.cluster.deployments["istio-system"] = [istiod_deployment(max_cert_ttl="1h0m0s")]
    mesh = world.mesh(cert_ttl=timedelta(hours=1))
    mesh.start()
    mesh.close()


def test_image_pull_failure_fails_fast_and_cleans_up(world: World) -> None:
    world.cluster.pod_waiting["httpbin"] = "ImagePullBackOff"
    mesh = world.mesh()
    with pytest.raises(MeshError, match="ImagePullBackOff") as failure:
        mesh.start()
    assert "--mesh-httpbin-image" in str(failure.value)
    assert world.cluster.namespaces == {}
    assert [c for c in world.cluster.calls if c.startswith("delete namespace")] == [
        f"delete namespace {ns}" for ns in (FOO, BAR, LEGACY)
    ]


def test_pods_never_ready_time_out_naming_them_and_clean_up(world: World) -> None:
    """A pod that waits (ContainerCreating: it may yet start) is waited for until
    --mesh-ready-timeout; the failure names each pending workload and its state, and the
    progress said so once (the summary did not change)."""
    world.cluster.pod_waiting["httpbin"] = "ContainerCreating"
    with pytest.raises(MeshError) as failure:
        world.mesh().start()
    pending = ", ".join(f"httpbin.{ns} (ContainerCreating)" for ns in (FOO, BAR, LEGACY))
    assert str(failure.value) == f"pods not ready after 0:00:05: {pending}; recent warnings: none"
    assert [m for m in world.messages if m.startswith("waiting for pods")] == [
        f"waiting for pods: {pending}"
    ]
    assert world.cluster.namespaces == {}


def test_a_sleep_that_cannot_reach_its_httpbin_fails_the_start_naming_the_answer(
    world: World,
) -> None:
    """Ready pods are not enough: each sleep must get a 200 from its httpbin before
    --mesh-ready-timeout; otherwise the failure says what curl answered, and the run's
    namespaces are deleted."""
    world.istio.curl_stdout = b"503"
    with pytest.raises(MeshError) as failure:
        world.mesh().start()
    url = f"http://httpbin.{FOO}.svc.cluster.local:8000/status/200"
    assert str(failure.value) == f"sleep.{FOO} cannot reach {url}: curl exit 0, status '503', "
    assert world.cluster.namespaces == {}


def test_pods_without_sidecar_in_an_injected_namespace(world: World) -> None:
    world.cluster.inject = False
    with pytest.raises(MeshError, match=f"in {FOO} has no istio-proxy"):
        world.mesh().start()


# --- policies ---------------------------------------------------------------------------------


def test_apply_rewrites_the_namespace_and_waits_for_every_sidecar(
    world: World, started: KubeMesh
) -> None:
    started.apply(peer_auth("foo", "STRICT"))
    stored = world.cluster.objects[("security.istio.io", "PeerAuthentication", FOO, "default")]
    assert stored["spec"] == {"mtls": {"mode": "STRICT"}}
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "meshconform",
        "meshconform.dev/run": RUN,
    }
    # every sidecar's own Envoy was read once, through pilot-agent in istio-proxy
    assert sorted(world.istio.config_dump_reads) == sorted(sidecar_pods(started).values())
    assert {tuple(c) for c in world.exec_commands("istio-proxy")} == {
        ("pilot-agent", "request", "GET", "config_dump")
    }
    assert world.exec_commands("discovery") == []  # istiod is not asked anything


def test_apply_polls_each_envoy_until_it_implements_the_change(
    world: World, started: KubeMesh
) -> None:
    world.istio.lag_reads = 2  # a changed Envoy shows its old config twice more
    started.apply(peer_auth("foo", "STRICT"))
    reads = world.istio.config_dump_reads
    pods = sidecar_pods(started)
    # only httpbin in foo changes (its port 8080 turns STRICT): read until it has it;
    # the others already implement the policies in force and are read once
    assert reads.count(pods[f"httpbin.{FOO}"]) == 3
    for key in (f"sleep.{FOO}", f"sleep.{BAR}", f"httpbin.{BAR}"):
        assert reads.count(pods[key]) == 1


def test_destination_rule_host_follows_the_namespace(world: World, started: KubeMesh) -> None:
    started.apply(dest_rule("bar", "DISABLE"))
    stored = world.cluster.objects[("networking.istio.io", "DestinationRule", BAR, "httpbin")]
    assert stored["spec"]["host"] == f"httpbin.{BAR}.svc.cluster.local"


def test_a_lagging_sidecar_is_a_propagation_timeout_naming_it(
    world: World, started: KubeMesh
) -> None:
    pod = proxy_id(started, "httpbin", "foo")
    world.istio.stuck = {pod}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    message = str(timeout.value)
    assert message.startswith(
        f"PeerAuthentication {FOO}/default applied but not every sidecar implements it after"
    )
    assert "(--mesh-propagation-timeout 0:00:01):\n" in message
    lagging = message.split("):\n", 1)[1].splitlines()
    assert lagging == [
        f"  httpbin.{FOO}: inbound port 8080: PERMISSIVE (chains: tls/mTLS"
        " alpn=istio,istio-peer-exchange,istio-http/1.0,istio-http/1.1,istio-h2,"
        " raw_buffer/plain), expected STRICT"
        " [listeners 2025-03-14T09:26:41Z/12, clusters 2025-03-14T09:26:41Z/12]",
        "  (pass --mesh-artifacts=DIR to keep each sidecar's last config_dump)",
    ]


def test_a_client_without_the_destination_rule_is_named_with_its_cluster(
    world: World, started: KubeMesh
) -> None:
    world.istio.stuck = {proxy_id(started, "sleep", "foo")}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(dest_rule("bar", "DISABLE"))
    lagging = str(timeout.value).split("):\n", 1)[1]
    assert lagging.startswith(
        f"  sleep.{FOO}: cluster outbound|8000||httpbin.{BAR}.svc.cluster.local: auto mTLS,"
        " expected plaintext (DestinationRule DISABLE) [listeners"
    )
    assert f"sleep.{BAR}" not in lagging and "httpbin." not in lagging.split(": ", 1)[0]


def test_a_client_still_sending_mtls_to_a_disabled_namespace_is_waited_for(
    world: World, started: KubeMesh
) -> None:
    """Auto mTLS towards a namespace whose PeerAuthentication is DISABLE builds a cluster
    without TLS (buildUpstreamTLSSettings with BestEffortInferServiceMTLSMode): apply waits
    for each client's cluster too, not only for the server's inbound chains."""
    world.istio.stuck = {proxy_id(started, "sleep", "foo")}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("bar", "DISABLE"))
    lagging = str(timeout.value).split("):\n", 1)[1]
    assert lagging.startswith(
        f"  sleep.{FOO}: cluster outbound|8000||httpbin.{BAR}.svc.cluster.local: auto mTLS,"
        " expected plaintext (auto mTLS: the Service's namespace disables mTLS) [listeners"
    )


def test_connection_pool_settings_are_waited_for(world: World, started: KubeMesh) -> None:
    no_keepalive = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin-no-keepalive", "namespace": "foo"},
        "spec": {
            "host": "httpbin.foo.svc.cluster.local",
            "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 1}}},
        },
    }
    world.istio.stuck = {proxy_id(started, "sleep", "bar")}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(no_keepalive)
    assert (
        f"sleep.{BAR}: cluster outbound|8000||httpbin.{FOO}.svc.cluster.local:"
        " max_requests_per_connection unset, expected 1"
    ) in str(timeout.value)


def test_an_unreadable_config_dump_is_named(world: World, started: KubeMesh) -> None:
    world.istio.envoy_admin_errors["config_dump"] = (503, b"no healthy upstream")
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    assert (
        f"httpbin.{FOO}: config_dump not readable: Envoy admin /config_dump on httpbin.{FOO}:"
        " pilot-agent exited 1: Error: received unsuccessful status code 503: no healthy"
        " upstream"
    ) in str(timeout.value)


def test_delete_waits_until_the_sidecars_dropped_it(world: World, started: KubeMesh) -> None:
    started.apply(peer_auth("foo", "STRICT"))
    world.istio.config_dump_reads.clear()
    world.istio.lag_reads = 1
    started.delete(peer_auth("foo", "STRICT"))
    assert ("security.istio.io", "PeerAuthentication", FOO, "default") not in world.cluster.objects
    httpbin = proxy_id(started, "httpbin", "foo")
    assert world.istio.config_dump_reads.count(httpbin) == 2  # back to PERMISSIVE on read 2
    world.istio.config_dump_reads.clear()
    started.delete(peer_auth("foo", "STRICT"))  # already gone: nothing to wait for
    assert world.istio.config_dump_reads == []


def test_root_namespace_policies_are_part_of_the_prediction(world: World) -> None:
    world.cluster.apply(peer_auth("istio-system", "STRICT"))  # mesh-wide, left alone
    mesh = world.mesh()  # existing cluster, mesh-wide changes not allowed
    mesh.start()
    try:
        # httpbin in foo stays STRICT (from the root namespace): predicted, so no timeout
        mesh.apply(peer_auth("bar", "PERMISSIVE"))
        mesh.delete(peer_auth("bar", "PERMISSIVE"))
    finally:
        mesh.close()


def test_an_unreadable_root_namespace_leaves_mesh_decided_modes_unchecked(
    world: World,
) -> None:
    world.cluster.apply(peer_auth("istio-system", "STRICT"))
    world.cluster.forbidden = {"list istio-system"}
    mesh = world.mesh()
    mesh.start()
    try:
        mesh.apply(peer_auth("bar", "PERMISSIVE"))  # foo's mode depends on the unreadable root
        world.istio.stuck = {proxy_id(mesh, "httpbin", "bar")}
        mesh.delete(peer_auth("bar", "PERMISSIVE"))  # bar's too, now: nothing to check
        world.istio.stuck = set()
        mesh.apply(peer_auth("bar", "DISABLE"))
        world.istio.stuck = {proxy_id(mesh, "httpbin", "bar")}
        with pytest.raises(PropagationTimeout, match=f"httpbin.{BAR}: inbound port 8080"):
            mesh.apply(peer_auth("bar", "STRICT"))  # decided by bar itself: checked
    finally:
        mesh.close()


SLEEP_FOO_ONLY = authz(
    "sleep-only",
    {
        "selector": {"matchLabels": {"app": "httpbin"}},
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}],
    },
)


def test_authorization_policies_are_waited_for_on_every_inbound_chain(
    world: World, started: KubeMesh
) -> None:
    world.istio.lag_reads = 2  # a changed Envoy shows its old config twice more
    started.apply(SLEEP_FOO_ONLY)
    stored = world.cluster.objects[("security.istio.io", "AuthorizationPolicy", FOO, "sleep-only")]
    assert stored["spec"]["rules"] == [
        {"from": [{"source": {"principals": [f"cluster.local/ns/{FOO}/sa/sleep"]}}]}
    ]
    reads = world.istio.config_dump_reads
    pods = sidecar_pods(started)
    assert reads.count(pods[f"httpbin.{FOO}"]) == 3  # read until its chains carry the rule
    for key in (f"sleep.{FOO}", f"sleep.{BAR}", f"httpbin.{BAR}"):
        assert reads.count(pods[key]) == 1


def test_a_sidecar_without_the_rbac_rules_is_a_propagation_timeout_naming_them(
    world: World, started: KubeMesh
) -> None:
    world.istio.stuck = {proxy_id(started, "httpbin", "foo")}
    deny = authz(
        "no-post",
        {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]},
        annotations={"istio.io/dry-run": "true"},
    )
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(deny)
    message = str(timeout.value)
    assert message.startswith(
        f"AuthorizationPolicy {FOO}/no-post applied but not every sidecar implements it"
    )
    # istiod's rule on TCP chains: a DENY with HTTP-only fields still denies (rule kept), so
    # the HTTP and TCP chains miss the same filter: one difference names them all
    assert (
        "virtualInbound chains virtualInbound-catchall-http (passthrough, HTTP),"
        " virtualInbound (passthrough, TCP), 0.0.0.0_8080 (port 8080, HTTP):"
        f" RBAC no RBAC filter (want DENY (no rules) shadow['ns[{FOO}]-policy[no-post]-rule[0]'])"
    ) in message


def test_deleting_an_authorization_policy_waits_until_the_rules_are_gone(
    world: World, started: KubeMesh
) -> None:
    started.apply(SLEEP_FOO_ONLY)
    world.istio.lag_reads = 1
    world.istio.config_dump_reads.clear()
    started.delete(SLEEP_FOO_ONLY)
    assert world.istio.config_dump_reads.count(proxy_id(started, "httpbin", "foo")) == 2


def test_a_platform_custom_policy_in_the_root_namespace_does_not_block_applies(
    world: World,
) -> None:
    """meshconform does not model CUSTOM (ext_authz): such a mesh-wide policy of the platform
    team only makes the RBAC check tolerant (the chains must carry at least our rules)."""
    world.cluster.apply(
        authz(
            "ext-authz",
            {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]},
            namespace="istio-system",
        )
    )
    mesh = world.mesh()
    mesh.start()
    try:
        mesh.apply(SLEEP_FOO_ONLY)
        mesh.delete(SLEEP_FOO_ONLY)
    finally:
        mesh.close()


def test_unknown_kinds_are_refused_before_anything_is_written(
    world: World, started: KubeMesh
) -> None:
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "foo"},
        "spec": {},
    }
    with pytest.raises(MeshError) as refused:
        started.apply(policy)
    assert "cannot tell when a RequestAuthentication has arrived" in str(refused.value)
    assert not [c for c in world.cluster.calls if "RequestAuthentication" in c]


def test_policies_come_back_as_the_suite_wrote_them(started: KubeMesh) -> None:
    started.apply(peer_auth("foo", "STRICT"))
    started.apply(dest_rule("bar", "ISTIO_MUTUAL"))
    policies = sorted(started.policies(), key=lambda p: str(p["kind"]))
    assert policies == [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "httpbin", "namespace": "bar"},
            "spec": {
                "host": "httpbin.bar.svc.cluster.local",
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            },
        },
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "foo"},
            "spec": {"mtls": {"mode": "STRICT"}},
        },
    ]


def test_foreign_namespaces_are_never_written(world: World, started: KubeMesh) -> None:
    before = list(world.cluster.calls)
    with pytest.raises(MeshError, match="meshconform never writes elsewhere"):
        started.apply(peer_auth("default", "STRICT"))
    with pytest.raises(MeshError, match=r"metadata\.namespace is missing"):
        started.apply({**peer_auth("foo", "STRICT"), "metadata": {"name": "x"}})
    with pytest.raises(MeshError, match="only Istio policy APIs"):
        started.apply({**peer_auth("foo", "STRICT"), "apiVersion": "apps/v1", "kind": "Deployment"})
    assert world.cluster.calls == before


def test_mesh_wide_is_refused_on_an_existing_cluster_without_the_flag(
    world: World, started: KubeMesh
) -> None:
    before = list(world.cluster.calls)
    with pytest.raises(MeshWideNotAllowed) as refused:
        started.apply(peer_auth("istio-system", "STRICT"))
    assert str(refused.value) == (
        "PeerAuthentication istio-system/default is mesh-wide (Istio root namespace"
        " istio-system): it would change mTLS for every workload of context fake; pass"
        " --mesh-allow-mesh-wide to allow it (or deselect with -m 'not mesh_wide')"
    )
    with pytest.raises(MeshWideNotAllowed):
        started.delete(peer_auth("istio-system", "STRICT"))
    assert world.cluster.calls == before


def test_mesh_wide_changes_are_put_back_at_close(world: World) -> None:
    platform_policy = world.cluster.apply(peer_auth("istio-system", "STRICT"))
    mesh = world.mesh(allow_mesh_wide=True)
    mesh.start()
    assert "mesh-wide" in mesh.features
    mesh.apply(peer_auth("istio-system", "PERMISSIVE"))
    mesh.apply(dest_rule("istio-system", "DISABLE"))
    key = ("security.istio.io", "PeerAuthentication", "istio-system", "default")
    assert world.cluster.objects[key]["spec"] == {"mtls": {"mode": "PERMISSIVE"}}
    mesh.close()
    restored = world.cluster.objects[key]
    assert restored["spec"] == platform_policy["spec"] == {"mtls": {"mode": "STRICT"}}
    assert "labels" not in restored["metadata"]
    assert ("networking.istio.io", "DestinationRule", "istio-system", "httpbin") not in (
        world.cluster.objects
    )
    assert "restored mesh-wide PeerAuthentication istio-system/default" in world.messages
    assert "removed mesh-wide DestinationRule istio-system/httpbin (restored)" in world.messages


def test_restoring_a_helm_managed_mesh_wide_policy_keeps_its_labels(world: World) -> None:
    helm_labels = {"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/instance": "mesh"}
    platform = peer_auth("istio-system", "STRICT")
    platform["metadata"]["labels"] = dict(helm_labels)
    platform["metadata"]["annotations"] = {"meta.helm.sh/release-name": "mesh"}
    world.cluster.apply(platform)
    mesh = world.mesh(allow_mesh_wide=True)
    mesh.start()
    mesh.apply(peer_auth("istio-system", "PERMISSIVE"))
    key = ("security.istio.io", "PeerAuthentication", "istio-system", "default")
    assert world.cluster.objects[key]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == (
        "meshconform"
    )
    mesh.close()
    restored = world.cluster.objects[key]["metadata"]
    # Helm refuses to upgrade a release whose objects lost managed-by=Helm
    assert restored["labels"] == helm_labels
    assert restored["annotations"] == {"meta.helm.sh/release-name": "mesh"}


def test_kind_owns_its_cluster_so_mesh_wide_is_allowed(world: World) -> None:
    mesh = world.mesh(backend="kind")
    mesh.start()
    try:
        assert "mesh-wide" in mesh.features
        mesh.apply(peer_auth("istio-system", "STRICT"))
    finally:
        mesh.close()


# --- Envoy admin ----------------------------------------------------------------------------


def test_envoy_admin_is_pilot_agent_request_and_feeds_the_cert_parser(
    world: World, started: KubeMesh
) -> None:
    if not SHARED_SECRETS.is_dir():
        pytest.skip("shared test data not available")
    dump = (SHARED_SECRETS / "istio_config_dump.json").read_bytes()
    world.istio.envoy_admin["config_dump"] = dump
    body = started.envoy_admin(started.workload("httpbin", "foo"), "/config_dump")
    assert body == dump
    assert world.exec_commands("istio-proxy") == [["pilot-agent", "request", "GET", "config_dump"]]
    cert = parse_envoy_secrets(body).workload
    assert cert is not None
    # from `openssl x509 -noout -serial -ext subjectAltName` on the dump's chain
    assert str(cert.spiffe_id) == "spiffe://cluster.local/ns/ambient/sa/namespace-istio-waypoint"
    assert cert.serial.lower() == "6fbee254c22900615cb1f74e3d2f1713"


def test_envoy_admin_failures_say_what_pilot_agent_said(world: World, started: KubeMesh) -> None:
    world.istio.envoy_admin_errors["certs"] = (503, b"no healthy upstream")
    with pytest.raises(MeshError) as failure:
        started.envoy_admin(started.workload("sleep", "bar"), "/certs")
    assert str(failure.value) == (
        f"Envoy admin /certs on sleep.{BAR}: pilot-agent exited 1: Error: received unsuccessful"
        " status code 503: no healthy upstream"
    )
    with pytest.raises(MeshError, match="has no sidecar"):
        started.envoy_admin(started.workload("sleep", "legacy"), "/certs")


def test_envoy_admin_404_is_an_error_though_pilot_agent_exits_0(started: KubeMesh) -> None:
    # pilot-agent request prints a 404 body and exits 0; the body must not pass for the
    # admin output (a cert parser would then report garbage instead of the wrong path)
    with pytest.raises(MeshError) as failure:
        started.envoy_admin(started.workload("sleep", "bar"), "/nope")
    assert str(failure.value) == (
        f"Envoy admin /nope on sleep.{BAR}: Envoy answered 404 (invalid path. admin commands"
        " are: ...): no such admin path"
    )


# --- exec -----------------------------------------------------------------------------------


def test_exec_runs_in_the_app_container(world: World, started: KubeMesh) -> None:
    world.istio.curl_stdout = b"418"
    result = started.exec(started.workload("sleep", "bar"), ["curl", "-sS", "http://x"])
    assert (result.returncode, result.stdout, result.stderr) == (0, b"418", b"")
    call = world.server.exec_calls[-1]
    assert (call.namespace, call.container, call.command) == (
        BAR,
        "sleep",
        ["curl", "-sS", "http://x"],
    )


def test_exec_follows_a_replaced_pod(world: World, started: KubeMesh) -> None:
    sleep = started.workload("sleep", "bar")
    old_name = started.pod_name(sleep)
    # the pod was evicted and its Deployment made another one
    world.server.refused_pods[old_name] = (404, status_not_found("pods", old_name))
    [pod] = [p for p in world.cluster.pods[BAR] if p["metadata"]["labels"]["app"] == "sleep"]
    pod["metadata"]["name"] = "sleep-6c8f9d7b5-9z9z"
    result = started.exec(sleep, ["curl", "-sS", "http://x"])
    assert result.returncode == 0
    assert [c.pod for c in world.server.exec_calls[-2:]] == [old_name, "sleep-6c8f9d7b5-9z9z"]
    assert started.pod_name(sleep) == "sleep-6c8f9d7b5-9z9z"


def test_exec_deadline(world: World, started: KubeMesh) -> None:
    world.istio.curl_hang = True
    with pytest.raises(MeshError, match=r"did not finish within 0.3s"):
        started.exec(started.workload("sleep", "foo"), ["curl", "http://slow"], timeout=0.3)


# --- capture ----------------------------------------------------------------------------------


def test_capture_streams_tcpdump_until_its_end_marker(world: World, started: KubeMesh) -> None:
    recorded = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_pcap = recorded
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    httpbin = started.workload("httpbin", "foo")
    with started.capture(httpbin, 8080) as recording:
        assert recording.pcap == b""
    assert recording.pcap.startswith(recorded)
    assert recording.path is not None and recording.path.read_bytes() == recording.pcap
    assert "0 packets dropped by kernel" in recording.tool_stderr
    # the recorded request (tshark: frame 4, 10.244.0.5:47098 -> 10.244.0.6:8080) and the
    # marker datagram (one non-TCP packet) are both in the capture
    capture = analyze_pcap(recording.pcap)
    assert capture.packet_count == 13
    assert capture.non_tcp_packet_count == 1
    [flow] = capture.flows
    assert (flow.client, flow.server) == (("10.244.0.5", 47098), ("10.244.0.6", 8080))
    assert [(r.method, r.target) for r in flow.http_requests] == [("GET", "/headers")]
    [command] = world.exec_commands("mc-capture")
    assert command[4] == f"(tcp port 8080) or (udp and dst host {HOST_IP} and dst port 9)"
    assert command[5] == HOST_IP
    [added] = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
    spec = json.loads(added.split(" ", 2)[2])
    assert spec == {
        "name": "mc-capture",
        "image": PROXY_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "2147483647"],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_RAW", "NET_ADMIN"]},
        },
    }
    with started.capture(httpbin, 8080):
        pass
    assert len([c for c in world.cluster.calls if c.startswith("ephemeral ")]) == 1


def test_capture_of_a_pod_without_sidecar_borrows_the_mesh_proxy_image(
    world: World, started: KubeMesh
) -> None:
    world.istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    with started.capture(started.workload("httpbin", "legacy")):
        pass
    [added] = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
    assert added.startswith(f"ephemeral {LEGACY}/httpbin-")
    assert json.loads(added.split(" ", 2)[2])["image"] == PROXY_IMAGE
    [command] = world.exec_commands("mc-capture")
    assert command[4].startswith("(tcp and not (port 15010 or port 15012")


def test_capture_image_can_be_overridden(world: World) -> None:
    world.istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    mesh = world.mesh(capture_image="registry.example/netshoot:v0.13")
    mesh.start()
    try:
        with mesh.capture(mesh.workload("sleep", "foo"), 8000):
            pass
    finally:
        mesh.close()
    [added] = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
    assert json.loads(added.split(" ", 2)[2])["image"] == "registry.example/netshoot:v0.13"


# --- cleanup --------------------------------------------------------------------------------


def test_close_deletes_the_run_namespaces_and_run_dir(world: World) -> None:
    mesh = world.mesh()
    mesh.start()
    (world.tmp_path / "run").mkdir(exist_ok=True)
    mesh.close()
    mesh.close()  # idempotent
    assert world.cluster.namespaces == {}
    assert not (world.tmp_path / "run").exists()
    assert world.messages[-1] == f"deleting namespaces {FOO}, {BAR}, {LEGACY} (in the background)"


def test_keep_leaves_namespaces_and_says_how_to_remove_them(world: World) -> None:
    mesh = world.mesh(keep=True)
    mesh.start()
    (world.tmp_path / "run").mkdir(exist_ok=True)
    mesh.close()
    assert sorted(world.cluster.namespaces) == sorted([FOO, BAR, LEGACY])
    assert world.messages[-2:] == [
        f"--mesh-keep: left namespaces {FOO}, {BAR}, {LEGACY} in context fake; delete them"
        f" with: kubectl delete ns -l meshconform.dev/run={RUN}",
        f"--mesh-keep: left this run's captures in {world.tmp_path / 'run'}",
    ]
    assert (world.tmp_path / "run").is_dir()


def leftover_namespace(world: World, run: str, owner: str | None = None) -> None:
    metadata: dict[str, Any] = {
        "name": f"mc-{run}-foo",
        "labels": {"app.kubernetes.io/managed-by": "meshconform", "meshconform.dev/run": run},
    }
    if owner is not None:
        metadata["annotations"] = {"meshconform.dev/owner": owner}
    world.cluster.namespaces[f"mc-{run}-foo"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata,
    }


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_existing_cluster_users_may_lack_the_right_to_list_namespaces(world: World) -> None:
    world.cluster.forbidden = {"list namespaces", "list istio-system"}
    mesh = world.mesh()
    mesh.start()
    try:
        assert world.messages[0] == (
            "could not look for leftovers of earlier runs: list namespaces: HTTP 403 Forbidden"
        )
        mesh.apply(peer_auth("foo", "STRICT"))
        assert [p["metadata"]["namespace"] for p in mesh.policies()] == ["foo"]
    finally:
        mesh.close()


def test_policies_include_the_root_namespace_only_when_it_may_change(world: World) -> None:
    world.cluster.apply(peer_auth("istio-system", "STRICT"))
    for allow, namespaces in ((False, []), (True, ["istio-system"])):
        mesh = world.mesh(allow_mesh_wide=allow)
        mesh.start()
        try:
            assert [p["metadata"]["namespace"] for p in mesh.policies()] == namespaces
        finally:
            mesh.close()


def test_kind_sweeps_what_earlier_runs_left(world: World) -> None:
    host = socket.gethostname()
    leftover_namespace(world, "0ld0ld", owner=f"ci@{host} pid {dead_pid()}")
    leftover_namespace(world, "n0wner")  # every run writes an owner: none means long dead
    mesh = world.mesh(backend="kind")
    mesh.start()
    mesh.close()
    assert "delete namespace mc-0ld0ld-foo" in world.cluster.calls
    assert "delete namespace mc-n0wner-foo" in world.cluster.calls
    assert "swept leftovers of earlier runs: mc-0ld0ld-foo, mc-n0wner-foo" in world.messages


def test_namespaces_still_terminating_are_not_swept_again(world: World) -> None:
    # the previous run deleted its namespaces in the background a moment ago
    leftover_namespace(world, "g0ing0", owner=f"ci@{socket.gethostname()} pid {dead_pid()}")
    world.cluster.namespaces["mc-g0ing0-foo"]["metadata"]["deletionTimestamp"] = (
        "2025-03-01T10:00:00Z"
    )
    mesh = world.mesh(backend="kind")
    mesh.start()
    mesh.close()
    assert "delete namespace mc-g0ing0-foo" not in world.cluster.calls
    assert not any("mc-g0ing0-foo" in m for m in world.messages)


def test_kind_never_sweeps_a_run_in_progress(world: World) -> None:
    # two sessions of one project share its kind cluster: the other one is alive
    host = socket.gethostname()
    live = f"dev@{host} pid {os.getpid()}"
    leftover_namespace(world, "a11ve0", owner=live)
    leftover_namespace(world, "rem0te", owner="dev@other-machine pid 4242")
    wide = peer_auth("istio-system", "STRICT", name="live-wide")
    wide["metadata"]["labels"] = {
        "app.kubernetes.io/managed-by": "meshconform",
        "meshconform.dev/run": "a11ve0",
    }
    world.cluster.apply(wide)
    mesh = world.mesh(backend="kind")
    mesh.start()
    mesh.close()
    assert "mc-a11ve0-foo" in world.cluster.namespaces
    assert "mc-rem0te-foo" in world.cluster.namespaces
    assert ("security.istio.io", "PeerAuthentication", "istio-system", "live-wide") in (
        world.cluster.objects
    )
    assert (
        "left alone namespaces of meshconform runs in progress: mc-a11ve0-foo"
        f" ({live}), mc-rem0te-foo (dev@other-machine pid 4242)"
    ) in world.messages


def test_existing_clusters_only_report_other_runs(world: World) -> None:
    leftover_namespace(world, "0ther0")
    mesh = world.mesh()
    mesh.start()
    mesh.close()
    assert "mc-0ther0-foo" in world.cluster.namespaces
    assert any(
        m.startswith("namespaces of other meshconform runs exist (mc-0ther0-foo)")
        for m in world.messages
    )


# --- distroless proxies and HBONE (the ambient profile) ----------------------------------------

DISTROLESS = "docker.io/istio/proxyv2:1.22.3-distroless"


@pytest.mark.parametrize(
    ("image", "distroless"),
    [
        (DISTROLESS, True),
        ("gcr.io/istio-release/proxyv2:1.24.0-distroless", True),
        ("registry.example:5000/istio/proxyv2:distroless", True),
        ("registry.example/distroless/proxyv2:1.22.3", True),
        (PROXY_IMAGE, False),
        ("registry.example:5000/istio/proxyv2:1.22.3-debug", False),
        ("docker.io/istio/proxyv2@sha256:" + "0" * 64, False),
    ],
)
def test_distroless_images_are_told_by_their_tag(image: str, distroless: bool) -> None:
    assert image_is_distroless(image) is distroless


def test_a_distroless_proxy_is_refused_before_any_test_with_the_fix(world: World) -> None:
    world.cluster.proxy_image = DISTROLESS
    mesh = world.mesh()
    with pytest.raises(MeshError) as failure:
        mesh.start()
    message = str(failure.value)
    assert f"is {DISTROLESS}, a distroless image" in message
    assert "--mesh-capture-image=IMAGE" in message and "nicolaka/netshoot:v0.13" in message
    assert world.cluster.namespaces == {}  # nothing left behind
    assert [c for c in world.cluster.calls if c.startswith("ephemeral ")] == []


def test_a_distroless_proxy_with_a_capture_image_runs(world: World) -> None:
    world.cluster.proxy_image = DISTROLESS
    world.istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    mesh = world.mesh(capture_image="registry.example/netshoot:v0.13")
    mesh.start()
    try:
        with mesh.capture(mesh.workload("httpbin", "foo"), 8080):
            pass
    finally:
        mesh.close()
    [added] = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
    assert json.loads(added.split(" ", 2)[2])["image"] == "registry.example/netshoot:v0.13"


def test_hbone_needs_the_tunnel_label_and_a_sending_istiod(world: World) -> None:
    world.cluster.hbone_pods = True
    world.istio.send_hbone = True
    mesh = world.mesh()
    mesh.start()
    try:
        sleep, httpbin = mesh.workload("sleep", "foo"), mesh.workload("httpbin", "foo")
        assert mesh.hbone_tunnel(sleep, httpbin) is True
        assert tunnels_over_hbone(mesh, sleep, httpbin) is True
        # a client without a sidecar sends what its app sends
        assert mesh.hbone_tunnel(mesh.workload("sleep", "legacy"), httpbin) is False
        # the pods are tunnel-capable, but this istiod does not send HBONE
        world.istio.send_hbone = False
        assert mesh.hbone_tunnel(sleep, httpbin) is False
    finally:
        mesh.close()


def test_no_tunnel_label_no_hbone_and_no_config_read(world: World, started: KubeMesh) -> None:
    world.istio.send_hbone = True
    reads = len(world.istio.config_dump_reads)
    sleep, httpbin = started.workload("sleep", "foo"), started.workload("httpbin", "foo")
    assert started.hbone_tunnel(sleep, httpbin) is False
    assert len(world.istio.config_dump_reads) == reads


def test_the_local_shape_of_mesh_never_tunnels() -> None:
    class Plain:
        pass

    workload = Workload("httpbin", "foo", "httpbin", "httpbin", True)
    assert tunnels_over_hbone(Plain(), workload, workload) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["ISTIO_MUTUAL", "DISABLE"])
def test_destination_rules_propagate_under_hbone(world: World, mode: str) -> None:
    # With HBONE sending, ISTIO_MUTUAL is [hbone, tlsMode-istio]: once read as auto mTLS, so
    # this wait never ended
    world.cluster.hbone_pods = True
    world.istio.send_hbone = True
    mesh = world.mesh()
    mesh.start()
    try:
        mesh.apply(dest_rule("foo", mode))
    finally:
        mesh.close()


# --- what older or stranger Envoys print does not block the wait --------------------------------


def istio_1_13_sockets(dump: dict[str, Any]) -> None:
    """Istio <= 1.13 writes tlsMode-disabled's socket by name only (as in the real Istio 1.9.1
    dump ../shared/testdata/istio-dumps/scout__config_dump.json)."""
    for entry in dump["configs"][1]["dynamic_active_clusters"]:
        for match in entry["cluster"].get("transport_socket_matches", []):
            if match["name"] == "tlsMode-disabled":
                match["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer"}


def with_an_unknown_cluster(dump: dict[str, Any]) -> None:
    dump["configs"][1]["dynamic_active_clusters"].append(
        {
            "cluster": {
                "name": "outbound|9999||other.example.svc.cluster.local",
                "transport_socket": {"name": "envoy.transport_sockets.alts"},
            }
        }
    )


@pytest.mark.parametrize("rewrite", [istio_1_13_sockets, with_an_unknown_cluster])
def test_policies_propagate_whatever_else_the_dump_holds(world: World, rewrite: Any) -> None:
    world.istio.rewrite_dump = rewrite
    mesh = world.mesh()
    mesh.start()
    try:
        mesh.apply(peer_auth("foo", "STRICT"))
        mesh.apply(dest_rule("bar", "DISABLE"))
    finally:
        mesh.close()


def test_an_unknown_cluster_under_test_is_named_in_the_timeout(world: World) -> None:
    def unknown_bar(dump: dict[str, Any]) -> None:
        for entry in dump["configs"][1]["dynamic_active_clusters"]:
            if entry["cluster"]["name"].endswith(f"httpbin.{BAR}.svc.cluster.local"):
                entry["cluster"].pop("transport_socket_matches", None)
                entry["cluster"]["transport_socket"] = {"name": "envoy.transport_sockets.alts"}

    world.istio.rewrite_dump = unknown_bar
    mesh = world.mesh()
    mesh.start()
    try:
        with pytest.raises(PropagationTimeout) as timeout:
            mesh.apply(dest_rule("bar", "ISTIO_MUTUAL"))
    finally:
        mesh.close()
    assert (
        f"cluster outbound|8000||httpbin.{BAR}.svc.cluster.local: other (cluster"
        f" outbound|8000||httpbin.{BAR}.svc.cluster.local.transport_socket.typed_config:"
        " expected an object, got null (socket 'envoy.transport_sockets.alts' without a"
        " config))"
    ) in str(timeout.value)


def test_hbone_question_without_the_client_cluster_is_an_error(world: World) -> None:
    world.cluster.hbone_pods = True
    mesh = world.mesh()
    mesh.start()
    try:
        world.istio.rewrite_dump = lambda dump: dump["configs"][1].update(
            dynamic_active_clusters=[]
        )
        sleep, httpbin = mesh.workload("sleep", "foo"), mesh.workload("httpbin", "foo")
        with pytest.raises(MeshError, match=r"has no cluster outbound\|8000\|\|httpbin\."):
            mesh.hbone_tunnel(sleep, httpbin)
    finally:
        mesh.close()
