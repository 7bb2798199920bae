"""``meshconform doctor``: can a meshconform run work on this cluster, and if not, what to fix.

It runs the checks an existing-cluster run makes before any test (``backends/kube/survey.py``
reads, ``backends/kube/checkup.py`` judges) and prints every finding: what was found, what it
breaks, the fix. It only reads, but for a SelfSubjectAccessReview per permission and one
namespace created with ``dryRun=All`` (nothing is stored).

Exit status (README, "Exit statuses"): 0 a run can go (warnings and notes aside), 1 a finding
would break the run, 2 interrupted, 4 bad usage or no cluster to check (no kubeconfig, unknown
context, API server unreachable, no kubernetes client).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path
from typing import Final

from pytest_meshconform.backends.kube.options import DEFAULT_ISTIO_NAMESPACE
from pytest_meshconform.exit_status import ExitStatus
from pytest_meshconform.settings import SettingsError, parse_cert_ttl

__all__ = ["EXIT_NOT_READY", "EXIT_READY", "EXIT_USAGE", "REPORT_SUFFIXES", "add_parser", "run"]

EXIT_READY: Final = ExitStatus.OK
EXIT_NOT_READY: Final = ExitStatus.FAILED
EXIT_USAGE: Final = ExitStatus.USAGE
REPORT_SUFFIXES: Final = (".html", ".htm", ".md", ".yaml", ".yml", ".json")
_CLUSTER_KINDS: Final = ("local", "kind")


class _Usage(Exception):
    """A usage error, or nothing to check: the message says what to fix."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``meshconform doctor`` on the console script's sub-commands."""
    doctor = commands.add_parser(
        "doctor",
        help="check that a cluster can run meshconform; each finding names its fix",
        description="The checks an existing-cluster run makes before any test: Istio and its"
        " revisions and tags, the injection label, discoverySelectors, the certificate TTL,"
        " native sidecars, the proxy image, trust and DNS domains, Pod Security, ztunnel and"
        " istio-cni for ambient runs, and every permission the run needs. Exit status: 0 a run"
        " can go, 1 a finding would break it, 2 interrupted, 4 bad usage or no cluster to"
        " check.",
    )
    doctor.add_argument(
        "--mesh-cluster",
        default="existing",
        metavar="existing|CONTEXT",
        help="existing (the default) with --mesh-kube-context, or a kube context's name"
        " (short for --mesh-cluster=existing --mesh-kube-context=CONTEXT)",
    )
    doctor.add_argument(
        "--mesh-kube-context",
        metavar="NAME",
        help="the kube context to check (default: the kubeconfig's current one)",
    )
    doctor.add_argument(
        "--mesh-istio-namespace",
        default=DEFAULT_ISTIO_NAMESPACE,
        metavar="NS",
        help=f"where istiod runs (default {DEFAULT_ISTIO_NAMESPACE})",
    )
    doctor.add_argument("--mesh-revision", metavar="REV", help="the revision the run would use")
    doctor.add_argument(
        "--mesh-cert-ttl",
        default="24h",
        metavar="DURATION",
        help="the workload certificate TTL the run would ask for (default 24h, pytest's default;"
        " the built-in suites ask for 10s)",
    )
    doctor.add_argument(
        "--mesh-capture-image", metavar="IMAGE", help="the capture image the run would use"
    )
    doctor.add_argument(
        "--mesh-allow-mesh-wide",
        action="store_true",
        help="the run would apply mesh-wide policies (check those permissions too)",
    )
    doctor.add_argument(
        "--mesh-dataplane",
        default="sidecar",
        choices=("sidecar", "ambient", "both"),
        help="the data plane the run would put its namespaces on: with ambient or both, check"
        " ztunnel, istio-cni and the port-forward permissions too (default sidecar)",
    )
    doctor.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="also write the findings: .html or .md for people, .yaml or .json as data",
    )


def run(args: argparse.Namespace) -> int:
    """Check the cluster the parsed arguments name; returns the exit status."""
    try:
        return _run(args)
    except _Usage as exc:
        print(f"meshconform doctor: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _context(args: argparse.Namespace) -> str:
    cluster = args.mesh_cluster
    if cluster in _CLUSTER_KINDS:
        raise _Usage(
            f"--mesh-cluster={cluster}: the doctor checks a cluster you run: pass"
            " --mesh-cluster=existing --mesh-kube-context=NAME (a kind run installs its own"
            " Istio and needs no check)"
        )
    if cluster != "existing":
        if args.mesh_kube_context and args.mesh_kube_context != cluster:
            raise _Usage(
                f"--mesh-cluster={cluster} and --mesh-kube-context={args.mesh_kube_context}"
                " name two contexts: pass one"
            )
        return str(cluster)
    return str(args.mesh_kube_context or "current")


def _run(args: argparse.Namespace) -> int:
    from pytest_meshconform.backends.kube.checkup import (
        RunRequest,
        check_survey,
        kubernetes_client_problem,
    )

    if args.report is not None and args.report.suffix.lower() not in REPORT_SUFFIXES:
        raise _Usage(f"--report {args.report}: accepted suffixes: {', '.join(REPORT_SUFFIXES)}")
    if args.report is not None:  # before the cluster is asked anything
        from pytest_meshconform.outputs import OutputPathError, check_output_file

        try:
            check_output_file("--report", args.report)
        except OutputPathError as exc:
            raise _Usage(str(exc)) from None
    try:
        cert_ttl = parse_cert_ttl(args.mesh_cert_ttl)
    except SettingsError as exc:
        raise _Usage(f"--mesh-cert-ttl: {exc}") from None
    context_name = _context(args)
    try:
        importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        raise _Usage(str(kubernetes_client_problem(None))) from None

    from pytest_meshconform.backends.kube.client import KubeApi, KubeApiError
    from pytest_meshconform.backends.kube.kind import resolve_context
    from pytest_meshconform.backends.kube.survey import survey_cluster
    from pytest_meshconform.doctor.report import DoctorResult, format_findings, write_report
    from pytest_meshconform.mesh import MeshUnavailable

    try:
        context = resolve_context(context_name)
        api = KubeApi.connect(None, context.name, retries=0)
    except (MeshUnavailable, KubeApiError) as exc:
        raise _Usage(str(exc)) from None
    request = RunRequest(
        istio_namespace=args.mesh_istio_namespace,
        revision=args.mesh_revision,
        cert_ttl=cert_ttl,
        capture_image=args.mesh_capture_image,
        allow_mesh_wide=args.mesh_allow_mesh_wide,
        ambient=args.mesh_dataplane != "sidecar",
    )
    try:
        survey = survey_cluster(api, request)
    except KubeApiError as exc:
        raise _Usage(f"the cluster of context {context.name!r} is unreachable: {exc}") from None
    result = DoctorResult(context.name, api.server, request, check_survey(survey, request))
    for line in format_findings(result):
        print(line)
    if args.report is not None:
        write_report(result, args.report)
        print(f"report: {args.report}")
    return EXIT_READY if result.ready else EXIT_NOT_READY
