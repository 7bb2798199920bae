"""``meshconform doctor`` end to end: the console script against the fake API server (the real
kubernetes client), its exit codes, and its renderings (text, Markdown, HTML in Chromium,
YAML/JSON)."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kube_fakes import FakeApiServer, istiod_deployment, kubeconfig_text
from test_evidence_output import Dom, chromium
from test_kube_doctor import Cluster, injector_values

from pytest_meshconform.backends.kube.permissions import RUN_PERMISSIONS
from pytest_meshconform.cli import main
from pytest_meshconform.doctor.cli import EXIT_USAGE


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield path


def doctor(
    kubeconfig: Path, cluster: Cluster, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str, FakeApiServer]:
    with FakeApiServer(routes=cluster.routes()) as server:
        kubeconfig.write_text(kubeconfig_text(server.url, context="prod"))
        code = main(["doctor", *args])
    out, err = capsys.readouterr()
    return code, out, err, server


def test_a_ready_cluster_exits_0_with_every_finding(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err, server = doctor(kubeconfig, Cluster(), capsys, "--mesh-kube-context=prod")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"meshconform doctor: context prod ({server.url})"
    assert lines[1] == (
        "asked: istio namespace istio-system, revision the default one (or the only one),"
        " certificate ttl 24h, capture image the proxy image, mesh-wide policies not allowed"
    )
    assert lines[2].startswith("OK    kubernetes-client  kubernetes client ")
    assert any(
        line.startswith("OK    istio              Istio 1.25.1, revision default") for line in lines
    )
    assert sum(line.startswith("OK    permission ") for line in lines) == len(RUN_PERMISSIONS)
    assert lines[-1].endswith("; ready for a run")
    # it wrote nothing: reviews and one dry run are its only requests with a body
    writes = [r for r in server.requests if not r.startswith("GET ")]
    assert writes and all("selfsubjectaccessreviews" in r or "dryRun=All" in r for r in writes)


def test_a_finding_that_breaks_the_run_exits_1_naming_the_fix(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = Cluster(deployments=[istiod_deployment(max_cert_ttl="12h0m0s")])
    code, out, _, _ = doctor(
        kubeconfig, cluster, capsys, "--mesh-cluster=prod", "--mesh-cert-ttl=1d"
    )
    assert code == 1
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  cert-ttl"))
    assert lines[at].endswith("--mesh-cert-ttl 24h, istiod signs up to MAX_WORKLOAD_CERT_TTL=12h")
    assert lines[at + 1].strip().startswith("breaks: istiod would refuse every sidecar's")
    assert lines[at + 2].strip() == "fix: --mesh-cert-ttl=12h or less"
    assert lines[-1].endswith("; a run would fail")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mesh-kube-context=staging"], "kube context 'staging' is not in the kubeconfig"),
        (["--mesh-cluster=kind"], "--mesh-cluster=kind: the doctor checks a cluster you run"),
        (["--mesh-cluster=prod", "--mesh-kube-context=dev"], "name two contexts: pass one"),
        (["--mesh-cert-ttl=soon"], "--mesh-cert-ttl: "),
        (["--report=doctor.txt"], "--report doctor.txt: accepted suffixes: .html"),
    ],
)
def test_usage_errors_exit_2(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err, _ = doctor(kubeconfig, Cluster(), capsys, *args)
    assert code == EXIT_USAGE
    assert out == ""
    assert err.startswith("meshconform doctor: error: ") and message in err


def test_an_unreachable_cluster_exits_2(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:9", context="prod"))
    assert main(["doctor", "--mesh-kube-context=prod"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("meshconform doctor: error: the cluster of context 'prod' is unreachable")


def test_the_report_as_data(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster = Cluster(values=injector_values(variant="distroless"))
    report = tmp_path / "doctor.yaml"
    code, out, _, _ = doctor(kubeconfig, cluster, capsys, f"--report={report}")
    assert code == 1 and out.splitlines()[-1] == f"report: {report}"
    data = yaml.safe_load(report.read_text())
    assert data["kind"] == "DoctorReport" and data["result"] == "not-ready"
    (image,) = [f for f in data["findings"] if f["check"] == "proxy-image"]
    assert image["status"] == "fail" and image["fix"].startswith("--mesh-capture-image=IMAGE")
    as_json = tmp_path / "doctor.json"
    doctor(kubeconfig, cluster, capsys, f"--report={as_json}")
    assert json.loads(as_json.read_text())["findings"][2:] == data["findings"][2:]  # URL aside


def test_the_report_for_people_in_markdown_and_in_a_browser(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster = Cluster(deployments=[istiod_deployment(max_cert_ttl="12h0m0s")])
    markdown = tmp_path / "doctor.md"
    doctor(kubeconfig, cluster, capsys, f"--report={markdown}")
    text = markdown.read_text()
    assert text.startswith("# meshconform doctor: ❌ failed\n")
    assert "#### ❌ **cert-ttl**: failed" in text
    assert "- `--mesh-cert-ttl=12h or less`" in text
    assert "#### ✅ **create namespaces (cluster)**: ok" in text
    page = tmp_path / "doctor.html"
    doctor(kubeconfig, cluster, capsys, f"--report={page}")
    dom = Dom()
    dom.feed(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    assert dom.resources == []
    assert dom.titles[0] == "meshconform doctor"
    assert any(
        "cert-ttl" in text and "--mesh-cert-ttl=12h or less" in text
        for text in dom.entries.values()
    )


@pytest.mark.parametrize("command", ["doctor", "audit"])
def test_an_old_kubernetes_client_is_refused_by_the_doctor_and_the_audit(
    kubeconfig: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    import importlib.metadata

    installed = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "36.0.3" if name == "kubernetes" else installed(name),
    )
    with FakeApiServer(routes=Cluster().routes()) as server:
        kubeconfig.write_text(kubeconfig_text(server.url, context="prod"))
        code = main([command, "--mesh-cluster=existing", "--mesh-kube-context=prod"])
    out, err = capsys.readouterr()
    if command == "audit":  # refused before it creates its namespace
        assert code == EXIT_USAGE
        assert err.startswith(
            "meshconform audit: error: kubernetes client 36.0.3 can leave the last frames"
        )
        assert [r for r in server.requests if not r.startswith("GET")] == []
    else:  # one finding among the others, with its fix
        assert code == 1
        assert "FAIL  kubernetes-client  kubernetes client 36.0.3" in out
        assert "fix: pip install 'kubernetes>=37.0.0'" in out


def test_a_report_path_that_cannot_be_written_stops_the_doctor_before_it_asks(
    kubeconfig: Path, tmp_path: Path
) -> None:
    """Run as a user runs it (a subprocess): the path is checked before any request."""
    import subprocess
    import sys

    (tmp_path / "doctor.html").mkdir()
    with FakeApiServer(routes=Cluster().routes()) as server:
        kubeconfig.write_text(kubeconfig_text(server.url, context="prod"))
        argv = [sys.executable, "-m", "pytest_meshconform.cli", "doctor", "--mesh-cluster=prod"]
        refused = subprocess.run(
            [*argv, "--report=doctor.html"], cwd=tmp_path, capture_output=True, text=True
        )
        assert server.requests == []
        written = subprocess.run(
            [*argv, "--report=out/doctor.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            umask=0,
        )
    assert (refused.returncode, refused.stdout) == (EXIT_USAGE, "")
    assert refused.stderr.splitlines() == [
        "meshconform doctor: error: --report doctor.html: is a directory: name a file, e.g."
        " doctor.html/report.html"
    ]
    assert written.returncode == 0, written.stdout + written.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert (modes, stat.S_IMODE((tmp_path / "out").stat().st_mode)) == (
        {"doctor.yaml": 0o600},
        0o700,
    )
