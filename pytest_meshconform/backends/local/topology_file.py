"""The local mesh's topology as data: a YAML file of namespaces, workloads and Services (pure).

`load_topology(path)` (or `parse_topology(text, source)`) returns a `Topology` with addresses
assigned in file order (pods 10.244.0.10 on, Service VIPs 10.96.0.10 on). The built-in one is
`builtin_topology.yaml` beside this module; `--mesh-topology=PATH` names another. The format is
described in docs/topology.md. A file the local mesh cannot run is refused with one
`TopologyError` naming the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from pytest_meshconform.backends.local.topology import (
    POD_CIDR_PREFIX,
    ROOT_NAMESPACE,
    SERVICE_PREFIX,
    Pod,
    ServiceEntry,
    Topology,
    WaypointPod,
    waypoint_pod,
)
from pytest_meshconform.backends.local.topology_reader import (
    TopologyError,
    TopologyReader,
    describe_node,
)
from pytest_meshconform.backends.local.topology_waypoints import (
    WaypointBinding,
    check_use_waypoint_labels,
    check_waypoint_bindings,
    check_waypoint_name,
    namespace_labels_of,
    parse_waypoint,
)
from pytest_meshconform.istio.interception import InterceptionError, sidecar_interception
from pytest_meshconform.istio.protocol import PortProtocol, protocol_of, service_port_protocol
from pytest_meshconform.istio.waypoint import USE_WAYPOINT_LABEL
from pytest_meshconform.mesh import Service, Waypoint, Workload
from pytest_meshconform.userfiles import InputFileError, compose_yaml, read_text

__all__ = [
    "APP_KINDS",
    "BUILTIN_TOPOLOGY",
    "DATAPLANES",
    "DEFAULT_PORTS",
    "SERVING_KINDS",
    "TopologyError",
    "default_topology",
    "load_topology",
    "parse_topology",
]

BUILTIN_TOPOLOGY: Final = Path(__file__).with_name("builtin_topology.yaml")

# The app kinds a workload may run, and the container ports each serves when `ports` is not
# given: httpbin (HTTP, as Istio's samples/httpbin), sleep (a curl client, serves nothing) and
# tcp-echo (answers each line with "hello <line>", as Istio's samples/tcp-echo), grpc-echo (a
# gRPC server answering with the request metadata it saw, and the gRPC health service) and
# tcp-banner (a server-first protocol: tcp-echo that greets every connection first).
APP_KINDS: Final = ("httpbin", "sleep", "tcp-echo", "grpc-echo", "tcp-banner")
DEFAULT_PORTS: Final[dict[str, tuple[int, ...]]] = {
    "httpbin": (8080,),
    "sleep": (),
    "tcp-echo": (9000,),
    "tcp-banner": (9000,),
    "grpc-echo": (50051,),
}
# The app kinds that serve ports: what a port's `serves` may name.
SERVING_KINDS: Final = ("httpbin", "tcp-echo", "grpc-echo", "tcp-banner")
# A namespace's data plane: Envoy sidecars (istio-injection=enabled), ambient (the namespace
# labelled istio.io/dataplane-mode=ambient: ztunnel captures its pods) or none.
DATAPLANES: Final = ("sidecar", "ambient", "none")
_MAX_PODS: Final = 200  # 10.244.0.10 .. 10.244.0.209
_MAX_SERVICES: Final = 200  # VIPs 10.96.0.10 .. 10.96.0.209
# Protocols the local mesh renders: HTTP/1.1, HTTP/2, gRPC and gRPC-Web (an HTTP connection
# manager, with the HTTP/2 codec for the last three, and the grpc_web filter for gRPC-Web), the
# TCP family (a TCP proxy) and ports Istio sniffs (UnsupportedProtocol: both behind Envoy's
# http_inspector). UDP is not proxied by Istio's sidecars, nor rendered here.
_RENDERED: Final = (
    PortProtocol.HTTP,
    PortProtocol.HTTP2,
    PortProtocol.GRPC,
    PortProtocol.GRPC_WEB,
    PortProtocol.UNSUPPORTED,
    *sorted(p for p in PortProtocol if p.is_tcp),
)


@dataclass(slots=True)
class _ServicePortSpec:
    node: yaml.Node
    name: str
    port: int
    target_port: int
    app_protocol: str | None


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    """The topology a YAML text describes; `TopologyError` (file:line: field: problem)."""
    ctx = TopologyReader(source)
    try:  # linear, nesting and aliases bounded (userfiles); no document composes to None
        documents = compose_yaml(text, source)
    except InputFileError as exc:
        raise TopologyError(str(exc)) from None
    if len(documents) > 1:
        raise ctx.error(documents[1], "topology", "a second YAML document: give one")
    root = documents[0] if documents else None
    if root is None:
        raise TopologyError(f"{source}:1: namespaces: the file is empty; list namespaces")
    top = ctx.mapping(root, "topology", ("namespaces",), ("namespaces",))
    namespace_nodes = ctx.sequence(top["namespaces"], "namespaces")
    if not namespace_nodes:
        raise ctx.error(top["namespaces"], "namespaces", "no namespace: list at least one")

    pods: list[Pod] = []
    entries: list[ServiceEntry] = []
    waypoints: list[tuple[yaml.Node, Waypoint, bool]] = []
    namespace_labels: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    bindings: list[WaypointBinding] = []
    seen_namespaces: set[str] = set()
    for ns_index, ns_node in enumerate(namespace_nodes):
        where = f"namespaces[{ns_index}]"
        fields = ctx.mapping(
            ns_node,
            where,
            (
                "name",
                "dataplane",
                "injected",
                "labels",
                "waypoint",
                "waypoints",
                "workloads",
                "services",
            ),
            ("name",),
        )
        namespace = ctx.name(fields["name"], f"{where}.name")
        if namespace == ROOT_NAMESPACE:
            raise ctx.error(
                fields["name"],
                f"{where}.name",
                f"{namespace!r} is reserved (Istio's root namespace); choose another name",
            )
        if namespace in seen_namespaces:
            raise ctx.error(fields["name"], f"{where}.name", f"namespace {namespace!r} given twice")
        seen_namespaces.add(namespace)
        dataplane = _dataplane(ctx, ns_node, fields, where)
        ns_pods = _workloads(
            ctx, fields.get("workloads"), where, namespace, dataplane, len(pods), bindings
        )
        pods += ns_pods
        ns_entries = _services(
            ctx, fields.get("services"), where, namespace, ns_pods, entries, bindings
        )
        entries += ns_entries
        labels = namespace_labels_of(ctx, fields, where, dataplane)
        namespace_labels.append((namespace, tuple(sorted(labels.items()))))
        if USE_WAYPOINT_LABEL in labels:
            bindings.append(WaypointBinding(fields["labels"], f"{where}.labels", namespace, "", {}))
        ns_waypoints: list[tuple[yaml.Node, str, Waypoint, bool]] = []
        if "waypoint" in fields:
            waypoint = parse_waypoint(ctx, fields["waypoint"], f"{where}.waypoint", namespace)
            if dataplane != "ambient":
                raise ctx.error(
                    fields["waypoint"],
                    f"{where}.waypoint",
                    f"namespace {namespace} has dataplane: {dataplane}; a waypoint serves ambient"
                    " workloads only (ztunnel sends their traffic to it): write dataplane:"
                    " ambient, or drop the waypoint (or declare it under waypoints: to serve"
                    " other namespaces)",
                )
            ns_waypoints.append((fields["waypoint"], f"{where}.waypoint", waypoint, True))
        if "waypoints" in fields:
            for index, w_node in enumerate(ctx.sequence(fields["waypoints"], f"{where}.waypoints")):
                at = f"{where}.waypoints[{index}]"
                waypoint = parse_waypoint(ctx, w_node, at, namespace)
                if any(w.name == waypoint.name for _, _, w, _ in ns_waypoints):
                    raise ctx.error(w_node, at, f"waypoint {waypoint.name!r} given twice")
                ns_waypoints.append((w_node, at, waypoint, False))
        for node, at, waypoint, _ in ns_waypoints:
            check_waypoint_name(ctx, node, at, waypoint, ns_pods, ns_entries)
        waypoints += [(node, waypoint, enrolls) for node, _, waypoint, enrolls in ns_waypoints]
    check_waypoint_bindings(ctx, bindings, [w for _, w, _ in waypoints], dict(namespace_labels))
    if len(pods) + len(waypoints) > _MAX_PODS:
        raise ctx.error(
            root,
            "namespaces",
            f"{len(pods)} workloads and {len(waypoints)} waypoints; the local mesh runs at most"
            f" {_MAX_PODS} pods",
        )
    waypoint_pods: tuple[WaypointPod, ...] = tuple(
        waypoint_pod(
            waypoint, f"{POD_CIDR_PREFIX}{10 + len(pods) + index}", enrolls_namespace=enrolls
        )
        for index, (_, waypoint, enrolls) in enumerate(waypoints)
    )
    return Topology(
        pods=tuple(pods),
        services=tuple(entries),
        waypoints=waypoint_pods,
        namespace_label_sets=tuple(namespace_labels),
    )


def _dataplane(
    ctx: TopologyReader, node: yaml.Node, fields: dict[str, yaml.Node], where: str
) -> str:
    """The namespace's `dataplane` (one of DATAPLANES), from `dataplane:` or `injected:`."""
    dataplane: str | None = None
    if "dataplane" in fields:
        dataplane = ctx.string(fields["dataplane"], f"{where}.dataplane")
        if dataplane not in DATAPLANES:
            raise ctx.error(
                fields["dataplane"],
                f"{where}.dataplane",
                f"unknown data plane {dataplane!r}; the local mesh runs: {' | '.join(DATAPLANES)}",
            )
    if "injected" in fields:
        injected = ctx.boolean(fields["injected"], f"{where}.injected")
        implied = "sidecar" if injected else "none"
        if dataplane is not None and dataplane != implied:
            raise ctx.error(
                fields["injected"],
                f"{where}.injected",
                f"injected: {'true' if injected else 'false'} contradicts dataplane: {dataplane};"
                " give only dataplane",
            )
        dataplane = implied
    if dataplane is None:
        raise ctx.error(
            node,
            f"{where}.dataplane",
            f"required field missing: write dataplane: {' | '.join(DATAPLANES)}"
            " (or injected: true | false)",
        )
    return dataplane


def _workload_ports(
    ctx: TopologyReader, node: yaml.Node, field: str, kind: str | None
) -> tuple[tuple[int, ...], tuple[tuple[int, str], ...]]:
    """A workload's `ports`: plain numbers (served by its `kind`) or `{port, serves}`; returns
    the container ports and (port, app kind) for each."""
    ports: list[int] = []
    served: list[tuple[int, str]] = []
    for index, p_node in enumerate(ctx.sequence(node, field)):
        at = f"{field}[{index}]"
        if isinstance(p_node, yaml.MappingNode):
            p_fields = ctx.mapping(p_node, at, ("port", "serves"), ("port", "serves"))
            port = ctx.port(p_fields["port"], f"{at}.port")
            app = ctx.string(p_fields["serves"], f"{at}.serves")
            if app not in SERVING_KINDS:
                raise ctx.error(
                    p_fields["serves"],
                    f"{at}.serves",
                    f"{app!r} serves no port; a port is served by {' or '.join(SERVING_KINDS)}",
                )
        else:
            port = ctx.port(p_node, at)
            if kind is None:
                raise ctx.error(
                    p_node,
                    at,
                    "a plain port is served by the workload's kind, and it names none: give"
                    f" kind, or write {{port: {port}, serves: {' | '.join(SERVING_KINDS)}}}",
                )
            app = kind
        if port in ports:
            raise ctx.error(p_node, at, f"port {port} is listed twice")
        ports.append(port)
        served.append((port, app))
    return tuple(ports), tuple(served)


def _annotations(ctx: TopologyReader, node: yaml.Node, field: str) -> dict[str, str]:
    """A pod's annotations: string values; the interception ones checked as Istio's injector
    checks them (it refuses the pod otherwise)."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, field, f"expected a mapping, got {describe_node(node)}")
    result: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = ctx.string(key_node, f"{field} key")
        result[key] = ctx.string(value_node, f"{field}.{key}")
        try:
            sidecar_interception({key: result[key]})
        except InterceptionError as exc:
            raise ctx.error(value_node, f"{field}.{key}", str(exc)) from None
    return result


def _workloads(
    ctx: TopologyReader,
    node: yaml.Node | None,
    where: str,
    namespace: str,
    dataplane: str,
    first_index: int,
    bindings: list[WaypointBinding],
) -> list[Pod]:
    pods: list[Pod] = []
    names: set[str] = set()
    if node is None:
        return pods
    for index, w_node in enumerate(ctx.sequence(node, f"{where}.workloads")):
        field = f"{where}.workloads[{index}]"
        fields = ctx.mapping(
            w_node,
            field,
            ("name", "kind", "serviceAccount", "labels", "annotations", "ports"),
            ("name",),
        )
        if first_index + len(pods) >= _MAX_PODS:  # stop here: the rest is not even read
            raise ctx.error(w_node, field, f"more than {_MAX_PODS} workloads")
        name = ctx.name(fields["name"], f"{field}.name")
        if name in names:
            raise ctx.error(fields["name"], f"{field}.name", f"workload {name!r} given twice")
        names.add(name)
        kind: str | None = None
        if "kind" in fields:
            kind = ctx.string(fields["kind"], f"{field}.kind")
            if kind not in APP_KINDS:
                raise ctx.error(
                    fields["kind"],
                    f"{field}.kind",
                    f"unknown app kind {kind!r}; known kinds: {', '.join(APP_KINDS)}",
                )
        elif "ports" not in fields:
            raise ctx.error(
                w_node,
                f"{field}.kind",
                f"required field missing (one of {', '.join(APP_KINDS)}), unless every port"
                " says what serves it: ports: [{port: N, serves: APP}]",
            )
        account = (
            ctx.name(fields["serviceAccount"], f"{field}.serviceAccount")
            if "serviceAccount" in fields
            else name
        )
        labels = (
            ctx.labels(fields["labels"], f"{field}.labels") if "labels" in fields else {"app": name}
        )
        if "app" not in labels:
            raise ctx.error(
                fields["labels"],
                f"{field}.labels.app",
                "required: Services select their endpoints by the app label",
            )
        if "labels" in fields:
            check_use_waypoint_labels(ctx, fields["labels"], f"{field}.labels", labels)
            if labels.get(USE_WAYPOINT_LABEL, "none") != "none":
                bindings.append(
                    WaypointBinding(
                        fields["labels"], f"{field}.labels", namespace, "workload", labels
                    )
                )
        annotations = (
            _annotations(ctx, fields["annotations"], f"{field}.annotations")
            if "annotations" in fields
            else {}
        )
        ports = DEFAULT_PORTS[kind] if kind is not None else ()
        served: tuple[tuple[int, str], ...] = ()
        if "ports" in fields:
            ports, served = _workload_ports(ctx, fields["ports"], f"{field}.ports", kind)
            if kind == "sleep" and ports:
                raise ctx.error(
                    fields["ports"], f"{field}.ports", "a sleep workload serves no port"
                )
            if kind != "sleep" and not ports:
                raise ctx.error(
                    fields["ports"],
                    f"{field}.ports",
                    f"a {kind or 'workload without kind'} serves at least one port",
                )
        if kind is None:  # every port said what serves it: the first one names the pod's kind
            kind = served[0][1]
        workload = Workload(
            name=name,
            namespace=namespace,
            app=labels["app"],
            service_account=account,
            has_sidecar=dataplane == "sidecar",
            labels=labels,
            container_ports=ports,
            ambient=dataplane == "ambient",
            annotations=annotations,
        )
        pods.append(
            Pod(
                workload=workload,
                ip=f"{POD_CIDR_PREFIX}{10 + first_index + len(pods)}",
                kind=kind,
                serves=tuple((port, app) for port, app in served if app != kind),
            )
        )
    return pods


def _services(
    ctx: TopologyReader,
    node: yaml.Node | None,
    where: str,
    namespace: str,
    pods: list[Pod],
    earlier: list[ServiceEntry],
    bindings: list[WaypointBinding],
) -> list[ServiceEntry]:
    first_index = len({(e.service.namespace, e.service.name) for e in earlier})  # one VIP each
    entries: list[ServiceEntry] = []
    if node is None:
        return entries
    names: set[str] = set()
    for index, s_node in enumerate(ctx.sequence(node, f"{where}.services")):
        field = f"{where}.services[{index}]"
        fields = ctx.mapping(
            s_node,
            field,
            ("name", "selector", "ports", "clusterIP", "labels"),
            ("name", "selector", "ports"),
        )
        name = ctx.name(fields["name"], f"{field}.name")
        if name in names:
            raise ctx.error(fields["name"], f"{field}.name", f"Service {name!r} given twice")
        names.add(name)
        selector = ctx.labels(fields["selector"], f"{field}.selector")
        if set(selector) != {"app"}:
            raise ctx.error(
                fields["selector"],
                f"{field}.selector",
                "the local mesh selects endpoints by the app label only: write {app: NAME}",
            )
        selected = [p for p in pods if p.workload.labels.get("app") == selector["app"]]
        if len(selected) != 1:
            problem = (
                f"selects no workload of namespace {namespace}"
                if not selected
                else f"selects {len(selected)} workloads"
                f" ({', '.join(p.workload.name for p in selected)}); the local mesh gives each"
                " Service exactly one endpoint"
            )
            raise ctx.error(fields["selector"], f"{field}.selector", problem)
        endpoint = selected[0]
        headless = _headless(ctx, fields.get("clusterIP"), f"{field}.clusterIP")
        labels: dict[str, str] = {}
        if "labels" in fields:
            labels = ctx.labels(fields["labels"], f"{field}.labels")
            check_use_waypoint_labels(ctx, fields["labels"], f"{field}.labels", labels)
            if labels.get(USE_WAYPOINT_LABEL, "none") != "none":
                refusal: str | None = None
                if headless:
                    refusal = (
                        "a headless Service's clients dial the pod's address: its traffic takes"
                        " no Service waypoint (label the workload, with a waypoint for"
                        " workload traffic)"
                    )
                elif not endpoint.workload.ambient:
                    refusal = (
                        "a waypoint serves Services whose endpoints are ambient (ztunnel sends"
                        f" their traffic to it), and {endpoint.workload.name} is not"
                    )
                if refusal is not None:
                    raise ctx.error(
                        fields["labels"], f"{field}.labels.{USE_WAYPOINT_LABEL}", refusal
                    )
                bindings.append(
                    WaypointBinding(
                        fields["labels"], f"{field}.labels", namespace, "service", labels
                    )
                )
        specs = _service_ports(ctx, fields["ports"], f"{field}.ports", endpoint)
        vip_index = first_index + len({e.service.name for e in entries})
        if vip_index >= _MAX_SERVICES:
            raise ctx.error(s_node, field, f"more than {_MAX_SERVICES} Services")
        vip = "" if headless else f"{SERVICE_PREFIX}{10 + vip_index}"
        for port_index, spec in enumerate(specs):
            if not headless:
                continue
            if spec.target_port != spec.port:
                raise ctx.error(
                    spec.node,
                    f"{field}.ports[{port_index}].targetPort",
                    f"targetPort {spec.target_port} differs from port {spec.port}: a headless"
                    " Service's name resolves to the pod, so clients connect to the port itself;"
                    " give the container port as port",
                )
            http = service_port_protocol(spec.port, spec.name, spec.app_protocol).is_http
            for other in (*earlier, *entries):
                o = other.service
                if not o.headless or o.port != spec.port:
                    continue
                if http == protocol_of(o).is_http and (http or other.endpoints == (endpoint,)):
                    raise ctx.error(
                        spec.node,
                        f"{field}.ports[{port_index}].port",
                        f"headless Service {o.name}.{o.namespace} has port {spec.port} too: a"
                        " sidecar has one outbound listener for both (a wildcard one on an HTTP"
                        " port, one per pod on a TCP port), which the local mesh does not merge",
                    )
        for spec in specs:
            entries.append(
                ServiceEntry(
                    service=Service(
                        name=name,
                        namespace=namespace,
                        port=spec.port,
                        target_port=spec.target_port,
                        selector_app=selector["app"],
                        port_name=spec.name,
                        app_protocol=spec.app_protocol,
                        headless=headless,
                    ),
                    vip=vip,
                    endpoints=(endpoint,),
                    labels=tuple(sorted(labels.items())),
                )
            )
    return entries


def _headless(ctx: TopologyReader, node: yaml.Node | None, field: str) -> bool:
    """``clusterIP: None`` makes a headless Service (no VIP); no other value is taken (the local
    mesh assigns the VIPs)."""
    if node is None:
        return False
    if ctx.string(node, field) != "None":
        raise ctx.error(
            node, field, "only None (a headless Service) is taken; leave it out for a VIP"
        )
    return True


def _service_ports(
    ctx: TopologyReader, node: yaml.Node, where: str, endpoint: Pod
) -> list[_ServicePortSpec]:
    specs: list[_ServicePortSpec] = []
    port_nodes = ctx.sequence(node, where)
    if not port_nodes:
        raise ctx.error(node, where, "a Service needs at least one port")
    for index, p_node in enumerate(port_nodes):
        field = f"{where}[{index}]"
        fields = ctx.mapping(
            p_node, field, ("name", "port", "targetPort", "appProtocol"), ("port",)
        )
        port = ctx.port(fields["port"], f"{field}.port")
        target = (
            ctx.port(fields["targetPort"], f"{field}.targetPort")
            if "targetPort" in fields
            else port
        )
        port_name = ctx.string(fields["name"], f"{field}.name") if "name" in fields else ""
        if len(port_nodes) > 1 and not port_name:
            raise ctx.error(p_node, f"{field}.name", "required when a Service has several ports")
        app_protocol = (
            ctx.string(fields["appProtocol"], f"{field}.appProtocol")
            if "appProtocol" in fields
            else None
        )
        for other in specs:
            if other.port == port:
                raise ctx.error(fields["port"], f"{field}.port", f"port {port} given twice")
            if port_name and other.name == port_name:
                raise ctx.error(
                    fields["name"], f"{field}.name", f"port name {port_name!r} given twice"
                )
        if target not in endpoint.workload.container_ports:
            served = ", ".join(map(str, endpoint.workload.container_ports)) or "none"
            raise ctx.error(
                fields.get("targetPort", fields["port"]),
                f"{field}.targetPort",
                f"{endpoint.workload.name} does not serve port {target} (its ports: {served})",
            )
        protocol = service_port_protocol(port, port_name, app_protocol)
        if protocol not in _RENDERED:
            spelled = "appProtocol" if app_protocol is not None else "name"
            raise ctx.error(
                fields.get(spelled, p_node),
                f"{field}.{spelled}",
                f"Istio selects protocol {protocol.value} for it (from the port's"
                f" {'appProtocol' if app_protocol is not None else 'name prefix'}); the local"
                " mesh renders HTTP, HTTP/2, gRPC, gRPC-Web, TCP and sniffed ports: name it"
                " http-..., http2-..., grpc-..., grpc-web-... or tcp-... (or set appProtocol),"
                " or give it a name Istio does not recognise to have it sniffed",
            )
        specs.append(_ServicePortSpec(p_node, port_name, port, target, app_protocol))
    return specs


def load_topology(path: Path) -> Topology:
    """The topology in the file at `path` (`TopologyError` naming line and field), read by
    `userfiles.read_text`: a regular file, UTF-8, at most 1 MiB (MESHCONFORM_MAX_INPUT_BYTES)."""
    try:
        text = read_text(path, "topology file")
    except InputFileError as exc:
        raise TopologyError(str(exc)) from None
    return parse_topology(text, str(path))


def default_topology() -> Topology:
    """The built-in topology (builtin_topology.yaml beside this module)."""
    return load_topology(BUILTIN_TOPOLOGY)
