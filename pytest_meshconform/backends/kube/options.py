"""Options of the kube backend (kind or an existing cluster): declared here, resolved here.

Every flag is ``--mesh-*`` with a ``mesh_*`` ini fallback, resolved CLI first, then ini, then
default, like the plugin's own options (``settings.py``); the plugin registers ``KUBE_OPTIONS``
with pytest and hands their given values to ``resolve_options``. This module stays cheap to
import: the plugin imports it from ``pytest_addoption`` on every run, so no kubernetes client.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

from pytest_meshconform.backends.registry import BackendOption, GivenOption, OptionLookup
from pytest_meshconform.settings import SettingsError, parse_cert_ttl

__all__ = [
    "DEFAULT_HTTPBIN_IMAGE",
    "DEFAULT_ISTIO_NAMESPACE",
    "DEFAULT_PROPAGATION_TIMEOUT",
    "DEFAULT_READY_TIMEOUT",
    "DEFAULT_SLEEP_IMAGE",
    "KUBE_OPTIONS",
    "PROPAGATION_MODES",
    "KubeOptions",
    "PropagationMode",
    "kind_cluster_name_for",
    "resolve_options",
]

# The images of Istio's own samples (samples/curl/curl.yaml, samples/httpbin), pinned.
DEFAULT_SLEEP_IMAGE: Final = "docker.io/curlimages/curl:8.11.1"
DEFAULT_HTTPBIN_IMAGE: Final = "docker.io/mccutchen/go-httpbin:v2.15.0"
DEFAULT_ISTIO_NAMESPACE: Final = "istio-system"
DEFAULT_READY_TIMEOUT: Final = timedelta(minutes=10)  # image pulls on a fresh kind node
DEFAULT_PROPAGATION_TIMEOUT: Final = timedelta(seconds=60)
PropagationMode = Literal["model", "version"]
"""What a policy change waits for: the model's facts in each dump, or a newer xDS push."""
PROPAGATION_MODES: Final[tuple[PropagationMode, ...]] = ("model", "version")
DEFAULT_KIND_CONFIG: Final = Path("clusters") / "kind.yaml"  # relative to the rootdir

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ISTIO_VERSION_RE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?")
_IMAGE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_KIND_NAME_MAX: Final = 40  # kind names its node container "<name>-control-plane"

# The plain text options, then the one on/off flag (``ALLOW_MESH_WIDE``).
_TEXT_OPTIONS: Final = (
    BackendOption(
        "kind_bin",
        metavar="PATH",
        help="kind binary for --mesh-cluster=kind (default: kind on PATH; never downloaded).",
    ),
    BackendOption(
        "kind_cluster_name",
        metavar="NAME",
        help="Name of the kind cluster (default: derived from the project's rootdir, so two"
        " projects never share one).",
    ),
    BackendOption(
        "kind_image",
        metavar="IMAGE",
        help="kindest/node image for a new kind cluster (default: kind's own).",
    ),
    BackendOption(
        "kind_config",
        metavar="PATH",
        help="kind cluster config (default: clusters/kind.yaml under the rootdir if present).",
    ),
    BackendOption(
        "istioctl",
        metavar="PATH",
        help="istioctl used to install Istio on kind (default: istioctl on PATH).",
    ),
    BackendOption(
        "istio_version",
        metavar="X.Y.Z",
        help="Download istioctl X.Y.Z from GitHub into the user cache (once) and install that"
        " Istio on kind; for CI with internet. Exclusive with --mesh-istioctl.",
    ),
    BackendOption(
        "revision",
        metavar="REV",
        help="Istio revision: kind installs it with --revision, namespaces get istio.io/rev=REV"
        " instead of istio-injection=enabled, and that revision's istiod is used.",
    ),
    BackendOption(
        "istio_namespace",
        metavar="NS",
        help=f"Namespace of istiod (default {DEFAULT_ISTIO_NAMESPACE}).",
    ),
    BackendOption(
        "sleep_image",
        metavar="IMAGE",
        help=f"Client image with curl (default {DEFAULT_SLEEP_IMAGE}); for air-gapped registries.",
    ),
    BackendOption(
        "httpbin_image",
        metavar="IMAGE",
        help=f"httpbin image listening on 8080 (default {DEFAULT_HTTPBIN_IMAGE}).",
    ),
    BackendOption(
        "capture_image",
        metavar="IMAGE",
        help="Image of the ephemeral capture container; needs bash and tcpdump (default: the"
        " mesh's own proxyv2 image, already on the node; a distroless proxy image has"
        " neither, so the run then stops at start until one is named here, e.g."
        " docker.io/nicolaka/netshoot:v0.13).",
    ),
    BackendOption(
        "ready_timeout",
        metavar="DURATION",
        help="Deadline for cluster, Istio and workload rollouts (default 10m).",
    ),
    BackendOption(
        "propagation_timeout",
        metavar="DURATION",
        help="Deadline for a policy change to reach every sidecar (default 60s).",
    ),
    BackendOption(
        "propagation",
        metavar="model|version",
        help="What apply_policy waits for on a cluster: 'model' (the default), every sidecar's"
        " Envoy config implementing what the Istio model predicts; 'version', the weaker"
        " check for an Istio that renders differently, each affected sidecar accepting a"
        " newer xDS push from istiod. The local mesh checks both at once and ignores it.",
    ),
)
ALLOW_MESH_WIDE: Final = BackendOption(
    "allow_mesh_wide",
    help="Allow policies in Istio's root namespace (mesh-wide) on an existing cluster;"
    " without it those tests skip. Always allowed on kind, whose cluster meshconform"
    " owns.",
    ini_help="allow mesh-wide (root namespace) policies on an existing cluster",
)
KUBE_OPTIONS: Final[tuple[BackendOption, ...]] = (*_TEXT_OPTIONS, ALLOW_MESH_WIDE)
"""The kube backend's options, in the order ``--help`` lists them."""


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
    propagation: PropagationMode = "model"

    def header_line(self) -> str:
        """One line for ``pytest_report_header``: what a kube run will use."""
        parts = [f"istio-namespace={self.istio_namespace}"]
        if self.revision:
            parts.append(f"revision={self.revision}")
        if self.istio_version:
            parts.append(f"istio-version={self.istio_version}")
        parts.append(f"mesh-wide={'allowed' if self.allow_mesh_wide else 'existing: skipped'}")
        parts.append(f"propagation={self.propagation}")
        return "meshconform kube: " + " ".join(parts)


def kind_cluster_name_for(rootdir: Path) -> str:
    """A kind cluster name per project: ``mc-<dir name>-<hash of its path>``.

    Two checkouts of the same repository get different clusters (the hash), and the name
    still says which project made it (``kind get clusters``).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", rootdir.name.lower()).strip("-")[:24].strip("-")
    digest = hashlib.sha256(str(rootdir).encode()).hexdigest()[:6]
    return f"mc-{slug}-{digest}" if slug else f"mc-{digest}"


def resolve_options(option: OptionLookup, rootdir: Path) -> KubeOptions:
    """Resolve the kube options of a run; a bad value raises ``SettingsError`` naming it."""
    raw: dict[str, GivenOption | None] = {spec.name: option(spec.name) for spec in _TEXT_OPTIONS}
    allow_mesh_wide = option(ALLOW_MESH_WIDE.name)
    return _build(raw, allow_mesh_wide is not None and bool(allow_mesh_wide.value), rootdir)


def _build(raw: dict[str, GivenOption | None], allow_mesh_wide: bool, rootdir: Path) -> KubeOptions:
    def text(dest: str) -> tuple[str, str, Path] | None:
        given = raw.get(dest)
        if given is None:
            return None
        if not str(given.value).strip():
            raise SettingsError(f"{given.spelled}: expected a value, got an empty one")
        return str(given.value), given.spelled, given.base_dir

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
            f"{chosen_istioctl.spelled} and {chosen_version.spelled} both choose istioctl:"
            " pass only one"
        )
    kind_config = path("kind_config", must_exist=True)
    if kind_config is None and (rootdir / DEFAULT_KIND_CONFIG).is_file():
        kind_config = rootdir / DEFAULT_KIND_CONFIG
    image = "an image reference like registry.example/curl:8.11.1"
    propagation: PropagationMode = "model"
    given = text("propagation")
    if given is not None:
        value, spelled, _ = given
        if value not in PROPAGATION_MODES:
            raise SettingsError(
                f"{spelled}: invalid value {value!r};"
                f" accepted values: {', '.join(PROPAGATION_MODES)}"
            )
        propagation = "version" if value == "version" else "model"
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
        propagation=propagation,
    )
