"""Istio policy samples shared by the policy tests: manifests copied verbatim from Istio's
documentation, the heads of hand-written manifests, and small readers.
"""

from __future__ import annotations

from pytest_meshconform.istio.api import (
    DestinationRule,
    MtlsMode,
    PeerAuthentication,
    parse_policies,
)

STRICT, PERMISSIVE, DISABLE, UNSET = (
    MtlsMode.STRICT,
    MtlsMode.PERMISSIVE,
    MtlsMode.DISABLE,
    MtlsMode.UNSET,
)
# The sample workloads of the tasks (samples/httpbin/httpbin.yaml, samples/sleep/sleep.yaml).
HTTPBIN = {"app": "httpbin", "version": "v1"}
HTTPBIN_PORT = 8080  # httpbin's container port; its Service listens on 8000


def pas(text: str, namespace: str | None = None) -> tuple[PeerAuthentication, ...]:
    parsed = parse_policies(text, namespace=namespace)
    assert all(isinstance(p, PeerAuthentication) for p in parsed)
    return tuple(p for p in parsed if isinstance(p, PeerAuthentication))


def drs(text: str, namespace: str | None = None) -> tuple[DestinationRule, ...]:
    parsed = parse_policies(text, namespace=namespace)
    assert all(isinstance(p, DestinationRule) for p in parsed)
    return tuple(p for p in parsed if isinstance(p, DestinationRule))


# --- istio.io "Authentication Policy" task ---------------------------------------------------
# istio/istio.io content/en/docs/tasks/security/authentication/authn-policy/index.md, manifests
# copied verbatim (the commands pipe them to `kubectl apply -n <ns>`).

AUTHN_MESH_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "istio-system"
spec:
  mtls:
    mode: STRICT
"""
AUTHN_FOO_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "default"
  namespace: "foo"
spec:
  mtls:
    mode: STRICT
"""
AUTHN_BAR_HTTPBIN_STRICT = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "httpbin"
  namespace: "bar"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
"""
AUTHN_BAR_HTTPBIN_PORT_8080_DISABLE = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "httpbin"
  namespace: "bar"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"""
AUTHN_FOO_OVERWRITE_EXAMPLE = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: "overwrite-example"
  namespace: "foo"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: DISABLE
"""

# Heads of the hand-written manifests in the validation tables.
PA_HEAD = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
DR_HEAD = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
META = "metadata: {name: p, namespace: foo}\n"
SEL = "  selector: {matchLabels: {app: httpbin}}\n"
