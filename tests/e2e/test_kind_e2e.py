"""End to end on kind: the built-in suites against real Istio.

Runs ``pytest conformance/ --mesh-cluster=kind`` in a subprocess: kind creates the project's
cluster, istioctl installs Istio, the suites run and the cluster is deleted. Needs kind, a
container engine and istioctl (or ``MESHCONFORM_ISTIO_VERSION`` with internet); without them the
test is skipped with one line saying what is missing, or fails when ``MESHCONFORM_E2E=1`` (CI,
where skipping would hide a broken set-up). ``MESHCONFORM_E2E_KEEP=1`` keeps the cluster for
log collection. ``MESHCONFORM_E2E_DATAPLANE=ambient`` runs the suites with ambient namespaces
(Istio's ambient profile). ``.github/workflows/kind.yml`` runs it, once per data plane.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "conformance"
ISTIO_VERSION = os.environ.get("MESHCONFORM_ISTIO_VERSION") or None
# sidecar (default) or ambient: the data plane of the run's namespaces (--mesh-dataplane)
DATAPLANE = os.environ.get("MESHCONFORM_E2E_DATAPLANE") or "sidecar"
RUN_TIMEOUT_S = 60 * 60


def missing_prerequisites() -> str | None:
    """What this machine lacks for kind, in one line (None: nothing)."""
    from pytest_meshconform.backends.kube.kind import kind_problems
    from pytest_meshconform.backends.kube.options import KubeOptions

    problems = kind_problems(KubeOptions(istio_version=ISTIO_VERSION))
    return "; ".join(problem.split(" (")[0] for problem in problems) or None


@pytest.fixture(scope="module")
def kind_available() -> None:
    missing = missing_prerequisites()
    if missing is None:
        return
    if os.environ.get("MESHCONFORM_E2E") == "1":
        pytest.fail(f"MESHCONFORM_E2E=1 but kind cannot run here: {missing}")
    pytest.skip(f"kind e2e needs kind, a container engine and istioctl: {missing}")


def test_builtin_suites_pass_on_kind(kind_available: None, tmp_path: Path) -> None:
    report = tmp_path / "kind-report.yaml"
    junit = tmp_path / "kind-junit.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(SUITES),
        "--mesh-cluster=kind",
        f"--mesh-report={report}",
        f"--mesh-artifacts={tmp_path / 'artifacts'}",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
        "-ra",
    ]
    if ISTIO_VERSION is not None:
        argv.append(f"--mesh-istio-version={ISTIO_VERSION}")
    if DATAPLANE != "sidecar":
        argv.append(f"--mesh-dataplane={DATAPLANE}")
    if os.environ.get("MESHCONFORM_E2E_KEEP") == "1":
        argv.append("--mesh-keep")  # CI: leave the cluster for `kind export logs`
    result = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    output = f"{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"conformance on kind failed ({result.returncode}):\n{output}"
    assert report.is_file(), output
    assert " passed" in result.stdout, output
    # kind owns its cluster: mesh-wide cases run there instead of skipping
    assert "lacks feature(s): mesh-wide" not in result.stdout, output
