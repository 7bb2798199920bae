"""Config delivery to one sidecar: the files Envoy reads, and whether Envoy runs them.

Every file is written the way Envoy's `watched_directory` needs it (written aside, then renamed
into place: one atomic move) and is Envoy's own (uid 1337, 0600: config, keys and logs are no
other user's). `render` writes a sidecar's CDS then LDS discovery files when they changed, with
the next version; `version_problems` reads Envoy's stats to say why that version is not yet in
force (rejected, warming, draining, not yet built by every worker).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, Final

from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.envoyadmin import admin_get, parse_stats
from pytest_meshconform.backends.local.runtime import PodRuntime, log_tail
from pytest_meshconform.backends.local.sidecar_hbone import hbone_clusters, hbone_listeners
from pytest_meshconform.backends.local.waypoint import (
    WaypointPlan,
    waypoint_clusters,
    waypoint_listeners,
)
from pytest_meshconform.backends.local.ztunnel import (
    ZtunnelPlan,
    ztunnel_clusters,
    ztunnel_listeners,
)
from pytest_meshconform.mesh import MeshError

__all__ = [
    "ENVOY_CONCURRENCY",
    "VERSION_STATS_PATH",
    "render",
    "version_problems",
    "write_json",
    "write_text",
]

ENVOY_CONCURRENCY: Final = 1  # one worker: each listener (re)build is acknowledged once
# The Envoy stats that tell whether a config version is in force, in one admin request.
_VERSION_STATS: Final = (
    "listener_manager.lds.version_text",
    "listener_manager.lds.update_rejected",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_create_success",
    "listener_manager.listener_create_failure",
    "listener_manager.total_listeners_warming",
    "listener_manager.total_filter_chains_draining",
    "listener_manager.total_listeners_draining",
    "cluster_manager.cds.version_text",
    "cluster_manager.cds.update_rejected",
    "cluster_manager.warming_clusters",
)
VERSION_STATS_PATH: Final = "/stats?filter=" + urllib.parse.quote(
    "^(" + "|".join(name.replace(".", r"\.") for name in _VERSION_STATS) + ")$", safe=""
)


def write_json(path: Path, data: Any, *, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    write_text(path, json.dumps(data), owner=owner, mode=mode)


def write_text(path: Path, text: str, *, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    """Write then rename into place: Envoy's watched_directory sees one atomic move.

    Every file is its pod's Envoy's (`owner`: that Envoy's uid and gid, no other pod's) and
    0600: config, keys and logs are no other user's.
    """
    tmp = path.parent / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _discovery_text(version: int, resources_json: str) -> str:
    """xds.discovery_file as text, from resources already encoded (they were, to compare)."""
    return f'{{"version_info": "{version}", "resources": {resources_json}}}'


def render(runtime: PodRuntime, plan: xds.SidecarPlan | ZtunnelPlan | WaypointPlan) -> bool:
    """Write the Envoy's CDS then LDS when they changed (a sidecar's, an ambient pod's
    ztunnel's or a waypoint's); True when anything was written.

    Equal plans render equal config (`xds.SidecarPlan`): the plan last rendered is not
    rendered again (most pods' plans stay the same across a policy change)."""
    if plan == runtime.plan:
        return False
    changed = False
    if isinstance(plan, WaypointPlan):
        clusters, listeners = (
            waypoint_clusters(plan, runtime.paths),
            waypoint_listeners(plan, runtime.paths),
        )
    elif isinstance(plan, ZtunnelPlan):
        clusters, listeners = (
            ztunnel_clusters(plan, runtime.paths),
            ztunnel_listeners(plan, runtime.paths),
        )
    else:
        clusters, listeners = xds.clusters(plan, runtime.paths), xds.listeners(plan, runtime.paths)
        if plan.hbone_tunnels:  # towards ambient pods: HBONE (istio.interop)
            clusters = hbone_clusters(clusters, plan.hbone_tunnels, runtime.paths)
            listeners = hbone_listeners(listeners, plan.hbone_tunnels, runtime.paths)
    cds_doc = json.dumps(clusters, sort_keys=True)
    if cds_doc != runtime.cds_doc:
        runtime.cds_version += 1
        runtime.cds_doc = cds_doc
        write_text(
            runtime.paths.cds,
            _discovery_text(runtime.cds_version, cds_doc),
            owner=runtime.proxy_owner,
        )
        changed = True
    lds_doc = json.dumps(listeners, sort_keys=True)
    if lds_doc != runtime.lds_doc:
        runtime.lds_version += 1
        runtime.lds_doc = lds_doc
        write_text(
            runtime.paths.lds,
            _discovery_text(runtime.lds_version, lds_doc),
            owner=runtime.proxy_owner,
        )
        changed = True
    runtime.plan = plan
    return changed


def version_problems(runtime: PodRuntime, body: bytes | None = None) -> list[str]:
    """Why this Envoy does not run its latest config yet (empty: it does, on its worker).

    `body` is its answer to VERSION_STATS_PATH (fetched here when not given). Raises
    MeshError when Envoy rejected a config or failed to build a listener.
    """
    if body is None:
        _, body = admin_get(runtime.paths.admin_socket, VERSION_STATS_PATH)
    stats = parse_stats(body)

    def number(name: str) -> int:
        try:
            return int(stats.get(name, "0"))
        except ValueError:
            return 0

    refused = (
        number("listener_manager.lds.update_rejected")
        + number("cluster_manager.cds.update_rejected")
        + number("listener_manager.listener_create_failure")
    )
    if refused > runtime.rejected_seen:
        runtime.rejected_seen = refused
        raise MeshError(
            f"Envoy of {runtime.key} rejected its new config: {log_tail(runtime, 'envoy.log')}"
        )
    problems = []
    lds = stats.get("listener_manager.lds.version_text")
    cds = stats.get("cluster_manager.cds.version_text")
    if lds != str(runtime.lds_version):
        problems.append(f"LDS version {lds}, wants {runtime.lds_version}")
    if cds != str(runtime.cds_version):
        problems.append(f"CDS version {cds}, wants {runtime.cds_version}")
    warming = number("listener_manager.total_listeners_warming")
    warming += number("cluster_manager.warming_clusters")
    if warming:
        problems.append(f"{warming} listeners/clusters warming")
    draining = number("listener_manager.total_filter_chains_draining")
    draining += number("listener_manager.total_listeners_draining")
    if draining:  # old chains or listeners still serve their kept-alive connections
        problems.append(f"{draining} replaced filter chains/listeners draining")
    # Each added or modified listener is handed to every worker, which acknowledges it.
    wanted = ENVOY_CONCURRENCY * (
        number("listener_manager.listener_added") + number("listener_manager.listener_modified")
    )
    acked = number("listener_manager.listener_create_success") + number(
        "listener_manager.listener_create_failure"
    )
    if acked < wanted:
        problems.append(f"workers took {acked} of {wanted} listener builds")
    return problems
