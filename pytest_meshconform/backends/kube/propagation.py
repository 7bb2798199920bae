"""Propagation of a policy change: the policies in force, what each sidecar must then do, and
the wait until every sidecar's own Envoy config (``/config_dump``) has it; for an ambient
workload, until the ztunnel of its node holds what the model predicts for it (its
``/config_dump``, read through the API server's port-forward: ``ztunnelstate.py``).

``KubePropagation`` (a mixin of ``KubeMesh``) reads the PeerAuthentications, DestinationRules
and AuthorizationPolicies that can affect the run's sidecars, asks the Istio model
(``pytest_meshconform.istio``) what each sidecar must implement, and waits, printing what it
waits for, until each does (``--mesh-propagation=model``, the default) or until each sidecar
the change affects has accepted a new xDS push from istiod (``--mesh-propagation=version``, the
weaker check, for an Istio whose rendering differs from the model). When the deadline passes,
the ``PropagationTimeout`` names each lagging sidecar on its own line with its first
differences (what the model expected, what the dump holds) and the file under
``--mesh-artifacts`` where the last dump read from it was written.

API and exec answers that say "try again" (``client.is_transient``) are retried within the
deadline and named in the timeout; any other API error ends the wait at once.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal, NamedTuple

from pytest_meshconform.backends.kube.authzstate import authz_mismatches, parse_inbound_authz
from pytest_meshconform.backends.kube.client import KubeApiError, is_transient
from pytest_meshconform.backends.kube.envoystate import (
    EnvoyState,
    EnvoyStateError,
    SidecarExpectation,
    expected_sidecar,
    mismatches,
    parse_config_dump,
)
from pytest_meshconform.backends.kube.lifecycle import (
    POLICY_KINDS,
    POLL_S,
    object_meta,
)
from pytest_meshconform.backends.kube.topology import LocalizedManifest
from pytest_meshconform.backends.kube.waypoints import KubeWaypoints
from pytest_meshconform.backends.kube.waypointstate import (
    WaypointExpectation,
    parse_waypoint_authz,
    waypoint_differences,
)
from pytest_meshconform.backends.kube.ztunnel import (
    ZTUNNEL_ADMIN_PORT,
    ZtunnelPod,
    ztunnel_on_node,
    ztunnel_pods,
)
from pytest_meshconform.backends.kube.ztunnelstate import (
    ZtunnelExpectation,
    ZtunnelService,
    ztunnel_differences,
)
from pytest_meshconform.evidence.config_dump import ConfigDumpError
from pytest_meshconform.istio import Authorization, authorization_for
from pytest_meshconform.istio.ambient import ztunnel_policies
from pytest_meshconform.istio.api import Policy, PolicyError, parse_policy
from pytest_meshconform.istio.envoy import VIRTUAL_INBOUND
from pytest_meshconform.istio.ztunnel_dump import ZtunnelDumpError, parse_ztunnel_dump
from pytest_meshconform.mesh import MeshError, PropagationTimeout, Service, Waypoint, Workload
from pytest_meshconform.outputs import write_file
from pytest_meshconform.waiting import WaitTimeout, poll

__all__ = [
    "PROPAGATION_KINDS",
    "PUSHED_TYPES",
    "KubePropagation",
    "PropagationBaseline",
    "grouped_chains",
    "propagation_timeout_message",
]

# The kinds whose effect on the sidecars' Envoy config meshconform predicts (and so waits for).
PROPAGATION_KINDS: Final = frozenset(
    {"PeerAuthentication", "DestinationRule", "AuthorizationPolicy"}
)
# The xDS types istiod pushes to an affected sidecar for a change of each kind: every full push
# carries LDS and CDS unless the kind is in ``skippedLdsConfigs`` (pilot/pkg/xds/lds.go) or
# ``skippedCdsConfigs`` (pilot/pkg/xds/cds.go); AuthorizationPolicy is in the latter only.
PUSHED_TYPES: Final[Mapping[str, tuple[str, ...]]] = {
    "PeerAuthentication": ("listeners", "clusters"),
    "DestinationRule": ("listeners", "clusters"),
    "AuthorizationPolicy": ("listeners",),
}
# A propagation wait says what it waits for once it has taken this long (then on each change).
_PROGRESS_AFTER_S: Final = 5.0
# A timeout shows this many differences per sidecar (the rest are counted).
_FIRST_DIFFERENCES: Final = 3


class _Expected(NamedTuple):
    """What one sidecar must implement under the policies in force (the Istio model's)."""

    workload: Workload
    sidecar: SidecarExpectation
    authorization: Authorization
    # False: some policies could not be read (root namespace) or modelled (CUSTOM, AUDIT): the
    # RBAC filters must carry at least the modelled rules
    authz_exact: bool


class _Lag(NamedTuple):
    """Why one sidecar (or ambient workload) does not have the change yet: each difference,
    its xDS versions (or the ztunnel read), and the last config dump read from it (None when
    none could be read), written under ``<key>.<dump_name>.json``."""

    differences: tuple[str, ...]
    versions: str
    dump: bytes | None
    dump_name: str = "config_dump"


# what the wait compares per workload: a sidecar's Envoy, or an ambient workload's ztunnel;
# and per waypoint, its Envoy
_Expectation = _Expected | ZtunnelExpectation | WaypointExpectation
_ZTUNNEL_DUMP: Final = "ztunnel_config_dump"
ENVOY_ADMIN_PORT: Final = 15000  # a waypoint's Envoy admin, on the pod's localhost


@dataclasses.dataclass(frozen=True, slots=True)
class PropagationBaseline:
    """``--mesh-propagation=version``: what each sidecar was expected to implement, and the
    listener and cluster versions it had accepted, before a change."""

    expected: Mapping[str, _Expected]
    versions: Mapping[str, tuple[str | None, str | None]]


class KubePropagation(KubeWaypoints):
    """Waiting for policy changes to reach the sidecars (ztunnels, waypoints) of a
    ``KubeMesh``."""

    _services: Sequence[Service]
    artifacts: Path | None
    _propagation_timeouts: int

    def _policies_in_force(self) -> tuple[list[Policy], bool, bool]:
        """PeerAuthentications, DestinationRules and AuthorizationPolicies that can affect this
        run's sidecars (its namespaces' and the root namespace's), as istiod sees them, with
        real namespaces; whether the root namespace could be read (a user on a shared cluster
        may not: a transient error there is raised, for the wait to retry, not taken for a
        refusal); and whether every AuthorizationPolicy could be modelled (a platform's own
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
                except KubeApiError as error:
                    if namespace != self.root_namespace or is_transient(error):
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

    def _expectations(self) -> dict[str, _Expectation]:
        """Per workload of the run in the mesh, what its proxy must implement under the
        policies in force: a sidecar's mTLS and clusters (``envoystate``) and RBAC filters
        (``authzstate``); an ambient workload's ztunnel state (``ztunnelstate``); all from
        the Istio model."""
        policies, root_known, authz_modelled = self._policies_in_force()
        expected: dict[str, _Expectation] = {}
        for workload in self._workloads:
            if not (workload.has_sidecar or workload.ambient):
                continue
            labels = object_meta(self._pod(workload)).get("labels") or workload.labels
            labels = {str(k): str(v) for k, v in labels.items()}
            try:
                if workload.ambient:
                    expected[workload.key] = self._ztunnel_expectation(
                        workload, labels, policies, root_known and authz_modelled
                    )
                    continue
                labelled = dataclasses.replace(workload, labels=labels)
                expected[workload.key] = _Expected(
                    workload,
                    expected_sidecar(
                        policies,
                        namespace=workload.namespace,
                        labels=labels,
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
        for waypoint in self._waypoints:
            expected[f"waypoint {waypoint.key}"] = self._waypoint_expectation(
                waypoint, policies, root_known and authz_modelled
            )
        return expected

    def _ztunnel_expectation(
        self,
        workload: Workload,
        labels: Mapping[str, str],
        policies: Sequence[Policy],
        exact: bool,
    ) -> ZtunnelExpectation:
        """What the ztunnel of an ambient workload's node must hold for it: the workload,
        the Services in front of it, the L4 policies istiod derives for it
        (``istio.ambient.ztunnel_policies``) and a certificate for its identity."""
        return ZtunnelExpectation(
            workload=workload.key,
            pod_ip=self.pod_ip(workload),
            namespace=workload.namespace,
            service_account=workload.service_account,
            identity=workload.spiffe_id(self.trust_domain),
            services=tuple(
                ZtunnelService(f"{s.name}.{s.namespace}.svc.{s.domain}", s.port, s.target_port)
                for s in self._services
                if s.namespace == workload.namespace and s.selector_app == workload.app
            ),
            policies=ztunnel_policies(
                policies, workload.namespace, labels, root_namespace=self.root_namespace
            ),
            policies_exact=exact,
        )

    def _read_dump(self, workload: Workload) -> tuple[bytes | None, EnvoyState | None, str]:
        """The sidecar's config dump, what it implements, and why either is missing ("" when
        neither is). A ``KubeApiError`` is raised: the wait retries a transient one and ends
        at any other (no right to exec, ...); pilot-agent failing (Envoy restarting) is a lag."""
        try:
            dump = self.envoy_admin(workload, "/config_dump")
        except KubeApiError:
            raise
        except MeshError as error:
            return None, None, f"config_dump not readable: {error}"
        try:
            return dump, parse_config_dump(dump), ""
        except EnvoyStateError as error:
            return dump, None, f"config_dump not understood: {error}"

    def _model_lag(self, expected: _Expected) -> _Lag | None:
        """None when the sidecar's own Envoy config implements ``expected``, else each way it
        differs (or why it could not be read)."""
        dump, state, problem = self._read_dump(expected.workload)
        if state is None or dump is None:
            return _Lag((problem,), "", dump)
        found = mismatches(state, expected.sidecar) + grouped_chains(
            authz_mismatches(
                parse_inbound_authz(dump),
                expected.authorization,
                root_known=expected.authz_exact,
            )
        )
        authz = expected.authorization
        if not state.has_virtual_inbound and (authz.http or authz.tcp):
            # no inbound listener enforces nothing: the RBAC filters the model expects on its
            # chains are not in force either (authz_mismatches finds no chain to compare)
            wanted = ", ".join(sorted({f.action.value for f in (*authz.http, *authz.tcp)}))
            found += (f"no active {VIRTUAL_INBOUND} listener, expected RBAC filters ({wanted})",)
        if not found:
            return None
        return _Lag(found, state.version, dump)

    def _ztunnel_lag(
        self,
        expectation: ZtunnelExpectation,
        read: dict[str, tuple[ZtunnelPod, bytes]],
    ) -> _Lag | None:
        """None when the ztunnel of the workload's node holds what ``expectation`` says, else
        each way it differs (or why its dump could not be read). ``read`` keeps each node's
        dump for one round of the wait (a node's ztunnel serves every workload there). A
        ``KubeApiError`` is raised, as for a sidecar: the wait retries a transient one."""
        workload = next(w for w in self._workloads if w.key == expectation.workload)
        node = str((self._pod(workload).get("spec") or {}).get("nodeName") or "")
        if node not in read:
            try:
                pods = ztunnel_pods(self.api, self.options.istio_namespace)
                pod = ztunnel_on_node(pods, node, self.options.istio_namespace)
            except MeshError as error:
                return _Lag((str(error),), "", None, _ZTUNNEL_DUMP)
            body = self.api.port_forward_get(
                pod.namespace, pod.name, ZTUNNEL_ADMIN_PORT, "/config_dump"
            )
            read[node] = (pod, body)
        pod, body = read[node]
        where = f"ztunnel {pod.namespace}/{pod.name}"
        try:
            dump = parse_ztunnel_dump(body)
        except ZtunnelDumpError as error:
            return _Lag(
                (f"{where} /config_dump not understood: {error}",), where, body, _ZTUNNEL_DUMP
            )
        found = ztunnel_differences(dump, expectation)
        if not found:
            return None
        return _Lag(found, f"{where} {dump.version}".strip(), body, _ZTUNNEL_DUMP)

    def _waypoint_lag(self, expectation: WaypointExpectation) -> _Lag | None:
        """None when the waypoint's Envoy (its ``/config_dump``, read through the API server's
        port-forward to its admin port) carries the RBAC filters the model expects on every
        ``main_internal`` chain (``waypointstate``), else each difference. A ``KubeApiError``
        is raised, as for a sidecar: the wait retries a transient one."""
        try:
            pod = self._waypoint_pod(Waypoint(expectation.name, expectation.namespace))
        except MeshError as error:
            return _Lag((str(error),), "", None)
        body = self.api.port_forward_get(
            expectation.namespace, pod, ENVOY_ADMIN_PORT, "/config_dump"
        )
        where = f"pod {expectation.namespace}/{pod}"
        try:
            chains = parse_waypoint_authz(body)
        except ConfigDumpError as error:
            return _Lag((f"{where} /config_dump not understood: {error}",), where, body)
        found = waypoint_differences(chains, expectation)
        return _Lag(found, where, body) if found else None

    def _version_lag(
        self, workload: Workload, before: tuple[str | None, str | None], types: Sequence[str]
    ) -> _Lag | None:
        """None once the sidecar has accepted a newer listener (and cluster) push than the
        one it had before the change, else which of them did not move."""
        dump, state, problem = self._read_dump(workload)
        if state is None:
            return _Lag((problem,), "", dump)
        now = {"listeners": state.listeners_version, "clusters": state.clusters_version}
        was = {"listeners": before[0], "clusters": before[1]}
        stale = [
            f"{kind} still at version {now[kind] or '-'}"
            for kind in types
            if now[kind] == was[kind]
        ]
        if not stale:
            return None
        text = f"no newer xDS push accepted: {', '.join(stale)}, as before the change"
        return _Lag((text,), "", dump)

    def _propagation_baseline(self) -> PropagationBaseline | None:
        """``--mesh-propagation=version``: before a change, each sidecar's expectation and
        accepted versions (None in model mode: nothing to remember)."""
        if self.options.propagation != "version":
            return None
        timeout = self.options.propagation_timeout.total_seconds()
        found: dict[str, tuple[str | None, str | None]] = {}
        problems: dict[str, str] = {}

        def read() -> PropagationBaseline | None:
            expected = self._expectations()
            for key, expectation in expected.items():
                if key in found or not isinstance(expectation, _Expected):
                    continue  # ztunnel's dump has no xDS versions: ambient is checked by model
                _, state, problem = self._read_dump(expectation.workload)
                if state is None:
                    problems[key] = problem
                    continue
                problems.pop(key, None)
                found[key] = (state.listeners_version, state.clusters_version)
            if problems:
                return None
            sidecars = {k: e for k, e in expected.items() if isinstance(e, _Expected)}
            return PropagationBaseline(sidecars, dict(found))

        try:
            return poll(
                read,
                timeout=timeout,
                interval=POLL_S,
                what="every sidecar's xDS versions before the change",
                transient=is_transient,
            )
        except WaitTimeout as error:
            raise MeshError(
                "--mesh-propagation=version: cannot read the xDS versions the sidecars have"
                " before the change: "
                + "; ".join(f"{key}: {text}" for key, text in sorted(problems.items()))
                + error.transient_note
            ) from None

    def _wait_propagated(
        self,
        localized: LocalizedManifest,
        verb: str,
        baseline: PropagationBaseline | None = None,
    ) -> None:
        """Wait until every sidecar of the run has the change: with
        ``--mesh-propagation=model``, until its own Envoy config (``/config_dump``) implements
        the inbound mTLS modes, outbound cluster TLS and RBAC filters that the Istio model
        (``pytest_meshconform.istio``) predicts for the policies now in force (works on every
        Istio version); with ``version`` (``baseline`` given), until each sidecar whose
        expectation the change altered has accepted a newer listener push (and cluster push,
        for kinds istiod pushes CDS for) than it had before; an ambient workload, until the
        ztunnel of its node holds what the model predicts (``ztunnelstate``), in either mode.
        Raises PropagationTimeout naming each lagging proxy, its first differences and where
        its last dump was written."""
        self._await_proxies(
            f"{localized.describe} {verb}",
            localized.kind,
            baseline,
            timeout=self.options.propagation_timeout,
            option="--mesh-propagation-timeout",
        )

    def _wait_ztunnels_hold_the_run(self) -> None:
        """At start, with ambient namespaces: until the ztunnel of each ambient workload's node
        holds it, its Services, its certificate and the policies now in force (the same
        comparison as after a policy change)."""
        if any(w.ambient for w in self._workloads):
            self._progress("waiting for ztunnel to hold the run's ambient workloads")
            self._await_proxies(
                "the run's ambient workloads started",
                None,
                None,
                timeout=self.options.ready_timeout,
                option="--mesh-ready-timeout",
                ambient_only=True,
            )

    def _await_proxies(
        self,
        change: str,
        kind: str | None,
        baseline: PropagationBaseline | None,
        *,
        timeout: timedelta,
        option: str,
        ambient_only: bool = False,
    ) -> None:
        deadline = self._deadline(timeout)
        started = time.monotonic()
        pending: dict[str, _Expectation] | None = None
        lagging: dict[str, _Lag] = {}
        retried: list[Exception] = []
        shown = ""

        def propagated() -> Literal[True] | None:
            nonlocal shown, pending
            if pending is None:
                expected = self._expectations()
                if ambient_only:
                    expected = {
                        k: e
                        for k, e in expected.items()
                        if isinstance(e, (ZtunnelExpectation, WaypointExpectation))
                    }
                pending = expected if baseline is None else _affected(baseline, expected)
            lagging.clear()
            ztunnels: dict[str, tuple[ZtunnelPod, bytes]] = {}  # this round's dumps
            for key, expectation in list(pending.items()):
                try:
                    if isinstance(expectation, ZtunnelExpectation):
                        lag = self._ztunnel_lag(expectation, ztunnels)
                    elif isinstance(expectation, WaypointExpectation):
                        lag = self._waypoint_lag(expectation)
                    else:
                        assert kind is not None
                        lag = self._sidecar_lag(key, expectation, kind, baseline)
                except KubeApiError as error:
                    if not is_transient(error):
                        raise
                    retried.append(error)
                    lag = _Lag((f"config_dump not read: {error}",), "", None)
                if lag is None:
                    del pending[key]  # it has the change; later pushes cannot undo it
                else:
                    lagging[key] = lag
            if not pending:
                return True
            waited = time.monotonic() - started
            summary = ", ".join(sorted(lagging))
            if waited >= _PROGRESS_AFTER_S and summary != shown and time.monotonic() <= deadline:
                self._progress(f"waiting {waited:.0f}s for {change} to reach {summary}")
                shown = summary
            return None

        try:
            poll(
                propagated,
                timeout=deadline - time.monotonic(),
                interval=POLL_S,
                what=f"{change} reaching every {_subject(pending or {})}",
                transient=is_transient,
            )
        except WaitTimeout as error:
            waited = time.monotonic() - started
            written = self._keep_dumps(lagging)
            raise PropagationTimeout(
                propagation_timeout_message(
                    change,
                    waited=waited,
                    timeout=f"{option} {timeout}",
                    mode=self.options.propagation,
                    lagging={key: (lag.differences, lag.versions) for key, lag in lagging.items()},
                    dumps=written,
                    artifacts=self.artifacts,
                    transient=[*retried, *error.transient_errors],
                    unknown=pending is None,
                    subject=_subject(
                        {k: v for k, v in (pending or {}).items() if k in lagging} or pending or {}
                    ),
                )
            ) from None

    def _sidecar_lag(
        self,
        key: str,
        expectation: _Expected,
        kind: str,
        baseline: PropagationBaseline | None,
    ) -> _Lag | None:
        if baseline is None:
            return self._model_lag(expectation)
        before = baseline.versions.get(key, (None, None))
        return self._version_lag(expectation.workload, before, PUSHED_TYPES[kind])

    def _keep_dumps(self, lagging: Mapping[str, _Lag]) -> dict[str, Path]:
        """Write the last dump read from each lagging sidecar under ``--mesh-artifacts``
        (``propagation/<run>-<n>/<sidecar>.config_dump.json``, private to the user); nothing
        without it."""
        if self.artifacts is None:
            return {}
        self._propagation_timeouts += 1
        directory = self.artifacts / "propagation" / f"{self.run_id}-{self._propagation_timeouts}"
        written: dict[str, Path] = {}
        for key, lag in sorted(lagging.items()):
            if lag.dump is None:
                continue
            path = directory / f"{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.{lag.dump_name}.json"
            write_file(path, lag.dump)  # 0600, its directories 0700, whatever the umask
            written[key] = path
        return written


def _affected(
    baseline: PropagationBaseline, expected: Mapping[str, _Expectation]
) -> dict[str, _Expectation]:
    """The sidecars whose expectation the change altered (version mode waits for those), and
    every ambient workload (ztunnel's dump carries no xDS version: checked by the model)."""
    return {
        key: now
        for key, now in expected.items()
        if not isinstance(now, _Expected)
        or (before := baseline.expected.get(key)) is None
        or (before.sidecar, before.authorization, before.authz_exact)
        != (now.sidecar, now.authorization, now.authz_exact)
    }


def _subject(expected: Mapping[str, _Expectation]) -> str:
    """What the wait is about: ``sidecar``, ``ztunnel``, ``waypoint`` or several
    (``sidecar and ztunnel``, ``waypoint and ztunnel``)."""
    kinds = {
        "ztunnel"
        if isinstance(e, ZtunnelExpectation)
        else "waypoint"
        if isinstance(e, WaypointExpectation)
        else "sidecar"
        for e in expected.values()
    }
    return " and ".join(sorted(kinds)) if kinds else "sidecar"


_CHAIN_DIFFERENCE: Final = re.compile(rf"{VIRTUAL_INBOUND} chain (.+?): (RBAC .*)")


def grouped_chains(differences: Sequence[str]) -> tuple[str, ...]:
    """The RBAC differences of several ``virtualInbound`` chains that differ the same way, as
    one (``virtualInbound chains A (...), B (...): RBAC ...``), in the order first seen; every
    other text as it is."""
    groups: dict[str, list[str]] = {}
    order: list[str] = []
    for text in differences:
        match = _CHAIN_DIFFERENCE.fullmatch(text)
        if match is None:
            order.append(text)
            continue
        chain, difference = match.groups()
        if difference not in groups:
            groups[difference] = []
            order.append(difference)
        if chain not in groups[difference]:
            groups[difference].append(chain)
    return tuple(
        text
        if text not in groups
        else f"{VIRTUAL_INBOUND} chain{'s' if len(groups[text]) > 1 else ''}"
        f" {', '.join(groups[text])}: {text}"
        for text in order
    )


def propagation_timeout_message(
    change: str,
    *,
    waited: float,
    timeout: str,
    mode: str,
    lagging: Mapping[str, tuple[Sequence[str], str]],
    dumps: Mapping[str, Path],
    artifacts: Path | None,
    transient: Sequence[Exception] = (),
    unknown: bool = False,
    subject: str = "sidecar",
) -> str:
    """The PropagationTimeout's text: the change, then one line per lagging sidecar with its
    first differences (each says what the model expected and what the dump holds), its xDS
    versions and where its last dump was written; the transient errors retried last."""
    check = (
        "implements it"
        if mode == "model"
        else "accepted a newer xDS push (--mesh-propagation=version)"
    )
    lines = [
        f"{change} but not every {subject} {check} after {waited:.0f}s ({timeout}):"
        if not unknown
        else f"{change} but what the sidecars must do could not be read within {waited:.0f}s"
        f" ({timeout})"
    ]
    for key, (differences, versions) in sorted(lagging.items()):
        shown = "; ".join(differences[:_FIRST_DIFFERENCES])
        more = len(differences) - _FIRST_DIFFERENCES
        line = f"  {key}: {shown}"
        if more > 0:
            line += f" (and {more} more)"
        if versions:
            line += f" [{versions}]"
        if key in dumps:
            line += f"; last config_dump: {dumps[key]}"
        lines.append(line)
    if lagging and artifacts is None:
        owner = subject if " " not in subject else "proxy"
        lines.append(f"  (pass --mesh-artifacts=DIR to keep each {owner}'s last config_dump)")
    if transient:
        lines.append(
            f"  {len(transient)} transient API/exec errors were retried, the last: {transient[-1]}"
        )
    return "\n".join(lines)
