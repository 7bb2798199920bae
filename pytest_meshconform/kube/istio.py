"""What meshconform needs to know about an Istio control plane, read from API objects. Pure.

Inputs are Kubernetes objects in their API JSON shape (camelCase, as ``kubectl get -o json``
prints them and as ``ApiClient.sanitize_for_serialization`` turns the client's models into),
istiod's debug endpoint output, and the mesh config YAML. Outputs are frozen dataclasses. The
facts used here come from Istio's source: istiod's environment variables
(``PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING``, ``MAX_WORKLOAD_CERT_TTL``), the
``/debug/config_distribution`` handler (``pilot/pkg/xds/debug.go``, ``SyncedVersions``) and the
config key format ``group/version/Kind/namespace/name`` (``pkg/config/model.go`` ``Key``).

That tracking exists only up to Istio 1.22: 1.23 removed the
``PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING`` flag, the ``/debug/config_distribution`` handler
and ``istioctl experimental wait`` (istio/istio#51866; Istio 1.23.0 change notes);
``distribution_tracking_removed`` tells which istiods are affected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import yaml

from ..settings import format_duration

__all__ = [
    "DEFAULT_MAX_WORKLOAD_CERT_TTL",
    "DISTRIBUTION_DISABLED_MESSAGE",
    "DISTRIBUTION_TRACKING_LAST_MINOR",
    "DistributionEndpointMissing",
    "DistributionTrackingDisabled",
    "IstioDataError",
    "IstiodInfo",
    "MeshConfigInfo",
    "ProxyVersions",
    "config_distribution_path",
    "distribution_key",
    "distribution_tracking_removed",
    "istio_minor_version",
    "istioctl_client_version",
    "istioctl_download_url",
    "istioctl_install_argv",
    "lagging_proxies",
    "parse_config_distribution",
    "parse_go_duration",
    "parse_mesh_config",
    "select_istiod",
    "tracking_removed_message",
]

DEFAULT_MAX_WORKLOAD_CERT_TTL: Final = timedelta(days=90)
DISTRIBUTION_DISABLED_MESSAGE: Final = "Pilot Version tracking is disabled"
# The last Istio minor release with config distribution tracking (removed in 1.23.0).
DISTRIBUTION_TRACKING_LAST_MINOR: Final = (1, 22)
# What a Go http.ServeMux answers for an unregistered path (net/http NotFound), which
# ``pilot-discovery request`` prints with exit code 0 (pilot/pkg/request/command.go lets 404 pass).
_GO_NOT_FOUND_BODY: Final = "404 page not found"
_MINOR_VERSION_RE: Final = re.compile(r"([0-9]+)\.([0-9]+)(?:[.-]|$)")
ISTIOD_CONTAINER: Final = "discovery"
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # strconv.ParseBool
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


class DistributionTrackingDisabled(IstioDataError):
    """istiod runs without PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING."""


class DistributionEndpointMissing(IstioDataError):
    """istiod does not serve ``/debug/config_distribution`` at all (Istio 1.23 and later)."""


def istio_minor_version(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of an Istio version (``1.22.8``, ``1.24-dev``, ``1.25.0-beta.1``);
    None when the text does not start with one (a custom build tag): no guessing."""
    match = _MINOR_VERSION_RE.match(version.strip().removeprefix("v"))
    return (int(match.group(1)), int(match.group(2))) if match else None


def distribution_tracking_removed(version: str) -> bool:
    """True for an Istio without config distribution tracking (1.23 and later).

    An unrecognisable version is not judged here (False): the tracking check itself then
    answers with what istiod said.
    """
    minor = istio_minor_version(version)
    return minor is not None and minor > DISTRIBUTION_TRACKING_LAST_MINOR


def tracking_removed_message(version: str, where: str) -> str:
    """Why meshconform's kube backend cannot work with this Istio, and what works instead."""
    last = ".".join(str(n) for n in DISTRIBUTION_TRACKING_LAST_MINOR)
    return (
        f"{where} runs Istio {version}, which has no config distribution tracking (Istio 1.23"
        " removed PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING, /debug/config_distribution and"
        " `istioctl x wait`, istio/istio#51866): meshconform could not tell when a policy has"
        f" reached the sidecars, and does not guess with sleeps. Use Istio {last}.x (kind:"
        f" --mesh-istio-version={last}.8 or an istioctl {last}.x) or --mesh-cluster=local"
    )


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
    distribution_tracking: bool
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
        revision=str(labels.get("istio.io/rev") or "default"),
        version=str(version),
        image=image,
        distribution_tracking=env.get("PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING") in _GO_TRUE,
        max_workload_cert_ttl=max_ttl,
        pod_selector={str(k): str(v) for k, v in selector.items()},
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
    return MeshConfigInfo(
        trust_domain, root_namespace, str(secret_ttl) if secret_ttl is not None else None
    )


# --- config distribution ---------------------------------------------------------------------


def distribution_key(group: str, version: str, kind: str, namespace: str, name: str) -> str:
    """istiod's config key (``config.Key``): ``group/version/Kind/namespace/name``."""
    return f"{group}/{version}/{kind}/{namespace}/{name}"


def config_distribution_path(key: str, proxy_namespace: str) -> str:
    """The istiod debug path giving every connected proxy's acked version of ``key``."""
    query = urlencode({"resource": key, "proxy_namespace": proxy_namespace})
    return f"/debug/config_distribution?{query}"


@dataclass(frozen=True, slots=True)
class ProxyVersions:
    """``SyncedVersions``: the version of one config object each xDS type a proxy acked."""

    proxy: str  # "<pod>.<namespace>"
    cluster: str
    listener: str
    route: str
    endpoint: str


def parse_config_distribution(data: bytes | str) -> tuple[ProxyVersions, ...]:
    """Parse istiod's ``/debug/config_distribution`` answer (a JSON list, or null)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if text.strip() == _GO_NOT_FOUND_BODY:
        raise DistributionEndpointMissing(
            "istiod does not serve /debug/config_distribution (404 page not found): Istio 1.23"
            " and later removed config distribution tracking"
        )
    if DISTRIBUTION_DISABLED_MESSAGE in text:
        raise DistributionTrackingDisabled(
            "istiod runs without config distribution tracking"
            " (PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING is not true)"
        )
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise IstioDataError(
            f"config_distribution: not JSON ({error.msg}) in {text[:120]!r}"
        ) from error
    if document is None:
        return ()
    if not isinstance(document, list):
        raise IstioDataError(f"config_distribution: expected a list, got {type(document).__name__}")
    result = []
    for index, item in enumerate(document):
        entry = _mapping(item, f"config_distribution[{index}]")
        proxy = entry.get("proxy")
        if not isinstance(proxy, str) or not proxy:
            raise IstioDataError(f"config_distribution[{index}].proxy: {proxy!r}")

        def version(field: str, entry: Mapping[str, Any] = entry, index: int = index) -> str:
            value = entry.get(field, "")
            if not isinstance(value, str):
                raise IstioDataError(f"config_distribution[{index}].{field}: {value!r}")
            return value

        result.append(
            ProxyVersions(
                proxy,
                version("cluster_acked"),
                version("listener_acked"),
                version("route_acked"),
                version("endpoint_acked"),
            )
        )
    return tuple(result)


def lagging_proxies(
    versions: Sequence[ProxyVersions], expected: Collection[str], wanted: Collection[str]
) -> dict[str, str]:
    """Proxies of ``expected`` whose acked listeners and clusters are not at a wanted version.

    Listeners carry a server's mTLS mode (PeerAuthentication), clusters a client's TLS origination
    (DestinationRule), so those two are what a policy change must have reached. ``wanted`` is
    the object's generation (and resourceVersion) after an apply, ``{""}`` after a delete.
    The result maps each lagging proxy to what it has, for the timeout message.
    """
    by_proxy = {v.proxy: v for v in versions}
    lagging: dict[str, str] = {}
    for proxy in sorted(expected):
        seen = by_proxy.get(proxy)
        if seen is None:
            lagging[proxy] = "not connected to istiod"
        elif seen.listener not in wanted or seen.cluster not in wanted:
            lagging[proxy] = f"listeners at {seen.listener!r}, clusters at {seen.cluster!r}"
    return lagging


# --- istioctl --------------------------------------------------------------------------------


def istioctl_client_version(output: bytes | str) -> str:
    """The client version from ``istioctl version --remote=false -o json``
    (``{"clientVersion": {"version": "1.22.8", ...}}``, pkg/version/cobra.go)."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise IstioDataError(
            f"istioctl version: not JSON ({error.msg}) in {text[:120]!r}"
        ) from None
    client = _mapping(document, "istioctl version").get("clientVersion")
    version = _mapping(client, "istioctl version: clientVersion").get("version")
    if not isinstance(version, str) or not version:
        raise IstioDataError(f"istioctl version: clientVersion.version {version!r}")
    return version


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
) -> list[str]:
    """``istioctl install`` for a kind cluster: minimal profile (istiod only), distribution
    tracking on (how meshconform knows a policy reached the proxies), and the agents'
    SECRET_TTL from ``--mesh-cert-ttl`` so rotation suites finish quickly."""
    argv = [
        str(istioctl),
        "install",
        "-y",
        "--kubeconfig",
        str(kubeconfig),
        "--context",
        context,
        "--set",
        "profile=minimal",
        "--set",
        "values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true",
        "--set",
        f"meshConfig.defaultConfig.proxyMetadata.SECRET_TTL={format_duration(cert_ttl)}",
        "--readiness-timeout",
        f"{int(ready_timeout.total_seconds())}s",
    ]
    if revision:
        argv += ["--revision", revision]
    return argv
