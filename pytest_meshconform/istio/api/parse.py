"""Read Istio policy documents: ``parse_policy``, ``parse_policies`` and the ``Policy`` type.

The suites state what a mesh must do in terms of Istio policy objects; this module turns those
objects into frozen dataclasses and rejects what Istio would reject (each kind's module lists
its rules). Accepted objects (anything else is rejected with the accepted list):

- ``PeerAuthentication`` in ``security.istio.io/v1`` and ``security.istio.io/v1beta1``;
- ``DestinationRule`` in ``networking.istio.io/v1``, ``v1beta1`` and ``v1alpha3``;
- ``AuthorizationPolicy`` in ``security.istio.io/v1`` and ``v1beta1``;
- in :func:`parse_policies` also ``v1/List`` (what ``kubectl get -o yaml`` prints), flattened.

Sources are YAML or JSON text (``str`` or UTF-8 ``bytes``, possibly several ``---`` documents,
read by :mod:`.loader`; empty documents are skipped) or already-loaded mappings. Work is linear
in the input. Errors are :class:`.PolicyError`, naming the document (``document 2 items[0]
(PeerAuthentication 'p')``), the field path and the offending value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias

from pytest_meshconform.istio.api.authorization_policy import (
    AUTHORIZATION_POLICY_API_VERSIONS,
    AuthorizationPolicy,
    parse_authorization_policy,
)
from pytest_meshconform.istio.api.destination_rule import (
    DESTINATION_RULE_API_VERSIONS,
    DestinationRule,
    parse_destination_rule,
)
from pytest_meshconform.istio.api.fields import (
    FieldError,
    PolicyError,
    check_argument_namespace,
    describe,
    show,
    type_name,
)
from pytest_meshconform.istio.api.loader import load_yaml
from pytest_meshconform.istio.api.peer_authentication import (
    PEER_AUTHENTICATION_API_VERSIONS,
    PeerAuthentication,
    parse_peer_authentication,
)

__all__ = ["Policy", "PolicyText", "parse_policies", "parse_policy"]

Policy: TypeAlias = PeerAuthentication | DestinationRule | AuthorizationPolicy
"""One Istio policy object of a kind meshconform models."""
PolicyText: TypeAlias = str | bytes | Mapping[str, Any]
"""What :func:`parse_policy` reads: YAML/JSON text, its UTF-8 bytes, or a loaded mapping."""

_ACCEPTED_KINDS: Final = {
    PeerAuthentication.kind: PEER_AUTHENTICATION_API_VERSIONS,
    DestinationRule.kind: DESTINATION_RULE_API_VERSIONS,
    AuthorizationPolicy.kind: AUTHORIZATION_POLICY_API_VERSIONS,
}
POLICY_KINDS: Final = tuple(_ACCEPTED_KINDS)
"""The policy kinds meshconform parses and applies, in the order the docs list them."""
_PARSERS: Final[dict[str, Callable[[Mapping[str, Any], str | None], Policy]]] = {
    PeerAuthentication.kind: parse_peer_authentication,
    DestinationRule.kind: parse_destination_rule,
    AuthorizationPolicy.kind: parse_authorization_policy,
}


def parse_policy(source: PolicyText, *, namespace: str | None = None) -> Policy:
    """Parse exactly one policy from YAML/JSON text or a mapping.

    ``namespace`` works like ``kubectl apply -n``: it fills in a missing
    ``metadata.namespace`` and must agree with one that is present.
    """
    __tracebackhide__ = True  # a bad policy points at the suite's line
    policies = parse_policies(source, namespace=namespace)
    if len(policies) != 1:
        raise PolicyError(f"expected exactly one policy, found {len(policies)}")
    return policies[0]


def parse_policies(
    source: PolicyText | Iterable[Mapping[str, Any]], *, namespace: str | None = None
) -> tuple[Policy, ...]:
    """Parse every policy in YAML/JSON text (``---`` separated), a mapping, or mappings."""
    __tracebackhide__ = True  # a bad policy points at the suite's line
    if namespace is not None:
        check_argument_namespace(namespace, "namespace argument")
    policies: list[Policy] = []
    for label, document in _documents(source):
        try:
            policies.append(_parse_document(document, namespace))
        except FieldError as error:
            raise PolicyError(
                error.problem, path=error.path, document=describe(label, document)
            ) from None
    return tuple(policies)


def _documents(source: object) -> Iterator[tuple[str, object]]:
    """Yield (label, loaded document) pairs, flattening ``kind: List``."""
    if isinstance(source, bytes | bytearray):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as error:
            raise PolicyError(f"input is not UTF-8: {error}") from None
    if isinstance(source, str):
        loaded = load_yaml(source)
    elif isinstance(source, Mapping):
        loaded = [source]
    elif isinstance(source, Iterable):
        loaded = list(source)
    else:
        raise PolicyError(
            f"expected YAML/JSON text, bytes or mappings, got {type(source).__name__}"
        )
    count = 0
    for document in loaded:
        if document is None:  # an empty document between separators
            continue
        count += 1
        label = f"document {count}"
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items")
            if not isinstance(items, list):
                raise PolicyError("a List needs an items list", path="items", document=label)
            for index, item in enumerate(items):
                yield f"{label} items[{index}]", item
        else:
            yield label, document


def _parse_document(document: object, namespace: str | None) -> Policy:
    if not isinstance(document, Mapping):
        raise FieldError("", f"expected a mapping (an object), got {type_name(document)}")
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in _ACCEPTED_KINDS:
        accepted = ", ".join(
            f"{version} {name}"
            for name, versions in _ACCEPTED_KINDS.items()
            for version in versions
        )
        problem = "is required" if kind is None else f"{show(kind)} is not an accepted kind"
        raise FieldError("kind", f"{problem}; accepted: {accepted}")
    return _PARSERS[kind](document, namespace)
