"""The node agent in miniature: the rotation agent (Istio's pilot-agent re-issuing each
workload certificate at its rotation time, delivered through SDS) and the sidecar health
watcher (exits, stops and silent admin sockets of the processes the mesh started).

`SidecarAgent` is the base of `lifecycle.LocalLifecycle`: both threads read the pods the
lifecycle started and write through its CA, so they share the mesh's state rather than copy it.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pytest_meshconform.backends.local import host
from pytest_meshconform.backends.local.envoyadmin import admin_get_all
from pytest_meshconform.backends.local.runtime import PodRuntime, log_tail
from pytest_meshconform.mesh import SidecarDied

# Sidecar health: the watcher looks at its processes this often (exit, SIGSTOP: at once), asks
# every Envoy's admin socket for /ready every ADMIN_PROBE_EVERY_S, and calls an Envoy broken
# once it has answered nothing for ADMIN_SILENT_AFTER_S: a hung Envoy, not a stopped one (seen
# by its process state), so the bar is well above a loaded machine's longest pauses.
HEALTH_INTERVAL_S = 0.2
ADMIN_PROBE_EVERY_S = 1.0
ADMIN_PROBE_TIMEOUT_S = 1.0
ADMIN_SILENT_AFTER_S = 10.0


@dataclass(frozen=True, slots=True)
class Rotation:
    """One certificate the agent replaced: which pod, old and new serials, when."""

    workload: str
    old_serial: int
    new_serial: int
    at: dt.datetime


class SidecarAgent:
    """Certificate rotation and sidecar health, for the mesh that owns the pods."""

    # The mesh's state both threads work on (set by LocalMesh.__init__ and start()).
    _pods: dict[str, PodRuntime]
    _stop: threading.Event
    _lock: threading.RLock
    _health_lock: threading.Lock
    _problems: dict[str, SidecarDied]
    _watching: bool
    rotations: list[Rotation]

    def _issue_cert(self, runtime: PodRuntime) -> None:
        raise NotImplementedError  # the mesh's: writes the new cert for SDS

    def _launcher_log_tail(self) -> str:
        raise NotImplementedError  # the mesh's: the app launcher's log

    def health_problems(self) -> tuple[SidecarDied, ...]:
        """Every process of the mesh that died or was stopped (checked now), or stopped
        answering its admin socket (seen by the watcher), first seen first; () while healthy,
        starting or closed."""
        if not self._watching:
            return ()
        with self._health_lock:
            for problem in self._process_problems():
                self._problems.setdefault(f"{problem.process} of {problem.workload}", problem)
            return tuple(self._problems.values())

    def _raise_if_broken(self) -> None:
        problems = self.health_problems()
        if problems:
            raise problems[0].again()

    def _process_problems(self) -> list[SidecarDied]:
        """Exits and stops of the Envoys and apps, from the kernel (cheap: /proc and waitpid)."""
        found = []
        for runtime in list(self._pods.values()):
            envoy = runtime.envoy
            if envoy is not None:
                code = envoy.poll()
                if code is not None:
                    found.append(
                        SidecarDied(
                            runtime.key,
                            "Envoy",
                            envoy.pid,
                            _exit_text(code),
                            exit_status=code,
                            detail=f"log: {log_tail(runtime, 'envoy.log')}",
                        )
                    )
                elif _stopped(envoy.pid):
                    found.append(
                        SidecarDied(runtime.key, "Envoy", envoy.pid, "is stopped (SIGSTOP)")
                    )
            pid = runtime.app_pid
            if pid is not None:
                if host.proc_start_ticks(pid) != runtime.app_start:
                    found.append(
                        SidecarDied(
                            runtime.key,
                            "app",
                            pid,
                            "exited",
                            detail=f"launcher log: {self._launcher_log_tail()}",
                        )
                    )
                elif _stopped(pid):
                    found.append(SidecarDied(runtime.key, "app", pid, "is stopped (SIGSTOP)"))
        return found

    def _health_watch(self) -> None:
        """Watch the mesh's own processes until close(): exits, stops, a silent admin socket."""
        envoys = [r for r in self._pods.values() if r.envoy is not None]
        last_answer = dict.fromkeys((r.key for r in envoys), time.monotonic())
        next_probe = time.monotonic()
        while not self._stop.wait(HEALTH_INTERVAL_S):
            self.health_problems()
            if time.monotonic() < next_probe:
                continue
            answers = admin_get_all(
                [r.paths.admin_socket for r in envoys], "/ready", timeout=ADMIN_PROBE_TIMEOUT_S
            )
            now = time.monotonic()
            next_probe = now + ADMIN_PROBE_EVERY_S
            for runtime, answer in zip(envoys, answers, strict=True):
                if not isinstance(answer, OSError):
                    last_answer[runtime.key] = now
                    continue
                silent = now - last_answer[runtime.key]
                if silent >= ADMIN_SILENT_AFTER_S and self._watching:
                    assert runtime.envoy is not None
                    with self._health_lock:
                        self._problems.setdefault(
                            f"Envoy of {runtime.key}",
                            SidecarDied(
                                runtime.key,
                                "Envoy",
                                runtime.envoy.pid,
                                f"stopped answering its admin socket ({silent:.0f}s silent)",
                                detail=f"last error: {answer}",
                            ),
                        )

    # -- agent: certificate rotation ---------------------------------------------------------------

    def _rotation_agent(self) -> None:
        """Istio's agent in miniature: re-issue each cert at its rotation time, through SDS."""
        while not self._stop.is_set():
            now = dt.datetime.now(dt.UTC)
            for runtime in list(self._pods.values()):
                if runtime.next_rotation is None or runtime.next_rotation > now:
                    continue
                assert runtime.cert is not None
                old = runtime.cert.serial
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._issue_cert(runtime)
                assert runtime.cert is not None
                self.rotations.append(Rotation(runtime.key, old, runtime.cert.serial, now))
            upcoming = [r.next_rotation for r in self._pods.values() if r.next_rotation is not None]
            wait = min(
                ((t - dt.datetime.now(dt.UTC)).total_seconds() for t in upcoming), default=60.0
            )
            self._stop.wait(max(0.005, min(wait, 60.0)))


def _exit_text(code: int) -> str:
    """How a process ended, as Popen's returncode tells it (-N: killed by signal N)."""
    if code >= 0:
        return f"exited with {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name} (exit status {code})"


def _stopped(pid: int) -> bool:
    """Is this process stopped (SIGSTOP, SIGTSTP: state T in /proc/<pid>/stat)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"
