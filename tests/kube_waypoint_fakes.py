"""A FakeCluster with the Gateway API and istiod's waypoint deployment controller (a helper
module of the test_kube_waypoint* files).

What the fake istiod does with a Gateway of class ``istio-waypoint`` follows istiod's sources
(istio/istio 86c9f01fd735), not meshconform's code:

- the deployment controller renders ``manifests/charts/istio-control/istio-discovery/files/
  waypoint.yaml``: a Deployment of the Gateway's name labelled
  ``gateway.networking.k8s.io/gateway-name`` (and ``gateway-class-name``,
  ``gateway.istio.io/managed: istio.io-mesh-controller``), one replica whose pod has the same
  labels, ``istio.io/dataplane-mode: none``, a single ``istio-proxy`` container (proxyv2);
- the Gateway's status: ``Programmed`` False, reason ``AddressNotAssigned``, "Failed to assign
  to any requested addresses: no instances found for hostname ..." while the waypoint's pods
  are not ready; True, reason ``Programmed``, "Resource programmed, assigned to service(s)
  <name>.<ns>.svc.cluster.local:15008" once they are (``SetProgrammedCondition``,
  pilot/pkg/config/kube/gatewaycommon/conversion.go; the warning of ``context.go``).

``programmed_after``: how many reads of the Gateway see it not yet Programmed (None: never);
``gateway_api`` False: the cluster serves no Gateway (an apply of one is answered 404, as the
API server answers a kind it does not know); ``"stale"``: discovery still lists Gateway, but
the CRDs are gone (deleted after the client's discovery was read): applies are answered 404.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_fakes import FakeCluster, pod_json

GATEWAY_GROUP = "gateway.networking.k8s.io"
PROXYV2 = "docker.io/istio/proxyv2:1.28.0"
MANAGED = "istio.io-mesh-controller"


@dataclass
class WaypointCluster(FakeCluster):
    gateway_api: bool | str = True
    programmed_after: int | None = 0
    gateway_reads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gateway_api:
            self.served[(GATEWAY_GROUP, "Gateway")] = ["v1", "v1beta1"]

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "Gateway" and self.gateway_api is not True:
            from pytest_meshconform.backends.kube.client import KubeApiError

            raise KubeApiError("apply Gateway: HTTP 404 Not Found", 404)
        stored = super().apply(manifest)
        if manifest["kind"] == "Gateway" and manifest["spec"]["gatewayClassName"] == (
            "istio-waypoint"
        ):
            self._deploy(stored, ready=False)
        return stored

    def _labels(self, name: str) -> dict[str, str]:
        return {
            "gateway.networking.k8s.io/gateway-name": name,
            "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
            "gateway.istio.io/managed": MANAGED,
        }

    def _deploy(self, gateway: Mapping[str, Any], *, ready: bool) -> None:
        """What istiod's deployment controller makes for the Gateway (waypoint.yaml)."""
        name = gateway["metadata"]["name"]
        namespace = gateway["metadata"]["namespace"]
        labels = self._labels(name)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {labels_key(): name}}},
            "status": {"replicas": 1, "readyReplicas": 1} if ready else {"replicas": 1},
        }
        self.deployments[namespace] = [
            d for d in self.deployments.get(namespace, []) if d["metadata"]["name"] != name
        ] + [deployment]
        pod = pod_json(
            f"{name}-5f7c9d8b6-w4x2z",
            namespace,
            name,
            sidecar=False,
            ready=ready,
            pod_ip="10.244.7.200",
            node_name=self.node,
            service_account=name,
        )
        pod["metadata"]["labels"] = {
            "sidecar.istio.io/inject": "false",
            "istio.io/dataplane-mode": "none",
            "service.istio.io/canonical-name": name,
            "service.istio.io/canonical-revision": "latest",
            **labels,
        }
        pod["spec"]["containers"][0].update(name="istio-proxy", image=PROXYV2)
        pod["status"]["containerStatuses"][0].update(name="istio-proxy", image=PROXYV2)
        self.pods[namespace] = [
            p
            for p in self.pods.get(namespace, [])
            if (p["metadata"].get("labels") or {}).get(labels_key()) != name
        ] + [pod]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = super().get(api_version, kind, namespace, name)
        if found is None or kind != "Gateway":
            return found
        self.gateway_reads += 1
        programmed = self.programmed_after is not None and self.gateway_reads > (
            self.programmed_after
        )
        if programmed:
            self._deploy(found, ready=True)
        host = f'"{name}.{namespace}.svc.{self.dns_domain}"'
        condition = (
            {
                "type": "Programmed",
                "status": "True",
                "reason": "Programmed",
                "message": f"Resource programmed, assigned to service(s) {host[1:-1]}:15008",
            }
            if programmed
            else {
                "type": "Programmed",
                "status": "False",
                "reason": "AddressNotAssigned",
                "message": "Failed to assign to any requested addresses: no instances found"
                f" for hostname {host}",
            }
        )
        accepted = {"type": "Accepted", "status": "True", "reason": "Accepted"}
        found["status"] = {"conditions": [accepted, condition]}
        return json.loads(json.dumps(found))


def labels_key() -> str:
    return "gateway.networking.k8s.io/gateway-name"
