"""A topology file's waypoints and the labels that choose them (pure): `waypoint:` and
`waypoints:` of a namespace, `labels:` of namespaces, Services and workloads, and the check that
every ``istio.io/use-waypoint`` label binds a waypoint (docs/topology.md; what istiod decides is
`pytest_meshconform.istio.waypoint`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import yaml

from pytest_meshconform.backends.local.topology import Pod, ServiceEntry
from pytest_meshconform.backends.local.topology_reader import TopologyReader
from pytest_meshconform.istio.waypoint import (
    TRAFFIC_TYPES,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    waypoint_binding,
)
from pytest_meshconform.mesh import Waypoint

__all__ = [
    "WaypointBinding",
    "check_use_waypoint_labels",
    "check_waypoint_bindings",
    "check_waypoint_name",
    "namespace_labels_of",
    "parse_waypoint",
]

# namespace labels the file's other fields say (dataplane:, injected:)
_DATAPLANE_LABELS: Final = ("istio.io/dataplane-mode", "istio-injection")


@dataclass(frozen=True, slots=True)
class WaypointBinding:
    """An object whose labels name a waypoint: a Service (`traffic` ``service``), a workload
    (``workload``) or a namespace (``""``: every traffic its objects inherit)."""

    node: yaml.Node
    field: str
    namespace: str
    traffic: str
    labels: dict[str, str]


def check_waypoint_bindings(
    ctx: TopologyReader,
    bindings: list[WaypointBinding],
    waypoints: list[Waypoint],
    namespace_labels: dict[str, tuple[tuple[str, str], ...]],
) -> None:
    """A label naming a waypoint the object cannot use is refused with istiod's status message
    for it (`istio.waypoint.waypoint_binding`): istiod would leave the object without a
    waypoint, its traffic going straight to the pods, which a suite would read as the waypoint
    allowing what it never saw."""
    for binding in bindings:
        labels = dict(namespace_labels.get(binding.namespace, ()))
        if binding.traffic:
            _, problem = waypoint_binding(
                binding.labels, binding.namespace, labels, waypoints, binding.traffic
            )
        else:  # a namespace: any waypoint it names must exist and take it
            found, problem = waypoint_binding({}, binding.namespace, labels, waypoints, "service")
            if found is None and problem is not None and "traffic type" in problem:
                problem = None  # a waypoint for workload traffic: the pods use it
        if problem is None:
            continue
        known = ", ".join(
            f"{w.key} (for {w.traffic_type}, allowedRoutes {w.allowed_routes})" for w in waypoints
        )
        raise ctx.error(
            binding.node,
            f"{binding.field}.{USE_WAYPOINT_LABEL}",
            f"{problem} (istiod's status; the traffic would not go through a waypoint):"
            f" name a waypoint that takes it (waypoints: {known or 'none'})",
        )


def namespace_labels_of(
    ctx: TopologyReader, fields: dict[str, yaml.Node], where: str, dataplane: str
) -> dict[str, str]:
    """A namespace's `labels:`; the data plane ones are said by `dataplane:`, and
    ``istio.io/use-waypoint`` by `waypoint:` when it names the namespace's own."""
    if "labels" not in fields:
        return {}
    labels = ctx.labels(fields["labels"], f"{where}.labels")
    for key in _DATAPLANE_LABELS:
        if key in labels:
            raise ctx.error(
                fields["labels"], f"{where}.labels.{key}", "say the data plane with dataplane:"
            )
    check_use_waypoint_labels(ctx, fields["labels"], f"{where}.labels", labels)
    if USE_WAYPOINT_LABEL in labels:
        if "waypoint" in fields:
            raise ctx.error(
                fields["labels"],
                f"{where}.labels.{USE_WAYPOINT_LABEL}",
                "waypoint: already labels the namespace with its own waypoint: give one of them",
            )
        if dataplane != "ambient" and labels[USE_WAYPOINT_LABEL] != "none":
            raise ctx.error(
                fields["labels"],
                f"{where}.labels.{USE_WAYPOINT_LABEL}",
                f"the namespace has dataplane: {dataplane}; a waypoint serves ambient workloads"
                " only (ztunnel sends their traffic to it): write dataplane: ambient",
            )
    return labels


def check_use_waypoint_labels(
    ctx: TopologyReader, node: yaml.Node, field: str, labels: dict[str, str]
) -> None:
    """``istio.io/use-waypoint-namespace`` is read only beside ``istio.io/use-waypoint``
    (``GetUseWaypoint``): alone it would change nothing."""
    if USE_WAYPOINT_NAMESPACE_LABEL in labels and USE_WAYPOINT_LABEL not in labels:
        raise ctx.error(
            node,
            f"{field}.{USE_WAYPOINT_NAMESPACE_LABEL}",
            f"istiod reads it only beside {USE_WAYPOINT_LABEL} (GetUseWaypoint): add"
            f" {USE_WAYPOINT_LABEL}: <waypoint name>",
        )


def parse_waypoint(ctx: TopologyReader, node: yaml.Node, field: str, namespace: str) -> Waypoint:
    """A waypoint: `<name>` or `{name: <name>, for: <traffic type>, allowedRoutes: ...}`: the
    Gateway ``istioctl waypoint apply [--for <type>]`` writes (class istio-waypoint; traffic
    type ``service`` unless given), its HBONE listener's ``allowedRoutes.namespaces`` `Same`
    (the default), `All`, or `{matchLabels: {...}}` (``from: Selector``)."""
    traffic_type = "service"
    allowed_routes = "Same"
    allowed_labels: tuple[tuple[str, str], ...] = ()
    name_node = node
    if isinstance(node, yaml.MappingNode):
        fields = ctx.mapping(node, field, ("name", "for", "allowedRoutes"), ("name",))
        name_node = fields["name"]
        if "allowedRoutes" in fields:
            allowed_routes, allowed_labels = _allowed_routes(
                ctx, fields["allowedRoutes"], f"{field}.allowedRoutes"
            )
        field_name = f"{field}.name"
        if "for" in fields:
            traffic_type = ctx.string(fields["for"], f"{field}.for")
            if traffic_type not in TRAFFIC_TYPES:  # istioctl's validTrafficTypes
                raise ctx.error(
                    fields["for"],
                    f"{field}.for",
                    f"invalid traffic type: {traffic_type}. Valid options are:"
                    f" {sorted(TRAFFIC_TYPES)}",
                )
    else:
        field_name = field
    name = ctx.name(name_node, field_name)
    if name == "none":  # istioctl: "'none' is a reserved value"
        raise ctx.error(
            name_node,
            field_name,
            "invalid name provided for waypoint, 'none' is a reserved value"
            " (istio.io/use-waypoint: none opts out of waypoints)",
        )
    return Waypoint(
        name=name,
        namespace=namespace,
        traffic_type=traffic_type,
        allowed_routes=allowed_routes,
        allowed_route_labels=allowed_labels,
    )


def _allowed_routes(
    ctx: TopologyReader, node: yaml.Node, field: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`Same`, `All` or `{matchLabels: {...}}` (``from: Selector`` with that selector)."""
    if isinstance(node, yaml.MappingNode):
        fields = ctx.mapping(node, field, ("matchLabels",), ("matchLabels",))
        labels = ctx.labels(fields["matchLabels"], f"{field}.matchLabels")
        if not labels:
            raise ctx.error(
                fields["matchLabels"], f"{field}.matchLabels", "empty: write All instead"
            )
        return "Selector", tuple(sorted(labels.items()))
    value = ctx.string(node, field)
    if value not in ("Same", "All"):
        raise ctx.error(
            node,
            field,
            f"{value!r}: write Same (the default), All, or {{matchLabels: {{...}}}} (from:"
            " Selector)",
        )
    return value, ()


def check_waypoint_name(
    ctx: TopologyReader,
    node: yaml.Node,
    field: str,
    waypoint: Waypoint,
    pods: list[Pod],
    entries: list[ServiceEntry],
) -> None:
    """The waypoint's Deployment and Service are named after it: no workload or Service of
    its namespace may have that name."""
    for pod in pods:
        if pod.workload.name == waypoint.name:
            raise ctx.error(
                node,
                field,
                f"workload {waypoint.name!r} has the waypoint's name (its pod and Service are"
                " named after the waypoint): rename one",
            )
    for entry in entries:
        if entry.service.name == waypoint.name:
            raise ctx.error(
                node,
                field,
                f"Service {waypoint.name!r} has the waypoint's name (the waypoint's own Service"
                " is named so): rename one",
            )
