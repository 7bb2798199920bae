"""What meshconform needs to know about an Istio control plane, read from API objects. Pure.

Inputs are Kubernetes objects in their API JSON shape (camelCase, as ``kubectl get -o json``
prints them and as ``ApiClient.sanitize_for_serialization`` turns the client's models into)
and the mesh config YAML. Outputs are frozen dataclasses. The facts used here come from
Istio's source: istiod's environment (``MAX_WORKLOAD_CERT_TTL``, Go duration syntax) and the
mesh config defaults (``trustDomain`` cluster.local, ``rootNamespace`` istiod's namespace).

Nothing here depends on istiod's config distribution tracking (removed in Istio 1.23,
istio/istio#51866): policies are waited for in the sidecars' own Envoy config
(``envoystate.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from pytest_meshconform.istio.discovery import (
    NamespaceSelector,
    SelectorError,
    parse_discovery_selectors,
)
from pytest_meshconform.istio.injection import DEFAULT_REVISION, REVISION_LABEL
from pytest_meshconform.istio.tls import parse_min_protocol_version
from pytest_meshconform.settings import Dataplane, format_duration

__all__ = [
    "DEFAULT_MAX_WORKLOAD_CERT_TTL",
    "IstioDataError",
    "IstiodInfo",
    "MeshConfigInfo",
    "cert_ttl_problem",
    "istioctl_download_url",
    "istioctl_install_argv",
    "istiod_revisions",
    "parse_go_duration",
    "parse_mesh_config",
    "select_istiod",
]

DEFAULT_MAX_WORKLOAD_CERT_TTL: Final = timedelta(days=90)
ISTIOD_CONTAINER: Final = "discovery"
_GO_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION_PART: Final = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_VERSION_SUFFIXES: Final = ("-distroless", "-debug")


class IstioDataError(ValueError):
    """An Istio object or response does not have the shape Istio gives it; names the field."""


def parse_go_duration(text: str) -> timedelta:
    """Parse a Go ``time.Duration`` string (``2160h0m0s``, ``90m``, ``1.5h``, ``300ms``)."""
    value = text.strip()
    sign = 1.0
    if value[:1] in "+-" and value:
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    if value == "0":
        return timedelta(0)
    position, total = 0, 0.0
    while position < len(value):
        match = _GO_DURATION_PART.match(value, position)
        if match is None:
            raise IstioDataError(f"invalid Go duration {text!r} at {value[position:]!r}")
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    if not value:
        raise IstioDataError(f"invalid Go duration {text!r}: empty")
    return timedelta(seconds=sign * total)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise IstioDataError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, Mapping) else {}


def _version_from_image(image: str) -> str | None:
    last = image.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    for suffix in _VERSION_SUFFIXES:
        tag = tag.removesuffix(suffix)
    return tag or None


@dataclass(frozen=True, slots=True)
class IstiodInfo:
    """One istiod Deployment: which revision, which version, and the limits that matter."""

    name: str
    namespace: str
    revision: str  # "default" when unlabelled
    version: str
    image: str
    max_workload_cert_ttl: timedelta
    pod_selector: Mapping[str, str]

    @property
    def mesh_config_map(self) -> str:
        """istiod's mesh config ConfigMap: ``istio``, or ``istio-<rev>`` for a revision."""
        return "istio" if self.revision == "default" else f"istio-{self.revision}"

    @property
    def label_selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.pod_selector.items()))


def _istiod_info(deployment: Mapping[str, Any]) -> IstiodInfo:
    metadata = _mapping(deployment.get("metadata"), "deployment.metadata")
    name = str(metadata.get("name", ""))
    where = f"deployment {metadata.get('namespace')}/{name}"
    template = _mapping(
        _mapping(deployment.get("spec"), f"{where}: spec").get("template"),
        f"{where}: spec.template",
    )
    pod_spec = _mapping(template.get("spec"), f"{where}: spec.template.spec")
    containers = pod_spec.get("containers") or []
    discovery = next(
        (c for c in containers if isinstance(c, Mapping) and c.get("name") == ISTIOD_CONTAINER),
        None,
    )
    if discovery is None:
        raise IstioDataError(f"{where}: no container named {ISTIOD_CONTAINER!r}")
    image = str(discovery.get("image") or "")
    env = {
        str(e.get("name")): e.get("value")
        for e in discovery.get("env") or []
        if isinstance(e, Mapping)
    }
    labels = _labels(deployment)
    version = (
        labels.get("app.kubernetes.io/version")
        or labels.get("operator.istio.io/version")
        or _version_from_image(image)
    )
    if not version:
        raise IstioDataError(
            f"{where}: cannot tell the Istio version (no app.kubernetes.io/version label and"
            f" image {image!r} has no tag)"
        )
    max_ttl = DEFAULT_MAX_WORKLOAD_CERT_TTL
    max_ttl_text = env.get("MAX_WORKLOAD_CERT_TTL")
    if isinstance(max_ttl_text, str):
        max_ttl = parse_go_duration(max_ttl_text)
    selector = (_mapping(deployment.get("spec"), f"{where}: spec").get("selector") or {}).get(
        "matchLabels"
    ) or {"app": "istiod"}
    return IstiodInfo(
        name=name,
        namespace=str(metadata.get("namespace", "")),
        revision=str(labels.get(REVISION_LABEL) or DEFAULT_REVISION),
        version=str(version),
        image=image,
        max_workload_cert_ttl=max_ttl,
        pod_selector={str(k): str(v) for k, v in selector.items()},
    )


def cert_ttl_problem(istiod: IstiodInfo, cert_ttl: timedelta) -> str | None:
    """Why istiod will not sign certificates of ``cert_ttl``, with the fix; None if it will.

    istiod's CA refuses a CSR whose requested TTL is above ``MAX_WORKLOAD_CERT_TTL`` with a
    TTLError (``IstioCA.sign``, security/pkg/pki/ca/ca.go): the sidecars get no certificate.
    """
    if cert_ttl <= istiod.max_workload_cert_ttl:
        return None
    longest = format_duration(istiod.max_workload_cert_ttl)
    return (
        f"--mesh-cert-ttl {format_duration(cert_ttl)} is above the longest workload certificate"
        f" istiod signs (MAX_WORKLOAD_CERT_TTL={longest} of deployment"
        f" {istiod.namespace}/{istiod.name}): istiod would refuse every sidecar's certificate"
        f" request and no pod would become ready; pass --mesh-cert-ttl={longest} or less"
    )


def istiod_revisions(deployments: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The revisions of the istiod Deployments among ``deployments``, sorted."""
    return tuple(
        sorted(
            {
                str(_labels(d).get(REVISION_LABEL) or DEFAULT_REVISION)
                for d in deployments
                if _labels(d).get("app") == "istiod"
            }
        )
    )


def select_istiod(deployments: Sequence[Mapping[str, Any]], revision: str | None) -> IstiodInfo:
    """Pick the istiod of ``revision`` (or the default one) among a namespace's Deployments.

    Raises IstioDataError saying what was found when no istiod (or more than one) fits.
    """
    istiods = [d for d in deployments if _labels(d).get("app") == "istiod"]
    infos = [_istiod_info(d) for d in istiods]
    if not infos:
        raise IstioDataError("no istiod Deployment (label app=istiod)")
    revisions = sorted({info.revision for info in infos})
    wanted = revision or "default"
    chosen = [info for info in infos if info.revision == wanted]
    if not chosen and revision is None and len(revisions) == 1:
        chosen = infos
    if not chosen:
        hint = "" if revision else "; pass --mesh-revision=REV to pick one"
        raise IstioDataError(
            f"no istiod of revision {wanted!r} (found revisions: {', '.join(revisions)}){hint}"
        )
    if len(chosen) > 1:
        names = ", ".join(info.name for info in chosen)
        raise IstioDataError(f"several istiod Deployments of revision {wanted!r}: {names}")
    return chosen[0]


@dataclass(frozen=True, slots=True)
class MeshConfigInfo:
    trust_domain: str
    root_namespace: str
    secret_ttl: str | None  # meshConfig.defaultConfig.proxyMetadata.SECRET_TTL, if set
    enable_auto_mtls: bool = True  # meshConfig.enableAutoMtls (a BoolValue, true when absent)
    min_tls_version: str = "TLS_AUTO"  # meshConfig.meshMTLS.minProtocolVersion
    # meshConfig.discoverySelectors: () when absent (istiod discovers every namespace)
    discovery_selectors: tuple[NamespaceSelector, ...] = ()


def parse_mesh_config(text: str, istiod_namespace: str) -> MeshConfigInfo:
    """The ``mesh`` key of istiod's ConfigMap (YAML MeshConfig), with Istio's defaults."""
    try:
        document = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as error:
        raise IstioDataError(f"mesh config is not YAML: {error}") from error
    mesh = _mapping(document if document is not None else {}, "mesh config")
    default_config = _mapping(mesh.get("defaultConfig") or {}, "mesh config defaultConfig")
    metadata = _mapping(
        default_config.get("proxyMetadata") or {}, "mesh config defaultConfig.proxyMetadata"
    )
    trust_domain = mesh.get("trustDomain") or "cluster.local"
    root_namespace = mesh.get("rootNamespace") or istiod_namespace
    if not isinstance(trust_domain, str) or not isinstance(root_namespace, str):
        raise IstioDataError(
            f"mesh config: trustDomain {trust_domain!r} / rootNamespace {root_namespace!r}:"
            " expected strings"
        )
    secret_ttl = metadata.get("SECRET_TTL")
    auto_mtls = mesh.get("enableAutoMtls", True)
    if auto_mtls is None:
        auto_mtls = True
    if not isinstance(auto_mtls, bool):
        raise IstioDataError(f"mesh config: enableAutoMtls {auto_mtls!r}: expected a boolean")
    mesh_mtls = _mapping(mesh.get("meshMTLS") or {}, "mesh config meshMTLS")
    try:
        min_tls_version = parse_min_protocol_version(mesh_mtls.get("minProtocolVersion"))
    except ValueError as error:
        raise IstioDataError(f"mesh config: {error}") from None
    try:
        selectors = parse_discovery_selectors(mesh.get("discoverySelectors"))
    except SelectorError as error:
        raise IstioDataError(f"mesh config: {error}") from None
    return MeshConfigInfo(
        trust_domain,
        root_namespace,
        str(secret_ttl) if secret_ttl is not None else None,
        enable_auto_mtls=auto_mtls,
        min_tls_version=min_tls_version,
        discovery_selectors=selectors,
    )


def istioctl_download_url(version: str, system: str, machine: str) -> str:
    """The GitHub release asset of istioctl for this platform (``platform.system/machine``)."""
    system = system.lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine.lower()
    )
    if arch is None:
        raise IstioDataError(f"no istioctl release for machine {machine!r}")
    if system == "linux":
        asset = f"istioctl-{version}-linux-{arch}.tar.gz"
    elif system == "darwin":
        asset = f"istioctl-{version}-osx{'-arm64' if arch == 'arm64' else ''}.tar.gz"
    else:
        raise IstioDataError(f"no istioctl release for system {system!r}")
    return f"https://github.com/istio/istio/releases/download/{version}/{asset}"


def istioctl_install_argv(
    istioctl: Path,
    kubeconfig: Path,
    context: str,
    *,
    revision: str | None,
    cert_ttl: timedelta,
    ready_timeout: timedelta,
    dataplane: Dataplane = "sidecar",
) -> list[str]:
    """``istioctl install`` for a kind cluster: minimal profile (istiod only), or with ambient
    namespaces the ambient profile (istiod, istio-cni, ztunnel: ``istioctl install --set
    profile=ambient``, as istio.io's ambient install guide writes it), and the agents'
    SECRET_TTL from ``--mesh-cert-ttl`` so rotation suites finish quickly (Istio's ztunnel
    chart passes ``meshConfig.defaultConfig.proxyMetadata`` to ztunnel's environment too; the
    run checks the ``secretTtl`` ztunnel reports)."""
    profile = "ambient" if dataplane == "ambient" else "minimal"
    argv = [
        str(istioctl),
        "install",
        "-y",
        "--kubeconfig",
        str(kubeconfig),
        "--context",
        context,
        "--set",
        f"profile={profile}",
        "--set",
        f"meshConfig.defaultConfig.proxyMetadata.SECRET_TTL={format_duration(cert_ttl)}",
        "--readiness-timeout",
        f"{int(ready_timeout.total_seconds())}s",
    ]
    if revision:
        argv += ["--revision", revision]
    return argv
