"""The local pods' logs: the sidecar's log and access log and the app's log, for reports (and
the access log of the waypoint in front of a workload).

`logs_since` gives what a test's time window added: a file offset taken when the window
opened, then the Envoy time stamps of the lines (Envoy flushes its logs every
ENVOY_FILE_FLUSH_MS, so an offset alone may include earlier requests' lines).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from pathlib import Path
from typing import Final

from pytest_meshconform.backends.local.lifecycle import ENVOY_FILE_FLUSH_MS, LocalLifecycle
from pytest_meshconform.backends.local.runtime import PodRuntime
from pytest_meshconform.mesh import LogPositions, Workload

__all__ = ["LocalLogs", "lines_since"]


class LocalLogs(LocalLifecycle):
    """The Mesh protocol's logs on the local mesh."""

    _logs_settled_at: float  # see _settle_logs

    @staticmethod
    def _log_files(runtime: PodRuntime) -> tuple[tuple[str, Path], ...]:
        return (
            ("envoy.log", runtime.directory / "envoy.log"),
            ("envoy-access.log", runtime.paths.access_log),
            ("app.log", runtime.directory / "app.log"),
        )

    def logs(self, workload: Workload) -> dict[str, str]:
        """The sidecar's log and access log and the app's log so far, for failure reports."""
        runtime = self._runtime(workload)
        found = {}
        for label, path in self._log_files(runtime):
            with contextlib.suppress(OSError):
                found[label] = path.read_text(errors="replace")
        return found

    def log_positions(self) -> LogPositions:
        """The size of every pod's log files now: `logs_since` reads from there on."""
        self._require_state()
        offsets: dict[str, dict[str, int]] = {}
        for key, runtime in self._pods.items():
            sizes = offsets[key] = {}
            for label, path in self._log_files(runtime):
                with contextlib.suppress(OSError):
                    sizes[label] = path.stat().st_size
        return LogPositions(at=time.time(), offsets=offsets)

    def _settle_logs(self) -> None:
        """Envoy writes an access log line when a stream ends and flushes every
        ENVOY_FILE_FLUSH_MS: give the lines of a request that just ended time to land (once per
        burst of reads, so a failure report waits half a second at most)."""
        settle = 2.5 * ENVOY_FILE_FLUSH_MS / 1000
        if time.monotonic() - self._logs_settled_at > settle:
            time.sleep(settle)
            self._logs_settled_at = time.monotonic()

    def logs_since(self, workload: Workload, positions: LogPositions) -> dict[str, str]:
        """What each log file of the pod gained after `positions` (whole lines only)."""
        runtime = self._runtime(workload)
        self._settle_logs()
        found = self._since(runtime, positions, self._log_files(runtime))
        # the waypoint in front of the workload decides its L7 requests: its access log is
        # the evidence of a 403 (`waypoint-access.log`)
        for waypoint in self._waypoints_of(runtime):
            access = (("waypoint-access.log", waypoint.paths.access_log),)
            found.update(self._since(waypoint, positions, access, key="envoy-access.log"))
        return found

    def _waypoints_of(self, runtime: PodRuntime) -> list[PodRuntime]:
        """The runtimes of the waypoints that take the pod's traffic (its Services' or its
        own)."""
        pod = runtime.pod
        entries = [self.topology.workload_waypoint(pod)]
        entries += [
            self.topology.service_waypoint(e.service)
            for e in self.topology.services
            if e.endpoints and e.endpoints[0] == pod
        ]
        keys = {e.pod.workload.key for e in entries if e is not None}
        return [self._pods[key] for key in sorted(keys) if key in self._pods]

    @staticmethod
    def _since(
        runtime: PodRuntime,
        positions: LogPositions,
        files: tuple[tuple[str, Path], ...],
        *,
        key: str | None = None,
    ) -> dict[str, str]:
        """What each file gained after `positions` (`key`: the file's label in the offsets,
        when it is reported under another)."""
        start = positions.offsets.get(runtime.key, {})
        found = {}
        for label, path in files:
            try:
                with path.open("rb") as log:
                    log.seek(start.get(key or label, 0))
                    data = log.read()
            except OSError:
                continue
            found[label] = lines_since(data.decode(errors="replace"), positions.at)
        return found


# Envoy's access log lines start with the request's start time (`[%START_TIME%]`, UTC), its own
# log lines with a local time stamp (`[%Y-%m-%d %T.%e]`).
_ACCESS_STAMP: Final = re.compile(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z\]")
_ENVOY_STAMP: Final = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]")


def lines_since(text: str, at: float) -> str:
    """The lines of `text` not stamped before `at` (Unix time). Envoy flushes its logs every
    ENVOY_FILE_FLUSH_MS, so a file offset taken at `at` may precede lines of earlier requests;
    their time stamps tell them apart. Unstamped lines follow the line before them."""
    kept: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        if match := _ACCESS_STAMP.match(line):
            moment = dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)
            keep = moment.timestamp() >= at - 0.001
        elif match := _ENVOY_STAMP.match(line):
            keep = dt.datetime.fromisoformat(match.group(1)).timestamp() >= at - 0.001
        if keep:
            kept.append(line)
    return "".join(kept)
