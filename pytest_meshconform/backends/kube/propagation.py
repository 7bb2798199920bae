"""Propagation of a policy change: the policies in force, what each sidecar must then do, and
the wait until every sidecar's own Envoy config (``/config_dump``) implements it.

``KubePropagation`` (a mixin of ``KubeMesh``) reads the PeerAuthentications, DestinationRules
and AuthorizationPolicies that can affect the run's sidecars, asks the Istio model
(``pytest_meshconform.istio``) what each sidecar must implement, and waits, printing what it
waits for, until each does or the propagation timeout names the laggards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

from pytest_meshconform.backends.kube.authzstate import authz_mismatches, parse_inbound_authz
from pytest_meshconform.backends.kube.client import KubeApiError
from pytest_meshconform.backends.kube.envoystate import (
    EnvoyStateError,
    SidecarExpectation,
    expected_sidecar,
    mismatches,
    parse_config_dump,
)
from pytest_meshconform.backends.kube.lifecycle import (
    POLICY_KINDS,
    POLL_S,
    KubeLifecycle,
    object_meta,
)
from pytest_meshconform.backends.kube.topology import LocalizedManifest
from pytest_meshconform.istio import Authorization, authorization_for
from pytest_meshconform.istio.api import Policy, PolicyError, parse_policy
from pytest_meshconform.mesh import MeshError, PropagationTimeout, Service, Workload
from pytest_meshconform.waiting import WaitTimeout, poll

# The kinds whose effect on the sidecars' Envoy config meshconform predicts (and so waits for).
PROPAGATION_KINDS: Final = frozenset(
    {"PeerAuthentication", "DestinationRule", "AuthorizationPolicy"}
)
# A propagation wait says what it waits for once it has taken this long (then on each change).
_PROGRESS_AFTER_S: Final = 5.0


class _Expected(NamedTuple):
    """What one sidecar must implement under the policies in force (the Istio model's)."""

    workload: Workload
    sidecar: SidecarExpectation
    authorization: Authorization
    # False: some policies could not be read (root namespace) or modelled (CUSTOM, AUDIT): the
    # RBAC filters must carry at least the modelled rules
    authz_exact: bool


class KubePropagation(KubeLifecycle):
    """Waiting for policy changes to reach the sidecars of a ``KubeMesh``."""

    _services: Sequence[Service]

    def _policies_in_force(self) -> tuple[list[Policy], bool, bool]:
        """PeerAuthentications, DestinationRules and AuthorizationPolicies that can affect this
        run's sidecars (its namespaces' and the root namespace's), as istiod sees them, with
        real namespaces; whether the root namespace could be read (a user on a shared cluster
        may not); and whether every AuthorizationPolicy could be modelled (a platform's own
        CUSTOM or AUDIT policy in the root namespace cannot: the sidecars' RBAC filters are
        then only checked to carry the modelled ones)."""
        found: list[Policy] = []
        root_known = True
        authz_modelled = True
        for group, kind in POLICY_KINDS:
            if kind not in PROPAGATION_KINDS:
                continue
            versions = self._served(group, kind)
            if not versions:
                continue
            for namespace in (*self.names.all_real, self.root_namespace):
                try:
                    objects = self.api.list_objects(f"{group}/{versions[0]}", kind, namespace)
                except KubeApiError:
                    if namespace != self.root_namespace:
                        raise
                    root_known = False
                    continue
                for obj in objects:
                    try:
                        policy = parse_policy(obj)
                    except PolicyError as error:
                        if kind == "AuthorizationPolicy":
                            authz_modelled = False
                            continue
                        raise MeshError(
                            f"cannot predict what the sidecars must do: {error}"
                        ) from None
                    found.append(policy)
        return found, root_known, authz_modelled

    def _expectations(self) -> dict[str, _Expected]:
        """Per sidecar of the run, what its Envoy must implement under the policies in force:
        mTLS and clusters (``envoystate``) and the AuthorizationPolicy RBAC filters
        (``authzstate``), both from the Istio model."""
        policies, root_known, authz_modelled = self._policies_in_force()
        expected: dict[str, _Expected] = {}
        for workload in self._workloads:
            if not workload.has_sidecar:
                continue
            labels = object_meta(self._pod(workload)).get("labels") or workload.labels
            try:
                labelled = dataclasses.replace(
                    workload, labels={str(k): str(v) for k, v in labels.items()}
                )
                expected[workload.key] = _Expected(
                    workload,
                    expected_sidecar(
                        policies,
                        namespace=workload.namespace,
                        labels={str(k): str(v) for k, v in labels.items()},
                        container_ports=workload.container_ports,
                        services=self._services,
                        root_namespace=self.root_namespace,
                        root_known=root_known,
                        workloads=self._workloads,
                        name=workload.name,
                        auto_mtls=self.mesh_config.enable_auto_mtls,
                    ),
                    authorization_for(labelled, policies, root_namespace=self.root_namespace),
                    root_known and authz_modelled,
                )
            except (PolicyError, EnvoyStateError) as error:
                raise MeshError(f"cannot predict what {workload.key} must do: {error}") from None
        return expected

    def _sidecar_lag(self, expected: _Expected) -> str | None:
        """None when the sidecar's own Envoy config implements ``expected``, else what it
        has instead (or why it could not be read)."""
        try:
            dump = self.envoy_admin(expected.workload, "/config_dump")
            state = parse_config_dump(dump)
        except MeshError as error:
            return f"config_dump not readable: {error}"
        except EnvoyStateError as error:
            return f"config_dump not understood: {error}"
        found = mismatches(state, expected.sidecar) + authz_mismatches(
            parse_inbound_authz(dump),
            expected.authorization,
            root_known=expected.authz_exact,
        )
        if not found:
            return None
        return "; ".join(found) + f" [{state.version}]"

    def _wait_propagated(self, localized: LocalizedManifest, verb: str) -> None:
        """Wait until every sidecar of the run implements, in its own Envoy config
        (``/config_dump``), the inbound mTLS modes and outbound cluster TLS that the Istio
        model (``pytest_meshconform.istio``) predicts for the policies now in force. Works on
        every Istio version; raises PropagationTimeout naming each lagging sidecar, what it has and
        what was expected."""
        timeout = self.options.propagation_timeout
        deadline = self._deadline(timeout)
        started = time.monotonic()
        pending = self._expectations()
        lagging: dict[str, str] = {}
        shown = ""

        def propagated() -> Literal[True] | None:
            nonlocal shown
            lagging.clear()
            for key, expectation in list(pending.items()):
                lag = self._sidecar_lag(expectation)
                if lag is None:
                    del pending[key]  # it has the change; later pushes cannot undo it
                else:
                    lagging[key] = lag
            if not pending:
                return True
            waited = time.monotonic() - started
            summary = ", ".join(sorted(lagging))
            if waited >= _PROGRESS_AFTER_S and summary != shown and time.monotonic() <= deadline:
                self._progress(
                    f"waiting {waited:.0f}s for {localized.describe} ({verb}) to reach {summary}"
                )
                shown = summary
            return None

        try:
            poll(
                propagated,
                timeout=deadline - time.monotonic(),
                interval=POLL_S,
                what=f"{localized.describe} {verb} reaching every sidecar",
            )
        except WaitTimeout:
            waited = time.monotonic() - started
            raise PropagationTimeout(
                f"{localized.describe} {verb} but not every sidecar implements it after"
                f" {waited:.0f}s (--mesh-propagation-timeout {timeout}): "
                + "; ".join(f"{key}: {state}" for key, state in sorted(lagging.items()))
            ) from None
