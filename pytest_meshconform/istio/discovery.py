"""Which namespaces istiod discovers under the mesh config's ``discoverySelectors`` (pure).

With ``discoverySelectors`` set, istiod ignores every namespace none of them selects
(``discoveryNamespacesFilter``, pkg/kube/namespace/filter.go): in particular its namespace
controller never writes the ``istio-ca-root-cert`` ConfigMap there
(pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go filters namespaces and
ConfigMaps through the same filter), so a sidecar in such a namespace never gets the mesh root
and never becomes ready. Selection is Kubernetes label-selector semantics
(``LabelSelectorAsSelector``, pkg/config/mesh/labelselector/labelselector.go): a namespace is
discovered when ANY selector matches its labels; within one selector every ``matchLabels`` entry
and every ``matchExpressions`` requirement must hold; an empty selector matches every
namespace, a null one none; no selectors at all: every namespace. The API server labels every
namespace ``kubernetes.io/metadata.name=<name>`` itself. See docs/istio-facts.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "NAME_LABEL",
    "LabelRequirement",
    "NamespaceSelector",
    "SelectorError",
    "discovered",
    "discovery_labels",
    "parse_discovery_selectors",
]

NAME_LABEL: Final = "kubernetes.io/metadata.name"
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A discoverySelectors entry istiod would reject; the message names it."""


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, slots=True)
class NamespaceSelector:
    """One entry of ``discoverySelectors``; ``null`` for a YAML null (selects nothing)."""

    match_labels: Mapping[str, str]
    match_expressions: tuple[LabelRequirement, ...] = ()
    null: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.null:
            return False
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.holds(labels) for r in self.match_expressions
        )

    def describe(self) -> str:
        """The selector as the mesh config writes it (flow-style YAML)."""
        if self.null:
            return "null"
        parts = []
        if self.match_labels:
            pairs = ", ".join(f"{k}: {v}" for k, v in sorted(self.match_labels.items()))
            parts.append(f"matchLabels: {{{pairs}}}")
        if self.match_expressions:
            exprs = ", ".join(
                f"{{key: {r.key}, operator: {r.operator}"
                + (f", values: [{', '.join(r.values)}]" if r.values else "")
                + "}"
                for r in self.match_expressions
            )
            parts.append(f"matchExpressions: [{exprs}]")
        return "{" + ", ".join(parts) + "}"


def _requirement(raw: Any, where: str) -> LabelRequirement:
    if not isinstance(raw, Mapping):
        raise SelectorError(f"{where}: expected an object, got {raw!r}")
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    if not isinstance(key, str) or not key:
        raise SelectorError(f"{where}: key {key!r}: expected a label key")
    if operator not in _OPERATORS:
        raise SelectorError(f"{where}: {operator!r} is not a valid label selector operator")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{where}: values {values!r}: expected a list of strings")
    # labels.NewRequirement: In/NotIn need values, Exists/DoesNotExist take none
    if (operator in ("In", "NotIn")) != bool(values):
        raise SelectorError(f"{where}: operator {operator} with values {values!r}")
    return LabelRequirement(key, operator, tuple(values))


def parse_discovery_selectors(raw: Any) -> tuple[NamespaceSelector, ...]:
    """``discoverySelectors`` of a mesh config (a list of LabelSelectors; absent: ())."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SelectorError(f"discoverySelectors: expected a list, got {type(raw).__name__}")
    selectors: list[NamespaceSelector] = []
    for index, entry in enumerate(raw):
        where = f"discoverySelectors[{index}]"
        if entry is None:
            selectors.append(NamespaceSelector({}, null=True))
            continue
        if not isinstance(entry, Mapping):
            raise SelectorError(f"{where}: expected a label selector, got {entry!r}")
        match_labels = entry.get("matchLabels") or {}
        if not isinstance(match_labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in match_labels.items()
        ):
            raise SelectorError(f"{where}.matchLabels: expected string labels: {match_labels!r}")
        expressions = entry.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise SelectorError(f"{where}.matchExpressions: expected a list")
        selectors.append(
            NamespaceSelector(
                dict(match_labels),
                tuple(
                    _requirement(e, f"{where}.matchExpressions[{i}]")
                    for i, e in enumerate(expressions)
                ),
            )
        )
    return tuple(selectors)


def discovered(
    selectors: Sequence[NamespaceSelector], name: str, labels: Mapping[str, str]
) -> bool:
    """Whether istiod discovers namespace ``name`` with these labels."""
    if not selectors:
        return True
    full = {**labels, NAME_LABEL: name}
    return any(selector.matches(full) for selector in selectors)


def discovery_labels(
    selectors: Sequence[NamespaceSelector], name: str, labels: Mapping[str, str]
) -> dict[str, str] | None:
    """Labels to add so istiod discovers namespace ``name`` (which will carry ``labels``).

    ``{}`` when it is discovered as it is; else the ``matchLabels`` of the first selector that
    then matches without changing a label the namespace already needs; None when no selector
    can be met by adding labels (e.g. only ``matchExpressions`` on other namespaces' names).
    """
    if discovered(selectors, name, labels):
        return {}
    for selector in selectors:
        wanted = dict(selector.match_labels)
        if not wanted or any(k in labels and labels[k] != v for k, v in wanted.items()):
            continue
        if NAME_LABEL in wanted:
            continue
        if selector.matches({**labels, **wanted, NAME_LABEL: name}):
            return wanted
    return None
