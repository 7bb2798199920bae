"""Kube options and the preflight: every way this machine can be unfit for the kube backend
ends within seconds in one message that names the fix (no kind, no Docker engine, no istioctl,
no kubeconfig, unknown context, unreachable cluster, no Istio; any Istio version passes).
Fake binaries and a loopback API server stand in for the real ones."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import stat
import time
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kube_fakes import KUBE_VERSION, FakeApiServer, istiod_deployment, kubeconfig_text
from kubernetes import client as k8s

from pytest_meshconform.backends.kube.entry import (
    MIN_KUBERNETES_CLIENT,
    kubernetes_client_problem,
    open_mesh,
    preflight,
)
from pytest_meshconform.backends.kube.options import (
    KubeOptions,
    kind_cluster_name_for,
    resolve_options as resolve_kube_options,
)
from pytest_meshconform.mesh import MeshUnavailable
from pytest_meshconform.plugin.options import backend_header_lines, backend_run, option_lookup
from pytest_meshconform.settings import SettingsError

# pytester restores sys.modules after each test: load the client's heavy generated API modules
# (seconds of pydantic model building) once, here, instead of once per test.
_PRELOADED = (k8s.CoreV1Api, k8s.AppsV1Api, k8s.VersionApi)

DOCKER_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    " Is the docker daemon running?"
)


def fake_binary(directory: Path, name: str, script: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only what a test puts there."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER", raising=False)
    return directory


def configured(pytester: pytest.Pytester, *args: str) -> pytest.Config:
    return pytester.parseconfigure(*args)


def run_preflight(config: pytest.Config) -> None:
    preflight(backend_run(config))


def resolve_options(config: pytest.Config) -> KubeOptions:
    """The kube options of a run, as the plugin hands them to the backend."""
    return resolve_kube_options(option_lookup(config), config.rootpath)


# --- options ----------------------------------------------------------------------------------


def test_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for flag in (
        "--mesh-kind-bin=PATH",
        "--mesh-kind-cluster-name=NAME",
        "--mesh-istioctl=PATH",
        "--mesh-istio-version=X.Y.Z",
        "--mesh-revision=REV",
        "--mesh-allow-mesh-wide",
        "--mesh-sleep-image=IMAGE",
        "--mesh-httpbin-image=IMAGE",
        "--mesh-capture-image=IMAGE",
        "--mesh-propagation-timeout=DURATION",
        "--mesh-propagation=model|version",
    ):
        result.stdout.fnmatch_lines([f"*{flag}*"])
    result.stdout.fnmatch_lines(["*mesh_allow_mesh_wide (bool):*"])


def test_defaults(pytester: pytest.Pytester) -> None:
    options = resolve_options(configured(pytester))
    assert options == KubeOptions()
    assert options.sleep_image == "docker.io/curlimages/curl:8.11.1"
    assert options.httpbin_image == "docker.io/mccutchen/go-httpbin:v2.15.0"
    assert options.ready_timeout == timedelta(minutes=10)
    assert options.propagation_timeout == timedelta(seconds=60)


def test_each_backend_adds_its_own_header_lines(pytester: pytest.Pytester) -> None:
    from pytest_meshconform.backends.registry import backend_for

    config = configured(pytester, "--mesh-revision=canary")
    expected = [
        "meshconform kube: istio-namespace=istio-system revision=canary mesh-wide=existing: skipped"
        " propagation=model"
    ]
    run = backend_run(config)
    assert backend_for("kind").header_lines(run) == expected
    assert backend_for("existing").header_lines(run) == expected
    assert backend_for("local").header_lines(run) == []
    assert (
        backend_header_lines(configured(pytester, "--mesh-cluster=kind", "--mesh-revision=canary"))
        == expected
    )
    assert backend_header_lines(config) == []  # the run's cluster: local


def test_cli_wins_over_ini_and_paths_resolve_where_written(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        mesh_kind_bin = tools/kind
        mesh_revision = stable
        mesh_allow_mesh_wide = true
        mesh_propagation_timeout = 90s
        mesh_propagation = version
        """
    )
    pytester.mkdir("clusters").joinpath("kind.yaml").write_text("kind: Cluster\n")
    options = resolve_options(configured(pytester, "--mesh-revision=canary"))
    root = pytester.path
    assert options.kind_bin == root / "tools" / "kind"
    assert options.revision == "canary"
    assert options.allow_mesh_wide is True
    assert options.propagation_timeout == timedelta(seconds=90)
    assert options.propagation == "version"
    assert "propagation=version" in options.header_line()
    assert resolve_options(configured(pytester, "--mesh-propagation=model")).propagation == "model"
    assert options.kind_config == root / "clusters" / "kind.yaml"  # found under the rootdir


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--mesh-istio-version=banana"],
            "",
            "ERROR: --mesh-istio-version: invalid value 'banana'; expected an Istio release"
            " like 1.25.1",
        ),
        (
            [],
            "mesh_revision = Canary",
            "ERROR: mesh_revision (ini option): invalid value 'Canary'; expected a DNS label:"
            " lowercase letters, digits and '-', starting and ending alphanumeric",
        ),
        (
            ["--mesh-istioctl=/opt/istioctl", "--mesh-istio-version=1.25.1"],
            "",
            "ERROR: --mesh-istioctl and --mesh-istio-version both choose istioctl: pass only one",
        ),
        (
            ["--mesh-propagation-timeout=soon"],
            "",
            "ERROR: --mesh-propagation-timeout: invalid duration 'soon': expected a duration"
            " like 30s*",
        ),
        (
            ["--mesh-propagation=istioctl"],
            "",
            "ERROR: --mesh-propagation: invalid value 'istioctl'; accepted values: model, version",
        ),
        (
            ["--mesh-kind-cluster-name=My_Cluster"],
            "",
            "ERROR: --mesh-kind-cluster-name: invalid value 'My_Cluster'; expected a DNS label*",
        ),
        (
            ["--mesh-kind-config=nope.yaml"],
            "",
            "ERROR: --mesh-kind-config: 'nope.yaml' is not a file (resolved to *nope.yaml)",
        ),
        (
            [],
            "mesh_allow_mesh_wide = maybe",
            "ERROR: mesh_allow_mesh_wide (ini option): *; accepted values: true, false",
        ),
        (
            ["--mesh-capture-image="],
            "",
            "ERROR: --mesh-capture-image: expected a value, got an empty one",
        ),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makeconftest(
        "from pytest_meshconform.backends.kube.options import resolve_options\n"
        "from pytest_meshconform.plugin.options import option_lookup, usage_errors\n"
        "def pytest_configure(config):\n"
        "    with usage_errors():\n"
        "        resolve_options(option_lookup(config), config.rootpath)\n"
    )
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_bad_kube_option_stops_a_kube_run_through_the_plugin(pytester: pytest.Pytester) -> None:
    """The backend raises SettingsError; the plugin turns it into a usage error (exit code 4)."""
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--mesh-cluster=kind", "--mesh-istio-version=banana")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --mesh-istio-version: invalid value 'banana'; expected an Istio release"
            " like 1.25.1"
        ]
    )
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_a_bad_kube_option_is_ignored_by_the_local_mesh(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--mesh-istio-version=banana")
    result.assert_outcomes(passed=1)


def test_kind_cluster_name_is_per_project() -> None:
    # the suffix is sha256 of the path: `printf %s "/home/ci/work/Mesh Conform" | sha256sum`
    assert kind_cluster_name_for(Path("/home/ci/work/Mesh Conform")) == "mc-mesh-conform-c963c6"
    assert kind_cluster_name_for(Path("/srv/___")) == "mc-7713bf"
    long_name = kind_cluster_name_for(Path("/x/" + "very-long-project-name" * 3))
    # the directory name is cut to 24 characters before the hash
    assert len(long_name) <= 40 and long_name.startswith("mc-very-long-project-nameve-")


# --- preflight: kind --------------------------------------------------------------------------


def test_kind_without_anything_says_all_that_is_missing_at_once(
    pytester: pytest.Pytester, bin_dir: Path
) -> None:
    fake_binary(bin_dir, "docker", f'echo "{DOCKER_DOWN}" >&2; exit 1')
    config = configured(pytester, "--mesh-cluster=kind")
    started = time.monotonic()
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(config)
    assert time.monotonic() - started < 5
    assert str(unavailable.value) == (
        "--mesh-cluster=kind cannot run here: kind is not on PATH (install it:"
        " https://kind.sigs.k8s.io/docs/user/quick-start/#installation, or pass"
        " --mesh-kind-bin=PATH; meshconform never downloads kind); no Docker engine: `docker"
        f" info` failed ({DOCKER_DOWN}); start it (or point DOCKER_HOST at one); istioctl is"
        " not on PATH (install it: curl -L https://istio.io/downloadIstio | sh -, pass"
        " --mesh-istioctl=PATH, or --mesh-istio-version=X.Y.Z to download it)"
    )


def test_kind_without_docker_cli(pytester: pytest.Pytester, bin_dir: Path) -> None:
    fake_binary(bin_dir, "kind", "exit 0")
    fake_binary(bin_dir, "istioctl", "exit 0")
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(configured(pytester, "--mesh-cluster=kind"))
    assert str(unavailable.value) == (
        "--mesh-cluster=kind cannot run here: no docker CLI on PATH: kind runs its nodes as"
        " containers and needs a running Docker engine (or podman/nerdctl via"
        " KIND_EXPERIMENTAL_PROVIDER)"
    )


def test_kind_with_everything_passes(pytester: pytest.Pytester, bin_dir: Path) -> None:
    fake_binary(bin_dir, "kind", "exit 0")
    fake_binary(bin_dir, "docker", 'echo "Server Version: 28.2.2"')
    fake_binary(bin_dir, "istioctl", "exit 0")
    run_preflight(configured(pytester, "--mesh-cluster=kind"))


def test_kind_takes_any_istio_without_running_istioctl_first(
    pytester: pytest.Pytester, bin_dir: Path
) -> None:
    # policies are waited for in the sidecars' Envoy config, so no Istio release is refused
    # (1.23 removed config distribution tracking, istio/istio#51866; nothing here needs it)
    fake_binary(bin_dir, "kind", "exit 0")
    fake_binary(bin_dir, "docker", 'echo "Server Version: 28.2.2"')
    fake_binary(bin_dir, "istioctl", "exit 64")  # preflight never runs it
    run_preflight(configured(pytester, "--mesh-cluster=kind"))
    for version in ("1.22.8", "1.23.0", "1.25.1"):
        run_preflight(
            configured(pytester, "--mesh-cluster=kind", f"--mesh-istio-version={version}")
        )


def test_kind_explicit_binaries_and_istio_download(
    pytester: pytest.Pytester, bin_dir: Path, tmp_path: Path
) -> None:
    fake_binary(bin_dir, "docker", "exit 0")
    kind = fake_binary(tmp_path, "kind-v0.27.0", "exit 0")
    run_preflight(
        configured(
            pytester,
            "--mesh-cluster=kind",
            f"--mesh-kind-bin={kind}",
            "--mesh-istio-version=1.22.8",
        )
    )
    with pytest.raises(MeshUnavailable, match=r"--mesh-kind-bin .*/nope is not an executable"):
        run_preflight(
            configured(
                pytester,
                "--mesh-cluster=kind",
                f"--mesh-kind-bin={tmp_path / 'nope'}",
                "--mesh-istio-version=1.22.8",
            )
        )


def test_podman_provider_is_probed_instead_of_docker(
    pytester: pytest.Pytester, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIND_EXPERIMENTAL_PROVIDER", "podman")
    fake_binary(bin_dir, "kind", "exit 0")
    fake_binary(bin_dir, "istioctl", "exit 0")
    fake_binary(bin_dir, "podman", 'echo "Error: unable to connect to Podman socket" >&2; exit 125')
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(configured(pytester, "--mesh-cluster=kind"))
    assert str(unavailable.value) == (
        "--mesh-cluster=kind cannot run here: no Podman engine: `podman info` failed (Error:"
        " unable to connect to Podman socket); start it (or point DOCKER_HOST at one)"
    )


def test_a_run_using_the_mesh_stops_at_collection(pytester: pytest.Pytester, bin_dir: Path) -> None:
    """The whole path: `pytest --mesh-cluster=kind` with a test that needs the mesh."""
    fake_binary(bin_dir, "docker", f'echo "{DOCKER_DOWN}" >&2; exit 1')
    pytester.makepyfile("def test_needs_mesh(mesh): pass")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("--mesh-cluster=kind", "-p", "no:cacheprovider")
    assert time.monotonic() - started < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: meshconform: --mesh-cluster=kind cannot run here: kind*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_kind_with_ambient_stops_with_the_same_line_as_sidecars(
    pytester: pytest.Pytester, bin_dir: Path
) -> None:
    """`--mesh-cluster=kind --mesh-dataplane=ambient` where no Docker engine answers: the same
    one line as the sidecar path, before anything is installed (issue 21)."""
    fake_binary(bin_dir, "docker", f'echo "{DOCKER_DOWN}" >&2; exit 1')
    fake_binary(bin_dir, "kind", "exit 0")
    fake_binary(bin_dir, "istioctl", "exit 0")
    pytester.makepyfile("def test_needs_mesh(mesh): pass")
    errors = []
    for extra in ([], ["--mesh-dataplane=ambient"]):
        result = pytester.runpytest_subprocess(
            "--mesh-cluster=kind", *extra, "-p", "no:cacheprovider"
        )
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        lines = [line for line in result.stderr.str().splitlines() if line.startswith("ERROR")]
        assert "Traceback" not in result.stderr.str() + result.stdout.str()
        errors.append(lines)
    sidecar, ambient = errors
    assert (
        ambient
        == sidecar
        == [
            "ERROR: meshconform: --mesh-cluster=kind cannot run here: no Docker engine:"
            f" `docker info` failed ({DOCKER_DOWN}); start it (or point DOCKER_HOST at one)"
        ]
    )


# --- preflight: existing cluster ----------------------------------------------------------------


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


DEPLOYMENTS = "GET /apis/apps/v1/namespaces/istio-system/deployments"


def deployment_list(*items: object) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DeploymentList",
        "metadata": {"resourceVersion": "4242"},
        "items": list(items),
    }


def test_existing_without_kubeconfig(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    config = configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=prod")
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(config)
    assert str(unavailable.value).startswith(f"no usable kubeconfig ({kubeconfig}): ")
    assert str(unavailable.value).endswith(
        "--mesh-cluster=existing needs one with the context named by --mesh-kube-context"
    )


def test_existing_unknown_context(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:1", context="kind-dev"))
    config = configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=prod")
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(config)
    assert str(unavailable.value) == (
        f"kube context 'prod' is not in the kubeconfig ({kubeconfig}); available: kind-dev"
    )


def test_existing_unreachable_cluster_fails_fast(
    pytester: pytest.Pytester, kubeconfig: Path
) -> None:
    port = closed_port()
    kubeconfig.write_text(kubeconfig_text(f"http://127.0.0.1:{port}"))
    config = configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=current")
    started = time.monotonic()
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(config)
    assert time.monotonic() - started < 5
    message = str(unavailable.value)
    assert message.startswith(
        f"the cluster of context 'fake' (http://127.0.0.1:{port}) is unreachable: GET /version"
    )
    assert "Connection refused" in message


def test_existing_without_istio(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    with FakeApiServer(
        routes={"GET /version": KUBE_VERSION, DEPLOYMENTS: deployment_list()}
    ) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        config = configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=fake")
        with pytest.raises(MeshUnavailable) as unavailable:
            run_preflight(config)
        message = str(unavailable.value)
        assert message.startswith(
            f"context 'fake' ({server.url}) cannot run meshconform: [istio] no istiod Deployment"
            " (label app=istiod) in namespace istio-system (revisions: none;"
        )
        assert (
            "fix: install Istio (istioctl install), pass --mesh-istio-namespace if istiod lives"
            " elsewhere, or use --mesh-cluster=kind"
        ) in message
        assert message.endswith("(meshconform doctor --mesh-kube-context=fake shows every check)")
        assert f"{DEPLOYMENTS}?labelSelector=app%3Distiod" in server.requests


@pytest.mark.parametrize("image", ["docker.io/istio/pilot:1.22.8", "docker.io/istio/pilot:1.25.1"])
def test_existing_takes_any_istio_version(
    pytester: pytest.Pytester, kubeconfig: Path, image: str
) -> None:
    routes = {
        "GET /version": KUBE_VERSION,
        DEPLOYMENTS: deployment_list(istiod_deployment(image=image)),
    }
    with FakeApiServer(routes=routes) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        run_preflight(configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=fake"))


def test_existing_with_istio_passes(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    routes = {"GET /version": KUBE_VERSION, DEPLOYMENTS: deployment_list(istiod_deployment())}
    with FakeApiServer(routes=routes) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        run_preflight(configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=fake"))
        assert server.requests[0] == "GET /version/"


def test_existing_wrong_revision(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    routes = {"GET /version": KUBE_VERSION, DEPLOYMENTS: deployment_list(istiod_deployment())}
    with FakeApiServer(routes=routes) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        config = configured(
            pytester,
            "--mesh-cluster=existing",
            "--mesh-kube-context=fake",
            "--mesh-revision=canary",
        )
        with pytest.raises(MeshUnavailable, match=r"no istiod of revision 'canary' \(found"):
            run_preflight(config)


def test_existing_refuses_a_cert_ttl_istiod_would_not_sign(
    pytester: pytest.Pytester, kubeconfig: Path
) -> None:
    """istiod's CA refuses CSRs above MAX_WORKLOAD_CERT_TTL (security/pkg/pki/ca/ca.go)."""
    routes = {
        "GET /version": KUBE_VERSION,
        DEPLOYMENTS: deployment_list(istiod_deployment(max_cert_ttl="12h0m0s")),
    }
    with FakeApiServer(routes=routes) as server:
        kubeconfig.write_text(kubeconfig_text(server.url))
        config = configured(
            pytester,
            "--mesh-cluster=existing",
            "--mesh-kube-context=fake",
            "--mesh-cert-ttl=24h",
        )
        with pytest.raises(MeshUnavailable) as unavailable:
            run_preflight(config)
        assert str(unavailable.value) == (
            f"context 'fake' ({server.url}) cannot run meshconform: [cert-ttl] --mesh-cert-ttl"
            " 24h, istiod signs up to MAX_WORKLOAD_CERT_TTL=12h; istiod would refuse every"
            " sidecar's certificate request (TTLError) and no pod would become ready; fix:"
            " --mesh-cert-ttl=12h or less (meshconform doctor --mesh-kube-context=fake shows"
            " every check)"
        )


@pytest.mark.parametrize(
    ("version", "fine"),
    [
        ("30.1.0", False),
        ("36.0.3", False),  # the last release whose WSClient.update ignores pending()
        ("37.0.0", True),  # the first with kubernetes-client/python#2414's fix
        ("37.0.3", True),
        ("38.0.0a1", True),
    ],
)
def test_the_kubernetes_client_must_read_exec_streams_to_their_end(
    version: str, fine: bool
) -> None:
    problem = kubernetes_client_problem(version)
    assert (problem is None) is fine
    if problem is not None:
        assert problem == (
            f"kubernetes client {version} can leave the last frames of an exec stream unread"
            " (WSClient.update ignores SSLSocket.pending(), kubernetes-client/python#2414),"
            " which stalls captures and config_dump reads; pip install 'kubernetes>=37.0.0'"
        )
    assert kubernetes_client_problem(None) == (
        "the kubernetes client is not installed: pip install 'kubernetes>=37.0.0'"
    )


def test_the_package_requires_that_client() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (requirement,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("kubernetes")]
    assert requirement == "kubernetes>=" + ".".join(map(str, MIN_KUBERNETES_CLIENT[:2]))


@pytest.mark.parametrize("cluster", ["kind", "existing"])
def test_an_older_kubernetes_client_stops_the_preflight(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, cluster: str
) -> None:
    installed = importlib.metadata.version

    def version(name: str) -> str:
        return "36.0.3" if name == "kubernetes" else installed(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    config = configured(pytester, f"--mesh-cluster={cluster}", "--mesh-kube-context=fake")
    with pytest.raises(MeshUnavailable) as unavailable:
        run_preflight(config)
    assert str(unavailable.value).startswith(
        f"--mesh-cluster={cluster}: kubernetes client 36.0.3 can leave the last frames"
    )


def test_local_needs_no_kube_preflight(pytester: pytest.Pytester, bin_dir: Path) -> None:
    run_preflight(configured(pytester))  # nothing on PATH, nothing checked
    assert os.environ["PATH"] == str(bin_dir)


# --- open_mesh refuses the same way, and leaves nothing behind ----------------------------------


def run_dirs() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("meshconform-kube-*"))


def test_open_mesh_on_kind_without_prerequisites(pytester: pytest.Pytester, bin_dir: Path) -> None:
    fake_binary(bin_dir, "docker", f'echo "{DOCKER_DOWN}" >&2; exit 1')
    config = configured(pytester, "--mesh-cluster=kind")
    before = run_dirs()
    messages: list[str] = []
    with pytest.raises(MeshUnavailable, match=r"^--mesh-cluster=kind cannot run here: kind is not"):
        open_mesh(backend_run(config), messages.append)
    assert run_dirs() - before == set()
    assert messages == []


def test_open_mesh_refuses_local_faults(pytester: pytest.Pytester, bin_dir: Path) -> None:
    config = configured(pytester, "--mesh-cluster=kind", "--mesh-fault=no-xfcc")
    before = run_dirs()
    with pytest.raises(SettingsError) as refused:
        open_mesh(backend_run(config), print)
    assert str(refused.value) == "--mesh-fault exists only for --mesh-cluster=local"
    assert run_dirs() - before == set()


def test_open_mesh_on_an_unknown_context(pytester: pytest.Pytester, kubeconfig: Path) -> None:
    kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:1", context="staging"))
    config = configured(pytester, "--mesh-cluster=existing", "--mesh-kube-context=prod")
    before = run_dirs()
    with pytest.raises(MeshUnavailable, match="kube context 'prod' is not in the kubeconfig"):
        open_mesh(backend_run(config), print)
    assert run_dirs() - before == set()
