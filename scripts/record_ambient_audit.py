"""Record what `meshconform audit` does and sees in ambient namespaces of the local mesh, as
data for the kube audit's fake API server (tests/test_kube_audit.py, the ambient tests).

Run as root from the repository (the local mesh needs network namespaces):

    .venv/bin/python scripts/record_ambient_audit.py tests/data/kube
    .venv/bin/python scripts/record_ambient_audit.py --waypoint tests/data/kube

The topology has two ambient namespaces, each with httpbin behind Service ``console`` (port
80 -> 8080) and tcp-echo behind Service ``keeper`` (port 9000): ``vault`` under a STRICT
PeerAuthentication, ``till`` without one (PERMISSIVE). The audit runs on the local mesh
exactly as ``meshconform audit --mesh-cluster=existing --require=STRICT`` runs on a cluster
(`run_audit` with the mesh probe by pod IP, the pods' ports from their spec), with every probe
the audit execs and every capture it takes recorded as they happened:

- ``audit-probe-ambient-<name>.<namespace>-<port>.pcap``: the capture of each Service port's
  mesh probe, taken at the ambient probe on port 15008 (its HBONE tunnel);
- ``audit-probe-ambient-pod-<workload>.<namespace>-<port>.pcap``: the capture of the sidecar
  probe's request by pod IP;
- ``audit-probe-ambient-exec.json``: per probe (``probe``, ``probe-naked``,
  ``probe-ambient``) and target (the URL, or ``telnet://host:port`` for a TCP probe), the exit
  status, stdout and stderr the probe printed; ``pods``: the pod addresses of the recording.

With ``--waypoint`` the same topology gives ``vault`` the namespace waypoint ``checkpoint``
(``istioctl waypoint apply -n vault --name checkpoint --enroll-namespace``) and binds to it an
AuthorizationPolicy allowing only ``vault``'s own accounts (`VAULT_ONLY`): the ambient probe's
requests to ``vault``'s Services go through the waypoint, which denies them. Its files are
prefixed ``audit-probe-waypoint-`` instead (the captures of vault's Service ports hold the
probe's HBONE to the waypoint's pod).

The local audit's verdicts are printed (not kept: the replay's expectations come from Istio's
documented behaviour and the recorded facts, tests/data/kube/README.md).

Each pcap ends with the local mesh's end-of-capture datagram (UDP to port 9). An answer's body
longer than `BODY_KEPT` bytes (httpbin's home page) is cut there, to keep the file small;
the head, curl's trace and its ``-w %{json}`` write-out are kept whole.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_meshconform.audit.engine import run_audit
from pytest_meshconform.audit.local import with_audit_probes
from pytest_meshconform.backends.local.backend import LocalMesh
from pytest_meshconform.backends.local.topology_file import parse_topology
from pytest_meshconform.evidence.curl import WRITE_OUT_MARKER
from pytest_meshconform.mesh import ExecResult, Workload

PREFIX = "audit-probe-ambient-"
WAYPOINT_PREFIX = "audit-probe-waypoint-"
BODY_KEPT = 256
TOPOLOGY = """\
namespaces:
"""
for _namespace in ("vault", "till"):
    TOPOLOGY += f"""\
  - name: {_namespace}
    dataplane: ambient
    workloads:
      - name: keeper
        kind: tcp-echo
        ports: [9000]
      - name: console
        kind: httpbin
    services:
      - name: console
        selector: {{app: console}}
        ports: [{{name: http, port: 80, targetPort: 8080}}]
      - name: keeper
        selector: {{app: keeper}}
        ports: [{{name: tcp-main, port: 9000}}]
"""
WAYPOINT_TOPOLOGY = TOPOLOGY.replace(
    "  - name: vault\n    dataplane: ambient\n",
    "  - name: vault\n    dataplane: ambient\n    waypoint: checkpoint\n",
)
# bound to vault's waypoint: vault's own accounts only (the audit's probes are not)
VAULT_ONLY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "vault-only", "namespace": "vault"},
    "spec": {
        "targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "checkpoint"}
        ],
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"namespaces": ["vault"]}}]}],
    },
}
VAULT_STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "vault"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def _target(argv: Sequence[str]) -> str | None:
    """The probe's target: curl's URL, or the TCP probe's ``telnet://`` argument; None for
    what is no probe (the capture's end marker)."""
    if argv[:1] == ["curl"]:
        return argv[-1]
    return next((a for a in argv if a.startswith("telnet://")), None)


def _cut(stdout: str) -> str:
    """curl's ``-i`` output with the body cut to `BODY_KEPT` bytes, the write-out kept."""
    answer, marker, write_out = stdout.partition(WRITE_OUT_MARKER)
    head, blank, body = answer.partition("\r\n\r\n")
    if not marker or not blank or len(body) <= BODY_KEPT:
        return stdout
    return head + blank + body[:BODY_KEPT] + marker + write_out


def record(out: Path, *, waypoint: bool = False) -> dict[str, Any]:
    """Run the audit on the local mesh, write the recordings into ``out``; returns the local
    audit's verdicts (observed or class, verdict, reason) per port. ``waypoint``: vault
    behind its waypoint, which denies the audit's probes (the module's doc)."""
    prefix = WAYPOINT_PREFIX if waypoint else PREFIX
    topology = WAYPOINT_TOPOLOGY if waypoint else TOPOLOGY
    mesh = LocalMesh(topology=with_audit_probes(parse_topology(topology)))
    execs: dict[str, dict[str, Any]] = {}
    run_exec = mesh.exec

    def exec_(workload: Workload, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        result = run_exec(workload, argv, timeout)
        target = _target(argv)
        if target is not None:
            execs.setdefault(workload.name, {})[target] = {
                "returncode": result.returncode,
                "stdout": _cut(result.stdout.decode()),
                "stderr": result.stderr.decode(),
            }
        return result

    mesh.exec = exec_  # type: ignore[method-assign]
    evidence = Path(tempfile.mkdtemp(prefix="meshconform-record-"))
    try:
        mesh.start()
        mesh.apply(VAULT_STRICT)
        if waypoint:
            mesh.apply(VAULT_ONLY)
        result = run_audit(
            mesh, require="STRICT", evidence_dir=evidence, mesh_by_pod_ip=True, read_sockets=False
        )
        pods = {w.key: mesh.pod_ip(w) for w in mesh.workloads()}
    finally:
        mesh.close()
    try:
        for pcap in sorted(evidence.iterdir()):
            shutil.copyfile(pcap, out / f"{prefix}{pcap.name}")
    finally:
        shutil.rmtree(evidence)
    data = {"execs": execs, "pods": pods}
    (out / f"{prefix}exec.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return {
        **{r.port.key: [r.observed, r.verdict, r.reason] for r in result.ports},
        **{r.port.key: [r.port_class, r.verdict, r.reason] for r in result.pod_ports},
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    with_waypoint = args[:1] == ["--waypoint"]
    args = args[1:] if with_waypoint else args
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit(f"usage: {sys.argv[0]} [--waypoint] OUTPUT_DIRECTORY")
    print(json.dumps(record(Path(args[0]), waypoint=with_waypoint), indent=1))
