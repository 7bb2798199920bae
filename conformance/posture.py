"""Reading a sidecar's inbound TLS contexts out of its Envoy `/config_dump` (both backends)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)


def inbound_tls_contexts(dump: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]] | None:
    """(filter chain name, DownstreamTlsContext) of every TLS chain of the ``virtualInbound``
    listener (Istio's inbound listener on 15006); None when the dump has no such listener."""
    for config in dump.get("configs", ()):
        for entry in config.get("dynamic_listeners", ()):
            listener = (entry.get("active_state") or {}).get("listener") or {}
            if listener.get("name") != "virtualInbound":
                continue
            found = []
            for chain in listener.get("filter_chains", ()):
                typed = (chain.get("transport_socket") or {}).get("typed_config") or {}
                if typed.get("@type") == DOWNSTREAM_TLS:
                    found.append((str(chain.get("name", "?")), typed))
            return found
    return None
