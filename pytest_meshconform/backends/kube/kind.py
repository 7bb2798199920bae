"""Getting a cluster: prerequisites, kind through pytest-kind-ng, istioctl, kube contexts.

The checks here run at collection time (``preflight``) and must answer within seconds with
one message that names the fix; nothing here downloads anything unless the user asked for it
(``--mesh-istio-version``). The kubernetes client is imported inside the functions that talk
to a cluster.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import yaml

from pytest_meshconform.backends.kube.control_plane import (
    istioctl_download_url,
    istioctl_install_argv,
)
from pytest_meshconform.backends.kube.options import KubeOptions
from pytest_meshconform.mesh import MeshError, MeshUnavailable
from pytest_meshconform.settings import Dataplane

__all__ = [
    "GATEWAY_API_GROUP",
    "GATEWAY_KIND_VERSION",
    "KindCluster",
    "ResolvedContext",
    "cache_dir",
    "container_engine_problem",
    "download_istioctl",
    "find_executable",
    "gateway_api_crds",
    "gateway_api_crds_url",
    "gateway_api_fix",
    "gateway_api_problem",
    "install_gateway_api_crds",
    "install_istio",
    "istioctl_path",
    "kind_context",
    "resolve_context",
    "waypoint_check",
]

Progress = Callable[[str], None]
ENGINE_TIMEOUT_S: Final = 10.0
KIND_INSTALL_URL: Final = "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
ISTIOCTL_INSTALL: Final = "curl -L https://istio.io/downloadIstio | sh -"
# The Gateway API release istio.io's ambient install and getting-started guides apply (the
# version its docs pin from istio/istio's go.mod; Istio 1.28's pages: v1.4.0, standard channel)
GATEWAY_API_VERSION: Final = "v1.4.0"
GATEWAY_CRD: Final = "gateways.gateway.networking.k8s.io"
CRD_API_VERSION: Final = "apiextensions.k8s.io/v1"


def find_executable(explicit: Path | None, name: str) -> Path | None:
    """``explicit`` when it is an executable file, else ``name`` on PATH, else None."""
    if explicit is not None:
        return explicit if explicit.is_file() and os.access(explicit, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshconform"


def istioctl_path(options: KubeOptions) -> Path | None:
    """The istioctl to use: the explicit one, the cached download, or the one on PATH."""
    if options.istio_version is not None:
        return cache_dir() / "istioctl" / options.istio_version / "istioctl"
    return find_executable(options.istioctl, "istioctl")


def container_engine_problem(timeout: float = ENGINE_TIMEOUT_S) -> str | None:
    """Why kind could not start node containers here, or None when the engine answers."""
    provider = os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "docker")
    cli = shutil.which(provider)
    if cli is None:
        return (
            f"no {provider} CLI on PATH: kind runs its nodes as containers and needs a running"
            " Docker engine (or podman/nerdctl via KIND_EXPERIMENTAL_PROVIDER)"
        )
    try:
        probe = subprocess.run(
            [cli, "info"],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no {provider} engine: `{provider} info` did not answer within {timeout:.0f}s"
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines()
        detail = next((line for line in reversed(lines) if line.strip()), "no output")
        return (
            f"no {provider.capitalize()} engine: `{provider} info` failed ({detail.strip()});"
            " start it (or point DOCKER_HOST at one)"
        )
    return None


def kind_problems(options: KubeOptions) -> list[str]:
    """Everything missing for --mesh-cluster=kind, each naming its fix."""
    problems = []
    if find_executable(options.kind_bin, "kind") is None:
        if options.kind_bin is not None:
            problems.append(f"--mesh-kind-bin {options.kind_bin} is not an executable file")
        else:
            problems.append(
                f"kind is not on PATH (install it: {KIND_INSTALL_URL}, or pass"
                " --mesh-kind-bin=PATH; meshconform never downloads kind)"
            )
    engine = container_engine_problem()
    if engine is not None:
        problems.append(engine)
    if options.istio_version is not None:
        return problems
    istioctl = istioctl_path(options)
    if istioctl is None:
        if options.istioctl is not None:
            problems.append(f"--mesh-istioctl {options.istioctl} is not an executable file")
        else:
            problems.append(
                "istioctl is not on PATH (install it: "
                f"{ISTIOCTL_INSTALL}, pass --mesh-istioctl=PATH, or --mesh-istio-version=X.Y.Z"
                " to download it)"
            )
    return problems


def kind_context(cluster_name: str) -> str:
    """The kubeconfig context kind writes for a cluster."""
    return f"kind-{cluster_name}"


class KindCluster:
    """A kind cluster through pytest-kind-ng's ``KindCluster``, never downloading kind.

    pytest-kind-ng downloads kind when ``kind_path`` does not exist, so the binary is always
    resolved first (PATH or --mesh-kind-bin) and passed in. Its kubeconfig lives where
    pytest-kind keeps it: ``.pytest-kind/<name>/kubeconfig`` under the working directory.
    """

    def __init__(
        self,
        name: str,
        kind_bin: Path,
        *,
        image: str | None,
        config_file: Path | None,
        progress: Progress,
    ) -> None:
        from pytest_kind import KindCluster as _PytestKindCluster

        self.name = name
        self.kind_bin = kind_bin
        self.config_file = config_file
        self._progress = progress
        # pytest-kind's own place, made absolute so a later chdir cannot lose it
        self.kubeconfig = Path.cwd() / ".pytest-kind" / name / "kubeconfig"
        self._cluster = _PytestKindCluster(
            name, kubeconfig=self.kubeconfig, image=image, kind_path=kind_bin
        )
        self.created = False

    @property
    def context(self) -> str:
        return kind_context(self.name)

    def exists(self) -> bool:
        try:
            out = subprocess.run(
                [str(self.kind_bin), "get", "clusters"],
                capture_output=True,
                timeout=60,
                check=True,
                stdin=subprocess.DEVNULL,
            ).stdout.decode()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            raise MeshError(f"`kind get clusters` failed: {_process_detail(error)}") from error
        return self.name in out.split()

    def ensure(self) -> None:
        """Create the cluster, or reuse it when it exists (a run with --mesh-keep left it)."""
        existed = self.exists()
        if existed:
            self._progress(f"kind: reusing cluster {self.name}")
            if not self.kubeconfig.exists() or self.kubeconfig.stat().st_size == 0:
                self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
                _run_checked(
                    [
                        str(self.kind_bin),
                        "export",
                        "kubeconfig",
                        f"--name={self.name}",
                        f"--kubeconfig={self.kubeconfig}",
                    ],
                    "kind export kubeconfig",
                    120,
                )
        else:
            config = f" from {self.config_file}" if self.config_file else ""
            self._progress(f"kind: creating cluster {self.name}{config} (1-2 minutes)")
            self.created = True  # from here on, an interrupted create still gets deleted
        try:
            self._cluster.create(self.config_file)
        except subprocess.CalledProcessError as error:
            raise MeshError(f"kind create cluster {self.name} failed: {error}") from error

    def release(self, keep: bool) -> list[str]:
        """End of run: delete the cluster if this run created it (and --mesh-keep is off).

        Idempotent; returns what was done or left, for the progress output.
        """
        if keep:
            return [
                f"--mesh-keep: left kind cluster {self.name} (kubectl --kubeconfig"
                f" {self.kubeconfig} --context {self.context} ...); the next run reuses it;"
                f" delete it with: kind delete cluster --name {self.name}"
            ]
        if not self.created:
            return [
                f"kind cluster {self.name} existed before this run: left in place (delete it"
                f" with: kind delete cluster --name {self.name})"
            ]
        self._progress(f"kind: deleting cluster {self.name}")
        try:
            self._cluster.delete()
        except subprocess.CalledProcessError as error:
            raise MeshError(f"kind delete cluster {self.name} failed: {error}") from error
        self.created = False
        return [f"deleted kind cluster {self.name}"]


def _process_detail(error: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    """The tail of what the process said: stderr, then stdout (istioctl prints its readiness
    details there: which resources it still waits for)."""
    said = []
    for label, stream in (("", error.stderr), ("stdout: ", error.stdout)):
        raw = stream or b""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if text.strip():
            said.append(label + text.strip()[-500:])
    return "; ".join(said) or str(error)


def _run_checked(argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            argv, capture_output=True, timeout=timeout, check=True, stdin=subprocess.DEVNULL
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise MeshError(f"{what} failed: {_process_detail(error)}") from error


def download_istioctl(version: str, target: Path, progress: Progress) -> Path:
    """Download istioctl ``version`` from Istio's GitHub release into ``target`` (checked
    against the release's published SHA-256), unless it is already there."""
    if target.is_file():
        return target
    url = istioctl_download_url(version, platform.system(), platform.machine())
    progress(f"downloading istioctl {version} from {url}")
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            archive = response.read()
        with urllib.request.urlopen(f"{url}.sha256", timeout=60) as response:
            expected = response.read().decode().split()[0].lower()
    except OSError as error:
        raise MeshUnavailable(
            f"cannot download istioctl {version} ({url}): {error}; install istioctl and pass"
            " --mesh-istioctl=PATH instead"
        ) from error
    actual = hashlib.sha256(archive).hexdigest()
    if actual != expected:
        raise MeshError(f"istioctl {version}: SHA-256 {actual} does not match {expected}")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = next((m for m in tar.getmembers() if Path(m.name).name == "istioctl"), None)
        extracted = tar.extractfile(member) if member is not None else None
        if extracted is None:
            raise MeshError(f"istioctl {version}: no istioctl in {url}")
        data = extracted.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def install_istio(
    istioctl: Path,
    kubeconfig: Path,
    context: str,
    *,
    revision: str | None,
    cert_ttl: timedelta,
    ready_timeout: timedelta,
    progress: Progress,
    dataplane: Dataplane = "sidecar",
) -> None:
    """``istioctl install`` (idempotent: on a reused cluster it reconciles to our settings)."""
    argv = istioctl_install_argv(
        istioctl,
        kubeconfig,
        context,
        revision=revision,
        cert_ttl=cert_ttl,
        ready_timeout=ready_timeout,
        dataplane=dataplane,
    )
    what = "istiod, istio-cni and ztunnel" if dataplane == "ambient" else "istiod"
    progress(f"installing Istio with {istioctl} (waits for {what})")
    try:
        subprocess.run(
            argv,
            capture_output=True,
            timeout=ready_timeout.total_seconds() + 120,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise MeshError(f"istioctl install failed: {_process_detail(error)}") from error


GATEWAY_API_GROUP: Final = "gateway.networking.k8s.io"
# the Gateway version istioctl waypoint apply writes (gvk.KubernetesGateway)
GATEWAY_KIND_VERSION: Final = "v1"


def gateway_api_problem(served: Sequence[str]) -> str | None:
    """What keeps the cluster from taking a waypoint's Gateway (None: nothing): the versions
    the API server serves ``Gateway`` of ``gateway.networking.k8s.io`` in."""
    if not served:
        return "the Gateway API CRDs are not installed (the API server serves no Gateway kind)"
    if GATEWAY_KIND_VERSION not in served:
        return (
            f"the Gateway API CRDs serve Gateway {', '.join(served)} only, not"
            f" {GATEWAY_API_GROUP}/{GATEWAY_KIND_VERSION} (a release before 1.0)"
        )
    return None


def gateway_api_fix() -> str:
    """The fix for ``gateway_api_problem``, as istio.io's ambient install guide gives it."""
    return f"kubectl apply -f {gateway_api_crds_url()}"


def waypoint_check(
    served: Sequence[str] | None, error: str | None
) -> tuple[Literal["ok", "warn"], str, str, str]:
    """The doctor's and the preflight's finding on an ambient run's waypoint: (status, found,
    what it breaks, the fix) from the versions the API server serves ``Gateway`` in (None: not
    read, ``error`` says why). Without the Gateway API the run goes on without a waypoint."""
    breaks = "the run has no waypoint: the tests that need the waypoint feature are skipped"
    if served is None:
        return (
            "warn",
            f"could not tell whether the cluster serves the Gateway API: {error or 'not read'}",
            f"without it {breaks}",
            "",
        )
    problem = gateway_api_problem(served)
    if problem is not None:
        return "warn", problem, breaks, gateway_api_fix()
    return (
        "ok",
        f"Gateway API served (Gateway {', '.join(served)}): the run gives bar the namespace"
        " waypoint `waypoint`",
        "",
        "",
    )


def gateway_api_crds_url(version: str = GATEWAY_API_VERSION) -> str:
    """The Gateway API release's standard channel, as istio.io's ambient install guide
    applies it (``kubectl apply -f .../releases/download/<version>/standard-install.yaml``)."""
    return (
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/"
        f"{version}/standard-install.yaml"
    )


def gateway_api_crds(text: str) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of a Gateway API release manifest (its other documents,
    if any, are not applied: meshconform installs only the CRDs waypoints need)."""
    found = []
    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
            found.append(document)
    if not found:
        raise MeshError("the Gateway API manifest holds no CustomResourceDefinition")
    return found


class CrdApi(Protocol):
    """What installing the Gateway API CRDs needs of a cluster (``client.KubeApi``)."""

    def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...
    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...


def install_gateway_api_crds(
    api: CrdApi,
    progress: Progress,
    fetch: Callable[[str], bytes] | None = None,
    version: str = GATEWAY_API_VERSION,
) -> bool:
    """The Gateway API CRDs waypoints need (a ``Gateway`` of class ``istio-waypoint``),
    unless the cluster has them (``kubectl get crd gateways.gateway.networking.k8s.io ||
    kubectl apply -f ...``, as Istio's docs do); True when they were applied."""
    if api.get(CRD_API_VERSION, "CustomResourceDefinition", "", GATEWAY_CRD) is not None:
        return False
    url = gateway_api_crds_url(version)
    progress(f"applying the Gateway API {version} CRDs from {url}")
    try:
        text = (fetch or _download)(url).decode("utf-8")
    except OSError as error:
        raise MeshUnavailable(
            f"cannot download the Gateway API CRDs ({url}): {error}; ambient on kind needs them"
            f" for waypoints: apply them to the cluster yourself (kubectl apply -f {url})"
        ) from error
    for crd in gateway_api_crds(text):
        api.apply(crd)
    return True


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return bytes(response.read())


@dataclass(frozen=True, slots=True)
class ResolvedContext:
    name: str
    cluster: str | None  # the kubeconfig cluster entry the context points at


def resolve_context(requested: str) -> ResolvedContext:
    """The kubeconfig context the user named (``current``: the current one).

    Raises MeshUnavailable naming the kubeconfig and the contexts it has.
    """
    from pytest_meshconform.backends.kube.client import k8s_config, kubeconfig_location

    location = kubeconfig_location()
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=location)
    except (k8s_config.ConfigException, OSError, ValueError) as error:
        raise MeshUnavailable(
            f"no usable kubeconfig ({location}): {str(error).rstrip('.')}; --mesh-cluster=existing"
            " needs one with the context named by --mesh-kube-context"
        ) from None
    if requested == "current":
        if not active:
            raise MeshUnavailable(f"kubeconfig {location} has no current context")
        chosen = active
    else:
        chosen = next((c for c in contexts or [] if c.get("name") == requested), None)
        if chosen is None:
            available = ", ".join(sorted(str(c.get("name")) for c in contexts or [])) or "none"
            raise MeshUnavailable(
                f"kube context {requested!r} is not in the kubeconfig ({location}); available:"
                f" {available}"
            )
    cluster = (chosen.get("context") or {}).get("cluster")
    return ResolvedContext(str(chosen.get("name")), str(cluster) if cluster else None)
