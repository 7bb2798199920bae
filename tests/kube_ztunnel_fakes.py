"""A node's ztunnel behind the fake API server's port-forward (a helper module of the
test_kube_ambient* files): its ``/config_dump`` is the real ztunnel 1.23 dump of istio/istio's
ambient integration test (``../shared/testdata/istio-dumps/ztunnel/``, read in place: its
version, config, 97 workloads, 56 Services and 24 certificates stay as they are), with the
run's pods, Services, L4 policies and certificates added as a tiny istiod would send them.

The tiny istiod is deliberately small and written from istiod's conversion as its golden files
show it (``pilot/pkg/serviceregistry/ambient/testdata``), not from meshconform's model:

- once any PeerAuthentication exists, the static policy
  ``istio-system/istio_converted_static_strict`` (DENY when the peer has no identity,
  ``DefaultPolicy``), listed by every workload whose namespace's selector-less
  PeerAuthentication (else the root namespace's) is STRICT;
- an AuthorizationPolicy without selector: scope ``Namespace`` (``Global`` in the root
  namespace); with a selector matching the pod's ``app``: ``WorkloadSelector``, listed by the
  workload; each rule one group of a ``from`` clause (principals as ``Exact``) and a ``to``
  clause (ports); an ALLOW rule with HTTP fields (methods, paths, hosts) dropped; a policy
  with ``targetRefs`` (bound to waypoints) never sent.

``stuck`` ztunnels keep what they held when last read before (with no policy at all if never
read); ``certificate_state`` overrides the state of an identity's certificate
(``Initializing``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cert_fixtures import Issuer, b64_of, istio_leaf, pem_of
from conftest import TESTDATA
from kube_fakes import FakeCluster, PortForwardCall

ISTIO_ZTUNNEL_DUMP = TESTDATA / "istio-dumps" / "ztunnel" / "istio__ztunnel-istioct_all_output.json"
ROOT = "istio-system"
STATIC_STRICT = {
    "name": "istio_converted_static_strict",
    "namespace": ROOT,
    "scope": "WorkloadSelector",
    "action": "Deny",
    "rules": [[[{"notPrincipals": [{"Presence": []}]}]]],
    "dryRun": False,
}
HTTP_FIELDS = ("methods", "notMethods", "paths", "notPaths", "hosts", "notHosts")


def http_answer(body: bytes) -> bytes:
    """ztunnel's admin answer: HTTP/1.1 200 with the JSON body."""
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


@dataclass
class FakeZtunnel:
    """The ztunnel pods of a FakeCluster, answering ``GET /config_dump`` on port 15000."""

    cluster: FakeCluster
    stuck: set[str] = field(default_factory=set)  # ztunnel pod names that take no update
    certificate_state: dict[str, str] = field(default_factory=dict)  # identity -> state
    reads: list[str] = field(default_factory=list)  # ztunnel pod names, in order
    lag_reads: int = 0  # a change reaches a ztunnel after this many more reads of the old state
    # with an issuer, the run's identities get certificates of their own SPIFFE ID from it
    # (leaf then root, as ztunnel before 1.25 lists them), serial ``serials[identity]`` (a new
    # serial: a rotation); without, a copy of the real dump's first certificate
    issuer: Issuer | None = None
    serials: dict[str, int] = field(default_factory=dict)
    _minted: dict[tuple[str, int], list[dict[str, str]]] = field(default_factory=dict)
    _frozen: dict[str, bytes] = field(default_factory=dict)
    _unseen: dict[str, int] = field(default_factory=dict)

    def __call__(self, call: PortForwardCall) -> bytes | str:
        assert call.port == 15000 and call.request.startswith(b"GET /config_dump "), call
        self.reads.append(call.pod)
        node = next(
            p["spec"].get("nodeName")
            for p in self.cluster.pods[call.namespace]
            if p["metadata"]["name"] == call.pod
        )
        if call.pod not in self.stuck:
            fresh = self.render(node)
            old = self._frozen.get(call.pod)
            if old is not None and fresh != old and self._unseen.get(call.pod, 0) < self.lag_reads:
                self._unseen[call.pod] = self._unseen.get(call.pod, 0) + 1
                return http_answer(old)
            self._unseen[call.pod] = 0
            self._frozen[call.pod] = fresh
        elif call.pod not in self._frozen:  # stuck before its first read: no policy at all
            saved = self.cluster.objects
            self.cluster.objects = {}
            try:
                self._frozen[call.pod] = self.render(node)
            finally:
                self.cluster.objects = saved
        return http_answer(self._frozen[call.pod])

    def _chain(self, identity: str) -> list[dict[str, str]]:
        """``CertDump`` entries (base64 PEM, decimal serial, RFC 3339 validity) of a leaf for
        ``identity`` and the issuer's root."""
        assert self.issuer is not None
        serial = self.serials.get(identity, 0x1000)
        key = (identity, serial)
        if key not in self._minted:
            leaf = istio_leaf(self.issuer, uris=(identity,), serial=serial)
            self._minted[key] = [
                {
                    "pem": b64_of(pem_of(cert)),
                    "serialNumber": str(cert.serial_number),
                    "validFrom": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "expirationTime": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for cert in (leaf, self.issuer.cert)
            ]
        return self._minted[key]

    # -- a tiny istiod for ambient --------------------------------------------------------------

    def _objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [
            obj
            for (_, k, ns, _), obj in sorted(self.cluster.objects.items())
            if k == kind and (namespace is None or ns == namespace)
        ]

    def _strict(self, namespace: str) -> bool:
        for scope in (namespace, ROOT):
            for policy in self._objects("PeerAuthentication", scope):
                spec = policy.get("spec") or {}
                mode = (spec.get("mtls") or {}).get("mode")
                if not spec.get("selector") and mode not in (None, "UNSET"):
                    return mode == "STRICT"
        return False

    @staticmethod
    def _rules(spec: Mapping[str, Any], action: str) -> list[Any]:
        groups = []
        for rule in spec.get("rules") or []:
            operations = [(to.get("operation") or {}) for to in rule.get("to") or []]
            if action == "Allow" and any(op.get(f) for op in operations for f in HTTP_FIELDS):
                continue
            clauses = []
            if operations:
                clauses.append(
                    [
                        {"destinationPorts": [int(p) for p in op["ports"]]}
                        if op.get("ports")
                        else {}
                        for op in operations
                    ]
                )
            sources = [(f.get("source") or {}) for f in rule.get("from") or []]
            if sources:
                clauses.append(
                    [
                        {"principals": [{"Exact": p} for p in source.get("principals") or []]}
                        for source in sources
                    ]
                )
            groups.append(clauses)
        return groups

    def _policies(self) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[str]]]:
        """ztunnel's policies, and per (namespace, app) the keys a workload lists."""
        policies: list[dict[str, Any]] = []
        listed: dict[tuple[str, str], list[str]] = {}
        if self._objects("PeerAuthentication"):
            policies.append(STATIC_STRICT)
        for obj in self._objects("AuthorizationPolicy"):
            meta, spec = obj["metadata"], obj.get("spec") or {}
            if spec.get("targetRefs") or spec.get("targetRef"):
                continue  # "TargetRef is not intended for ztunnel" (ambient/authorization.go)
            action = "Deny" if spec.get("action") == "DENY" else "Allow"
            selector = (spec.get("selector") or {}).get("matchLabels")
            if selector:
                scope = "WorkloadSelector"
            else:
                scope = "Global" if meta["namespace"] == ROOT else "Namespace"
            policies.append(
                {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "scope": scope,
                    "action": action,
                    "rules": self._rules(spec, action),
                    "dryRun": False,
                }
            )
            if selector:
                listed.setdefault((meta["namespace"], selector.get("app", "")), []).append(
                    f"{meta['namespace']}/{meta['name']}"
                )
        return policies, listed

    def render(self, node: str) -> bytes:
        """The dump the ztunnel of ``node`` would serve now."""
        dump = json.loads(ISTIO_ZTUNNEL_DUMP.read_text())
        policies, listed = self._policies()
        dump["policies"] = copy.deepcopy(policies)
        template = dump["certificates"][0]
        for namespace, pods in sorted(self.cluster.pods.items()):
            if namespace == self.cluster.istio_namespace:
                continue
            for pod in pods:
                meta, spec = pod["metadata"], pod["spec"]
                # enrolled: istio-cni's mark on the pod
                marks = meta.get("annotations") or {}
                hbone = marks.get("ambient.istio.io/redirection") == "enabled"
                app = meta["labels"].get("app", "")
                uid = f"Kubernetes//Pod/{namespace}/{meta['name']}"
                keys = list(listed.get((namespace, app), []))
                if hbone and self._strict(namespace) and policies:
                    keys.insert(0, f"{ROOT}/istio_converted_static_strict")
                workload: dict[str, Any] = {
                    "canonicalName": app,
                    "canonicalRevision": "latest",
                    "clusterId": "Kubernetes",
                    "name": meta["name"],
                    "namespace": namespace,
                    "networkMode": "Standard",
                    "node": spec.get("nodeName") or "",
                    "protocol": "HBONE" if hbone else "TCP",
                    "serviceAccount": spec.get("serviceAccountName") or app,
                    "status": "Healthy",
                    "trustDomain": "cluster.local",
                    "uid": uid,
                    "workloadIps": [pod["status"]["podIP"]],
                    "workloadName": app,
                    "workloadType": "deployment",
                }
                if keys:
                    workload["authorizationPolicies"] = keys
                dump["workloads"].append(workload)
                if app == "httpbin":
                    host = f"httpbin.{namespace}.svc.cluster.local"
                    workload["services"] = [f"{namespace}/{host}"]
                    dump["services"].append(
                        {
                            "endpoints": {
                                uid: {
                                    "port": {"8000": 8080},
                                    "service": f"{namespace}/{host}",
                                    "status": "Healthy",
                                    "workloadUid": uid,
                                }
                            },
                            "hostname": host,
                            "ipFamilies": "IPv4",
                            "name": "httpbin",
                            "namespace": namespace,
                            "ports": {"8000": 8080},
                            "subjectAltNames": [],
                            "vips": [f"/10.96.7.{len(dump['services']) % 250}"],
                        }
                    )
                identity = f"spiffe://cluster.local/ns/{namespace}/sa/{workload['serviceAccount']}"
                if hbone and workload["node"] == node:
                    certificate = copy.deepcopy(template)
                    certificate["identity"] = identity
                    if self.issuer is not None:
                        certificate["certChain"] = self._chain(identity)
                    state = self.certificate_state.get(identity, "Available")
                    certificate["state"] = state
                    if state != "Available":
                        certificate["certChain"] = []
                    dump["certificates"].append(certificate)
        return json.dumps(dump).encode()
