"""Getting a cluster without a real one: pytest-kind-ng's KindCluster driving a fake ``kind``
(never a download), istioctl install's command line, the istioctl download and its checksum,
and kube contexts."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
from kube_fakes import kubeconfig_text

from pytest_meshconform.backends.kube import kind as kube_kind
from pytest_meshconform.backends.kube.kind import (
    KindCluster,
    download_istioctl,
    install_istio,
    resolve_context,
)
from pytest_meshconform.mesh import MeshError, MeshUnavailable

FAKE_KIND = r"""#!/bin/sh
# kind, as far as pytest-kind-ng and meshconform use it; state in $KIND_STATE
echo "$*" >> "$KIND_LOG"
name=""; kubeconfig=""
for arg in "$@"; do
  case "$arg" in
    --name=*) name="${arg#--name=}" ;;
    --kubeconfig=*) kubeconfig="${arg#--kubeconfig=}" ;;
  esac
done
case "$1 $2" in
  "get clusters") [ -s "$KIND_STATE" ] && cat "$KIND_STATE" || echo "No kind clusters found." >&2 ;;
  "create cluster") echo "$name" >> "$KIND_STATE"; cp "$KIND_KUBECONFIG" "$kubeconfig" ;;
  "export kubeconfig") cp "$KIND_KUBECONFIG" "$kubeconfig" ;;
  "delete cluster")
    grep -vx "$name" "$KIND_STATE" > "$KIND_STATE.new"; mv "$KIND_STATE.new" "$KIND_STATE" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # pytest-kind-ng keeps .pytest-kind/<name>/ in the cwd
    monkeypatch.setenv("KIND_LOG", str(tmp_path / "kind.log"))
    monkeypatch.setenv("KIND_STATE", str(tmp_path / "kind.state"))
    kubeconfig = tmp_path / "node-kubeconfig"
    kubeconfig.write_text(kubeconfig_text("https://127.0.0.1:43123", context="kind-mc-demo-123abc"))
    monkeypatch.setenv("KIND_KUBECONFIG", str(kubeconfig))
    yield executable(tmp_path / "kind", FAKE_KIND)


def kind_log(tmp_path: Path) -> list[str]:
    return (tmp_path / "kind.log").read_text().splitlines()


def test_create_then_delete_a_cluster_this_run_made(kind: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    config = tmp_path / "kind.yaml"
    config.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
    made = KindCluster(
        "mc-demo-123abc",
        kind,
        image="kindest/node:v1.32.2",
        config_file=config,
        progress=messages.append,
    )
    made.ensure()
    kubeconfig = tmp_path / ".pytest-kind" / "mc-demo-123abc" / "kubeconfig"
    assert made.kubeconfig == kubeconfig
    assert made.context == "kind-mc-demo-123abc"
    assert made.created
    assert kind_log(tmp_path) == [
        "get clusters",
        "get clusters",
        f"create cluster --name=mc-demo-123abc --kubeconfig={kubeconfig}"
        f" --image=kindest/node:v1.32.2 --config {config}",
    ]
    assert messages == [f"kind: creating cluster mc-demo-123abc from {config} (1-2 minutes)"]
    assert not list(tmp_path.glob(".pytest-kind/mc-demo-123abc/kind-v*"))  # nothing downloaded
    assert made.release(keep=False) == ["deleted kind cluster mc-demo-123abc"]
    assert kind_log(tmp_path)[-1] == (
        f"delete cluster --name=mc-demo-123abc --kubeconfig={kubeconfig}"
    )
    assert made.release(keep=False)[0].startswith("kind cluster mc-demo-123abc existed before")


def test_reuse_exports_a_missing_kubeconfig_and_leaves_the_cluster(
    kind: Path, tmp_path: Path
) -> None:
    (tmp_path / "kind.state").write_text("other\nmc-demo-123abc\n")
    reused = KindCluster("mc-demo-123abc", kind, image=None, config_file=None, progress=print)
    reused.ensure()
    assert not reused.created
    kubeconfig = tmp_path / ".pytest-kind" / "mc-demo-123abc" / "kubeconfig"
    assert kind_log(tmp_path) == [
        "get clusters",
        f"export kubeconfig --name=mc-demo-123abc --kubeconfig={kubeconfig}",
        "get clusters",
    ]
    assert reused.release(keep=False) == [
        "kind cluster mc-demo-123abc existed before this run: left in place (delete it with:"
        " kind delete cluster --name mc-demo-123abc)"
    ]
    assert "delete cluster" not in " ".join(kind_log(tmp_path))


def test_keep_leaves_a_new_cluster_and_says_how_to_reach_it(kind: Path, tmp_path: Path) -> None:
    made = KindCluster("mc-demo-123abc", kind, image=None, config_file=None, progress=print)
    made.ensure()
    [message] = made.release(keep=True)
    assert message == (
        f"--mesh-keep: left kind cluster mc-demo-123abc (kubectl --kubeconfig {made.kubeconfig}"
        " --context kind-mc-demo-123abc ...); the next run reuses it; delete it with: kind"
        " delete cluster --name mc-demo-123abc"
    )
    assert "delete cluster" not in " ".join(kind_log(tmp_path))


def test_a_failing_kind_is_a_mesh_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    broken = executable(
        tmp_path / "kind", "#!/bin/sh\necho 'ERROR: failed to list nodes' >&2\nexit 1\n"
    )
    with pytest.raises(MeshError, match="`kind get clusters` failed: ERROR: failed to list nodes"):
        KindCluster("mc-x", broken, image=None, config_file=None, progress=print).ensure()


def test_install_istio_runs_istioctl_with_the_run_settings(tmp_path: Path) -> None:
    log = tmp_path / "istioctl.log"
    istioctl = executable(tmp_path / "istioctl", f'#!/bin/sh\necho "$*" > {log}\n')
    messages: list[str] = []
    install_istio(
        istioctl,
        tmp_path / "kubeconfig",
        "kind-mc-demo-123abc",
        revision=None,
        cert_ttl=timedelta(seconds=30),
        ready_timeout=timedelta(minutes=5),
        progress=messages.append,
    )
    assert log.read_text().split() == [
        "install",
        "-y",
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
        "--context",
        "kind-mc-demo-123abc",
        "--set",
        "profile=minimal",
        "--set",
        "meshConfig.defaultConfig.proxyMetadata.SECRET_TTL=30s",
        "--readiness-timeout",
        "300s",
    ]
    assert messages == [f"installing Istio with {istioctl} (waits for istiod)"]


def test_install_failure_shows_istioctl_stderr(tmp_path: Path) -> None:
    istioctl = executable(
        tmp_path / "istioctl",
        "#!/bin/sh\necho 'Error: failed to install manifests: timed out waiting for istiod' >&2\n"
        "exit 1\n",
    )
    with pytest.raises(MeshError, match="istioctl install failed: Error: failed to install"):
        install_istio(
            istioctl,
            tmp_path / "kubeconfig",
            "kind-x",
            revision="canary",
            cert_ttl=timedelta(hours=1),
            ready_timeout=timedelta(seconds=1),
            progress=print,
        )


def test_install_failure_keeps_istioctl_stdout_too(tmp_path: Path) -> None:
    """istioctl prints its readiness wait on stdout, the final error on stderr."""
    istioctl = executable(
        tmp_path / "istioctl",
        "#!/bin/sh\necho 'Processing resources for Istiod. Waiting for Deployment/istio-system/"
        "istiod'\necho 'Error: failed to install manifests: context deadline exceeded' >&2\n"
        "exit 1\n",
    )
    with pytest.raises(MeshError) as failure:
        install_istio(
            istioctl,
            tmp_path / "kubeconfig",
            "kind-x",
            revision=None,
            cert_ttl=timedelta(hours=1),
            ready_timeout=timedelta(seconds=1),
            progress=print,
        )
    assert str(failure.value) == (
        "istioctl install failed: Error: failed to install manifests: context deadline exceeded;"
        " stdout: Processing resources for Istiod. Waiting for Deployment/istio-system/istiod"
    )


# --- istioctl download (from a loopback server standing in for GitHub releases) ---------------


@pytest.fixture
def release_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()


def istioctl_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        payload = b"#!/bin/sh\necho istioctl 1.25.1\n"
        info = tarfile.TarInfo("istioctl")
        info.size = len(payload)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_download_checks_the_published_sha256(
    release_server: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, files = release_server
    archive = istioctl_archive()
    files["/istioctl-1.25.1-linux-amd64.tar.gz"] = archive
    files["/istioctl-1.25.1-linux-amd64.tar.gz.sha256"] = (
        f"{hashlib.sha256(archive).hexdigest()}  istioctl-1.25.1-linux-amd64.tar.gz\n".encode()
    )
    monkeypatch.setattr(
        kube_kind,
        "istioctl_download_url",
        lambda version, system, machine: f"{base}/istioctl-{version}-linux-amd64.tar.gz",
    )
    target = tmp_path / "cache" / "istioctl" / "1.25.1" / "istioctl"
    messages: list[str] = []
    assert download_istioctl("1.25.1", target, messages.append) == target
    assert target.read_bytes() == b"#!/bin/sh\necho istioctl 1.25.1\n"
    assert target.stat().st_mode & 0o777 == 0o755
    assert messages == [
        f"downloading istioctl 1.25.1 from {base}/istioctl-1.25.1-linux-amd64.tar.gz"
    ]
    files.clear()  # cached: no second download
    assert download_istioctl("1.25.1", target, messages.append) == target
    assert len(messages) == 1


def test_download_refuses_a_tampered_archive(
    release_server: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, files = release_server
    files["/a.tar.gz"] = istioctl_archive()
    files["/a.tar.gz.sha256"] = b"0" * 64 + b"  a.tar.gz\n"
    monkeypatch.setattr(kube_kind, "istioctl_download_url", lambda *args: f"{base}/a.tar.gz")
    target = tmp_path / "istioctl"
    with pytest.raises(MeshError, match=f"does not match {'0' * 64}"):
        download_istioctl("1.25.1", target, print)
    assert not target.exists()


def test_download_without_network_is_unavailable(
    release_server: tuple[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = release_server
    monkeypatch.setattr(kube_kind, "istioctl_download_url", lambda *args: f"{base}/missing.tar.gz")
    with pytest.raises(
        MeshUnavailable, match=r"cannot download istioctl 1\.25\.1 .*--mesh-istioctl"
    ):
        download_istioctl("1.25.1", tmp_path / "istioctl", print)


# --- contexts ---------------------------------------------------------------------------------


def test_current_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text("https://10.0.0.1:6443", context="prod-eu"))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    resolved = resolve_context("current")
    assert (resolved.name, resolved.cluster) == ("prod-eu", "prod-eu-cluster")
    assert resolve_context("prod-eu") == resolved
