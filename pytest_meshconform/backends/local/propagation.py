"""Policies on the local mesh: the set in force, pushed to the sidecars, awaited in Envoy.

`apply` and `delete` edit the policy set, ask the model for every sidecar's plan
(`control.plan_sidecars`, `control.plan_ztunnels` for ambient pods' ztunnels and
`control.plan_waypoints` for waypoints), write
those whose config changed (`delivery.render`) and
return once each of those Envoys runs the new version on its worker; a set the proxies refuse
is put back.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_meshconform.backends.local.control import (
    plan_sidecars,
    plan_waypoints,
    plan_ztunnels,
)
from pytest_meshconform.backends.local.delivery import (
    VERSION_STATS_PATH,
    render,
    version_problems,
)
from pytest_meshconform.backends.local.envoyadmin import admin_get_all
from pytest_meshconform.backends.local.lifecycle import LocalLifecycle
from pytest_meshconform.backends.local.runtime import PodRuntime
from pytest_meshconform.backends.local.waypoint import WaypointPlan
from pytest_meshconform.backends.local.xds import SidecarPlan
from pytest_meshconform.backends.local.ztunnel import ZtunnelPlan
from pytest_meshconform.istio.api import Policy, PolicyError, parse_policy
from pytest_meshconform.mesh import MeshError, PropagationTimeout
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = ["PROPAGATION_DEADLINE_S", "LocalPropagation"]

PROPAGATION_DEADLINE_S = 10.0
SLOW_PROPAGATION_S = 1.0


class LocalPropagation(LocalLifecycle):
    """The Mesh protocol's policy actions on the local mesh."""

    def policies(self) -> Sequence[Mapping[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(m)) for m in self._manifests.values()]

    @staticmethod
    def _parse(manifest: Mapping[str, Any], verb: str) -> tuple[tuple[str, str, str], Policy]:
        try:
            policy = parse_policy(dict(manifest))
        except PolicyError as exc:
            raise MeshError(f"cannot {verb} an invalid policy: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise MeshError(f"cannot {verb} {manifest!r:.200}: {exc}") from exc
        return (type(policy).__name__, policy.namespace or "default", policy.name), policy

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or replace a policy; returns once every affected Envoy has it in force."""
        key, policy = self._parse(manifest, "apply")
        with self._lock:
            self._require_state()
            self._change(lambda: self._store(key, policy))

    def delete(self, manifest: Mapping[str, Any]) -> None:
        """Delete a policy (a missing one is not an error); returns once no Envoy uses it."""
        key, _ = self._parse(manifest, "delete")
        with self._lock:
            self._require_state()
            self._change(lambda: self._drop(key))

    def _store(self, key: tuple[str, str, str], policy: Policy) -> None:
        self._policies[key] = policy
        self._manifests[key] = policy.to_manifest()

    def _drop(self, key: tuple[str, str, str]) -> None:
        self._policies.pop(key, None)
        self._manifests.pop(key, None)

    def _change(self, edit: Callable[[], None]) -> None:
        """Edit the policy set and push it; if the proxies refuse it, put the old set back."""
        before = (dict(self._policies), dict(self._manifests))
        edit()
        try:
            self._push()
        except MeshError:
            self._policies, self._manifests = before
            with contextlib.suppress(MeshError):
                self._push()
            raise

    def _push(self) -> None:
        policies = list(self._policies.values())
        plans: dict[str, SidecarPlan | ZtunnelPlan | WaypointPlan] = {
            **plan_sidecars(
                self.topology, policies, self.root_namespace, self.faults, self.min_tls_version
            ),
            **plan_ztunnels(self.topology, policies, self.root_namespace, self.faults),
            **plan_waypoints(self.topology, policies, self.root_namespace, self.faults),
        }
        changed = [self._pods[key] for key, plan in plans.items() if render(self._pods[key], plan)]
        self._wait_versions(changed)

    def _wait_versions(self, runtimes: list[PodRuntime]) -> None:
        """Wait until every changed Envoy runs the config just written (LDS, CDS, workers)."""
        started = time.monotonic()
        noted = False
        pending = list(runtimes)
        waiting: list[tuple[PodRuntime, list[str]]] = []

        def applied() -> bool | None:
            nonlocal pending, waiting, noted
            if not pending:
                return True
            waiting = []
            answers = admin_get_all([r.paths.admin_socket for r in pending], VERSION_STATS_PATH)
            for runtime, answer in zip(pending, answers, strict=True):
                if isinstance(answer, OSError):
                    self._check_alive(runtime)
                    problems = [f"admin socket: {answer}"]
                else:
                    problems = version_problems(runtime, answer[1])
                if problems:
                    waiting.append((runtime, problems))
            if not waiting:
                return True
            self._raise_if_broken()  # a dead or stopped Envoy never catches up: say so now
            if not noted and time.monotonic() - started > SLOW_PROPAGATION_S:
                self._progress(
                    "waiting for Envoy of " + ", ".join(r.key for r, _ in waiting) + " to apply"
                )
                noted = True
            pending = [r for r, _ in waiting]
            return None

        try:
            poll(applied, timeout=PROPAGATION_DEADLINE_S, interval=0.001, what="config in force")
        except WaitTimeout:
            raise PropagationTimeout(
                f"policy change not in force within {PROPAGATION_DEADLINE_S:.0f}s at: "
                + "; ".join(f"{r.key} ({', '.join(p)})" for r, p in waiting)
            ) from None
