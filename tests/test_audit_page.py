"""The audit's HTML page in a real browser (Debian's headless Chromium, no network): the
sections issue 24 added (pod ports with the mesh probe by pod IP, accepted exceptions apart,
policies that cannot apply) and each heading once.

The audit runs on a real local mesh (`payments`: ledger with an excluded port 5432, a port
9100 no Service exposes, a PeerAuthentication keyed by the Service port 80); what it must find
is tests/test_audit_bypasses.py's, from Istio's sources cited there.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from browser import chromium, computed_styles
from local_helpers import needs_local_mesh

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
