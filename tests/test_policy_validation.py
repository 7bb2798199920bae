"""Validation of the policy kinds (``pytest_meshconform.istio.api``): what Istio rejects is
rejected, and the message names the field path.

The expected messages are istiod's own (its validation functions and the CRD rules, named in
the docstrings of the modules in istio/api), or, where meshconform is stricter, say why.
"""

from __future__ import annotations

import pytest
from istio_samples import (
    AUTHN_FOO_STRICT,
    AUTHN_MESH_STRICT,
    DR_HEAD,
    META,
    PA_HEAD,
    SEL,
    drs,
    pas,
)

from pytest_meshconform.istio.api import (
    ClientTls,
    PolicyError,
    TlsMode,
    TrafficPolicy,
    parse_policies,
    parse_policy,
)

# --- validation errors: the field path is in the message ------------------------------------


INVALID = [
    # (id, manifest, field path, fragment of the message)
    (
        "portLevelMtls without selector",
        PA_HEAD + META + "spec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        "spec.portLevelMtls",
        "portLevelMtls requires selector",
    ),
    (
        "portLevelMtls with an empty selector",
        PA_HEAD + META + "spec:\n  selector: {matchLabels: {}}\n  portLevelMtls: {80: {}}\n",
        "spec.portLevelMtls",
        "portLevelMtls requires selector",
    ),
    (
        "empty portLevelMtls",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {}\n",
        "spec.portLevelMtls",
        "port level mTLS, if defined, must have at least one element",
    ),
    (
        "port 0",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {0: {mode: STRICT}}\n",
        "spec.portLevelMtls[0]",
        "port must be in range 1..65535",
    ),
    (
        "port 65536 as a JSON string key",
        PA_HEAD + META + "spec:\n" + SEL + '  portLevelMtls: {"65536": {mode: STRICT}}\n',
        "spec.portLevelMtls[65536]",
        "port must be in range 1..65535",
    ),
    (
        "port name instead of number",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {http: {mode: STRICT}}\n",
        "spec.portLevelMtls['http']",
        "key is not a port number",
    ),
    (
        "bad port-level mode",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {8080: {mode: PLAINTEXT}}\n",
        "spec.portLevelMtls[8080].mode",
        "'PLAINTEXT' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        "YAML boolean as mode",
        PA_HEAD + META + "spec:\n" + SEL + "  portLevelMtls: {8080: {mode: OFF}}\n",
        "spec.portLevelMtls[8080].mode",
        "False is not one of UNSET, DISABLE, PERMISSIVE, STRICT (YAML reads yes/no/on/off as "
        "booleans: quote the value)",
    ),
    (
        "lower case mode",
        PA_HEAD + META + "spec: {mtls: {mode: strict}}\n",
        "spec.mtls.mode",
        "'strict' is not one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ),
    (
        "numeric mode",
        PA_HEAD + META + "spec: {mtls: {mode: 3}}\n",
        "spec.mtls.mode",
        "3 is not one of",
    ),
    (
        "mode directly under spec",
        PA_HEAD + META + "spec: {mode: STRICT}\n",
        "spec.mode",
        "unknown field; accepted here: mtls, portLevelMtls, selector",
    ),
    (
        "wildcard in selector",
        PA_HEAD + META + "spec: {selector: {matchLabels: {app: 'http*'}}}\n",
        "spec.selector.matchLabels['app']",
        "wildcard is not supported in selector",
    ),
    (
        "empty selector key",
        PA_HEAD + META + "spec: {selector: {matchLabels: {'': x}}}\n",
        "spec.selector.matchLabels['']",
        "empty key is not supported in selector",
    ),
    (
        "non-string label value",
        PA_HEAD + META + "spec: {selector: {matchLabels: {version: 1}}}\n",
        "spec.selector.matchLabels['version']",
        "expected a string, got a number",
    ),
    (
        "selector without matchLabels wrapper",
        PA_HEAD + META + "spec: {selector: {app: httpbin}}\n",
        "spec.selector.app",
        "unknown field",
    ),
    ("no metadata", PA_HEAD + "spec: {}\n", "metadata", "is required"),
    ("no name", PA_HEAD + "metadata: {namespace: foo}\n", "metadata.name", "is required"),
    (
        "bad name",
        PA_HEAD + "metadata: {name: My_Policy}\n",
        "metadata.name",
        "'My_Policy' is not a DNS-1123 subdomain",
    ),
    (
        "bad namespace",
        PA_HEAD + "metadata: {name: p, namespace: Foo}\n",
        "metadata.namespace",
        "'Foo' is not a DNS-1123 label",
    ),
    (
        "bad creationTimestamp",
        PA_HEAD + "metadata: {name: p, creationTimestamp: yesterday}\n",
        "metadata.creationTimestamp",
        "'yesterday' is not an RFC 3339 time",
    ),
    (
        "creationTimestamp without a zone",
        PA_HEAD + "metadata: {name: p, creationTimestamp: 2020-02-02 02:02:02}\n",
        "metadata.creationTimestamp",
        "has no time zone",
    ),
    (
        "old authentication API",
        "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\n" + META,
        "apiVersion",
        "accepted: security.istio.io/v1, security.istio.io/v1beta1",
    ),
    (
        "DestinationRule in the security group",
        "apiVersion: security.istio.io/v1\nkind: DestinationRule\n" + META,
        "apiVersion",
        "accepted: networking.istio.io/v1, networking.istio.io/v1beta1, "
        "networking.istio.io/v1alpha3",
    ),
    (
        "another Istio kind",
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n" + META,
        "kind",
        "'RequestAuthentication' is not an accepted kind; accepted: security.istio.io/v1 "
        "PeerAuthentication",
    ),
    (
        "unknown top-level field",
        PA_HEAD + META + "specs: {}\n",
        "specs",
        "unknown field",
    ),
    (
        "MUTUAL without certificates",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: MUTUAL}}}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "client certificate required for mutual tls",
    ),
    (
        "MUTUAL without key",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}}\n",
        "spec.trafficPolicy.tls.privateKey",
        "private key required for mutual tls",
    ),
    (
        "credentialName with a CA file",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, "
        "caCertificates: /ca.pem}}}\n",
        "spec.trafficPolicy.tls",
        "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
    ),
    (
        "ISTIO_MUTUAL with a client certificate",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, clientCertificate: /c}}}\n",
        "spec.trafficPolicy.tls.clientCertificate",
        "must not be set with mode ISTIO_MUTUAL",
    ),
    (
        "ISTIO_MUTUAL with a credential",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, credentialName: c}}}\n",
        "spec.trafficPolicy.tls.credentialName",
        "must not be set with mode ISTIO_MUTUAL",
    ),
    (
        "insecureSkipVerify with a CA",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, "
        "caCertificates: /ca}}}\n",
        "spec.trafficPolicy.tls",
        "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
        "InsecureSkipVerify is set true",
    ),
    (
        "insecureSkipVerify as a string",
        DR_HEAD
        + META
        + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: 'yes'}}}\n",
        "spec.trafficPolicy.tls.insecureSkipVerify",
        "'yes' is not a boolean",
    ),
    (
        "unknown TLS mode",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: STRICT}}}\n",
        "spec.trafficPolicy.tls.mode",
        "'STRICT' is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL",
    ),
    (
        "port number 0",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 0}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port.number",
        "port number 0 must be in range 1..65535",
    ),
    (
        "port number 65536",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 9080}\n      tls: {mode: DISABLE}\n"
        "    - port: {number: 65536}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "port number 65536 must be in range 1..65535",
    ),
    (
        "port-level entry without port",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port",
        "portTrafficPolicy must have valid port",
    ),
    (
        "port-level entry with only a port",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: 80}\n",
        "spec.trafficPolicy.portLevelSettings[0]",
        "port traffic policy must have at least one field",
    ),
    (
        "port-level port as a string",
        DR_HEAD + META + "spec:\n  host: db\n  trafficPolicy:\n    portLevelSettings:\n"
        "    - port: {number: '80'}\n      tls: {mode: DISABLE}\n",
        "spec.trafficPolicy.portLevelSettings[0].port.number",
        "'80' is not an integer",
    ),
    (
        "empty traffic policy",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {}}\n",
        "spec.trafficPolicy",
        "traffic policy must have at least one field",
    ),
    (
        "tunnel and proxyProtocol",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tunnel: {targetHost: a, targetPort: 1}, "
        "proxyProtocol: {}}}\n",
        "spec.trafficPolicy",
        "tunnel and proxyProtocol must not be set together",
    ),
    (
        "loadBalancer that is not an object",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {loadBalancer: ROUND_ROBIN}}\n",
        "spec.trafficPolicy.loadBalancer",
        "expected an object, got a string",
    ),
    ("no spec", DR_HEAD + META, "spec", "is required"),
    ("no host", DR_HEAD + META + "spec: {exportTo: ['*']}\n", "spec.host", "is required"),
    (
        "wildcard not in the first label",
        DR_HEAD + META + "spec: {host: 'foo.*.com'}\n",
        "spec.host",
        "domain name 'foo.*.com' invalid (label '*' invalid)",
    ),
    (
        "IP address as host",
        DR_HEAD + META + "spec: {host: 10.0.0.1}\n",
        "spec.host",
        "top level domain '1' cannot be all-numeric",
    ),
    (
        "duplicate subsets",
        DR_HEAD
        + META
        + "spec: {host: db, subsets: [{name: v1, labels: {version: v1}}, {name: v1}]}\n",
        "spec.subsets[1].name",
        "duplicate subset names: v1",
    ),
    (
        "bad subset name",
        DR_HEAD + META + "spec: {host: db, subsets: [{name: v1.0}]}\n",
        "spec.subsets[0].name",
        "subset name is invalid: v1.0",
    ),
    (
        "bad subset label",
        DR_HEAD + META + "spec: {host: db, subsets: [{name: v1, labels: {version: 'v 1'}}]}\n",
        "spec.subsets[0].labels['version']",
        "invalid tag value: 'v 1'",
    ),
    (
        "bad TLS mode in a subset",
        DR_HEAD
        + META
        + "spec: {host: db, subsets: [{name: v1, trafficPolicy: {tls: {mode: mTLS}}}]}\n",
        "spec.subsets[0].trafficPolicy.tls.mode",
        "'mTLS' is not one of",
    ),
    (
        "exportTo duplicates",
        DR_HEAD + META + "spec: {host: db, exportTo: [bar, bar]}\n",
        "spec.exportTo[1]",
        "duplicate entries in exportTo for entry 'bar'",
    ),
    (
        "exportTo . and own namespace",
        DR_HEAD + META + "spec: {host: db, exportTo: [foo, .]}\n",
        "spec.exportTo[1]",
        "duplicate entries in exportTo: . and current namespace foo",
    ),
    (
        "exportTo * with others",
        DR_HEAD + META + "spec: {host: db, exportTo: ['*', bar]}\n",
        "spec.exportTo",
        "cannot have both public (*) and non-public exportTo values",
    ),
    (
        "exportTo none",
        DR_HEAD + META + "spec: {host: db, exportTo: ['~']}\n",
        "spec.exportTo[0]",
        "exportTo ~ (none) is not allowed",
    ),
    (
        "workloadSelector exported elsewhere",
        DR_HEAD
        + META
        + "spec: {host: db, workloadSelector: {matchLabels: {app: a}}, exportTo: [bar]}\n",
        "spec.exportTo",
        "destination rule with workload selector cannot have exportTo beyond current namespace",
    ),
    (
        "unknown TLS field",
        DR_HEAD + META + "spec: {host: db, trafficPolicy: {tls: {mode: SIMPLE, sniHost: x}}}\n",
        "spec.trafficPolicy.tls.sniHost",
        "unknown field",
    ),
    (
        "null subset",
        DR_HEAD + META + "spec: {host: db, subsets: [null]}\n",
        "spec.subsets[0]",
        "subset may not be null",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "path", "fragment"),
    [pytest.param(manifest, path, fragment, id=name) for name, manifest, path, fragment in INVALID],
)
def test_invalid_policies_name_the_field(manifest: str, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(manifest)
    assert raised.value.path == path
    assert fragment in raised.value.problem
    assert f": {path}: " in str(raised.value)
    assert str(raised.value).startswith("document 1")


def test_error_names_the_document_and_object() -> None:
    text = AUTHN_FOO_STRICT + "---\n" + PA_HEAD + "metadata: {name: broken}\nspec: {mtls: {}}\n"
    text += "---\n" + PA_HEAD + "metadata: {name: third}\nspec: {mtls: {mode: 'no'}}\n"
    with pytest.raises(PolicyError) as raised:
        parse_policies(text)
    assert str(raised.value) == (
        "document 3 (PeerAuthentication 'third'): spec.mtls.mode: "
        "'no' is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
    )


def test_yaml_problems_are_policy_errors() -> None:
    with pytest.raises(PolicyError, match="found duplicate key 'mtls'"):
        parse_policy(PA_HEAD + META + "spec:\n  mtls: {mode: STRICT}\n  mtls: {mode: DISABLE}\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy("spec: [unclosed")
    with pytest.raises(PolicyError, match="not UTF-8"):
        parse_policy(b"\xff\xfe")
    with pytest.raises(PolicyError, match="expected a mapping"):
        parse_policy("- a\n- b\n")
    with pytest.raises(PolicyError, match="expected exactly one policy, found 2"):
        parse_policy(AUTHN_FOO_STRICT + "---" + AUTHN_MESH_STRICT)
    with pytest.raises(PolicyError, match="expected exactly one policy, found 0"):
        parse_policy("---\n---\n")


def test_namespace_argument_must_agree_like_kubectl_apply_n() -> None:
    (policy,) = pas(AUTHN_FOO_STRICT, namespace="foo")
    assert policy.namespace == "foo"
    with pytest.raises(PolicyError) as raised:
        parse_policy(AUTHN_FOO_STRICT, namespace="bar")
    assert raised.value.path == "metadata.namespace"
    assert "'foo' does not match the namespace it is applied to ('bar')" in str(raised.value)


def test_valid_tls_settings_that_istio_accepts() -> None:
    (rule,) = drs(
        DR_HEAD
        + META
        + """spec:
  host: mydbserver.prod.svc.cluster.local
  trafficPolicy:
    tls:
      mode: MUTUAL
      credentialName: client-credential
  subsets:
  - name: plain
    trafficPolicy:
      tls: {mode: SIMPLE, insecureSkipVerify: true, sni: db.example.com}
"""
    )
    assert rule.traffic_policy is not None
    assert rule.traffic_policy.tls == ClientTls(TlsMode.MUTUAL, credential_name="client-credential")
    assert rule.subsets[0].traffic_policy == TrafficPolicy(
        tls=ClientTls(TlsMode.SIMPLE, sni="db.example.com", insecure_skip_verify=True)
    )
