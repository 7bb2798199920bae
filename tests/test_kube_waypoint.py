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
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kube_waypoint_fakes import WaypointCluster
from kube_world import BAR, FOO, LEGACY, World, fake_world
from kube_ztunnel_fakes import ISTIO_ZTUNNEL_DUMP, FakeZtunnel

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.mesh import MeshError, Waypoint

pytestmark = pytest.mark.skipif(
    not ISTIO_ZTUNNEL_DUMP.is_file(), reason=f"{ISTIO_ZTUNNEL_DUMP} is absent"
)

NETSHOOT = "docker.io/nicolaka/netshoot:v0.13"
AMBIENT: dict[str, Any] = {"dataplane": "ambient", "capture_image": NETSHOOT}
GATEWAY_API_FIX = (
    "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/"
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


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with waypoint_world(tmp_path) as world:
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
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
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
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
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
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
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
        mesh = ambient_mesh(world)
        mesh.start()
        try:
            assert "waypoint" not in mesh.features
            assert tuple(mesh.waypoints()) == ()
            assert mesh.waypoint_absence == (
                "the Gateway API CRDs are not installed (the API server serves no Gateway kind)"
            )
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
        world.server.port_forward_handler = FakeZtunnel(world.cluster)
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
