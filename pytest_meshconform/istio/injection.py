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

from typing import Final

__all__ = [
    "DEFAULT_REVISION",
    "INJECTION_LABEL",
    "REVISION_LABEL",
    "injection_labels",
]

DEFAULT_REVISION: Final = "default"
REVISION_LABEL: Final = "istio.io/rev"
INJECTION_LABEL: Final = "istio-injection"


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
