"""Options of the kube backend (kind or an existing cluster), added to the meshconform group.

Every flag is ``--mesh-*`` with a ``mesh_*`` ini fallback, resolved CLI first, then ini, then
default, like the plugin's own options (``settings.py``). This module stays cheap to import: the
plugin imports it from ``pytest_addoption`` on every run, so no kubernetes client here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

import pytest

from pytest_meshconform.settings import SettingsError, parse_cert_ttl

__all__ = [
    "DEFAULT_HTTPBIN_IMAGE",
    "DEFAULT_ISTIO_NAMESPACE",
    "DEFAULT_PROPAGATION_TIMEOUT",
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_SLEEP_IMAGE",
    "KubeOptions",
    "add_options",
    "kind_cluster_name_for",
    "resolve_options",
]

# The images of Istio's own samples (samples/curl/curl.yaml, samples/httpbin), pinned.
DEFAULT_SLEEP_IMAGE: Final = "docker.io/curlimages/curl:8.11.1"
DEFAULT_HTTPBIN_IMAGE: Final = "docker.io/mccutchen/go-httpbin:v2.15.0"
DEFAULT_ISTIO_NAMESPACE: Final = "istio-system"
DEFAULT_READY_TIMEOUT: Final = timedelta(minutes=10)  # image pulls on a fresh kind node
DEFAULT_PROPAGATION_TIMEOUT: Final = timedelta(seconds=60)
DEFAULT_KIND_CONFIG: Final = Path("clusters") / "kind.yaml"  # relative to the rootdir

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ISTIO_VERSION_RE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?")
_IMAGE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_KIND_NAME_MAX: Final = 40  # kind names its node container "<name>-control-plane"

# (option dest / ini name suffix, flag, metavar, help) for the plain text options.
_TEXT_OPTIONS: Final = (
    (
        "kind_bin",
        "--mesh-kind-bin",
        "PATH",
        "kind binary for --mesh-cluster=kind (default: kind on PATH; never downloaded).",
    ),
    (
        "kind_cluster_name",
        "--mesh-kind-cluster-name",
        "NAME",
        "Name of the kind cluster (default: derived from the project's rootdir, so two"
        " projects never share one).",
    ),
    (
        "kind_image",
        "--mesh-kind-image",
        "IMAGE",
        "kindest/node image for a new kind cluster (default: kind's own).",
    ),
    (
        "kind_config",
        "--mesh-kind-config",
        "PATH",
        "kind cluster config (default: clusters/kind.yaml under the rootdir if present).",
    ),
    (
        "istioctl",
        "--mesh-istioctl",
        "PATH",
        "istioctl used to install Istio on kind (default: istioctl on PATH).",
    ),
    (
        "istio_version",
        "--mesh-istio-version",
        "X.Y.Z",
        "Download istioctl X.Y.Z from GitHub into the user cache (once) and install that"
        " Istio on kind; for CI with internet. Exclusive with --mesh-istioctl.",
    ),
    (
        "revision",
        "--mesh-revision",
        "REV",
        "Istio revision: kind installs it with --revision, namespaces get istio.io/rev=REV"
        " instead of istio-injection=enabled, and that revision's istiod is used.",
    ),
    (
        "istio_namespace",
        "--mesh-istio-namespace",
        "NS",
        f"Namespace of istiod (default {DEFAULT_ISTIO_NAMESPACE}).",
    ),
    (
        "sleep_image",
        "--mesh-sleep-image",
        "IMAGE",
        f"Client image with curl (default {DEFAULT_SLEEP_IMAGE}); for air-gapped registries.",
    ),
    (
        "httpbin_image",
        "--mesh-httpbin-image",
        "IMAGE",
        f"httpbin image listening on 8080 (default {DEFAULT_HTTPBIN_IMAGE}).",
    ),
    (
        "capture_image",
        "--mesh-capture-image",
        "IMAGE",
        "Image of the ephemeral capture container; needs bash and tcpdump (default: the"
        " mesh's own proxyv2 image, already on the node; a distroless proxy image has"
        " neither, so the run then stops at start until one is named here, e.g."
        " docker.io/nicolaka/netshoot:v0.13).",
    ),
    (
        "ready_timeout",
        "--mesh-ready-timeout",
        "DURATION",
        "Deadline for cluster, Istio and workload rollouts (default 10m).",
    ),
    (
        "propagation_timeout",
        "--mesh-propagation-timeout",
        "DURATION",
        "Deadline for a policy change to reach every sidecar (default 60s).",
    ),
)


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """Add the kube backend's ``--mesh-*`` flags and their ``mesh_*`` ini fallbacks."""
    for dest, flag, metavar, help_text in _TEXT_OPTIONS:
        group.addoption(
            flag,
            dest=f"mesh_{dest}",
            default=None,
            metavar=metavar,
            help=f"{help_text} ini: mesh_{dest}.",
        )
        parser.addini(f"mesh_{dest}", help_text)
    group.addoption(
        "--mesh-allow-mesh-wide",
        dest="mesh_allow_mesh_wide",
        action="store_true",
        default=None,
        help="Allow policies in Istio's root namespace (mesh-wide) on an existing cluster;"
        " without it those tests skip. Always allowed on kind, whose cluster meshconform"
        " owns. ini: mesh_allow_mesh_wide.",
    )
    parser.addini(
        "mesh_allow_mesh_wide",
        "allow mesh-wide (root namespace) policies on an existing cluster",
        type="bool",
        default=False,
    )


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """The kube backend's effective options (paths resolved, values validated)."""

    kind_bin: Path | None = None
    kind_cluster_name: str | None = None  # None: kind_cluster_name_for(rootdir)
    kind_image: str | None = None
    kind_config: Path | None = None
    istioctl: Path | None = None
    istio_version: str | None = None
    revision: str | None = None
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE
    allow_mesh_wide: bool = False
    sleep_image: str = DEFAULT_SLEEP_IMAGE
    httpbin_image: str = DEFAULT_HTTPBIN_IMAGE
    capture_image: str | None = None
    ready_timeout: timedelta = DEFAULT_READY_TIMEOUT
    propagation_timeout: timedelta = DEFAULT_PROPAGATION_TIMEOUT

    def header_line(self) -> str:
        """One line for ``pytest_report_header``: what a kube run will use."""
        parts = [f"istio-namespace={self.istio_namespace}"]
        if self.revision:
            parts.append(f"revision={self.revision}")
        if self.istio_version:
            parts.append(f"istio-version={self.istio_version}")
        parts.append(f"mesh-wide={'allowed' if self.allow_mesh_wide else 'existing: skipped'}")
        return "meshconform kube: " + " ".join(parts)


def kind_cluster_name_for(rootdir: Path) -> str:
    """A kind cluster name per project: ``mc-<dir name>-<hash of its path>``.

    Two checkouts of the same repository get different clusters (the hash), and the name
    still says which project made it (``kind get clusters``).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", rootdir.name.lower()).strip("-")[:24].strip("-")
    digest = hashlib.sha256(str(rootdir).encode()).hexdigest()[:6]
    return f"mc-{slug}-{digest}" if slug else f"mc-{digest}"


def resolve_options(config: pytest.Config) -> KubeOptions:
    """Resolve the kube options of a run; a bad value raises ``pytest.UsageError`` naming it."""
    raw: dict[str, tuple[str, str, Path] | None] = {}
    inipath = config.inipath
    ini_dir = inipath.parent if inipath is not None else config.invocation_params.dir
    for dest, flag, _, _ in _TEXT_OPTIONS:
        cli_value = config.getoption(f"mesh_{dest}", default=None)
        ini_value = config.getini(f"mesh_{dest}")
        if cli_value is not None:
            raw[dest] = (str(cli_value), flag, config.invocation_params.dir)
        elif ini_value:
            raw[dest] = (str(ini_value), f"mesh_{dest} (ini option)", ini_dir)
        else:
            raw[dest] = None
    cli_wide = config.getoption("mesh_allow_mesh_wide", default=None)
    allow_mesh_wide = bool(cli_wide) if cli_wide is not None else _ini_bool(config)
    try:
        return _build(raw, allow_mesh_wide, config.rootpath)
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from error


def _ini_bool(config: pytest.Config) -> bool:
    try:
        return bool(config.getini("mesh_allow_mesh_wide"))
    except (ValueError, pytest.UsageError) as error:  # pytest < 9 raises ValueError
        raise pytest.UsageError(
            f"mesh_allow_mesh_wide (ini option): {error}; accepted values: true, false"
        ) from error


def _build(
    raw: dict[str, tuple[str, str, Path] | None], allow_mesh_wide: bool, rootdir: Path
) -> KubeOptions:
    def text(dest: str) -> tuple[str, str, Path] | None:
        given = raw.get(dest)
        if given is not None and not given[0].strip():
            raise SettingsError(f"{given[1]}: expected a value, got an empty one")
        return given

    def path(dest: str, *, must_exist: bool = False) -> Path | None:
        given = text(dest)
        if given is None:
            return None
        value, spelled, base = given
        resolved = (base / value).expanduser()
        if must_exist and not resolved.is_file():
            raise SettingsError(f"{spelled}: {value!r} is not a file (resolved to {resolved})")
        return resolved

    def matching(dest: str, pattern: re.Pattern[str], what: str, limit: int = 253) -> str | None:
        given = text(dest)
        if given is None:
            return None
        value, spelled, _ = given
        if not pattern.fullmatch(value) or len(value) > limit:
            raise SettingsError(f"{spelled}: invalid value {value!r}; expected {what}")
        return value

    def duration(dest: str, default: timedelta) -> timedelta:
        given = text(dest)
        if given is None:
            return default
        try:
            return parse_cert_ttl(given[0])
        except SettingsError as error:
            raise SettingsError(f"{given[1]}: {error}") from error

    dns_label = "a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric"
    istioctl = path("istioctl")
    istio_version = matching("istio_version", _ISTIO_VERSION_RE, "an Istio release like 1.25.1")
    chosen_istioctl, chosen_version = raw.get("istioctl"), raw.get("istio_version")
    if chosen_istioctl is not None and chosen_version is not None:
        raise SettingsError(
            f"{chosen_istioctl[1]} and {chosen_version[1]} both choose istioctl: pass only one"
        )
    kind_config = path("kind_config", must_exist=True)
    if kind_config is None and (rootdir / DEFAULT_KIND_CONFIG).is_file():
        kind_config = rootdir / DEFAULT_KIND_CONFIG
    image = "an image reference like registry.example/curl:8.11.1"
    return KubeOptions(
        kind_bin=path("kind_bin"),
        kind_cluster_name=matching(
            "kind_cluster_name", _DNS_LABEL_RE, f"{dns_label}, at most {_KIND_NAME_MAX}", 40
        ),
        kind_image=matching("kind_image", _IMAGE_RE, image),
        kind_config=kind_config,
        istioctl=istioctl,
        istio_version=istio_version,
        revision=matching("revision", _DNS_LABEL_RE, dns_label, 63),
        istio_namespace=matching("istio_namespace", _DNS_LABEL_RE, dns_label, 63)
        or DEFAULT_ISTIO_NAMESPACE,
        allow_mesh_wide=allow_mesh_wide,
        sleep_image=matching("sleep_image", _IMAGE_RE, image) or DEFAULT_SLEEP_IMAGE,
        httpbin_image=matching("httpbin_image", _IMAGE_RE, image) or DEFAULT_HTTPBIN_IMAGE,
        capture_image=matching("capture_image", _IMAGE_RE, image),
        ready_timeout=duration("ready_timeout", DEFAULT_READY_TIMEOUT),
        propagation_timeout=duration("propagation_timeout", DEFAULT_PROPAGATION_TIMEOUT),
    )
