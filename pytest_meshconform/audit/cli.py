"""``meshconform audit``: the command line around `audit.engine.run_audit`.

Exit status (README, "Exit statuses"): 0 every audited port conforms to Istio's prediction (and
meets ``--require``), every bypass around the mesh is accepted by an unexpired entry of
``--accept FILE`` and no policy in force is one that cannot apply; 1 otherwise (or a port could
not be probed); 2 interrupted (the mesh or the namespace torn down first); 4 a usage or input
error (the message names the option, file or field). On the local mesh the audit brings up the
topology (``--mesh-topology``, default the built-in one) with its probes, applies ``--policy``
files, audits, and tears everything down.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pytest_meshconform.exit_status import ExitStatus
from pytest_meshconform.istio.api import POLICY_KINDS
from pytest_meshconform.settings import (
    CLUSTER_KINDS,
    HUMAN_REPORT_SUFFIXES,
    REPORT_SUFFIXES,
    report_format_of,
)

if TYPE_CHECKING:
    from pytest_meshconform.audit.engine import AuditResult
    from pytest_meshconform.audit.exceptions import AcceptedExceptions
    from pytest_meshconform.istio.api import Policy

__all__ = [
    "EXIT_NOT_CONFORMING",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_parser",
    "evidence_dir_of",
    "load_policy_files",
    "run",
]

EXIT_OK: Final = ExitStatus.OK
EXIT_NOT_CONFORMING: Final = ExitStatus.FAILED
EXIT_USAGE: Final = ExitStatus.USAGE


class _Usage(Exception):
    """A usage error: the message says what to fix."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``meshconform audit`` on the console script's sub-commands."""
    audit = commands.add_parser(
        "audit",
        help="prove every Service port's mTLS from the wire; exit 1 if one does not conform",
        description="For every Service port of the mesh's namespaces: the mode Istio's policies"
        " predict, a plaintext attempt from a probe without sidecar and a mesh request from a"
        " probe with one (its TLS checked on the wire), and a verdict that keeps apart the mode"
        " observed (what got through) and what authorization did to each probe (an"
        " AuthorizationPolicy's 403 or close is a denial, never a closed port). Exit status: 0"
        " every port conforms (and meets --require), 1 one does not, 2 interrupted, 4 a usage"
        " or input error.",
    )
    audit.add_argument(
        "--mesh-cluster",
        default="local",
        choices=CLUSTER_KINDS,
        help="the mesh to audit (default local: the local mesh with --mesh-topology)",
    )
    audit.add_argument(
        "--mesh-kube-context", metavar="NAME", help="kube context with --mesh-cluster=existing"
    )
    audit.add_argument(
        "--mesh-istio-namespace",
        default="istio-system",
        metavar="NS",
        help="where istiod runs, with --mesh-cluster=existing (default istio-system)",
    )
    audit.add_argument(
        "--mesh-revision", metavar="REV", help="the Istio revision the probes are injected by"
    )
    audit.add_argument(
        "--mesh-sleep-image",
        metavar="IMAGE",
        help="the probes' image (curl and a shell) with --mesh-cluster=existing",
    )
    audit.add_argument(
        "--mesh-capture-image",
        metavar="IMAGE",
        help="an image with bash and tcpdump for the capture (default: the proxy image)",
    )
    audit.add_argument(
        "--mesh-topology",
        type=Path,
        metavar="PATH",
        help="the local mesh's topology file (docs/topology.md); default the built-in one",
    )
    audit.add_argument(
        "--policy",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help=f"{', '.join(POLICY_KINDS)} YAML applied before the audit (local mesh only;"
        " repeatable): the modes and what authorization does to the probes are predicted"
        " from them",
    )
    audit.add_argument(
        "--require",
        choices=("STRICT", "PERMISSIVE"),
        help="every port must meet this: STRICT (mTLS only) or PERMISSIVE (mTLS accepted);"
        " workloads without a sidecar fail it unless excluded",
    )
    audit.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="audit only this namespace (repeatable; default all)",
    )
    audit.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        metavar="NS",
        help="leave this namespace out (repeatable)",
    )
    audit.add_argument(
        "--accept",
        type=Path,
        metavar="FILE",
        help="the accepted exceptions (YAML: namespace, workload, port, reason, optional"
        " expires): a bypass (a port excluded from interception, or one no Service exposes"
        " that takes plaintext by pod IP) passes only when an unexpired entry accepts it",
    )
    audit.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help=f"write the audit report ({', '.join(REPORT_SUFFIXES)}:"
        " schema pytest_meshconform/audit/schema.json;"
        f" {', '.join(HUMAN_REPORT_SUFFIXES)}: a page or Markdown for people)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the audit the parsed arguments describe; returns the exit status."""
    from pytest_meshconform import signals

    owner = signals.acquire()  # SIGTERM/SIGHUP tear the mesh / namespace down like Ctrl-C
    try:
        return _run(args)
    except _Usage as exc:
        print(f"meshconform audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signals.release(owner)


def _progress(line: str) -> None:
    print(f"meshconform audit: {line}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if (
        args.report is not None
        and report_format_of(args.report) is None
        and args.report.suffix.lower() not in HUMAN_REPORT_SUFFIXES
    ):
        accepted = ", ".join((*REPORT_SUFFIXES, *HUMAN_REPORT_SUFFIXES))
        raise _Usage(f"--report {args.report}: accepted suffixes: {accepted}")
    args.exceptions = _load_exceptions(args.accept)
    if args.report is not None:  # before any mesh or namespace is brought up
        from pytest_meshconform.outputs import (
            OutputPathError,
            check_output_directory,
            check_output_file,
        )

        try:
            check_output_file("--report", args.report)
            check_output_directory("--report's evidence", evidence_dir_of(args.report))
        except OutputPathError as exc:
            raise _Usage(str(exc)) from None
    overlap = sorted(set(args.namespace) & set(args.exclude_namespace))
    if overlap:
        raise _Usage(f"--namespace and --exclude-namespace both name {', '.join(overlap)}")
    if args.mesh_cluster == "local":
        if args.mesh_kube_context:
            raise _Usage("--mesh-kube-context names a cluster: add --mesh-cluster=existing")
        return _run_local(args)
    if args.mesh_topology is not None:
        raise _Usage("--mesh-topology describes the local mesh; drop it with a cluster")
    if args.policy:
        raise _Usage(
            "--policy applies policies to the local mesh only: on a cluster the audit never"
            " changes your resources"
        )
    if args.mesh_cluster == "kind":
        raise _Usage(
            "--mesh-cluster=kind: the audit reads a cluster you run; use"
            " --mesh-cluster=existing --mesh-kube-context=NAME (or the local mesh)"
        )
    if not args.mesh_kube_context:
        raise _Usage(
            "--mesh-cluster=existing needs --mesh-kube-context=NAME ('current' for the"
            " kubeconfig's current context)"
        )
    return _run_existing(args)


def _load_exceptions(path: Path | None) -> AcceptedExceptions | None:
    from pytest_meshconform.audit.exceptions import ExceptionsFileError, load_exceptions

    if path is None:
        return None
    try:
        return load_exceptions(path)
    except ExceptionsFileError as exc:
        raise _Usage(f"--accept {exc}") from None


def _finish(args: argparse.Namespace, result: AuditResult) -> int:
    """Print the table, write the report, and the exit status."""
    from pytest_meshconform.audit.report import format_table, write_report

    for line in format_table(result):
        print(line)
    if args.report is not None:
        write_report(result, args.report)
        print(f"report: {args.report}")
    if not result.ports:
        print("meshconform audit: no Service port to audit", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if result.passed else EXIT_NOT_CONFORMING


def _check_namespaces(args: argparse.Namespace, present: Sequence[str], where: str) -> None:
    for option, names in (
        ("--namespace", args.namespace),
        ("--exclude-namespace", args.exclude_namespace),
    ):
        for name in names:
            if name not in present:
                raise _Usage(
                    f"{option} {name}: no such namespace in the {where} (namespaces:"
                    f" {', '.join(sorted(present)) or 'none'})"
                )


def _evidence_dir(args: argparse.Namespace) -> Path | None:
    return None if args.report is None else evidence_dir_of(args.report)


def _run_existing(args: argparse.Namespace) -> int:
    import dataclasses
    import importlib.metadata
    import secrets
    import shutil
    import tempfile

    from pytest_meshconform.backends.kube.checkup import kubernetes_client_problem

    try:
        client_version: str | None = importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        client_version = None
    problem = kubernetes_client_problem(client_version)
    if problem is not None:  # captures and config_dump reads would stall (issue 22)
        raise _Usage(problem)

    from pytest_meshconform.audit.engine import run_audit
    from pytest_meshconform.audit.kube import KubeAuditMesh
    from pytest_meshconform.backends.kube.client import KubeApi
    from pytest_meshconform.backends.kube.kind import resolve_context
    from pytest_meshconform.backends.kube.options import KubeOptions
    from pytest_meshconform.mesh import MeshError, MeshUnavailable

    options = KubeOptions(istio_namespace=args.mesh_istio_namespace, revision=args.mesh_revision)
    if args.mesh_sleep_image:
        options = dataclasses.replace(options, sleep_image=args.mesh_sleep_image)
    if args.mesh_capture_image:
        options = dataclasses.replace(options, capture_image=args.mesh_capture_image)
    try:
        context = resolve_context(args.mesh_kube_context)
    except MeshUnavailable as exc:
        raise _Usage(str(exc)) from None
    run_id = secrets.token_hex(3)
    run_dir = Path(tempfile.mkdtemp(prefix=f"meshconform-audit-{run_id}-"))
    try:
        api = KubeApi.connect(None, context.name, discovery_cache=run_dir / "discovery.json")
        mesh = KubeAuditMesh(
            api, options=options, progress=_progress, run_dir=run_dir, run_id=run_id
        )
        _progress(
            f"context {context.name}: the audit only reads your resources; it creates namespace"
            f" {mesh.audit_namespace} (two probe pods) and deletes it at the end"
        )
        try:
            mesh.start()
            _check_namespaces(args, mesh.audited_namespaces, "cluster")
            result = run_audit(
                mesh,
                require=args.require,
                namespaces=args.namespace,
                exclude_namespaces=args.exclude_namespace,
                progress=_progress,
                evidence_dir=_evidence_dir(args),
                mesh_by_pod_ip=True,  # its sidecar probe exists there too, and its capture
                exceptions=args.exceptions,
            )
        finally:
            mesh.close()
    except MeshUnavailable as exc:
        raise _Usage(str(exc)) from None
    except MeshError as exc:
        print(f"meshconform audit: {exc}", file=sys.stderr)
        return EXIT_NOT_CONFORMING
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return _finish(args, result)


def _run_local(args: argparse.Namespace) -> int:
    from pytest_meshconform.audit.engine import run_audit
    from pytest_meshconform.audit.local import with_audit_probes
    from pytest_meshconform.audit.probes import AUDIT_NAMESPACE
    from pytest_meshconform.backends.local.backend import LocalMesh
    from pytest_meshconform.backends.local.topology_file import (
        BUILTIN_TOPOLOGY,
        TopologyError,
        load_topology,
    )
    from pytest_meshconform.istio.api import PolicyError
    from pytest_meshconform.istio.selection import unmatched_reason
    from pytest_meshconform.mesh import MeshError, MeshUnavailable

    try:
        topology = with_audit_probes(load_topology(args.mesh_topology or BUILTIN_TOPOLOGY))
    except TopologyError as exc:
        raise _Usage(f"--mesh-topology: {exc}") from None
    present = {p.workload.namespace for p in topology.pods} - {AUDIT_NAMESPACE}
    _check_namespaces(args, sorted(present), "mesh")
    try:
        policies = load_policy_files(args.policy)
    except PolicyError as exc:
        raise _Usage(f"--policy {exc}") from None
    if not any(
        (not args.namespace or e.service.namespace in args.namespace)
        and e.service.namespace not in args.exclude_namespace
        for e in topology.services
    ):
        raise _Usage("no Service port to audit in the chosen namespaces")
    mesh = LocalMesh(topology=topology, progress=_progress)
    try:
        mesh.start()
        for policy in policies:
            if policy.namespace == AUDIT_NAMESPACE:
                raise _Usage(f"--policy {policy.name}: {AUDIT_NAMESPACE} is the audit's own")
            reason = unmatched_reason(
                policy, mesh.workloads(), mesh.root_namespace, mesh.logical_namespace
            )
            if reason is not None:
                raise _Usage(
                    f"--policy {policy.kind} {policy.namespace}/{policy.name} applies to no"
                    f" workload: {reason}"
                )
            _progress(f"applying {policy.kind} {policy.namespace}/{policy.name}")
            mesh.apply(policy.to_manifest())
        result = run_audit(
            mesh,
            require=args.require,
            namespaces=args.namespace,
            exclude_namespaces=args.exclude_namespace,
            policy_files=[str(p) for p in args.policy],
            progress=_progress,
            evidence_dir=_evidence_dir(args),
            read_sockets=True,  # our own pods: their sockets, read in their namespaces
            mesh_by_pod_ip=True,
            exceptions=args.exceptions,
        )
    except MeshUnavailable as exc:  # cannot run here (not root, no Envoy...): names the fix
        raise _Usage(str(exc)) from None
    except MeshError as exc:
        print(f"meshconform audit: the mesh failed: {exc}", file=sys.stderr)
        return EXIT_NOT_CONFORMING
    finally:
        mesh.close()
    return _finish(args, result)


def evidence_dir_of(report: Path) -> Path:
    """Where the audit keeps its captures next to ``report``: ``<stem>-evidence/``."""
    return report.with_name(f"{report.stem}-evidence")


def load_policy_files(paths: Sequence[Path]) -> list[Policy]:
    """Every policy of the files (YAML, ``---`` separated); PolicyError names file and field."""
    from pytest_meshconform.istio.api import PolicyError, parse_policies
    from pytest_meshconform.userfiles import InputFileError, read_text

    policies: list[Policy] = []
    for path in paths:
        try:  # a regular file, UTF-8, at most 8 MiB (userfiles)
            text = read_text(path, "policy file")
        except InputFileError as exc:
            raise PolicyError(str(exc)) from None
        try:
            found = parse_policies(text)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None
        if not found:
            kinds = ", ".join(POLICY_KINDS)
            raise PolicyError(f"{path}: no policy in the file (accepted kinds: {kinds})")
        policies.extend(found)
    return policies
