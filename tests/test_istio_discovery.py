"""Which labels a run namespace needs from Istio: the injector's for the revision in use
(mutatingwebhook.yaml) and what istiod's discoverySelectors select (LabelSelectorAsSelector and
discoveryNamespacesFilter in istio/istio; Kubernetes label-selector semantics)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pytest_meshconform.backends.kube.control_plane import IstioDataError, parse_mesh_config
from pytest_meshconform.istio.discovery import (
    SelectorError,
    discovered,
    discovery_labels,
    parse_discovery_selectors,
)
from pytest_meshconform.istio.injection import injection_labels

RUN_LABELS = {
    "app.kubernetes.io/managed-by": "meshconform",
    "meshconform.dev/run": "1a2b3c",
    "istio-injection": "enabled",
}


def selectors(text: str) -> Any:
    return parse_discovery_selectors(yaml.safe_load(text))


def test_injection_labels_follow_the_webhook_of_each_revision() -> None:
    assert injection_labels(None, injected=True) == {"istio-injection": "enabled"}
    assert injection_labels("default", injected=True) == {"istio-injection": "enabled"}
    assert injection_labels("1-25-1", injected=True) == {"istio.io/rev": "1-25-1"}
    assert injection_labels("1-25-1", injected=False) == {"istio-injection": "disabled"}


def test_no_selectors_discover_every_namespace() -> None:
    assert discovered((), "mc-1a2b3c-foo", {})
    assert discovery_labels((), "mc-1a2b3c-foo", RUN_LABELS) == {}


def test_a_match_labels_selector_is_met_by_adding_its_labels() -> None:
    found = selectors("- matchLabels: {istio-discovery: enabled}\n")
    assert not discovered(found, "mc-1a2b3c-foo", RUN_LABELS)
    assert discovery_labels(found, "mc-1a2b3c-foo", RUN_LABELS) == {"istio-discovery": "enabled"}


def test_a_namespace_already_selected_needs_nothing() -> None:
    found = selectors(
        "- matchLabels: {team: shop}\n"
        "- matchExpressions: [{key: istio-injection, operator: Exists}]\n"
    )
    assert discovery_labels(found, "mc-1a2b3c-foo", RUN_LABELS) == {}


def test_any_selector_may_match_and_expressions_must_all_hold() -> None:
    found = selectors(
        "- matchLabels: {env: prod}\n"
        "  matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn,"
        " values: [mc-1a2b3c-foo]}]\n"
        "- matchLabels: {istio-discovery: enabled}\n"
    )
    # the first selector's expression excludes this name: the second one's labels are added
    assert discovery_labels(found, "mc-1a2b3c-foo", RUN_LABELS) == {"istio-discovery": "enabled"}
    assert discovery_labels(found, "mc-1a2b3c-bar", RUN_LABELS) == {"env": "prod"}


@pytest.mark.parametrize(
    "text",
    [
        # names only: no label makes another namespace match
        "- matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [shop]}]\n",
        # a label the run's namespaces carry with another value
        "- matchLabels: {app.kubernetes.io/managed-by: argocd}\n",
        # matchLabels whose expression then fails
        "- matchLabels: {env: prod}\n"
        "  matchExpressions: [{key: istio-injection, operator: DoesNotExist}]\n",
        "- null\n",
    ],
)
def test_selectors_no_added_label_can_meet(text: str) -> None:
    found = selectors(text.replace("- null", "-"))
    assert discovery_labels(found, "mc-1a2b3c-foo", RUN_LABELS) is None


def test_an_empty_selector_selects_every_namespace() -> None:
    assert discovered(selectors("- {}\n"), "anything", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("matchLabels: {a: b}\n", "discoverySelectors: expected a list"),
        (
            "- matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
            "'Equals' is not a valid label selector operator",
        ),
        ("- matchExpressions: [{key: a, operator: In}]\n", "operator In with values []"),
        ("- matchExpressions: [{key: a, operator: Exists, values: [b]}]\n", "operator Exists"),
    ],
)
def test_selectors_istiod_rejects_are_refused_naming_them(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message.replace("[", r"\[").replace("]", r"\]")):
        selectors(text)


def test_the_mesh_config_carries_its_discovery_selectors() -> None:
    mesh = parse_mesh_config(
        "discoverySelectors:\n- matchLabels:\n    istio-discovery: enabled\n", "istio-system"
    )
    ((selector,),) = (mesh.discovery_selectors,)
    assert selector.describe() == "{matchLabels: {istio-discovery: enabled}}"
    assert parse_mesh_config("", "istio-system").discovery_selectors == ()
    with pytest.raises(IstioDataError, match="mesh config: discoverySelectors"):
        parse_mesh_config("discoverySelectors: yes\n", "istio-system")
