"""Waypoints on a cluster, against the fake API server: an ambient run gives ``bar`` the
namespace waypoint ``waypoint`` (the Gateway exactly as ``istioctl waypoint apply`` writes it,
the namespace labelled ``istio.io/use-waypoint``), waits until istiod's deployment controller
has it running (Gateway ``Programmed`` True, its Deployment ready), and runs without one (the
``waypoint`` feature absent) on an existing cluster without the Gateway API.

The expected Gateway is transcribed from ``makeGateway`` (istioctl/pkg/waypoint/waypoint.go,
istio/istio 86c9f01fd735); istiod's side is ``kube_waypoint_fakes.WaypointCluster``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_waypoint_fakes import FakeWaypointEnvoy, PortForwards, WaypointCluster
from kube_world import BAR, FOO, LEGACY, World, fake_world
from kube_ztunnel_fakes import ISTIO_ZTUNNEL_DUMP, FakeZtunnel

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.mesh import MeshError, PropagationTimeout, Waypoint

pytestmark = pytest.mark.skipif(
    not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent"
)

NETSHOOT = "docker.io/nicolaka/netshoot:v0.13"
AMBIENT: dict[str, Any] = {"dataplane": "ambient", "capture_image": NETSHOOT}
GATEWAY_API_FIX = (
    "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/"
)
# why a run on a cluster without the Gateway API has no waypoint, and the fix (a release's
# standard channel, as istio.io's ambient install guide applies it)
NO_GATEWAY_API = (
    re.escape(
        "the Gateway API CRDs are not installed (the API server serves no Gateway kind); fix: "
        + GATEWAY_API_FIX
    )
    + r"v\d+\.\d+\.\d+/standard-install\.yaml"
)
# istioctl waypoint apply -n <bar>: makeGateway(true) with the default name and no --for
ISTIOCTL_GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": BAR},
    "spec": {
        "gatewayClassName": "istio-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    },
}


def waypoint_world(tmp_path: Path, **cluster: Any) -> Any:
    """A fake world whose cluster serves the Gateway API (unless told) and runs ztunnel."""
    world = fake_world(tmp_path, WaypointCluster(ztunnel=True, **cluster))
    return world


def serve(world: World) -> PortForwards:
    """The port-forwards of the world's ztunnel and waypoint Envoy."""
    forwards = PortForwards(FakeZtunnel(world.cluster), FakeWaypointEnvoy(world.cluster))
    world.server.port_forward_handler = forwards
    return forwards


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with waypoint_world(tmp_path) as world:
        serve(world)
        yield world


def ambient_mesh(world: World, *, ready_timeout: float = 30.0, **options: Any) -> KubeMesh:
    mesh = world.mesh(**AMBIENT, **options)
    mesh.options = dataclasses.replace(mesh.options, ready_timeout=timedelta(seconds=ready_timeout))
    return mesh


def test_an_ambient_run_deploys_bars_waypoint_as_istioctl_writes_it(world: World) -> None:
    mesh = ambient_mesh(world)
    mesh.start()
    try:
        gateway = world.cluster.objects[("gateway.networking.k8s.io", "Gateway", BAR, "waypoint")]
        written = {k: v for k, v in gateway.items() if k != "status"}
        written["metadata"] = {
            k: v for k, v in gateway["metadata"].items() if k in ("name", "namespace", "labels")
        }
        assert written == ISTIOCTL_GATEWAY  # no istio.io/waypoint-for: service traffic
        labels = world.cluster.namespaces[BAR]["metadata"]["labels"]
        assert labels["istio.io/use-waypoint"] == "waypoint"
        for other in (FOO, LEGACY):
            assert (
                "istio.io/use-waypoint" not in world.cluster.namespaces[other]["metadata"]["labels"]
            )
        assert "waypoint" in mesh.features
        assert tuple(mesh.waypoints()) == (Waypoint("waypoint", BAR),)
        by_namespace = {s.namespace: mesh.service_waypoint(s) for s in mesh.services()}
        assert by_namespace == {FOO: None, BAR: Waypoint("waypoint", BAR), LEGACY: None}
        # the namespace is labelled when it is made, the Gateway applied right after
        calls = world.cluster.calls
        assert calls.index(f"create namespace {BAR}") < calls.index(f"apply Gateway {BAR}/waypoint")
    finally:
        mesh.close()
    assert f"delete namespace {BAR}" in world.cluster.calls  # the Gateway goes with it


def test_a_gateway_programmed_late_is_waited_for_with_progress(tmp_path: Path) -> None:
    with waypoint_world(tmp_path, programmed_after=3) as world:
        serve(world)
        mesh = ambient_mesh(world)
        mesh.start()
        mesh.close()
    assert world.cluster.gateway_reads == 4  # three reads not Programmed, then Programmed
    assert f"waiting for istiod to deploy waypoint {BAR}/waypoint" in world.messages
    waiting = [m for m in world.messages if m.startswith("waiting ") and "for the waypoints" in m]
    assert waiting and waiting[0].endswith(
        f"for the waypoints: Gateway {BAR}/waypoint is not Programmed (Programmed=False,"
        " AddressNotAssigned: Failed to assign to any requested addresses: no instances found"
        f' for hostname "waypoint.{BAR}.svc.cluster.local")'
    )


def test_a_gateway_never_programmed_times_out_naming_it(tmp_path: Path) -> None:
    with waypoint_world(tmp_path, programmed_after=None) as world:
        serve(world)
        mesh = ambient_mesh(world, ready_timeout=2.0)
        with pytest.raises(MeshError) as error:
            mesh.start()
    assert str(error.value) == (
        "waypoints not ready after 0:00:02 (--mesh-ready-timeout): Gateway"
        f" {BAR}/waypoint is not Programmed (Programmed=False, AddressNotAssigned: Failed to"
        " assign to any requested addresses: no instances found for hostname"
        f' "waypoint.{BAR}.svc.cluster.local")'
    )
    assert f"delete namespace {BAR}" in world.cluster.calls  # a failed start cleans up


def test_an_existing_cluster_without_the_gateway_api_runs_without_waypoint(
    tmp_path: Path,
) -> None:
    with waypoint_world(tmp_path, gateway_api=False) as world:
        serve(world)
        mesh = ambient_mesh(world)
        mesh.start()
        try:
            assert "waypoint" not in mesh.features
            assert tuple(mesh.waypoints()) == ()
            assert re.fullmatch(NO_GATEWAY_API, mesh.waypoint_absence or "")
            labels = world.cluster.namespaces[BAR]["metadata"]["labels"]
            assert "istio.io/use-waypoint" not in labels  # no label naming a missing waypoint
            assert not [c for c in world.cluster.calls if c.startswith("apply Gateway")]
        finally:
            mesh.close()
    (note,) = [m for m in world.messages if m.startswith("no waypoint for this run")]
    assert "the tests that need the waypoint feature are skipped; fix: " + GATEWAY_API_FIX in note


@pytest.mark.parametrize("backend", ["kind", "existing"])
def test_a_gateway_the_api_server_does_not_know_is_an_error_with_the_fix(
    tmp_path: Path, backend: str
) -> None:
    with waypoint_world(tmp_path, gateway_api="stale") as world:
        serve(world)
        mesh = ambient_mesh(world, backend=backend)
        with pytest.raises(MeshError) as error:
            mesh.start()
    text = str(error.value)
    assert text.startswith(
        f"cannot apply Gateway {BAR}/waypoint: the Gateway API CRDs are not installed (apply"
        " Gateway: HTTP 404 Not Found); fix: " + GATEWAY_API_FIX
    )
    assert f"delete namespace {BAR}" in world.cluster.calls  # a failed start cleans up


def test_a_sidecar_run_has_no_waypoint(tmp_path: Path) -> None:
    with waypoint_world(tmp_path) as world:
        mesh = world.mesh()
        mesh.start()
        try:
            assert "waypoint" not in mesh.features and tuple(mesh.waypoints()) == ()
            assert not [c for c in world.cluster.calls if c.startswith("apply Gateway")]
        finally:
            mesh.close()


# --- apply_policy waits for the waypoint's Envoy ------------------------------------------------

SLEEP_FOO = "cluster.local/ns/foo/sa/sleep"
SERVICE_CHAIN = f"inbound-vip|8000|http|httpbin.{BAR}.svc.cluster.local"
POD = f"{BAR}/waypoint-5f7c9d8b6-w4x2z"


def bound(
    name: str, action: str, rules: list[dict[str, Any]], ref: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "bar"},
        "spec": {"targetRefs": [ref], "action": action, "rules": rules},
    }


TO_SERVICE = {"kind": "Service", "group": "", "name": "httpbin"}
TO_GATEWAY = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}
VIEWER = bound(
    "httpbin-viewer",
    "ALLOW",
    [
        {
            "from": [{"source": {"principals": [SLEEP_FOO]}}],
            "to": [{"operation": {"methods": ["GET"]}}],
        }
    ],
    TO_SERVICE,
)
NO_POSTS = bound("no-posts", "DENY", [{"to": [{"operation": {"methods": ["POST"]}}]}], TO_GATEWAY)


@pytest.fixture
def started(world: World) -> Iterator[KubeMesh]:
    mesh = ambient_mesh(world, artifacts=world.tmp_path / "artifacts")
    mesh.options = dataclasses.replace(mesh.options, propagation_timeout=timedelta(seconds=30))
    mesh.start()
    yield mesh
    mesh.close()


def envoy(world: World) -> FakeWaypointEnvoy:
    forwards = world.server.port_forward_handler
    assert isinstance(forwards, PortForwards)
    return forwards.waypoint


def short_wait(mesh: KubeMesh) -> None:
    mesh.options = dataclasses.replace(mesh.options, propagation_timeout=timedelta(seconds=1))


def test_a_targetrefs_policy_is_waited_for_on_the_waypoints_envoy(
    world: World, started: KubeMesh
) -> None:
    envoy(world).lag_reads = 3
    before = len(envoy(world).reads)
    started.apply(VIEWER)
    assert len(envoy(world).reads) - before == 4  # three old answers, then the change
    assert set(envoy(world).reads) == {"waypoint-5f7c9d8b6-w4x2z"}
    forwards = {(c.namespace, c.pod, c.port) for c in world.server.port_forwards}
    assert (BAR, "waypoint-5f7c9d8b6-w4x2z", 15000) in forwards  # its Envoy admin port
    started.delete(VIEWER)


def test_a_gateway_bound_policy_reaches_every_chain_of_the_waypoint(
    world: World, started: KubeMesh
) -> None:
    # a DENY with HTTP fields: on direct-tcp too (istiod ignores what TCP cannot match there)
    started.apply(NO_POSTS)
    # an ALLOW with HTTP fields: its rule is skipped on direct-tcp, which then allows nothing
    get_only = bound(
        "get-only", "ALLOW", [{"to": [{"operation": {"methods": ["GET"]}}]}], TO_GATEWAY
    )
    started.apply(get_only)
    started.delete(get_only)
    started.delete(NO_POSTS)


def test_a_stale_waypoint_times_out_naming_the_chain_and_the_policy(
    world: World, started: KubeMesh
) -> None:
    envoy(world).stuck = True
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(VIEWER)
    head, *lines = str(timeout.value).splitlines()
    assert head == (
        f"AuthorizationPolicy {BAR}/httpbin-viewer applied but not every waypoint implements it"
        " after 1s (--mesh-propagation-timeout 0:00:01):"
    )
    kept = world.tmp_path / "artifacts" / "propagation" / "1a2b3c-1"
    assert lines == [
        f"  waypoint {BAR}/waypoint: main_internal chain {SERVICE_CHAIN} (HTTP): RBAC no RBAC"
        f" filter (want ALLOW['ns[{BAR}]-policy[httpbin-viewer]-rule[0]']) [pod {POD}];"
        f" last config_dump: {kept / f'waypoint_{BAR}_waypoint.config_dump.json'}"
    ]
    dump = (kept / f"waypoint_{BAR}_waypoint.config_dump.json").read_text()
    assert '"main_internal"' in dump and "httpbin-viewer" not in dump


def test_a_policy_the_waypoint_still_holds_is_named(world: World, started: KubeMesh) -> None:
    started.apply(NO_POSTS)
    envoy(world).stuck = True
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.delete(NO_POSTS)
    lines = str(timeout.value).splitlines()[1:]
    deny = f"DENY['ns[{BAR}]-policy[no-posts]-rule[0]']"
    assert lines[0].startswith(
        f"  waypoint {BAR}/waypoint: main_internal chain {SERVICE_CHAIN} (HTTP): RBAC {deny}"
        " (want no RBAC filter); main_internal chain direct-tcp (TCP): RBAC"
        f" {deny} (want no RBAC filter); main_internal chain direct-http (HTTP): RBAC {deny}"
        " (want no RBAC filter) [pod"
    )


def test_a_waypoint_without_a_ready_pod_is_a_lag_naming_it(world: World, started: KubeMesh) -> None:
    for pod in world.cluster.pods[BAR]:
        if pod["metadata"]["labels"].get("gateway.networking.k8s.io/gateway-name"):
            pod["status"]["conditions"][0]["status"] = "False"
    short_wait(started)
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(VIEWER)
    assert str(timeout.value).splitlines()[1] == (
        f"  waypoint {BAR}/waypoint: no ready pod of waypoint {BAR}/waypoint (labelled"
        " gateway.networking.k8s.io/gateway-name=waypoint; 1 found)"
    )


def test_apply_policy_binds_targetrefs_to_the_clusters_waypoint(started: KubeMesh) -> None:
    """The suite writes ``bar``; the cluster's waypoint and Services are in the run's
    namespaces: istiod's waypoint status is judged with the logical names."""
    from pytest_meshconform.istio.api import parse_policy
    from pytest_meshconform.plugin.policies import _target_ref_problem

    assert _target_ref_problem(started, parse_policy(VIEWER)) is None
    assert _target_ref_problem(started, parse_policy(NO_POSTS)) is None
    missing = bound("x", "ALLOW", [{}], {"kind": "Service", "group": "", "name": "nope"})
    assert _target_ref_problem(started, parse_policy(missing)) == "Service bar/nope was not found"


def test_a_targetrefs_policy_without_the_gateway_api_is_refused_naming_why_and_the_fix(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A cluster without the Gateway API: the run has no waypoint, so ``apply_policy`` refuses a
    ``targetRefs`` policy with istiod's reason, then why the run has none and the fix."""
    from pytest_meshconform import UnmatchedPolicyError
    from pytest_meshconform.plugin.policies import PolicyApplier
    from pytest_meshconform.plugin.session import evidence_window

    with waypoint_world(tmp_path, gateway_api=False) as world:
        serve(world)
        mesh = ambient_mesh(world)
        mesh.start()
        try:
            applier = PolicyApplier(mesh, request.node, evidence_window(mesh, request))
            refusals = []
            for policy in (NO_POSTS, VIEWER):
                with pytest.raises(UnmatchedPolicyError) as error:
                    applier(policy)
                refusals.append(str(error.value))
            assert not [c for c in world.cluster.calls if "AuthorizationPolicy" in c]
        finally:
            mesh.close()
    gateway, service = refusals
    assert re.fullmatch(
        re.escape(
            "AuthorizationPolicy bar/no-posts would apply to nothing: Gateway bar/waypoint is not"
            " a waypoint (waypoints: none); this run has no waypoint: "
        )
        + NO_GATEWAY_API
        + re.escape(". Fix the policy, or pass allow_unmatched=True if the test means it"),
        gateway,
    )
    assert re.fullmatch(
        re.escape(
            "AuthorizationPolicy bar/httpbin-viewer would apply to nothing: Service bar/httpbin"
            " is not bound to a waypoint; this run has no waypoint: "
        )
        + NO_GATEWAY_API
        + re.escape(". Fix the policy, or pass allow_unmatched=True if the test means it"),
        service,
    )
