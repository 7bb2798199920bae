"""What one ambient workload's ztunnel must hold, and how its ``/config_dump`` differs (pure).

The ambient counterpart of ``envoystate.py``: the propagation wait (``propagation.py``) builds a
``ZtunnelExpectation`` per ambient workload of the run from the Istio model
(:func:`pytest_meshconform.istio.ambient.ztunnel_policies`) and compares it with what the
ztunnel of the workload's node holds (:mod:`pytest_meshconform.istio.ztunnel_dump`):

- the workload itself, by pod address, with protocol ``HBONE`` (istio-cni enrolled it: istiod
  writes ``TUNNEL``/HBONE for a pod with the ``ambient.istio.io/redirection`` mark), its
  namespace and service account (its SPIFFE identity);
- every Service of the run in front of it: its hostname, port map, and the workload among its
  endpoints (ztunnel's load balancing picks from those);
- the L4 policies ztunnel checks for a connection to it, gathered as ``ProxyState::
  assert_rbac`` gathers them (:meth:`ZtunnelDump.policies_for`; a listed key ztunnel does not
  hold is skipped, as ``assert_rbac`` skips it), equal to the model's;
- a certificate for its identity, ``Available``: in shared mode ztunnel fetches one for every
  HBONE workload of its own node as soon as it learns of it
  (``CertFetcherImpl::should_prefetch_certificate``, istio/ztunnel ``src/cert_fetcher.rs``).

Each difference is one line saying what ztunnel holds and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_meshconform.istio.ztunnel import ZtunnelAuthorization
from pytest_meshconform.istio.ztunnel_dump import ZtunnelDump, ZtunnelWorkload

__all__ = [
    "ZtunnelExpectation",
    "ZtunnelService",
    "ztunnel_differences",
    "ztunnel_enforced",
]

# ztunnel's ProxyMode for a node's ztunnel (src/config.rs); Dedicated is a per-pod ztunnel
SHARED_MODE = "Shared"


@dataclass(frozen=True, slots=True)
class ZtunnelService:
    """A Service port in front of the workload, as ztunnel must know it."""

    hostname: str  # <name>.<namespace>.svc.<cluster domain>
    port: int
    target_port: int


@dataclass(frozen=True, slots=True)
class ZtunnelExpectation:
    """What the ztunnel of an ambient workload's node must hold for it."""

    workload: str  # the workload's key, for messages
    pod_ip: str
    namespace: str
    service_account: str
    identity: str  # spiffe://<trust domain>/ns/<namespace>/sa/<service account>
    services: tuple[ZtunnelService, ...]
    policies: tuple[ZtunnelAuthorization, ...]
    # False: some policies in force could not be read (root namespace) or modelled (targetRefs,
    # CUSTOM): ztunnel must hold at least the modelled ones, extra ones are tolerated
    policies_exact: bool = True


def ztunnel_enforced(
    dump: ZtunnelDump, workload: ZtunnelWorkload
) -> tuple[tuple[str, ...], dict[str, ZtunnelAuthorization]]:
    """The policy keys ztunnel checks for a connection to ``workload`` (``assert_rbac``'s
    gathering) and, by key, those of them it holds."""
    keys = dump.policies_for(workload)
    held = {policy.key: policy for policy in dump.policies}
    return keys, {key: held[key] for key in keys if key in held}


def _policy_differences(
    dump: ZtunnelDump, found: ZtunnelWorkload, expected: ZtunnelExpectation
) -> list[str]:
    keys, enforced = ztunnel_enforced(dump, found)
    held = {policy.key for policy in dump.policies}
    lines: list[str] = []
    wanted = {policy.key: policy for policy in expected.policies}
    for key in sorted(wanted.keys() - enforced.keys()):
        if key in keys:
            why = "listed by the workload, but ztunnel does not hold it"
        elif key in held:
            why = "ztunnel holds it, but does not apply it to this workload"
        else:
            why = "ztunnel does not hold it"
        lines.append(f"policy {key}: expected, {why}")
    if expected.policies_exact:
        for key in sorted(enforced.keys() - wanted.keys()):
            lines.append(f"policy {key}: ztunnel applies it, not expected")
    for key in sorted(wanted.keys() & enforced.keys()):
        if wanted[key] != enforced[key]:
            lines.append(
                f"policy {key}: ztunnel holds {enforced[key].to_dict()},"
                f" expected {wanted[key].to_dict()}"
            )
    return lines


def _service_differences(
    dump: ZtunnelDump, found: ZtunnelWorkload, services: Sequence[ZtunnelService]
) -> list[str]:
    by_host = {service.hostname: service for service in dump.services}
    lines: list[str] = []
    for wanted in services:
        service = by_host.get(wanted.hostname)
        if service is None:
            lines.append(f"service {wanted.hostname}: ztunnel does not know it")
            continue
        target = service.ports.get(wanted.port)
        if target != wanted.target_port:
            held = "no such port" if target is None else f"port {wanted.port} -> {target}"
            lines.append(
                f"service {wanted.hostname}: {held}, expected port {wanted.port} ->"
                f" {wanted.target_port}"
            )
        if found.uid not in service.endpoints:
            lines.append(
                f"service {wanted.hostname}: {found.uid} is not among its"
                f" {len(service.endpoints)} endpoints"
            )
    return lines


def _certificate_difference(dump: ZtunnelDump, identity: str) -> str | None:
    if dump.config.proxy_mode and dump.config.proxy_mode != SHARED_MODE:
        return None  # a dedicated ztunnel fetches only its own workload's, on demand
    certificate = dump.certificate_for(identity)
    if certificate is None:
        return f"certificate {identity}: ztunnel holds none"
    if not certificate.available:
        return f"certificate {identity}: {certificate.state or 'no chain'}"
    return None


def ztunnel_differences(dump: ZtunnelDump, expected: ZtunnelExpectation) -> tuple[str, ...]:
    """How ``dump`` (the ztunnel of the workload's node) differs from ``expected``: empty when
    it holds everything the model predicts for the workload."""
    found = dump.workload_at(expected.pod_ip)
    if found is None:
        return (f"workload {expected.pod_ip}: ztunnel does not know it",)
    lines: list[str] = []
    if found.protocol != "HBONE":
        lines.append(
            f"workload {expected.pod_ip}: protocol {found.protocol}, expected HBONE (not"
            " enrolled in ambient as ztunnel sees it)"
        )
    if (found.namespace, found.service_account) != (
        expected.namespace,
        expected.service_account,
    ):
        lines.append(
            f"workload {expected.pod_ip}: {found.namespace}/{found.service_account}, expected"
            f" {expected.namespace}/{expected.service_account}"
        )
    lines += _service_differences(dump, found, expected.services)
    lines += _policy_differences(dump, found, expected)
    certificate = _certificate_difference(dump, expected.identity)
    if certificate is not None:
        lines.append(certificate)
    return tuple(lines)
