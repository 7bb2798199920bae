"""The audit's HTML page in a real browser (Debian's headless Chromium, no network): the
sections issue 24 added (pod ports with the mesh probe by pod IP, accepted exceptions apart,
policies that cannot apply) and each heading once; and an ambient namespace's waypoint with the
AuthorizationPolicies bound to it, in the table, the record, Markdown and the page.

The audit runs on a real local mesh (`payments`: ledger with an excluded port 5432, a port
9100 no Service exposes, a PeerAuthentication keyed by the Service port 80); what it must find
is tests/test_audit_bypasses.py's, from Istio's sources cited there. The waypoint's policies
are those istiod binds to it (``ShouldAttachPolicy``, pilot/pkg/model/policyattachment.go: a
targetRefs to the Gateway, to the Service, or the GatewayClass ``istio-waypoint`` from the root
namespace; never a selector) and a targetRefs policy binding nothing carries istiod's reason
(``WaypointPolicyStatusCollection``, pilot/pkg/serviceregistry/ambient/policies.go).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
from browser import chromium, computed_styles
from local_helpers import needs_local_mesh, runs_made, traces_of

from pytest_meshconform.audit.cli import load_policy_files
from pytest_meshconform.audit.engine import AuditResult, run_audit
from pytest_meshconform.audit.local import with_audit_probes
from pytest_meshconform.audit.report import AUDIT_SCHEMA, format_table, write_report
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.topology_file import parse_topology
from pytest_meshconform.cli import main

TOPOLOGY = """\
namespaces:
  - name: payments
    dataplane: sidecar
    workloads:
      - name: ledger
        kind: httpbin
        ports: [8080, {port: 5432, serves: tcp-echo}, {port: 9100, serves: tcp-echo}]
        annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "5432"}
    services:
      - name: ledger
        selector: {app: ledger}
        ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp-db, port: 5432}]
"""

SERVICE_PORT_KEYED = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ledger, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    80: {mode: STRICT}
"""

# the shared renderer's badge colours (tests/test_evidence_output.py reads the same)
GREEN, RED = "rgb(26, 127, 55)", "rgb(207, 34, 46)"


class Page(HTMLParser):
    """The dumped DOM's headings (h2: sections, h3: entries), each entry's text, and the
    header's notes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.parts: list[list[str]] = []
        self.headings: list[tuple[str, str]] = []  # (h2 | h3, text)
        self.entries: list[str] = []  # each entry's text: its badge, title, facts
        self.notes: list[str] = []  # the header's notes
        self.resources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.resources += [found[k] for k in ("src", "href") if k in found]
        self.stack.append((tag, found))
        self.parts.append([])

    def handle_endtag(self, tag: str) -> None:
        name, attrs = self.stack.pop()
        text = " ".join(" ".join(self.parts.pop()).split())
        if self.parts:
            self.parts[-1].append(text)
        if name in ("h2", "h3"):
            self.headings.append((name, text))
        if name == "p" and attrs.get("class") == "note":
            self.notes.append(text)
        if name == "section" and "data-status" in attrs:
            self.entries.append(text)

    def handle_data(self, data: str) -> None:
        if self.parts:
            self.parts[-1].append(data)


@needs_local_mesh
def test_the_audit_page_shows_pod_ports_exceptions_and_policies_that_cannot_apply(
    tmp_path: Path,
) -> None:
    topology = tmp_path / "payments.yaml"
    topology.write_text(TOPOLOGY)
    policy = tmp_path / "ledger.yaml"
    policy.write_text(SERVICE_PORT_KEYED)
    accept = tmp_path / "exceptions.yaml"
    accept.write_text(
        "exceptions:\n"
        "  - {namespace: payments, workload: ledger, port: 5432, reason: 'replication, OPS-1'}\n"
    )
    page = tmp_path / "audit.html"
    code = main(
        [
            *("audit", "--mesh-topology", str(topology), "--policy", str(policy)),
            *("--accept", str(accept), "--report", str(page)),
        ]
    )
    assert code == 1  # 9100 is not accepted, and the policy cannot apply
    dom = Page()
    dom.feed(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert dom.resources == []  # the page opens with no network
    sections = [text for level, text in dom.headings if level == "h2"]
    assert sections == [
        "success Service ports",
        "failure Pod ports every port the audited pods listen on, probed by pod IP",
        f"success Accepted exceptions bypasses accepted by {accept}",
        "failure Policies that cannot apply in force, but Istio applies them to nothing: the"
        " audit fails",
    ]
    # each heading once: the Service ports' overview entry no longer repeats the section's
    assert sum("Service ports" in text for _, text in dom.headings) == 1
    assert ("h3", "success Expected vs observed") in dom.headings
    # the bypass no one accepted, failed, naming the fix; the mesh probe by pod IP beside it
    (around,) = [e for e in dom.entries if e.startswith("failed ledger.payments port 9100")]
    assert "around the mesh, sidecar" in around and "or list it in the exceptions file" in around
    assert "Mesh probe by pod IP" in around and "through PassthroughCluster" in around
    (accepted,) = [e for e in dom.entries if e.startswith("passed ledger.payments port 5432")]
    assert "Accepted exception replication, OPS-1 (line 2)" in accepted
    # the policy that cannot apply: a section of its own, the policy and Istio's rule
    (policy,) = [e for e in dom.entries if e.startswith("failed PeerAuthentication")]
    assert policy.startswith("failed PeerAuthentication payments/ledger portLevelMtls 80")
    assert "names a Service port" in policy and "istio/istio#49098" in policy
    assert not any("cannot apply" in note for note in dom.notes)  # not twice
    # the colours the browser drew: the accepted exception green, the unaccepted bypass red
    badges = computed_styles(tmp_path, page, "section .badge", ["background-color"])
    colours = {(b.text, b.style["background-color"]) for b in badges}
    assert ("passed", GREEN) in colours and ("failed", RED) in colours
    headings = computed_styles(tmp_path, page, "h2 .badge", ["background-color"])
    assert [(b.text, b.style["background-color"]) for b in headings] == [
        ("success", GREEN),  # Service ports: each passed, whatever the pod ports did
        ("failure", RED),
        ("success", GREEN),
        ("failure", RED),
    ]


# an ambient namespace with its namespace waypoint (istioctl waypoint apply --enroll-namespace
# --name checkpoint): console (httpbin) and keeper (tcp-echo) behind it
WAYPOINT_TOPOLOGY = """\
namespaces:
  - name: vault
    dataplane: ambient
    waypoint: checkpoint
    workloads:
      - name: keeper
        kind: tcp-echo
        ports: [9000]
      - name: console
        kind: httpbin
    services:
      - name: console
        selector: {app: console}
        ports: [{name: http, port: 80, targetPort: 8080}]
      - name: keeper
        selector: {app: keeper}
        ports: [{name: tcp-main, port: 9000}]
"""


def _bound(namespace: str, name: str, kind: str, target: str, rules: str = "[{}]") -> str:
    group = '""' if kind == "Service" else "gateway.networking.k8s.io"
    action = "ALLOW" if rules == "[{}]" else "DENY"
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  targetRefs: [{{group: {group}, kind: {kind}, name: {target}}}]\n"
        f"  action: {action}\n  rules: {rules}\n"
    )


WAYPOINT_POLICIES = "---\n".join(
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: vault}\nspec:\n  mtls: {mode: STRICT}\n",
        _bound("vault", "through-checkpoint", "Gateway", "checkpoint"),
        _bound(
            "vault",
            "console-no-delete",
            "Service",
            "console",
            "[{to: [{operation: {methods: [DELETE]}}]}]",
        ),
        _bound("istio-system", "every-waypoint", "GatewayClass", "istio-waypoint"),
        _bound("vault", "archive-reads", "Service", "archive"),
        _bound("vault", "class-outside-root", "GatewayClass", "istio-waypoint"),
        # a selector policy: ztunnel's (L4) at keeper, never the waypoint's
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: keeper-l4, namespace: vault}\n"
        "spec:\n  selector: {matchLabels: {app: keeper}}\n  rules: [{}]\n",
    )
)
EVERY = "istio-system/every-waypoint: ALLOW, targetRefs GatewayClass istio-waypoint"
THROUGH = "vault/through-checkpoint: ALLOW, targetRefs Gateway vault/checkpoint"
NO_DELETE = "vault/console-no-delete: DENY, targetRefs Service vault/console"
# the ALLOW policies' empty rules match the audit's GET, the DENY on DELETE does not
PROBE_OK = "the audit's mesh probe: allowed"
IGNORED = "(sidecars and ztunnel ignore targetRefs policies)"
CANNOT_APPLY = [
    "AuthorizationPolicy vault/archive-reads binds to no waypoint: Service vault/archive was not"
    f" found {IGNORED}",
    "AuthorizationPolicy vault/class-outside-root binds to no waypoint: AuthorizationPolicy must"
    f" be in the root namespace `istio-system` when referencing a GatewayClass {IGNORED}",
]


def _waypoint_audit(tmp_path: Path) -> AuditResult:
    """The audit of WAYPOINT_TOPOLOGY under WAYPOINT_POLICIES on a real local mesh, as
    ``meshconform audit --mesh-topology --policy`` runs it."""
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(WAYPOINT_POLICIES)
    mesh = LocalMesh(topology=with_audit_probes(parse_topology(WAYPOINT_TOPOLOGY)))
    with runs_made() as run_ids:
        try:
            mesh.start()
            for policy in load_policy_files([policy_file]):
                mesh.apply(policy.to_manifest())
            result = run_audit(mesh, read_sockets=True, mesh_by_pod_ip=True)
        finally:
            mesh.close()
    left = {run_id: traces_of(run_id) for run_id in run_ids}
    assert not any(left.values()), f"the audit left these behind: {left}"
    return result


@needs_local_mesh
def test_a_waypoints_policies_are_listed_in_every_format(tmp_path: Path) -> None:
    """Each Service port behind the waypoint lists the policies bound to it for that Service:
    the Gateway's and the GatewayClass's for both, the Service's for console only, the selector
    policy for neither; the targetRefs policies that bind nothing are policies that cannot
    apply. The same in the table, the record (per the schema), Markdown and the page."""
    result = _waypoint_audit(tmp_path)
    assert [(r.port.key, r.verdict) for r in result.ports] == [
        ("console.vault:80", "pass"),
        ("keeper.vault:9000", "pass"),
    ], [r.reason for r in result.ports]
    assert list(result.inapplicable) == CANNOT_APPLY
    # the table: a line per Service port behind a waypoint, then the policies that cannot apply
    table = format_table(result)
    assert [line for line in table if line.startswith("waypoint: ")] == [
        "waypoint: console.vault:80 through vault/checkpoint: AuthorizationPolicy"
        f" {NO_DELETE}; AuthorizationPolicy {EVERY}; AuthorizationPolicy {THROUGH}; {PROBE_OK}",
        f"waypoint: keeper.vault:9000 through vault/checkpoint: AuthorizationPolicy {EVERY};"
        f" AuthorizationPolicy {THROUGH}; {PROBE_OK}",
    ]
    assert [line for line in table if line.startswith("policy that cannot apply: ")] == [
        f"policy that cannot apply: {line}" for line in CANNOT_APPLY
    ]
    # the record
    record = tmp_path / "audit.json"
    write_report(result, record)
    data = json.loads(record.read_text())
    jsonschema.validate(data, json.loads(AUDIT_SCHEMA.read_text()))
    waypoints = {f"{p['service']}:{p['port']}": p["waypoint"] for p in data["ports"]}
    assert {key: w["name"] for key, w in waypoints.items()} == {
        "console:80": "vault/checkpoint",
        "keeper:9000": "vault/checkpoint",
    }
    assert [p["name"] for p in waypoints["console:80"]["policies"]] == [
        "vault/console-no-delete",
        "istio-system/every-waypoint",
        "vault/through-checkpoint",
    ]
    assert waypoints["keeper:9000"]["policies"] == [
        {
            "name": "istio-system/every-waypoint",
            "action": "ALLOW",
            "targetRefs": ["GatewayClass istio-waypoint"],
        },
        {
            "name": "vault/through-checkpoint",
            "action": "ALLOW",
            "targetRefs": ["Gateway vault/checkpoint"],
        },
    ]
    assert data["inapplicablePolicies"] == CANNOT_APPLY
    # Markdown
    markdown = tmp_path / "audit.md"
    write_report(result, markdown)
    text = markdown.read_text()
    for line in (EVERY, THROUGH, NO_DELETE, "vault/checkpoint", "Policies that cannot apply"):
        assert line in text, line
    # the page, in the browser
    page = tmp_path / "audit.html"
    write_report(result, page)
    dom = Page()
    dom.feed(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert dom.resources == []
    (console,) = [e for e in dom.entries if e.startswith("passed console.vault:80")]
    assert f"Waypoint vault/checkpoint AuthorizationPolicy {NO_DELETE}" in console, console
    assert EVERY in console and THROUGH in console and PROBE_OK in console
    (keeper,) = [e for e in dom.entries if e.startswith("passed keeper.vault:9000")]
    assert EVERY in keeper and THROUGH in keeper and NO_DELETE not in keeper
    assert "keeper-l4" not in console + keeper
    sections = [text for level, text in dom.headings if level == "h2"]
    assert sections[-1] == (
        "failure Policies that cannot apply in force, but Istio applies them to nothing: the"
        " audit fails"
    )
    cannot = [e for e in dom.entries if e.startswith("failed AuthorizationPolicy")]
    assert [e.split(" binds")[0] for e in cannot] == [
        "failed AuthorizationPolicy vault/archive-reads",
        "failed AuthorizationPolicy vault/class-outside-root",
    ]
    assert "Service vault/archive was not found" in cannot[0]
