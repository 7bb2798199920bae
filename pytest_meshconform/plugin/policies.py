"""`apply_policy` -> `PolicyApplier`: apply Istio policies for one test, and put back after it
exactly what was in force before.

Every policy is validated as Istio would (`PolicyError`); one that would apply to nothing
(`istio.selection.unmatched_reason`) is an `UnmatchedPolicyError`, since a test passing under it
tested nothing; a mesh-wide one needs the `mesh_wide` marker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import pytest

from pytest_meshconform.mesh import Mesh, MeshError, MeshWideNotAllowed, Service, Waypoint
from pytest_meshconform.plugin.session import evidence_window
from pytest_meshconform.report.exhibits import Evidence

if TYPE_CHECKING:
    from pytest_meshconform.istio.api import Policy

__all__ = ["PolicyApplier", "PolicySource", "UnmatchedPolicyError", "apply_policy"]


PolicySource = Mapping[str, Any] | str | Path
"""What `apply_policy` takes: a manifest dict, YAML text (one or more documents) or a path."""


class UnmatchedPolicyError(AssertionError):
    """A policy that applies to nothing: its namespace is not in the mesh, or its selector
    matches no workload. A test passing under it would have tested nothing, so it is an error
    unless the test says `apply_policy(..., allow_unmatched=True)`."""


def _policies_from(source: PolicySource) -> list[Policy]:
    __tracebackhide__ = True  # a bad policy points at the suite's line
    from pytest_meshconform.istio.api import parse_policies
    from pytest_meshconform.userfiles import read_text

    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"policy file not found: {path}")
        source = read_text(path, "policy file")  # regular, UTF-8, capped; else InputFileError
    if isinstance(source, Mapping):
        return [parse_policies([source])[0]]
    return list(parse_policies(source))


def _policy_key(mesh: Mesh, manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    """kind, namespace, name; the namespace as the suite spells it (a kube run maps `foo` to a
    per-run namespace, and suites use both spellings)."""
    meta = manifest.get("metadata", {})
    return (
        str(manifest.get("kind")),
        mesh.logical_namespace(str(meta.get("namespace") or "default")),
        str(meta.get("name")),
    )


@final
class PolicyApplier:
    """What `apply_policy` returns: `apply_policy(manifest | yaml_text | path)`.

    Validates every policy (Istio's rules, see `parse_policy`), refuses policies that apply to
    nothing (`UnmatchedPolicyError`), applies them, and returns once every affected proxy has
    them. After the test, `restore()` puts back exactly what was in force before, even when
    the test failed.
    """

    def __init__(self, mesh: Mesh, node: pytest.Item, evidence: Evidence) -> None:
        self._mesh = mesh
        self._node = node
        self._evidence = evidence
        self._before = {_policy_key(mesh, m): dict(m) for m in mesh.policies()}
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __call__(
        self, source: PolicySource, *, allow_unmatched: bool = False
    ) -> list[dict[str, Any]]:
        """Apply the policies in `source`; returns their manifests as applied.

        `allow_unmatched=True` applies a policy whose namespace is missing or whose selector
        matches no workload (for tests about exactly that).
        """
        __tracebackhide__ = True
        policies = _policies_from(source)
        if not allow_unmatched:
            from pytest_meshconform.istio.selection import unmatched_reason

            workloads = self._mesh.workloads()
            for policy in policies:
                # a targetRefs policy binds to a waypoint, which may live in a namespace of no
                # workload (a shared waypoint's): istiod's waypoint status alone says why not
                problem = (
                    _target_ref_problem(self._mesh, policy)
                    if _binds_by_target_refs(policy)
                    else unmatched_reason(
                        policy, workloads, self._mesh.root_namespace, self._mesh.logical_namespace
                    )
                )
                if problem is not None:  # a selector naming a waypoint's pod: istiod's reason
                    problem = _waypoint_pod_problem(self._mesh, policy) or problem
                if problem is not None:
                    raise UnmatchedPolicyError(
                        f"{policy.kind} {policy.namespace or 'default'}/{policy.name} would"
                        f" apply to nothing: {problem}. Fix the policy, or pass"
                        " allow_unmatched=True if the test means it"
                    )
        manifests = [policy.to_manifest() for policy in policies]
        for manifest in manifests:
            key = _policy_key(self._mesh, manifest)
            _check_mesh_wide(self._node, self._mesh, manifest)
            try:
                self._mesh.apply(manifest)
            except MeshWideNotAllowed as exc:
                pytest.skip(str(exc))
            self._applied[key] = manifest
            self._evidence.add_text(f"policy {'/'.join(key)}", _yaml(manifest))
            self._evidence.observed.policies.append(_policy_line(key, manifest))
        return manifests

    def __repr__(self) -> str:  # pytest prints fixture values with a failure: what was applied
        applied = ", ".join("/".join(key) for key in self._applied) or "nothing yet"
        return f"<PolicyApplier on the {self._mesh.backend} mesh: applied {applied}>"

    def restore(self) -> None:
        """Put back the policies in force before the test (delete the ones it added)."""
        errors: list[str] = []
        first: MeshError | None = None
        for key, manifest in reversed(list(self._applied.items())):
            try:
                if key in self._before:
                    self._mesh.apply(self._before[key])
                else:
                    self._mesh.delete(manifest)
            except MeshError as exc:
                errors.append(f"{'/'.join(key)}: {exc}")
                first = first or exc
        self._applied.clear()
        if errors:
            raise MeshError(  # its cause: a dead sidecar makes this an infrastructure error
                "could not restore the policies in force before the test: " + "; ".join(errors)
            ) from first


@pytest.fixture
def apply_policy(mesh: Mesh, request: pytest.FixtureRequest) -> Iterator[PolicyApplier]:
    """Apply Istio policies for this test; afterwards restore exactly what was there before."""
    applier = PolicyApplier(mesh, request.node, evidence_window(mesh, request))
    yield applier
    applier.restore()


def _waypoint_pod_problem(mesh: Mesh, policy: Policy) -> str | None:
    from pytest_meshconform.istio.api import AuthorizationPolicy
    from pytest_meshconform.istio.waypoint import selector_policy_waypoint_problem
    from pytest_meshconform.mesh import waypoints_of

    if not isinstance(policy, AuthorizationPolicy):
        return None
    waypoints = [
        dataclasses.replace(w, namespace=mesh.logical_namespace(w.namespace))
        for w in waypoints_of(mesh)
    ]
    return selector_policy_waypoint_problem(policy, waypoints, mesh.root_namespace)


def _binds_by_target_refs(policy: Policy) -> bool:
    from pytest_meshconform.istio.api import AuthorizationPolicy

    return isinstance(policy, AuthorizationPolicy) and bool(policy.target_refs)


def _target_ref_problem(mesh: Mesh, policy: Policy) -> str | None:
    """Why a ``targetRefs`` AuthorizationPolicy binds to no waypoint of the mesh (istiod's
    waypoint policy status, and why the run has no waypoint where the backend says), or None."""
    from pytest_meshconform.istio.api import AuthorizationPolicy
    from pytest_meshconform.istio.waypoint import target_ref_problem
    from pytest_meshconform.mesh import WaypointAware, waypoint_absence_of, waypoints_of

    if not isinstance(policy, AuthorizationPolicy) or not policy.target_refs:
        return None
    # the Services as the suite spells their namespaces, each with the waypoint it uses
    by_logical = {
        dataclasses.replace(s, namespace=mesh.logical_namespace(s.namespace)): s
        for s in mesh.services()
    }

    def waypoint_of(service: Service) -> Waypoint | None:
        if not isinstance(mesh, WaypointAware):
            return None
        return mesh.service_waypoint(by_logical[service])

    # the waypoints too (a cluster's are in the run's namespaces)
    waypoints = [
        dataclasses.replace(w, namespace=mesh.logical_namespace(w.namespace))
        for w in waypoints_of(mesh)
    ]
    problem = target_ref_problem(
        policy, waypoints, list(by_logical), waypoint_of, mesh.root_namespace
    )
    if problem is not None and not isinstance(mesh, WaypointAware):
        problem += f" (the {mesh.backend} backend runs no waypoints)"
    absence = waypoint_absence_of(mesh)
    if problem is not None and not waypoints and absence is not None:
        problem += f"; this run has no waypoint: {absence}"
    return problem


def _check_mesh_wide(node: pytest.Item, mesh: Mesh, manifest: Mapping[str, Any]) -> None:
    __tracebackhide__ = True
    meta = manifest.get("metadata", {})
    spec = manifest.get("spec") or {}
    kind = manifest.get("kind")
    # A root-namespace AuthorizationPolicy reaches every namespace, selector or not.
    wide = kind == "AuthorizationPolicy" or (
        kind == "PeerAuthentication" and not spec.get("selector")
    )
    if (
        meta.get("namespace") == mesh.root_namespace
        and wide
        and node.get_closest_marker("mesh_wide") is None
    ):
        raise pytest.UsageError(
            f"{node.nodeid} applies a mesh-wide {kind} in"
            f" {mesh.root_namespace} but is not marked @pytest.mark.mesh_wide (shared-cluster runs"
            " deselect mesh-wide tests by that marker)"
        )


def _policy_line(key: tuple[str, str, str], manifest: Mapping[str, Any]) -> str:
    """`PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}`: one line per policy."""
    import json

    kind, namespace, name = key
    spec = json.dumps(manifest.get("spec") or {}, separators=(", ", ": "), sort_keys=False)
    return f"{kind} {namespace}/{name} {spec}"


def _yaml(manifest: Mapping[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(dict(manifest), sort_keys=False))
