"""`mesh_service_ports` and custom topologies under pytest: a user's per-service suite.

Expected modes: Istio's authn-policy task (PERMISSIVE by default; a namespace-wide STRICT
PeerAuthentication refuses plaintext from clients without sidecar) and Istio's tcp-echo sample
(`hello <line>`).
"""

from __future__ import annotations

import pytest
from local_helpers import needs_local_mesh

TOPOLOGY = """\
namespaces:
  - name: shop
    injected: true
    workloads:
      - {name: client, kind: sleep}
      - {name: web, kind: httpbin}
      - {name: echo, kind: tcp-echo}
    services:
      - name: web
        selector: {app: web}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: echo
        selector: {app: echo}
        ports: [{name: tcp, port: 9000}]
  - name: outside
    injected: false
    workloads:
      - {name: naked, kind: sleep}
"""

SUITE = """\
from pytest_meshconform import (
    PolicyApplier,
    ServicePortLister,
    WorkloadHandle,
    WorkloadLookup,
    peer_authentication,
)


def test_every_port_with_its_prediction(
    mesh_service_ports: ServicePortLister,
    workload: WorkloadLookup,
    apply_policy: PolicyApplier,
) -> None:
    client = workload("client", "shop")
    naked = workload("naked", "outside")
    ports = mesh_service_ports(client=client)
    assert [(p.key, p.protocol.value, p.predicted, p.expected) for p in ports] == [
        ("web.shop:80", "HTTP", "PERMISSIVE", "PERMISSIVE"),
        ("echo.shop:9000", "TCP", "PERMISSIVE", "PERMISSIVE"),
    ]
    web = ports[0]
    assert naked.curl(web.url("/headers")).status == 200
    apply_policy(peer_authentication("default", "shop", mode="STRICT"))
    after = mesh_service_ports(client=client)
    assert [(p.key, p.predicted, p.expected) for p in after] == [
        ("web.shop:80", "STRICT", "STRICT"),
        ("echo.shop:9000", "STRICT", "STRICT"),
    ]
    assert naked.curl(after[0].url("/headers")).status is None
    assert client.curl(after[0].url("/headers")).status == 200


def test_the_builtin_fixtures_skip_without_their_workloads(sleep: WorkloadHandle) -> None:
    raise AssertionError("sleep.foo is not in this topology: this must not run")


def test_a_namespace_with_no_service(mesh_service_ports: ServicePortLister) -> None:
    mesh_service_ports(namespaces=["outside"])
"""


@needs_local_mesh
def test_a_users_suite_over_every_service_port(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", topology=TOPOLOGY)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:randomly", "-rs", "--mesh-topology=topology.yaml"
    )
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*no Service port in the mesh in namespaces outside: nothing to assert on*",
            "*the mesh's topology has no workload sleep.foo, which this test needs*",
        ]
    )
