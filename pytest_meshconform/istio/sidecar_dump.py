"""A sidecar's Envoy ``/config_dump`` read with Istio's names (pure): its secrets and its
inbound TLS contexts.

The JSON is read by :mod:`pytest_meshconform.evidence.config_dump` (generic Envoy); the names
are :mod:`.envoy`'s, which the local mesh renders with. Kept apart from :mod:`.envoy` so that
the names cost nothing to import (reading certificates needs ``cryptography``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_meshconform.evidence.config_dump import (
    EnvoySecrets,
    active_listener,
    as_object,
    load_json,
    read_secrets,
    read_transport_socket,
    sections,
)
from pytest_meshconform.istio.envoy import (
    DOWNSTREAM_TLS_TYPE,
    ROOT_SECRET,
    VIRTUAL_INBOUND,
    WORKLOAD_SECRET,
)

__all__ = ["inbound_tls_contexts", "parse_envoy_secrets"]


def inbound_tls_contexts(
    dump: bytes | str | Mapping[str, Any],
) -> list[tuple[str, Mapping[str, Any]]] | None:
    """(filter chain name, DownstreamTlsContext) of every TLS chain of a sidecar's active
    :data:`VIRTUAL_INBOUND` listener, read from its Envoy ``/config_dump``; None when the dump
    has no such listener. Raises ``ConfigDumpError`` naming the field it cannot read."""
    for section in sections(load_json(dump)):
        if section.admin_type != "ListenersConfigDump":
            continue
        for where, raw in section.entries("dynamic_listeners"):
            name, listener = active_listener(raw, where)
            if name != VIRTUAL_INBOUND or listener is None:
                continue
            found = []
            for chain_where, raw_chain in listener.chains():
                chain = as_object(raw_chain, chain_where)
                socket = chain.get("transport_socket")
                if socket is None:
                    continue
                read = read_transport_socket(socket, f"{chain_where}.transport_socket")
                if read.type_url == DOWNSTREAM_TLS_TYPE:
                    found.append((str(chain.get("name", "?")), read.config))
            return found
    return None


def parse_envoy_secrets(data: bytes | str | Mapping[str, Any]) -> EnvoySecrets:
    """A sidecar's secrets from Envoy's ``/config_dump`` (full or its secrets section) or
    ``istioctl proxy-config secret -o json``, by Istio's names: the workload certificate is
    the active :data:`WORKLOAD_SECRET` (``workload`` is None until the agent has served it),
    the roots :data:`ROOT_SECRET` (``validation_context.trusted_ca``, plus the per-trust-domain
    bundles of Envoy's SPIFFE validator that SPIRE federation uses). Errors are ``CertError``."""
    return read_secrets(data, workload_secret=WORKLOAD_SECRET, root_secret=ROOT_SECRET)
