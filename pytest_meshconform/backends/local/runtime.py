"""One pod's running state, shared by the lifecycle (`lifecycle`) and the agent (`agent`): its
namespace and files, the processes the mesh started, the config versions written, its cert."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pytest_meshconform.backends.local import xds
from pytest_meshconform.backends.local.ca import IssuedCert
from pytest_meshconform.backends.local.topology import Pod


@dataclass
class PodRuntime:
    pod: Pod
    netns: str
    directory: Path
    paths: xds.SidecarPaths
    envoy: subprocess.Popen[bytes] | None = None
    app_pid: int | None = None
    app_start: int | None = None
    lds_version: int = 0
    cds_version: int = 0
    lds_doc: str = ""
    cds_doc: str = ""
    plan: object = None  # the plan lds_doc and cds_doc were rendered from (`delivery.render`)
    rejected_seen: int = 0  # LDS+CDS rejections and listener create failures already reported
    cert: IssuedCert | None = None
    next_rotation: dt.datetime | None = None
    proxy_id: int | None = None  # the uid and gid of its Envoy (sidecar pods only)

    @property
    def key(self) -> str:
        return self.pod.workload.key

    @property
    def serves_app(self) -> bool:
        return bool(self.pod.workload.container_ports)

    @property
    def proxy_owner(self) -> tuple[int, int]:
        """(uid, gid) of this pod's Envoy: its files are its own."""
        if self.proxy_id is None:
            raise ValueError(f"{self.key} has no sidecar")
        return (self.proxy_id, self.proxy_id)


def log_tail(runtime: PodRuntime, name: str = "envoy.log", lines: int = 5) -> str:
    """The last lines of one of the pod's logs, on one line, for error messages."""
    try:
        text = (runtime.directory / name).read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"
