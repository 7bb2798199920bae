"""`meshconform audit` keeps the mode and authorization apart (issue 19): on the payments layout
(`examples/payments/topology.yaml`: ledger's HTTP Service port 80 -> 8080 and TCP port 5432
served by tcp-echo), with and without an AuthorizationPolicy, and with STRICT.

Where the expected values come from:

- Istio's authorization tasks (istio.io "Authorization for HTTP traffic", "Authorization for
  TCP traffic"): an ALLOW policy allows only the requests its rules match; a request it does
  not match gets ``403`` with body ``RBAC: access denied`` on HTTP, and on TCP the connection
  is closed without an answer ("connection rejected"). ``source.principals`` match the peer's
  mTLS identity ``<trust domain>/ns/<namespace>/sa/<service account>``, and a plaintext request
  has none, so it never matches (the AuthorizationPolicy reference: principals "require mTLS
  enabled"). ``source.namespaces`` matches the peer identity's namespace.
- The authn task: STRICT resets plaintext (curl exit 56) before any response.
- Envoy's RBAC filter: a DENY match denies, an ALLOW filter denies what no policy matches, and
  istiod's ``rbacPolicyMatchNever`` (an ALLOW policy without rules) matches nothing.
- Istio's tcp-echo sample answers ``hello <line>``; httpbin (an HTTP server) answers nothing to
  a bare line and keeps the connection open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from local_helpers import needs_local_mesh, runs_made, traces_of

from pytest_meshconform.audit.discovery import discover_service_ports
from pytest_meshconform.audit.local import with_audit_probes
from pytest_meshconform.audit.report import AUDIT_SCHEMA
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.topology_file import load_topology, parse_topology
from pytest_meshconform.cli import main
from pytest_meshconform.exit_status import ExitStatus
from pytest_meshconform.istio.api import parse_policies
from pytest_meshconform.istio.authorization import authorization_for
from pytest_meshconform.istio.rbac import RbacRequest, rbac_verdict
from pytest_meshconform.mesh import Workload

PAYMENTS = Path(__file__).parents[1] / "examples" / "payments" / "topology.yaml"
POLICIES = PAYMENTS.parent / "policies"
LEDGER_WEB_ONLY = (POLICIES / "ledger-web-only.yaml").read_text()
LEDGER_AUDIT_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ledger-audit, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  action: ALLOW
  rules:
    - from:
        - source: {namespaces: ["meshconform-audit"]}
"""
LEDGER_FROM_ELSEWHERE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ledger-elsewhere, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  action: ALLOW
  rules:
    - from:
        - source: {ipBlocks: ["192.0.2.0/24"]}
"""
PAYMENTS_STRICT = (POLICIES / "payments-strict.yaml").read_text()
LEDGER = Workload(
    name="ledger",
    namespace="payments",
    app="ledger",
    service_account="ledger",
    has_sidecar=True,
    labels={"app": "ledger"},
)
WEB = "spiffe://cluster.local/ns/checkout/sa/checkout-web"
REFUNDS = "spiffe://cluster.local/ns/checkout/sa/checkout-refunds"
HTTP_GET = {":authority": "ledger.payments:80", ":method": "GET", ":path": "/"}


def _authorization(text: str) -> Any:
    return authorization_for(LEDGER, parse_policies(text))


@pytest.mark.parametrize(
    ("request_", "verdict"),
    [
        (RbacRequest(port=8080, principal=WEB, headers=HTTP_GET), "allowed"),
        (RbacRequest(port=8080, principal=REFUNDS, headers=HTTP_GET), "denied"),
        (RbacRequest(port=8080, principal=None, headers=HTTP_GET), "denied"),  # plaintext
        (RbacRequest(port=5432, principal=WEB), "allowed"),  # TCP: the network filter
        (RbacRequest(port=5432, principal=REFUNDS), "denied"),
        (RbacRequest(port=5432, principal=None), "denied"),
    ],
)
def test_an_allow_policy_on_principals(request_: RbacRequest, verdict: str) -> None:
    assert rbac_verdict(_authorization(LEDGER_WEB_ONLY), request_) == verdict


def _ledger_policy(spec: str, name: str = "p", annotations: str = "{}") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: payments, annotations: {annotations}}}\n"
        f"spec: {{selector: {{matchLabels: {{app: ledger}}}}, {spec}}}\n"
    )


def test_deny_rules_methods_ports_and_what_cannot_be_known() -> None:
    deny = _authorization(
        _ledger_policy(
            "action: DENY, rules: [{to: [{operation: {methods: [GET], ports: ['8080']}}]}]"
        )
    )
    assert rbac_verdict(deny, RbacRequest(port=8080, principal=WEB, headers=HTTP_GET)) == "denied"
    post = {**HTTP_GET, ":method": "POST"}
    assert rbac_verdict(deny, RbacRequest(port=8080, principal=WEB, headers=post)) == "allowed"
    # on TCP the HTTP-only methods are dropped from a DENY rule: its port still denies
    assert rbac_verdict(deny, RbacRequest(port=8080, principal=WEB)) == "denied"
    assert rbac_verdict(deny, RbacRequest(port=5432, principal=WEB)) == "allowed"
    # an ALLOW policy without rules allows nothing
    nothing = _authorization(_ledger_policy("action: ALLOW"))
    assert rbac_verdict(nothing, RbacRequest(port=8080, principal=WEB, headers=HTTP_GET)) == (
        "denied"
    )
    # a dry-run policy enforces nothing
    web_only = (
        "action: ALLOW, rules: [{from: [{source:"
        " {principals: [cluster.local/ns/checkout/sa/checkout-web]}}]}]"
    )
    dry = _authorization(_ledger_policy(web_only, annotations='{"istio.io/dry-run": "true"}'))
    assert rbac_verdict(dry, RbacRequest(port=8080, principal=REFUNDS, headers=HTTP_GET)) == (
        "allowed"
    )
    # ipBlocks: the probe's address is not known to the prediction
    blocks = _authorization(
        _ledger_policy("action: ALLOW, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]")
    )
    assert rbac_verdict(blocks, RbacRequest(port=8080, principal=WEB, headers=HTTP_GET)) == (
        "unknown"
    )
    assert (
        rbac_verdict(
            blocks, RbacRequest(port=8080, principal=WEB, source_ip="10.1.2.3", headers=HTTP_GET)
        )
        == "allowed"
    )


def test_the_prediction_keeps_mode_and_authorization_apart() -> None:
    mesh = LocalMesh(topology=with_audit_probes(load_topology(PAYMENTS)))
    policies = [*parse_policies(LEDGER_AUDIT_ONLY), *parse_policies(PAYMENTS_STRICT)]
    ports = {p.key: p for p in discover_service_ports(mesh, policies)}
    assert sorted(ports) == ["ledger.payments:5432", "ledger.payments:80"]
    for port in ports.values():
        # the audit's probe is in meshconform-audit: allowed; plaintext never gets that far
        assert (port.predicted, port.expected, port.authz_mesh, port.authz_plaintext) == (
            "STRICT",
            "STRICT",
            "allowed",
            "not reached",
        )
    permissive = {p.key: p for p in discover_service_ports(mesh, parse_policies(LEDGER_AUDIT_ONLY))}
    assert [(p.expected, p.expected_authz) for p in permissive.values()] == [
        ("PERMISSIVE", "mesh allowed, plaintext denied"),
        ("PERMISSIVE", "mesh allowed, plaintext denied"),
    ]


def test_the_help_names_every_policy_kind_the_audit_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--policy FILE PeerAuthentication, DestinationRule, AuthorizationPolicy YAML" in (
        help_text
    )


def _audit(tmp_path: Path, topology: Path, *args: str) -> tuple[int, dict[str, Any]]:
    report = tmp_path / "audit.json"
    with runs_made() as run_ids:
        code = main(["audit", f"--mesh-topology={topology}", *args, "--report", str(report)])
    data = json.loads(report.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    return code, data


def _row(port: dict[str, Any]) -> tuple[Any, ...]:
    """A port's verdict as asserted: the mode (expected, observed), each probe's outcome and
    authorization (observed), and the verdict."""
    evidence = port["evidence"]
    return (
        port["expected"],
        port["observed"],
        evidence["mesh"]["outcome"],
        port["authorization"]["observed"]["mesh"],
        evidence["plaintext"]["outcome"],
        port["authorization"]["observed"]["plaintext"],
        port["verdict"],
    )


RBAC = "HTTP 403 RBAC: access denied"
POLICY = "AuthorizationPolicy payments/ledger-web-only"
CASES = {
    "no policy": (
        [],
        0,
        {
            80: ("PERMISSIVE", "PERMISSIVE", "HTTP 200", "allowed", "HTTP 200", "allowed", "pass"),
            5432: (
                "PERMISSIVE",
                "PERMISSIVE",
                "answered",
                "allowed",
                "answered",
                "allowed",
                "pass",
            ),
        },
        {
            80: "mTLS and plaintext, as predicted",
            5432: "mTLS and plaintext, as predicted",
        },
    ),
    "an AuthorizationPolicy allowing checkout-web": (
        [LEDGER_WEB_ONLY],
        0,
        {
            80: ("PERMISSIVE", "PERMISSIVE", RBAC, "denied", RBAC, "denied", "pass"),
            5432: ("PERMISSIVE", "PERMISSIVE", "closed", "denied", "closed", "denied", "pass"),
        },
        {
            80: f"mTLS and plaintext, as predicted; authorization denied both probes ({RBAC};"
            f" {POLICY}), as the AuthorizationPolicies predict",
            5432: "mTLS and plaintext, as predicted; authorization denied both probes (closed"
            f" without a byte; {POLICY}), as the AuthorizationPolicies predict",
        },
    ),
    "the same policy and STRICT, required STRICT": (
        [LEDGER_WEB_ONLY, PAYMENTS_STRICT, "--require=STRICT"],
        0,
        {
            80: ("STRICT", "STRICT", RBAC, "denied", "reset", "not reached", "pass"),
            5432: ("STRICT", "STRICT", "closed", "denied", "reset", "not reached", "pass"),
        },
        {
            80: f"mTLS only, as predicted; authorization denied the mesh probe ({RBAC};"
            f" {POLICY}), as the AuthorizationPolicies predict",
            5432: "mTLS only, as predicted; authorization denied the mesh probe (closed without"
            f" a byte; {POLICY}), as the AuthorizationPolicies predict",
        },
    ),
    "an AuthorizationPolicy allowing the audit's namespace, required STRICT": (
        [LEDGER_AUDIT_ONLY, "--require=STRICT"],
        1,
        {
            80: ("PERMISSIVE", "PERMISSIVE", "HTTP 200", "allowed", RBAC, "denied", "fail"),
            5432: ("PERMISSIVE", "PERMISSIVE", "answered", "allowed", "closed", "denied", "fail"),
        },
        {
            80: "accepts plaintext; required STRICT; authorization denied the plaintext probe"
            f" ({RBAC}; AuthorizationPolicy payments/ledger-audit), as the AuthorizationPolicies"
            " predict",
            5432: "accepts plaintext; required STRICT; authorization denied the plaintext probe"
            " (closed without a byte; AuthorizationPolicy payments/ledger-audit), as the"
            " AuthorizationPolicies predict",
        },
    ),
    "an AuthorizationPolicy on addresses the audit cannot predict": (
        [LEDGER_FROM_ELSEWHERE],
        0,
        {
            80: ("PERMISSIVE", "PERMISSIVE", RBAC, "denied", RBAC, "denied", "pass"),
            5432: ("PERMISSIVE", "PERMISSIVE", "closed", "denied", "closed", "denied", "pass"),
        },
        {
            80: f"mTLS and plaintext, as predicted; authorization denied both probes ({RBAC};"
            " AuthorizationPolicy payments/ledger-elsewhere), which the audit cannot predict (a"
            " rule on the probe's address or headers)",
            5432: "mTLS and plaintext, as predicted; authorization denied both probes (closed"
            " without a byte; AuthorizationPolicy payments/ledger-elsewhere), which the audit"
            " cannot predict (a rule on the probe's address or headers)",
        },
    ),
}


@needs_local_mesh
@pytest.mark.parametrize("case", list(CASES))
def test_the_payments_audit_judges_mode_and_authorization_apart(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never CLOSED for a denial: a probe authorization denied got through the mode."""
    policies, exit_code, rows, reasons = CASES[case]
    args: list[str] = []
    for index, item in enumerate(policies):
        if item.startswith("--"):
            args.append(item)
            continue
        path = tmp_path / f"policy-{index}.yaml"
        path.write_text(item)
        args += ["--policy", str(path)]
    code, data = _audit(tmp_path, PAYMENTS, *args)
    out = capsys.readouterr().out
    assert code == exit_code, out
    ports = {p["port"]: p for p in data["ports"]}
    assert {number: _row(port) for number, port in ports.items()} == rows
    assert {number: port["reason"] for number, port in ports.items()} == reasons
    for port in ports.values():
        assert port["authorization"]["conforms"] is True
        assert port["evidence"]["wire"]["serverHello"] is True  # the mesh probe's mTLS taken
    if case == "no policy":
        assert ports[5432]["evidence"]["plaintext"]["detail"] == (
            "hello meshconform-audit; the probe closed the connection once the echo came back"
        )
    # the terminal table: the mode, then what authorization did to the mesh/plaintext probes
    row = next(line for line in out.splitlines() if line.startswith("ledger.payments:5432"))
    authz = "{}/{}".format(*(rows[5432][i].replace("not reached", "-") for i in (3, 5)))
    assert row.split()[1:7] == [
        "TCP",
        "yes",
        rows[5432][0],
        rows[5432][1],
        authz,
        rows[5432][6].upper(),
    ]


SILENT_TCP = PAYMENTS.read_text().replace("{port: 5432, serves: tcp-echo}", "5432")


@needs_local_mesh
def test_a_tcp_port_whose_app_stays_silent_is_judged_from_the_wire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpbin serving the TCP port answers nothing to a line: the connection stays open
    (``silent``), which a STRICT sidecar would have reset, so plaintext got through; the
    mesh probe's mTLS got a ServerHello. Before issue 19 this was INCONCLUSIVE."""
    topology = tmp_path / "silent.yaml"
    topology.write_text(SILENT_TCP)
    assert "serves: tcp-echo" not in SILENT_TCP
    code, data = _audit(tmp_path, topology)
    assert code == 0, capsys.readouterr().out
    port = next(p for p in data["ports"] if p["port"] == 5432)
    assert _row(port) == (
        "PERMISSIVE",
        "PERMISSIVE",
        "silent",
        "allowed",
        "silent",
        "allowed",
        "pass",
    )
    strict = tmp_path / "strict.yaml"
    strict.write_text(PAYMENTS_STRICT)
    code, data = _audit(tmp_path, topology, "--policy", str(strict), "--require=STRICT")
    assert code == 0, capsys.readouterr().out
    port = next(p for p in data["ports"] if p["port"] == 5432)
    assert _row(port) == ("STRICT", "STRICT", "silent", "allowed", "reset", "not reached", "pass")


def test_the_topology_file_is_read_as_written() -> None:
    """The cases above rely on the example's ports as the issue describes them."""
    topology = parse_topology(PAYMENTS.read_text(), str(PAYMENTS))
    services = sorted(
        (e.service.name, e.service.namespace, e.service.port, e.service.target_port)
        for e in topology.services
    )
    assert services == [("ledger", "payments", 80, 8080), ("ledger", "payments", 5432, 5432)]
    assert yaml.safe_load(PAYMENTS.read_text())["namespaces"][0]["name"] == "payments"


@needs_local_mesh
def test_an_authorization_policy_that_selects_nothing_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the selector would predict and observe nothing of the policy: an error
    naming the policy and why, before any probe."""
    policy = tmp_path / "typo.yaml"
    policy.write_text(LEDGER_WEB_ONLY.replace("app: ledger", "app: ledgr"))
    with runs_made() as run_ids:
        code = main(["audit", f"--mesh-topology={PAYMENTS}", "--policy", str(policy)])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE, err
    assert "--policy AuthorizationPolicy payments/ledger-web-only applies to no workload" in err
    assert "ledgr" in err
    assert not any(traces_of(run_id) for run_id in run_ids)
