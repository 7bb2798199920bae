"""The kube backend with ambient namespaces, against the fake API server: the run's namespaces
labelled for ambient, its pods enrolled by istio-cni, and ``apply_policy`` waiting until the
ztunnel of each ambient workload's node holds what the Istio model predicts for it (read from
ztunnel's ``/config_dump`` through the API server's port-forward; ztunnel's image is distroless).

The ztunnel behind the port-forward (``kube_ztunnel_fakes.FakeZtunnel``) serves the real
ztunnel 1.23 dump of istio/istio's ambient integration test with the run's workloads, Services,
policies and certificates added as istiod sends them (skipped when the shared test data is
absent). Expected lines are written from ztunnel's and istiod's shapes, not from the reader.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cert_fixtures import make_pki
from kube_fakes import DATA_DIR, FakeCluster, pod_json
from kube_world import BAR, FOO, LEGACY, RUN, World, authz, fake_world, peer_auth
from kube_ztunnel_fakes import ISTIO_ZTUNNEL_DUMP, FakeZtunnel

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.mesh import MeshError, PropagationTimeout
from pytest_meshconform.plugin.identity import current_cert, served_cert

needs_dump = pytest.mark.skipif(
    not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent"
)
pytestmark = needs_dump

ZTUNNEL = "istio-system/ztunnel-x7k2p"
# an ambient run; Istio's ambient profile is distroless (so is the fake's ztunnel image), so
# captures need an image of their own
NETSHOOT = "docker.io/nicolaka/netshoot:v0.13"
AMBIENT: dict[str, Any] = {"dataplane": "ambient", "capture_image": NETSHOOT}
VERSION = "1.23.0-alpha.0-31-g16885a2"  # jq -r .version.gitTag of the real dump


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fake_world(tmp_path, FakeCluster(ztunnel=True)) as world:
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
        yield world


def ztunnel(world: World) -> FakeZtunnel:
    handler = world.server.port_forward_handler
    assert isinstance(handler, FakeZtunnel)
    return handler


@pytest.fixture
def started(world: World) -> Iterator[KubeMesh]:
    """An ambient run; a wait that should pass has 30 s (a loaded machine reads the 360 KB dump
    slowly), one that should time out is given 1 s (`short_wait`)."""
    mesh = world.mesh(
        **AMBIENT,
        artifacts=world.tmp_path / "artifacts",
        propagation_timeout=timedelta(seconds=30),
    )
    mesh.start()
    yield mesh
    mesh.close()


def short_wait(mesh: KubeMesh) -> None:
    mesh.options = dataclasses.replace(mesh.options, propagation_timeout=timedelta(seconds=1))


def test_ambient_namespaces_are_labelled_and_their_pods_have_no_sidecar(
    world: World, started: KubeMesh
) -> None:
    for namespace in (FOO, BAR):
        labels = world.cluster.namespaces[namespace]["metadata"]["labels"]
        assert labels["istio.io/dataplane-mode"] == "ambient"
        assert labels["istio-injection"] == "disabled"
    legacy = world.cluster.namespaces[LEGACY]["metadata"]["labels"]
    assert "istio.io/dataplane-mode" not in legacy
    planes = {w.key: w.dataplane for w in started.workloads()}
    assert planes == {
        f"sleep.{FOO}": "ambient",
        f"httpbin.{FOO}": "ambient",
        f"sleep.{BAR}": "ambient",
        f"httpbin.{BAR}": "ambient",
        f"sleep.{LEGACY}": "none",
        f"httpbin.{LEGACY}": "none",
    }
    # no proxy config annotation: ztunnel, not a sidecar agent, holds their certificates
    deployment = world.cluster.get("apps/v1", "Deployment", FOO, "httpbin")
    assert deployment is not None
    assert "annotations" not in deployment["spec"]["template"]["metadata"]


def test_a_pod_istio_cni_did_not_enrol_is_waited_for_and_named(tmp_path: Path) -> None:
    with fake_world(tmp_path, FakeCluster(ztunnel=True, cni=False)) as world:
        mesh = world.mesh(**AMBIENT)
        with pytest.raises(MeshError) as error:
            mesh.start()
    assert (
        f"sleep.{FOO} (not enrolled by istio-cni: no ambient.istio.io/redirection=enabled;"
        " is istio-cni running on node istio-testing-control-plane?)"
    ) in str(error.value)


def test_apply_waits_for_ztunnel_and_reads_it_by_port_forward(
    world: World, started: KubeMesh
) -> None:
    started.apply(peer_auth("foo", "STRICT"))
    reads = ztunnel(world).reads
    assert reads and set(reads) == {"ztunnel-x7k2p"}
    # one dump per round serves every ambient workload of the node
    forwards = [(c.namespace, c.pod, c.port) for c in world.server.port_forwards]
    assert set(forwards) == {("istio-system", "ztunnel-x7k2p", 15000)}
    assert not world.exec_commands("istio-proxy")  # no sidecar is asked anything


def test_a_late_ztunnel_is_waited_for(world: World, started: KubeMesh) -> None:
    ztunnel(world).lag_reads = 3
    before = len(ztunnel(world).reads)
    started.apply(peer_auth("bar", "STRICT"))
    assert len(ztunnel(world).reads) - before == 4  # three old answers, then the change


def test_an_l4_policy_by_principal_is_awaited(world: World, started: KubeMesh) -> None:
    started.apply(
        authz(
            "only-sleep",
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "action": "ALLOW",
                "rules": [
                    {"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}}]}
                ],
            },
        )
    )
    started.delete(authz("only-sleep", {}))


def test_a_stuck_ztunnel_times_out_naming_each_workload_and_what_it_lacks(
    world: World, started: KubeMesh
) -> None:
    ztunnel(world).stuck = {"ztunnel-x7k2p"}
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    head, *lines = str(timeout.value).splitlines()
    assert head == (
        f"PeerAuthentication {FOO}/default applied but not every ztunnel implements it after"
        " 1s (--mesh-propagation-timeout 0:00:01):"
    )
    directory = world.tmp_path / "artifacts" / "propagation" / f"{RUN}-1"
    missing = (
        "policy istio-system/istio_converted_static_strict: expected, ztunnel does not hold it"
    )
    assert lines == [
        f"  {key}: {missing} [ztunnel {ZTUNNEL} {VERSION}]; last config_dump:"
        f" {directory / f'{key}.ztunnel_config_dump.json'}"
        for key in (f"httpbin.{FOO}", f"sleep.{FOO}")
    ]
    kept = json.loads((directory / f"httpbin.{FOO}.ztunnel_config_dump.json").read_text())
    assert kept["version"]["gitTag"] == VERSION and kept["policies"] == []


def test_a_policy_ztunnel_holds_but_should_not_is_named(world: World, started: KubeMesh) -> None:
    started.apply(
        authz(
            "deny-bar",
            {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["x/ns/y/sa/z"]}}]}]},
        )
    )
    ztunnel(world).stuck = {"ztunnel-x7k2p"}
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.delete(authz("deny-bar", {}))
    lines = str(timeout.value).splitlines()[1:]
    assert lines[0].startswith(
        f"  httpbin.{FOO}: policy {FOO}/deny-bar: ztunnel applies it, not expected ["
    )


def test_a_certificate_ztunnel_has_not_fetched_is_a_lag(world: World, started: KubeMesh) -> None:
    identity = f"spiffe://cluster.local/ns/{BAR}/sa/httpbin"
    ztunnel(world).certificate_state[identity] = "Initializing"
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("bar", "PERMISSIVE"))
    (line,) = str(timeout.value).splitlines()[1:]
    assert line.startswith(f"  httpbin.{BAR}: certificate {identity}: Initializing [")


def test_no_ztunnel_on_the_node_is_named_with_the_fix(world: World, started: KubeMesh) -> None:
    world.cluster.pods["istio-system"] = [
        p for p in world.cluster.pods["istio-system"] if p["metadata"]["labels"]["app"] != "ztunnel"
    ]
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    assert (
        f"  httpbin.{FOO}: no ztunnel pod (app=ztunnel) in namespace istio-system: ambient mode"
        " needs Istio's ambient profile"
    ) in str(timeout.value)


def test_transient_port_forward_errors_are_retried(world: World, started: KubeMesh) -> None:
    world.cluster.flaky = {"port-forward": 2}
    started.apply(peer_auth("foo", "STRICT"))
    assert world.cluster.flaky == {"port-forward": 0}


def test_a_refused_port_forward_ends_the_wait_at_once(world: World, started: KubeMesh) -> None:
    world.cluster.forbidden = {"port-forward"}
    with pytest.raises(MeshError, match="port-forward: HTTP 403 Forbidden"):
        started.apply(peer_auth("foo", "STRICT"))


def test_start_waits_until_ztunnel_holds_the_run(tmp_path: Path) -> None:
    """A workload whose certificate ztunnel never gets: the run does not start, and says so."""
    with fake_world(tmp_path, FakeCluster(ztunnel=True)) as world:
        fake = FakeZtunnel(world.cluster)
        fake.certificate_state[f"spiffe://cluster.local/ns/{FOO}/sa/sleep"] = "Unavailable: boom"
        world.server.port_forward_handler = fake
        mesh = world.mesh(**AMBIENT)
        with pytest.raises(PropagationTimeout) as timeout:
            mesh.start()
    head, line, _ = str(timeout.value).splitlines()
    assert head == (
        "the run's ambient workloads started but not every ztunnel implements it after 5s"
        " (--mesh-ready-timeout 0:00:05):"
    )
    assert line.startswith(
        f"  sleep.{FOO}: certificate spiffe://cluster.local/ns/{FOO}/sa/sleep: Unavailable: boom"
        f" [ztunnel {ZTUNNEL} {VERSION}]"
    )


def test_the_report_header_says_what_of_ambient_the_cluster_runs(world: World) -> None:
    """An existing cluster: ztunnel (its image tag), istio-cni and the namespaces labelled
    for ambient before the run made its own, named in the mesh's version (the report
    header's line), whatever the run's data plane."""
    world.cluster.namespaces["bookinfo"] = {
        "metadata": {"name": "bookinfo", "labels": {"istio.io/dataplane-mode": "ambient"}}
    }
    mesh = world.mesh()  # a sidecar run
    mesh.start()
    try:
        assert mesh.version == (
            "istio 1.25.1 (ambient: ztunnel 1.25.1-distroless on 1 node, istio-cni on 1 node,"
            " 1 namespace labelled istio.io/dataplane-mode=ambient)"
        )
    finally:
        mesh.close()


def test_a_sidecar_run_on_a_cluster_without_ambient_says_nothing_of_it(tmp_path: Path) -> None:
    with fake_world(tmp_path) as world:
        mesh = world.mesh()
        mesh.start()
        try:
            assert mesh.ambient_found is None and mesh.version == "istio 1.25.1"
        finally:
            mesh.close()


def test_kind_refuses_a_ztunnel_whose_certificate_ttl_is_not_the_runs(world: World) -> None:
    """The real dump's ztunnel asks for 300 s certificates (jq .config.secretTtl)."""
    mesh = world.mesh(backend="kind", **AMBIENT, cert_ttl=timedelta(seconds=40))
    with pytest.raises(MeshError) as error:
        mesh.start()
    assert str(error.value) == (
        f"ztunnel {ZTUNNEL} asks for certificates of 300s (its secretTtl), not --mesh-cert-ttl"
        " 40s: the install did not reach ztunnel's SECRET_TTL"
    )
    kind = world.mesh(backend="kind", **AMBIENT, cert_ttl=timedelta(seconds=300))
    kind.start()
    kind.close()


# --- evidence: the certificate ztunnel holds ------------------------------------------------------


def test_cert_of_an_ambient_workload_is_the_one_its_ztunnel_holds(
    world: World, started: KubeMesh
) -> None:
    """``cert_of`` (``served_cert``) on a cluster reads ztunnel's ``certificates`` (there is no
    Envoy to ask); a new serial there (a rotation) is the new certificate."""
    pki = make_pki()
    fake = ztunnel(world)
    fake.issuer = pki.root
    httpbin = started.workload("httpbin", "foo")
    identity = f"spiffe://cluster.local/ns/{FOO}/sa/httpbin"
    fake.serials[identity] = 0xA1
    cert, delivered = served_cert(started, httpbin, None)
    assert (str(cert.spiffe_id), cert.serial, delivered) == (identity, "a1", None)
    fake.serials[identity] = 0xA2  # ztunnel rotated it
    assert current_cert(started, httpbin, None).serial == "a2"
    assert not world.exec_commands("istio-proxy")


def test_cert_of_names_a_certificate_ztunnel_does_not_have_yet(
    world: World, started: KubeMesh
) -> None:
    identity = f"spiffe://cluster.local/ns/{BAR}/sa/sleep"
    ztunnel(world).certificate_state[identity] = "Initializing"
    with pytest.raises(MeshError) as error:
        served_cert(started, started.workload("sleep", "bar"), None)
    assert str(error.value).startswith(
        f"ztunnel {ZTUNNEL} holds no available certificate for {identity} (Initializing; it holds "
    )


# --- evidence: captures in ambient pods -----------------------------------------------------------


def test_an_ambient_run_on_a_distroless_mesh_needs_a_capture_image(world: World) -> None:
    """No sidecar to borrow from: the cluster's proxyv2, here ztunnel's hub and tag
    (docker.io/istio/ztunnel:1.25.1-distroless), distroless: refused at start with the fix."""
    mesh = world.mesh(dataplane="ambient", propagation_timeout=timedelta(seconds=30))
    with pytest.raises(MeshError) as error:
        mesh.start()
    assert str(error.value) == (
        "the ambient pods have no proxy; the mesh's (ztunnel's image"
        " docker.io/istio/ztunnel:1.25.1-distroless) is docker.io/istio/proxyv2:1.25.1-distroless,"
        " a distroless image (Istio's global.variant=distroless, the ambient profile's default)"
        " without bash and tcpdump, so captures cannot borrow it: pass"
        " --mesh-capture-image=IMAGE with both (e.g. docker.io/nicolaka/netshoot:v0.13, or a"
        " copy in your registry)"
    )


def test_a_capture_in_an_ambient_pod_uses_the_clusters_proxyv2_by_digest(world: World) -> None:
    """A proxyv2 container running in Istio's namespace (a gateway) gives the image by the
    digest its node pulled; the ephemeral container shares the ambient pod's network."""
    digest = "docker.io/istio/proxyv2@sha256:" + "ab" * 32
    gateway = pod_json(
        "istio-ingressgateway-5d9f7c-abcde",
        "istio-system",
        "istio-ingressgateway",
        sidecar=False,
        node_name=world.cluster.node,
    )
    gateway["spec"]["containers"][0].update(
        name="istio-proxy", image="docker.io/istio/proxyv2:1.25.1"
    )
    gateway["status"]["containerStatuses"][0].update(
        name="istio-proxy", image="docker.io/istio/proxyv2:1.25.1", imageID=digest
    )
    world.cluster.pods["istio-system"].append(gateway)
    world.istio.capture_pcap = (DATA_DIR / "httpbin-eth0.pcap").read_bytes()
    world.istio.capture_stderr = (DATA_DIR / "httpbin-eth0.tcpdump-stderr.txt").read_bytes()
    mesh = world.mesh(dataplane="ambient", propagation_timeout=timedelta(seconds=30))
    mesh.start()
    try:
        httpbin = mesh.workload("httpbin", "foo")
        with mesh.capture(httpbin, 8080) as recording:
            pass
        assert recording.pcap
        (added,) = [c for c in world.cluster.calls if c.startswith("ephemeral ")]
        assert added.startswith(f"ephemeral {FOO}/{mesh.pod_name(httpbin)} ")
        assert json.loads(added.split(" ", 2)[2])["image"] == digest
    finally:
        mesh.close()
