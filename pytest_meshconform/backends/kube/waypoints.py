"""Waypoints on a cluster: an ambient run's namespace waypoints, deployed as
``istioctl waypoint apply`` deploys them, and the wait until istiod has them running.

An ambient run gives ``bar`` the namespace waypoint ``waypoint``, as the local mesh's built-in
topology does (``topology.namespace_waypoint``). ``KubeWaypoints`` (a mixin of ``KubeMesh``):

- before the namespaces are made, looks for the Gateway API (``Gateway`` of
  ``gateway.networking.k8s.io/v1`` served; the kind cluster's ambient profile installs it):
  without it the run has no waypoint (the ``waypoint`` feature is absent, the tests that need
  it are skipped naming it; the progress line and ``meshconform doctor`` say what is missing
  and the fix); a Gateway the API server then refuses as an unknown kind (404) is an error
  naming the fix;
- labels the namespace ``istio.io/use-waypoint: waypoint`` when it creates it, and applies the
  Gateway ``istioctl waypoint apply`` writes (``istio.waypoint.waypoint_gateway``: class
  ``istio-waypoint``, listener ``mesh`` on 15008 speaking HBONE, ``istio.io/waypoint-for`` only
  when not ``service``; ``istio.io/rev`` under ``--mesh-revision``, as ``--revision`` does);
- waits until istiod's deployment controller has set the Gateway's ``Programmed`` condition
  True (what ``istioctl waypoint apply --wait`` waits for) and the Deployment it made (labelled
  ``gateway.networking.k8s.io/gateway-name``) has its replicas ready, printing each new state
  of the wait; the timeout names what is missing.

The Gateway and istiod's Deployment live in the run's namespace and go with it at close.
Pure helpers (``gateway_api_problem``, ``waypoint_problem``) take API JSON; the mixin does the
I/O through ``ClusterApi``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from pytest_meshconform.backends.kube.client import KubeApiError, is_transient
from pytest_meshconform.backends.kube.kind import (
    GATEWAY_API_GROUP,
    GATEWAY_KIND_VERSION,
    gateway_api_fix,
    gateway_api_problem,
)
from pytest_meshconform.backends.kube.lifecycle import KubeLifecycle, object_meta, pod_is_ready
from pytest_meshconform.backends.kube.topology import LOGICAL_NAMESPACES, namespace_waypoint
from pytest_meshconform.backends.kube.waypointstate import WaypointExpectation
from pytest_meshconform.istio import Authorization
from pytest_meshconform.istio.waypoint import (
    GATEWAY_NAME_LABEL,
    USE_WAYPOINT_LABEL,
    service_waypoint as model_service_waypoint,
    waypoint_authorization,
    waypoint_gateway,
)
from pytest_meshconform.mesh import MeshError, Service, Waypoint
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = [
    "KubeWaypoints",
    "gateway_programmed",
    "waypoint_problem",
]

PROGRAMMED: Final = "Programmed"  # gateway.GatewayConditionProgrammed
_REVISION_LABEL: Final = "istio.io/rev"  # label.IoIstioRev
_POLL_S: Final = 1.0


def gateway_programmed(gateway: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The Gateway's ``Programmed`` condition as (status, reason, message); None when istiod
    has set none yet."""
    status = _mapping(gateway.get("status"))
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == PROGRAMMED:
            return (
                str(condition.get("status") or ""),
                str(condition.get("reason") or ""),
                str(condition.get("message") or ""),
            )
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _labelled(objects: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [
        o
        for o in objects
        if (object_meta(o).get("labels") or {}).get(GATEWAY_NAME_LABEL) == name
        and not object_meta(o).get("deletionTimestamp")
    ]


def waypoint_problem(
    waypoint: Waypoint,
    gateway: Mapping[str, Any] | None,
    deployments: Sequence[Mapping[str, Any]],
) -> str | None:
    """What the waypoint still lacks (None: running): its Gateway, the Gateway's
    ``Programmed`` condition, the Deployment istiod makes for it, or that Deployment's ready
    replicas. ``deployments``: the namespace's (only those labelled with the Gateway's name
    count)."""
    where = f"Gateway {waypoint.key}"
    if gateway is None:
        return f"{where} not found"
    condition = gateway_programmed(gateway)
    if condition is None:
        return (
            f"{where} has no {PROGRAMMED} condition yet (istiod has not taken it: is istiod"
            " running with the Gateway API CRDs installed before it started?)"
        )
    status, reason, message = condition
    if status != "True":
        detail = ": ".join(part for part in (reason, message) if part) or "no reason given"
        return f"{where} is not {PROGRAMMED} ({PROGRAMMED}={status or '?'}, {detail})"
    found = _labelled(deployments, waypoint.name)
    if not found:
        return (
            f"{where} is {PROGRAMMED} but no Deployment labelled"
            f" {GATEWAY_NAME_LABEL}={waypoint.name} exists in {waypoint.namespace} yet"
        )
    deployment = found[0]
    wanted = _mapping(deployment.get("spec")).get("replicas")
    wanted = wanted if isinstance(wanted, int) and wanted > 0 else 1
    ready = _mapping(deployment.get("status")).get("readyReplicas")
    ready = ready if isinstance(ready, int) else 0
    if ready < wanted:
        name = object_meta(deployment).get("name")
        return f"Deployment {waypoint.namespace}/{name} has {ready}/{wanted} replicas ready"
    return None


class KubeWaypoints(KubeLifecycle):
    """The waypoints of a ``KubeMesh`` run (see the module's docstring)."""

    # the run's waypoints: planned before the namespaces are made, running after start
    _waypoints: tuple[Waypoint, ...]
    # why an ambient run has no waypoint (the cluster lacks the Gateway API), with the fix;
    # None: it has (`mesh.WaypointAbsence`)
    waypoint_absence: str | None
    _services: Sequence[Service]

    def _plan_waypoints(self) -> None:
        """The waypoints this run will deploy: ``bar``'s namespace waypoint on an ambient run,
        if the cluster serves the Gateway API (else none, and ``waypoint_absence`` says why and
        how to fix it)."""
        planned = tuple(
            Waypoint(name, self.names.real(logical))
            for logical in LOGICAL_NAMESPACES
            if (name := namespace_waypoint(logical, self.dataplane)) is not None
        )
        self._waypoints = ()
        self.waypoint_absence = None
        if not planned:
            return
        problem = gateway_api_problem(self.api.served_versions(GATEWAY_API_GROUP, "Gateway"))
        if problem is None:
            self._waypoints = planned
            return
        self.waypoint_absence = f"{problem}; fix: {gateway_api_fix()}"
        self._progress(
            f"no waypoint for this run: {problem}; the tests that need the waypoint feature"
            f" are skipped; fix: {gateway_api_fix()}"
        )

    def _apply_waypoints(self) -> None:
        """Each planned waypoint's Gateway, as ``istioctl waypoint apply`` writes it."""
        for waypoint in self._waypoints:
            gateway = waypoint_gateway(waypoint)
            if self.revision is not None:
                meta = gateway["metadata"]
                assert isinstance(meta, dict)
                meta["labels"] = {**meta.get("labels", {}), _REVISION_LABEL: self.revision}
            try:
                self.api.apply(gateway)
            except KubeApiError as error:
                if error.status != 404:
                    raise
                # istioctl: "missing Kubernetes Gateway CRDs need to be installed before
                # applying a waypoint"
                raise MeshError(
                    f"cannot apply Gateway {waypoint.key}: the Gateway API CRDs are not"
                    f" installed ({error}); fix: {gateway_api_fix()}"
                ) from None

    def _wait_waypoints_ready(self) -> None:
        """Until every waypoint's Gateway is ``Programmed`` and its Deployment ready (within
        ``--mesh-ready-timeout``), printing what is awaited once the wait takes a while; the
        timeout names what each waypoint lacks."""
        if not self._waypoints:
            return
        started = time.monotonic()
        missing: dict[str, str] = {}
        shown = ""
        self._progress(
            f"waiting for istiod to deploy waypoint {', '.join(w.key for w in self._waypoints)}"
        )

        def ready() -> Literal[True] | None:
            nonlocal shown
            missing.clear()
            for waypoint in self._waypoints:
                gateway = self.api.get(
                    f"{GATEWAY_API_GROUP}/{GATEWAY_KIND_VERSION}",
                    "Gateway",
                    waypoint.namespace,
                    waypoint.name,
                )
                deployments: list[dict[str, Any]] = []
                if gateway is not None and gateway_programmed(gateway) is not None:
                    deployments = self.api.list_deployments(
                        waypoint.namespace, f"{GATEWAY_NAME_LABEL}={waypoint.name}"
                    )
                problem = waypoint_problem(waypoint, gateway, deployments)
                if problem is not None:
                    missing[waypoint.key] = problem
            if not missing:
                return True
            waited = time.monotonic() - started
            summary = "; ".join(missing.values())
            if summary != shown:  # each new state of the wait (istiod takes 10-60 s)
                self._progress(f"waiting {waited:.0f}s for the waypoints: {summary}")
                shown = summary
            return None

        try:
            poll(
                ready,
                timeout=self.options.ready_timeout.total_seconds(),
                interval=_POLL_S,
                what="every waypoint Programmed and its Deployment ready",
                transient=is_transient,
            )
        except WaitTimeout as timeout:
            raise MeshError(
                f"waypoints not ready after {self.options.ready_timeout}"
                f" (--mesh-ready-timeout): {'; '.join(missing.values()) or '?'}"
                f"{timeout.transient_note}"
            ) from None

    def waypoints(self) -> Sequence[Waypoint]:
        """The run's waypoints (``bar``'s namespace waypoint on an ambient run whose cluster
        serves the Gateway API), with their real namespaces."""
        return self._waypoints

    def service_waypoint(self, service: Service) -> Waypoint | None:
        """The waypoint the Service's traffic goes through (the model's ``service_waypoint``
        with the labels this run gave the Service's namespace)."""
        own = [w.name for w in self._waypoints if w.namespace == service.namespace]
        labels = {USE_WAYPOINT_LABEL: own[0]} if own else {}
        return model_service_waypoint(
            {"app": service.selector_app}, service.namespace, labels, self._waypoints
        )

    def _waypoint_expectation(
        self, waypoint: Waypoint, policies: Sequence[object], exact: bool
    ) -> WaypointExpectation:
        """What the waypoint's Envoy must carry under ``policies`` (the model's
        ``waypoint_authorization``): per port of each run Service it serves, and for its
        workload-addressed chains."""

        def authorization(service: Service | None) -> Authorization:
            return waypoint_authorization(
                waypoint,
                service,
                policies,
                root_namespace=self.root_namespace,
                trust_domain=self.trust_domain,
            )

        return WaypointExpectation(
            waypoint.key,
            waypoint.namespace,
            waypoint.name,
            {
                (s.fqdn, s.port): authorization(s)
                for s in self._services
                if not s.headless and self.service_waypoint(s) == waypoint
            },
            authorization(None),
            exact,
        )

    def _waypoint_pod(self, waypoint: Waypoint) -> str:
        """The name of a ready pod of the waypoint (istiod labels them with the Gateway's
        name); MeshError when none is."""
        pods = self.api.list_pods(waypoint.namespace, f"{GATEWAY_NAME_LABEL}={waypoint.name}")
        for pod in pods:
            if pod_is_ready(pod) and not object_meta(pod).get("deletionTimestamp"):
                return str(object_meta(pod).get("name"))
        raise MeshError(
            f"no ready pod of waypoint {waypoint.key} (labelled"
            f" {GATEWAY_NAME_LABEL}={waypoint.name}; {len(pods)} found)"
        )
