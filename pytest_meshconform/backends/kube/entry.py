"""The kube backend's entry points (``BACKEND``): preflight, open, header lines.

Importing this module is cheap: the kubernetes client, pytest-kind-ng and the backend itself are
imported inside these functions.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_meshconform.backends.kube.checkup import (
    MIN_KUBERNETES_CLIENT,
    kubernetes_client_problem,
)
from pytest_meshconform.backends.kube.options import (
    KubeOptions,
    kind_cluster_name_for,
    resolve_options,
)
from pytest_meshconform.backends.registry import Backend, BackendRun
from pytest_meshconform.mesh import Mesh, MeshError, MeshUnavailable
from pytest_meshconform.settings import Dataplane, MeshSettings, SettingsError

if TYPE_CHECKING:
    from pytest_meshconform.backends.kube.backend import KubeMesh
    from pytest_meshconform.backends.kube.checkup import RunRequest
    from pytest_meshconform.backends.kube.client import KubeApi
    from pytest_meshconform.backends.kube.topology import RunNamespaces

__all__ = [
    "BACKEND",
    "MIN_KUBERNETES_CLIENT",
    "kubernetes_client_problem",
    "open_mesh",
    "preflight",
    "run_request",
]

PREFLIGHT_API_TIMEOUT_S = 5.0


def _installed_kubernetes_client() -> str | None:
    try:
        return importlib.metadata.version("kubernetes")
    except importlib.metadata.PackageNotFoundError:
        return None


def preflight(run: BackendRun) -> None:
    """Fail fast, with one message naming the fix, when the kube backend cannot run here.

    Both: a kubernetes client that reads exec streams to their end. kind: the kind binary, a
    container engine that answers and istioctl. existing: the named kube context, a reachable
    API server, istiod (of ``--mesh-revision``) that signs certificates of ``--mesh-cert-ttl``.
    Any Istio version works: policies are waited for in the sidecars' own Envoy config.
    Invalid kube options raise ``SettingsError``.
    """
    settings = run.settings
    options = resolve_options(run.option, run.rootdir)
    client_problem = kubernetes_client_problem(_installed_kubernetes_client())
    if client_problem is not None:
        raise MeshUnavailable(f"--mesh-cluster={settings.cluster}: {client_problem}")
    if settings.cluster == "kind":
        from pytest_meshconform.backends.kube.kind import kind_problems

        problems = kind_problems(options)
        if problems:
            raise MeshUnavailable("--mesh-cluster=kind cannot run here: " + "; ".join(problems))
    elif settings.cluster == "existing":
        _preflight_existing(settings.kube_context or "current", options, settings)


def _preflight_existing(kube_context: str, options: KubeOptions, settings: MeshSettings) -> None:
    """The checks of ``meshconform doctor`` (``checkup.py``): any that would break the run
    refuses it here, before a test, each with its fix."""
    from pytest_meshconform.backends.kube.checkup import blocking, check_survey
    from pytest_meshconform.backends.kube.client import KubeApi, KubeApiError
    from pytest_meshconform.backends.kube.kind import resolve_context
    from pytest_meshconform.backends.kube.survey import survey_cluster

    context = resolve_context(kube_context)
    try:
        api = KubeApi.connect(None, context.name, retries=0)
    except KubeApiError as error:
        raise MeshUnavailable(f"kube context {context.name!r}: {error}") from None
    where = f"context {context.name!r} ({api.server})"
    request = run_request(options, settings)
    try:
        survey = survey_cluster(api, request)
    except KubeApiError as error:
        raise MeshUnavailable(f"the cluster of {where} is unreachable: {error}") from None
    problems = blocking(check_survey(survey, request))
    if problems:
        raise MeshUnavailable(
            f"{where} cannot run meshconform: "
            + "; ".join(f"[{p.check}] {p.text()}" for p in problems)
            + f" (meshconform doctor --mesh-kube-context={context.name} shows every check)"
        )


def run_request(options: KubeOptions, settings: MeshSettings) -> RunRequest:
    """What a run with these options asks of an existing cluster (``checkup.RunRequest``)."""
    from pytest_meshconform.backends.kube.checkup import RunRequest

    return RunRequest(
        istio_namespace=options.istio_namespace,
        revision=options.revision,
        cert_ttl=settings.cert_ttl,
        capture_image=options.capture_image,
        allow_mesh_wide=options.allow_mesh_wide,
        ambient="ambient" in settings.dataplanes,
        run_id=secrets.token_hex(3),
        owner=_owner(),
    )


def _owner() -> str:
    """The run namespaces' owner annotation: a later run on this host sweeps them only once
    this process is gone (``KubeMesh._run_is_dead``)."""
    from pytest_meshconform.backends.kube.topology import RunOwner, owner_text

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return owner_text(RunOwner(user, socket.gethostname(), os.getpid()))


def open_mesh(run: BackendRun, progress: Callable[[str], None]) -> Mesh:
    """Bring up the kube mesh for this session and return it started.

    kind: create (or reuse) the project's kind cluster, ``istioctl install`` Istio with the
    run's SECRET_TTL. existing: the named context, Istio as it
    is. Then the run's namespaces and workloads, ready. On failure or Ctrl-C, whatever this call
    created is removed again (unless ``--mesh-keep``).
    """
    from pytest_meshconform.backends.kube.client import KubeApi
    from pytest_meshconform.backends.kube.kind import (
        KindCluster,
        download_istioctl,
        find_executable,
        install_gateway_api_crds,
        install_istio,
        istioctl_path,
        kind_problems,
        resolve_context,
    )
    from pytest_meshconform.backends.kube.topology import RunNamespaces

    settings = run.settings
    if settings.cluster not in ("kind", "existing"):
        raise MeshError(f"the kube backend does not run --mesh-cluster={settings.cluster}")
    if settings.faults:
        raise SettingsError("--mesh-fault exists only for --mesh-cluster=local")
    options = resolve_options(run.option, run.rootdir)
    names = RunNamespaces(secrets.token_hex(3))
    if settings.cluster == "existing":
        context = resolve_context(settings.kube_context or "current")
        run_dir = _run_dir(names)
        try:
            api = KubeApi.connect(None, context.name, discovery_cache=run_dir / "discovery.json")
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        existing = _kube_mesh(api, "existing", options, settings, names, progress, run_dir)
        return existing.start()  # start() cleans up after itself when it fails

    problems = kind_problems(options)
    kind_bin = find_executable(options.kind_bin, "kind")
    if problems or kind_bin is None:
        raise MeshUnavailable("--mesh-cluster=kind cannot run here: " + "; ".join(problems))
    name = options.kind_cluster_name or kind_cluster_name_for(run.rootdir)
    kind = KindCluster(
        name, kind_bin, image=options.kind_image, config_file=options.kind_config, progress=progress
    )
    run_dir = _run_dir(names)
    try:
        kind.ensure()
        istioctl = istioctl_path(options)
        if istioctl is None:
            raise MeshUnavailable("istioctl is not on PATH any more")
        if options.istio_version is not None:
            istioctl = download_istioctl(options.istio_version, istioctl, progress)
        install_istio(
            istioctl,
            kind.kubeconfig,
            kind.context,
            revision=options.revision,
            cert_ttl=settings.cert_ttl,
            ready_timeout=options.ready_timeout,
            progress=progress,
            dataplane=_dataplane(settings),
        )
        api = KubeApi.connect(
            kind.kubeconfig, kind.context, discovery_cache=run_dir / "discovery.json"
        )
        if _dataplane(settings) == "ambient":
            install_gateway_api_crds(api, progress)
    except BaseException:  # Ctrl-C included: a cluster this call created goes again
        shutil.rmtree(run_dir, ignore_errors=True)
        for message in kind.release(settings.keep):
            progress(message)
        raise
    mesh = _kube_mesh(
        api,
        "kind",
        options,
        settings,
        names,
        progress,
        run_dir,
        on_close=kind.release,
        cluster_name=name,
    )
    return mesh.start()  # start() closes, and so releases the cluster, when it fails


def _kube_mesh(
    api: KubeApi,
    backend: Literal["kind", "existing"],
    options: KubeOptions,
    settings: MeshSettings,
    names: RunNamespaces,
    progress: Callable[[str], None],
    run_dir: Path,
    **extra: Any,
) -> KubeMesh:
    """A KubeMesh for this run (not started): what both cluster kinds share."""
    from pytest_meshconform.backends.kube.backend import KubeMesh

    return KubeMesh(
        api,
        backend=backend,
        options=options,
        cert_ttl=settings.cert_ttl,
        keep=settings.keep,
        names=names,
        progress=progress,
        owner=_owner(),
        run_dir=run_dir,
        artifacts=settings.artifacts,
        dataplane=_dataplane(settings),
        **extra,
    )


def _dataplane(settings: MeshSettings) -> Dataplane:
    """The one data plane this mesh runs (the plugin opens one mesh per data plane of
    ``--mesh-dataplane=both``)."""
    if settings.dataplane == "both":
        raise MeshError("--mesh-dataplane=both reaches a backend as one mesh per data plane")
    return settings.dataplane


def _header_lines(run: BackendRun) -> list[str]:
    return [resolve_options(run.option, run.rootdir).header_line()]


BACKEND = Backend(preflight=preflight, open=open_mesh, header_lines=_header_lines)


def _run_dir(names: RunNamespaces) -> Path:
    """Where this run keeps captures (removed at the end unless --mesh-keep)."""
    return Path(tempfile.mkdtemp(prefix=f"meshconform-kube-{names.run_id}-"))
