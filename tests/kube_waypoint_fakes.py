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

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# --- the waypoint's Envoy behind the port-forward --------------------------------------------

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
CONNECT_AUTHORITY = {  # xdsfilters.ConnectAuthorityNetworkFilter
    "name": "connect_authority",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
    },
}
# what istiod's authz model cannot match on a TCP chain (an ALLOW rule with one is skipped there)
HTTP_FIELDS = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")


def _http_only(rule: Mapping[str, Any]) -> bool:
    for entry in rule.get("to") or []:
        if any(k in HTTP_FIELDS for k in (entry.get("operation") or {})):
            return True
    return any(str(c.get("key", "")).startswith("request.") for c in rule.get("when") or [])


def _hcm(route_cluster: str, rbac: list[dict[str, Any]], stat_prefix: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": route_cluster,
                "virtual_hosts": [
                    {
                        "name": "inbound|http|0",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": route_cluster}}],
                    }
                ],
            },
            "http_filters": [*rbac, ROUTER],
        },
    }


@dataclass
class FakeWaypointEnvoy:
    """The waypoints' Envoys of a WaypointCluster, answering ``GET /config_dump`` on their
    admin port (15000) with ``connect_terminate`` and ``main_internal`` as istiod's
    ``buildWaypointInbound`` shapes them (listener_waypoint.go at 86c9f01fd735): per port of
    each Service of the waypoint's namespace an HTTP chain named
    ``inbound-vip|<port>|http|<fqdn>`` (Service ports here are all HTTP), then ``direct-tcp``
    and ``direct-http``; on each the RBAC filters of a tiny istiod: policies with
    ``targetRefs`` to the Service (in its namespace), to the Gateway (in the waypoint's), to the
    GatewayClass ``istio-waypoint`` (in the root namespace), the ``direct-*`` chains only the
    last two; DENY then ALLOW, one policy name ``ns[<ns>]-policy[<name>]-rule[<i>]`` per rule
    (``rule[0]`` for a policy without rules), an ALLOW rule with HTTP fields skipped on the TCP
    chain (builder.go ``build``).

    ``stuck``: answers what it held at its first read (no push reaches it); ``lag_reads``: a
    change reaches it after this many more reads of the old state."""

    cluster: WaypointCluster
    stuck: bool = False
    lag_reads: int = 0
    reads: list[str] = field(default_factory=list)
    _held: bytes | None = None
    _unseen: int = 0

    def __call__(self, call: Any) -> bytes | str:
        assert call.port == 15000 and call.request.startswith(b"GET /config_dump "), call
        self.reads.append(call.pod)
        pod = next(
            p for p in self.cluster.pods[call.namespace] if p["metadata"]["name"] == call.pod
        )
        name = pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"]
        now = self.render(call.namespace, name)
        if self._held is None or (not self.stuck and now != self._held and self._advance()):
            self._held = now
        body = self._held
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
        return head.encode() + b"\r\n\r\n" + body

    def _advance(self) -> bool:
        if self._unseen < self.lag_reads:
            self._unseen += 1
            return False
        self._unseen = 0
        return True

    def _policies(self) -> list[dict[str, Any]]:
        return [
            obj
            for (group, kind, _, _), obj in sorted(self.cluster.objects.items())
            if (group, kind) == ("security.istio.io", "AuthorizationPolicy")
        ]

    def _bound(self, namespace: str, waypoint: str, service: str | None) -> list[dict[str, Any]]:
        found = []
        for policy in self._policies():
            policy_ns = policy["metadata"]["namespace"]
            for ref in policy["spec"].get("targetRefs") or []:
                kind, group = ref.get("kind"), ref.get("group", "")
                if (
                    (
                        (kind == "Service" and group == "" and ref["name"] == service)
                        and policy_ns == namespace
                    )
                    or (kind == "Gateway" and ref["name"] == waypoint and policy_ns == namespace)
                    or (
                        kind == "GatewayClass"
                        and ref["name"] == "istio-waypoint"
                        and policy_ns == self.cluster.istio_namespace
                    )
                ):
                    found.append(policy)
                    break
        return found

    def _rbac(self, policies: list[dict[str, Any]], tcp: bool) -> list[dict[str, Any]]:
        filters = []
        for action in ("DENY", "ALLOW"):
            chosen = [p for p in policies if p["spec"].get("action", "ALLOW") == action]
            if not chosen:
                continue
            names: dict[str, Any] = {}
            for policy in chosen:
                meta = policy["metadata"]
                rules = policy["spec"].get("rules") or []
                prefix = f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule"
                if not rules:
                    names[f"{prefix}[0]"] = {"permissions": [{"any": True}], "principals": []}
                for index, rule in enumerate(rules):
                    if tcp and action == "ALLOW" and _http_only(rule):
                        continue
                    names[f"{prefix}[{index}]"] = {
                        "permissions": [{"any": True}],
                        "principals": [{"any": True}],
                    }
            rules_block: dict[str, Any] = {"policies": names}
            if action == "DENY":
                rules_block["action"] = "DENY"
            typed = {"@type": NETWORK_RBAC if tcp else HTTP_RBAC, "rules": rules_block}
            if tcp:
                typed["stat_prefix"] = "tcp."
            name = "envoy.filters.network.rbac" if tcp else "envoy.filters.http.rbac"
            filters.append({"name": name, "typed_config": typed})
        return filters

    def render(self, namespace: str, waypoint: str) -> bytes:
        domain = self.cluster.dns_domain
        chains = []
        for (group, kind, ns, name), _ in sorted(self.cluster.objects.items()):
            if (group, kind, ns) != ("", "Service", namespace):
                continue
            service = self.cluster.objects[(group, kind, ns, name)]
            policies = self._bound(namespace, waypoint, name)
            for port in service["spec"]["ports"]:
                cluster = f"inbound-vip|{port['port']}|http|{name}.{namespace}.svc.{domain}"
                chains.append(
                    {
                        "name": cluster,
                        "filters": [_hcm(cluster, self._rbac(policies, tcp=False), cluster)],
                    }
                )
        own = self._bound(namespace, waypoint, None)
        chains.append(
            {
                "name": "direct-tcp",
                "filters": [
                    CONNECT_AUTHORITY,
                    *self._rbac(own, tcp=True),
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": "encap",
                            "cluster": "encap",
                        },
                    },
                ],
            }
        )
        chains.append(
            {
                "name": "direct-http",
                "filters": [CONNECT_AUTHORITY, _hcm("encap", self._rbac(own, tcp=False), "encap")],
            }
        )
        state = hashlib.sha256(json.dumps(chains, sort_keys=True).encode()).hexdigest()[:8]
        version = f"2026-12-07T18:00:00Z/{state}"
        terminate = {
            "@type": LISTENER,
            "name": "connect_terminate",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15008}},
            "filter_chains": [
                {"name": "default", "filters": [_hcm("main_internal", [], "connect_terminate")]}
            ],
        }
        internal = {
            "@type": LISTENER,
            "name": "main_internal",
            "filter_chains": chains,
            "internal_listener": {},
            "traffic_direction": "INBOUND",
        }
        dump = {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                    "version_info": version,
                    "dynamic_listeners": [
                        {
                            "name": listener["name"],
                            "active_state": {"version_info": version, "listener": listener},
                        }
                        for listener in (terminate, internal)
                    ],
                }
            ]
        }
        return json.dumps(dump, indent=1).encode()


@dataclass
class PortForwards:
    """The fake API server's port-forward, by pod: ztunnel's or a waypoint's admin port."""

    ztunnel: Any
    waypoint: FakeWaypointEnvoy

    def __call__(self, call: Any) -> bytes | str:
        if call.pod.startswith("ztunnel-"):
            return self.ztunnel(call)  # type: ignore[no-any-return]
        return self.waypoint(call)
