"""Which namespace labels Istio's sidecar injector selects, per revision (pure).

istiod's chart installs one MutatingWebhookConfiguration per revision
(manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml):

- ``rev.namespace.sidecar-injector.istio.io`` of revision ``R`` selects namespaces labelled
  ``istio.io/rev`` In [``R``] that carry no ``istio-injection`` label (the default revision's
  ``R`` is ``default``);
- only the default revision adds ``namespace.sidecar-injector.istio.io``, which selects
  ``istio-injection=enabled``;
- every webhook requires ``istio-injection`` absent or ``enabled``, so
  ``istio-injection=disabled`` keeps every revision out.

So a revision other than ``default`` injects only namespaces labelled ``istio.io/rev=<rev>``:
``istio-injection=enabled`` reaches it only through a ``default`` revision tag. See
docs/istio-facts.md (Installation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_REVISION",
    "IMAGE_TYPE_DISTROLESS",
    "INJECTION_LABEL",
    "NATIVE_SIDECARS_ENV",
    "NATIVE_SIDECARS_MIN_KUBELET_MINOR",
    "REVISION_LABEL",
    "TAG_LABEL",
    "NativeSidecarMode",
    "injection_labels",
    "is_distroless_image",
    "kubelet_supports_native_sidecars",
    "native_sidecar_mode",
    "proxy_cluster_domain",
    "proxy_image",
]

DEFAULT_REVISION: Final = "default"
REVISION_LABEL: Final = "istio.io/rev"
INJECTION_LABEL: Final = "istio-injection"
# revision-tags-mwc.yaml: a tag's MutatingWebhookConfiguration (``istio-revision-tag-<tag>``)
# carries ``istio.io/tag: <tag>`` and ``istio.io/rev: <the revision it points to>``
TAG_LABEL: Final = "istio.io/tag"


def injection_labels(revision: str | None, *, injected: bool) -> dict[str, str]:
    """The labels that put a namespace under (or out of) the injector of ``revision``.

    ``revision`` None or ``default``: ``istio-injection=enabled``, as Istio's docs write it;
    another revision: ``istio.io/rev=<revision>``; not injected: ``istio-injection=disabled``.
    """
    if not injected:
        return {INJECTION_LABEL: "disabled"}
    if revision is None or revision == DEFAULT_REVISION:
        return {INJECTION_LABEL: "enabled"}
    return {REVISION_LABEL: revision}


# --- what the injector puts into a pod ---------------------------------------------------------

# istiod's ENABLE_NATIVE_SIDECARS (pilot/pkg/features): "true", "false" or "auto"; "auto" is the
# default since Istio 1.27 (istio/istio#56428, on release-1.27 as #56918), before it the
# variable was a boolean defaulting to false (pilot/pkg/features/experimental.go, 1.26).
NATIVE_SIDECARS_ENV: Final = "ENABLE_NATIVE_SIDECARS"
NATIVE_SIDECARS_AUTO_SINCE: Final = (1, 27)
# DetectNativeSidecar (pkg/kube/inject/webhook.go): "auto" injects native sidecars only when
# every node's kubelet is 1.33 or later (SidecarContainers GA).
NATIVE_SIDECARS_MIN_KUBELET_MINOR: Final = 33
NativeSidecarMode = Literal["true", "false", "auto"]
# inject.go: the image types Istio publishes, appended to the tag as "-<type>"
IMAGE_TYPE_DISTROLESS: Final = "distroless"
_KNOWN_IMAGE_TYPES: Final = ("distroless", "debug")
_RELEASE_RE: Final = re.compile(r"([0-9]+)\.([0-9]+)")


def native_sidecar_mode(env_value: str | None, istio_version: str) -> NativeSidecarMode:
    """istiod's injection mode for native sidecars: its ENABLE_NATIVE_SIDECARS, else the
    default of its release. An unknown value is "false" (``EnableNativeSidecars`` warns and
    disables)."""
    if env_value is None:
        match = _RELEASE_RE.match(istio_version)
        release = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        return "auto" if release >= NATIVE_SIDECARS_AUTO_SINCE else "false"
    value = env_value.strip().lower()
    if value in ("true", "auto"):
        return "true" if value == "true" else "auto"
    return "false"


def kubelet_supports_native_sidecars(kubelet_version: str) -> bool:
    """``checkNodeVersion`` of DetectNativeSidecar: the kubelet's minor version >= 33."""
    match = _RELEASE_RE.match(kubelet_version.lstrip("v"))
    return match is not None and int(match.group(2)) >= NATIVE_SIDECARS_MIN_KUBELET_MINOR


def proxy_image(values: Mapping[str, Any], image_type: str | None) -> str | None:
    """The istio-proxy image the injector writes (``ProxyImage`` and ``imageURL``,
    pkg/kube/inject/inject.go): ``<global.hub>/<global.proxy.image or proxyv2>:<global.tag>``,
    the tag suffixed ``-<type>`` for the image type (``meshConfig.defaultConfig.image.imageType``
    when set, else ``global.variant``; ``default`` or none: no suffix). None without a hub."""
    global_values = values.get("global")
    if not isinstance(global_values, Mapping):
        return None
    hub = global_values.get("hub")
    if not isinstance(hub, str) or not hub:
        return None
    proxy = global_values.get("proxy")
    name = "proxyv2"
    if isinstance(proxy, Mapping) and isinstance(proxy.get("image"), str) and proxy["image"]:
        name = proxy["image"]
    tag = global_values.get("tag")
    tag_text = "" if tag is None else str(tag)
    kind = image_type if image_type is not None else global_values.get("variant")
    if isinstance(kind, str) and kind:
        for known in _KNOWN_IMAGE_TYPES:
            if tag_text.endswith(f"-{known}"):
                tag_text = tag_text[: -(len(known) + 1)]
                break
        if kind != "default":
            tag_text = f"{tag_text}-{kind}"
    return f"{hub}/{name}:{tag_text}"


def proxy_cluster_domain(values: Mapping[str, Any]) -> str | None:
    """``global.proxy.clusterDomain`` of the injector's values: the DNS domain the injection
    template gives istio-proxy (``--domain $(POD_NAMESPACE).svc.<clusterDomain>``)."""
    global_values = values.get("global")
    proxy = global_values.get("proxy") if isinstance(global_values, Mapping) else None
    domain = proxy.get("clusterDomain") if isinstance(proxy, Mapping) else None
    return domain if isinstance(domain, str) and domain else None


def is_distroless_image(image: str) -> bool:
    """Istio's distroless proxy (``global.variant=distroless``, the tag suffix
    ``-distroless``; what the ambient profile installs): no shell, no tcpdump."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    name, _, tag = last.partition(":")
    repository = f"{head}/{name}"
    return tag == "distroless" or tag.endswith("-distroless") or "distroless" in repository
