"""What every backend's capture shares: the tcpdump filter, the end-of-capture marker, the
pcap's name and magic.

A capture records the workload's TCP (one port, or all but the mesh's own plumbing) plus one
UDP datagram, the end-of-capture marker, that the backend sends to another address once the
test's block ends: once the marker is in the pcap, everything the pod put on the wire before it
has been written too. The local mesh runs tcpdump in the pod's network namespace, the kube
backend in an ephemeral container sharing the pod's; both build the filter and name the file
here.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

__all__ = [
    "CAPTURE_INFRA_PORTS",
    "MARKER_PORT",
    "PCAP_MAGICS",
    "capture_filter",
    "is_pcap",
    "pcap_file_name",
]

PCAP_MAGICS: Final = (
    b"\xd4\xc3\xb2\xa1",  # little-endian, microseconds (what tcpdump -w writes on x86/arm)
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",  # nanoseconds
    b"\xa1\xb2\x3c\x4d",
)

# Ports of the mesh's own plumbing, left out of a capture of "all TCP": xDS and CA (15010,
# 15012), istiod monitoring and webhook (15014, 15017), and the agent's health and stats ports
# that kubelet probes in plaintext (15020, 15021, 15090). Their flows are not the workload's.
CAPTURE_INFRA_PORTS: Final = (15010, 15012, 15014, 15017, 15020, 15021, 15090)
MARKER_PORT: Final = 9  # discard


def capture_filter(port: int | None, marker_host: str, *, tunnel_port: int | None = None) -> str:
    """The tcpdump filter: the workload's TCP (one port, or all but the mesh plumbing),
    plus the marker datagram to `marker_host`. `tunnel_port`: where the port's traffic arrives
    tunnelled (an ambient pod's HBONE port), recorded with the port."""
    if port is not None and (isinstance(port, bool) or not 0 < port < 65536):
        raise ValueError(f"port {port!r}: expected 1-65535")
    if port is None:
        infra = " or ".join(f"port {p}" for p in CAPTURE_INFRA_PORTS)
        tcp = f"(tcp and not ({infra}))"
    elif tunnel_port is not None:
        tcp = f"(tcp port {port} or tcp port {tunnel_port})"
    else:
        tcp = f"(tcp port {port})"
    return f"{tcp} or (udp and dst host {marker_host} and dst port {MARKER_PORT})"


def pcap_file_name(workload_key: str) -> str:
    """A capture's file name: the workload, the time in ms and a random suffix (unique)."""
    return f"{workload_key}-{int(time.time() * 1000)}-{secrets.token_hex(2)}.pcap"


def is_pcap(data: bytes) -> bool:
    """Whether `data` starts like a classic pcap file (tcpdump -w)."""
    return data[:4] in PCAP_MAGICS
