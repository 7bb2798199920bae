"""A policy that applies to nothing is refused, the same way on both backends' topologies.

`selection.unmatched_reason` sees what the Mesh protocol gives (workloads, logical_namespace,
root_namespace); here it runs against the local topology and a kube run's topology (per-run
namespaces `mc-<run>-foo`), without a mesh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_meshconform import Workload
from pytest_meshconform.backends.kube.topology import (
    RunNamespaces,
    topology_services,
    topology_workloads,
)
from pytest_meshconform.backends.local.topology_file import default_topology
from pytest_meshconform.istio.api import Policy, parse_policy
from pytest_meshconform.istio.selection import unmatched_reason
from pytest_meshconform.mesh import Service


@dataclass
class TopologyOnly:
    """The protocol members the checks read, from a backend's real topology."""

    pods: Sequence[Workload]
    svcs: Sequence[Service]
    names: RunNamespaces | None = None
    root_namespace: str = "istio-system"

    def workloads(self) -> Sequence[Workload]:
        return self.pods

    def services(self) -> Sequence[Service]:
        return self.svcs

    def logical_namespace(self, namespace: str) -> str:
        if self.names is None:
            return namespace
        return self.names.logical_of(namespace) or namespace


def local() -> TopologyOnly:
    topology = default_topology()
    return TopologyOnly([p.workload for p in topology.pods], [e.service for e in topology.services])


def kube() -> TopologyOnly:
    names = RunNamespaces("a1b2c3")
    return TopologyOnly(topology_workloads(names), topology_services(names), names)


MESHES = [pytest.param(local, id="local"), pytest.param(kube, id="kube")]


def _unmatched(mesh: TopologyOnly, policy: Policy) -> str | None:
    """What the `apply_policy` fixture and the audit ask."""
    return unmatched_reason(policy, mesh.workloads(), mesh.root_namespace, mesh.logical_namespace)


def peer_auth(namespace: str, selector: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {"mtls": {"mode": "STRICT"}}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return parse_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": namespace},
            "spec": spec,
        }
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_policies_that_apply_to_something_pass(mesh: Any) -> None:
    the_mesh = mesh()
    assert _unmatched(the_mesh, peer_auth("foo")) is None
    assert _unmatched(the_mesh, peer_auth("bar", {"app": "httpbin"})) is None
    assert _unmatched(the_mesh, peer_auth("istio-system")) is None  # mesh-wide


def test_the_real_namespace_name_works_too() -> None:
    assert _unmatched(kube(), peer_auth("mc-a1b2c3-foo", {"app": "sleep"})) is None


@pytest.mark.parametrize("mesh", MESHES)
def test_a_missing_namespace(mesh: Any) -> None:
    assert _unmatched(mesh(), peer_auth("fooo")) == (
        "namespace 'fooo' does not exist in the mesh (namespaces: bar, foo, legacy;"
        " root namespace istio-system)"
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_a_selector_matching_nothing(mesh: Any) -> None:
    assert _unmatched(mesh(), peer_auth("legacy", {"app": "httpbin", "version": "v2"})) == (
        "selector {'app': 'httpbin', 'version': 'v2'} matches no workload in legacy"
        " (workloads: sleep: {'app': 'sleep'}; httpbin: {'app': 'httpbin'})"
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_a_selector_in_the_root_namespace(mesh: Any) -> None:
    problem = _unmatched(mesh(), peer_auth("istio-system", {"app": "httpbin"}))
    assert problem is not None
    assert problem.startswith(
        "istiod ignores a PeerAuthentication with a selector in the root namespace istio-system"
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_a_destination_rule_workload_selector(mesh: Any) -> None:
    rule = parse_policy(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "foo"},
            "spec": {
                "host": "httpbin.foo.svc.cluster.local",
                "workloadSelector": {"matchLabels": {"app": "slep"}},
                "exportTo": ["."],
            },
        }
    )
    assert _unmatched(mesh(), rule) == (
        "selector {'app': 'slep'} matches no workload in foo"
        " (workloads: sleep: {'app': 'sleep'}; httpbin: {'app': 'httpbin'})"
    )


def authorization(namespace: str, selector: dict[str, str]) -> Any:
    return parse_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": namespace},
            "spec": {"selector": {"matchLabels": selector}},
        }
    )


@pytest.mark.parametrize("mesh", MESHES)
def test_an_authorization_policy_in_the_root_namespace_selects_everywhere(mesh: Any) -> None:
    # ListAuthorizationPolicies: root namespace policies apply to workloads of every namespace.
    assert _unmatched(mesh(), authorization("istio-system", {"app": "httpbin"})) is None
    problem = _unmatched(mesh(), authorization("istio-system", {"app": "nginx"}))
    assert problem is not None
    assert problem.startswith("selector {'app': 'nginx'} matches no workload in istio-system")
    assert "sleep: {'app': 'sleep'}" in problem
    # outside the root namespace a selector looks at the policy's own namespace only
    assert _unmatched(mesh(), authorization("legacy", {"app": "httpbin"})) is None
    assert _unmatched(mesh(), authorization("legacy", {"app": "nginx"})) == (
        "selector {'app': 'nginx'} matches no workload in legacy"
        " (workloads: sleep: {'app': 'sleep'}; httpbin: {'app': 'httpbin'})"
    )
