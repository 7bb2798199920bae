"""`rotation` -> `RotationWatcher`: `rotation.watch(httpbin, client=sleep)` waits for a workload
certificate to rotate while the client keeps calling, and returns when and how it happened
(`RotationResult`, its lifetime counted as Istio's agent counts it).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

import pytest

from pytest_meshconform.backends.registry import Progress
from pytest_meshconform.evidence.curl import HttpResult
from pytest_meshconform.mesh import Mesh
from pytest_meshconform.plugin.identity import current_cert, served_cert, utc_text
from pytest_meshconform.plugin.options import mesh_settings_key
from pytest_meshconform.plugin.session import evidence_window, progress_writer
from pytest_meshconform.plugin.workloads import WorkloadHandle
from pytest_meshconform.report.exhibits import Evidence
from pytest_meshconform.report.observations import RotationRecord
from pytest_meshconform.settings import format_duration
from pytest_meshconform.waiting import WaitTimeout, poll

if TYPE_CHECKING:
    from pytest_meshconform.evidence.certs import WorkloadCert

__all__ = ["LONGEST_ROTATION_WATCH", "RotationResult", "RotationWatcher", "rotation"]


LONGEST_ROTATION_WATCH: Final = dt.timedelta(minutes=5)
"""`RotationWatcher.watch` skips at once when Istio would rotate later than this from now."""


@final
@dataclass
class RotationResult:
    """What `rotation.watch` returns: the old and new certificate and the requests around it."""

    workload: str
    old: WorkloadCert
    new: WorkloadCert
    observed_at: dt.datetime  # first time the new serial was seen
    poll_interval: float  # seconds between looks: the bound on how late `observed_at` is
    requests_before: int  # requests made while the old certificate was served
    requests_after: int  # requests made after the new one was seen
    failures: list[HttpResult] = field(default_factory=list)
    # when the sidecar got the old certificate (Envoy's `last_updated`), if the dump says
    old_received_at: dt.datetime | None = None
    # every request of the loop, in order: when it was sent, how long it took, what came back
    calls: list[tuple[dt.datetime, float, HttpResult]] = field(default_factory=list)
    # when the proxy got the new certificate (Envoy's `last_updated`), if the dump says
    new_received_at: dt.datetime | None = None
    # the client's own certificate before and after the loop, each with when its proxy got it
    # (its proxy rotates too; empty for a client without a data plane)
    client_certs: list[tuple[WorkloadCert, dt.datetime | None]] = field(default_factory=list)

    @property
    def lifetime_start(self) -> dt.datetime:
        """Where Istio's agent counts the old certificate's lifetime from: `rotateTime` in
        security/pkg/nodeagent/cache/secretcache.go uses `ExpireTime - CreatedTime`, the
        agent's clock when the CA answered, which is when the sidecar got the certificate
        (`old_received_at`) to within milliseconds. Not NotBefore: istiod backdates it by
        `ClockSkewGracePeriod` (2 minutes, security/pkg/pki/util/generate_cert.go
        `genCertTemplateFromCSR`), which for a 30 s certificate would put the rotation at 0.9
        of NotBefore..NotAfter. NotBefore only when the dump has no time (or an odd one)."""
        at = self.old_received_at
        if at is None or not self.old.not_before <= at < self.old.not_after:
            return self.old.not_before
        return at

    @property
    def lifetime(self) -> dt.timedelta:
        """The old certificate's lifetime as Istio's agent counts it (`lifetime_start`..)."""
        return self.old.not_after - self.lifetime_start

    @property
    def fraction_elapsed(self) -> float:
        """How much of the old cert's lifetime (`lifetime`, as Istio's agent counts it) had
        passed when the new one was first seen."""
        from pytest_meshconform.evidence.certs import lifetime_elapsed

        return lifetime_elapsed(self.lifetime_start, self.old.not_after, self.observed_at)

    def describe_failures(self) -> str:
        """Every failed request of the loop, one per line: its number, when it was sent and how
        long it took, relative to the switch (the new serial first seen; when each proxy got
        its new certificate), and what came back (curl's exit and error, the status and the
        body's start); "" without failures. What a flaky rotation needs to explain itself."""
        failed = [(n, c) for n, c in enumerate(self.calls, 1) if not c[2].ok]
        if not failed:
            return ""
        marks = [("new serial seen", self.observed_at)]
        if self.new_received_at is not None:
            marks.append((f"{self.workload}'s proxy got it", self.new_received_at))
        if len(self.client_certs) == 2 and self.client_certs[0][0].serial != (
            self.client_certs[1][0].serial
        ):
            got = self.client_certs[1][1]
            client = self.calls[0][2].client
            if got is not None:
                marks.append((f"{client}'s proxy got its new certificate", got))
            else:
                marks.append(
                    (f"{client}'s new certificate's NotBefore", self.client_certs[1][0].not_before)
                )
        lines = [
            f"{len(failed)} of {len(self.calls)} requests failed around the rotation of"
            f" {self.workload} ({self.old.serial} -> {self.new.serial}; "
            + ", ".join(f"{what} at {_clock(at)}" for what, at in marks)
            + "):"
        ]
        for number, (sent, seconds, result) in failed:
            relative = ", ".join(
                f"{(sent - at).total_seconds():+.3f} s from {what}" for what, at in marks
            )
            line = (
                f"  request {number}/{len(self.calls)} sent {_clock(sent)} ({relative}),"
                f" took {seconds:.3f} s: {result.describe()}"
            )
            if result.status is not None and result.body:
                line += f"; body: {result.body[:300]!r}"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return (
            f"{self.workload}: serial {self.old.serial} -> {self.new.serial} at"
            f" {self.observed_at.isoformat()} ({self.fraction_elapsed:.3f} of the old lifetime"
            f" {format_duration(dt.timedelta(seconds=round(self.lifetime.total_seconds())))}"
            f" from {self.lifetime_start.isoformat()});"
            f" requests: {self.requests_before} before,"
            f" {self.requests_after} after, {len(self.failures)} failed"
        )


@final
class RotationWatcher:
    """What `rotation` returns: `rotation.watch(httpbin, client=sleep)` -> `RotationResult`."""

    def __init__(
        self,
        mesh: Mesh,
        evidence: Evidence,
        progress: Progress | None = None,
        *,
        cert_ttl: dt.timedelta | None = None,
    ) -> None:
        self.mesh = mesh
        self.evidence = evidence
        self.progress = progress or (lambda message: None)
        self.cert_ttl = cert_ttl  # the --mesh-cert-ttl in force, for the skip message

    def watch(
        self,
        target: WorkloadHandle,
        *,
        client: WorkloadHandle | None = None,
        slack: float = 5.0,
        poll_interval: float = 0.05,
        requests_after: int = 3,
        longest: dt.timedelta = LONGEST_ROTATION_WATCH,
    ) -> RotationResult:
        """Wait for `target`'s certificate to change while `client` keeps calling it.

        Skips at once when Istio would rotate the certificate more than `longest` from now
        (the message names the TTL in force and `--mesh-cert-ttl`). Gives up `slack` seconds
        after the old certificate's NotAfter: a cert that was not rotated before it expired is
        exactly the failure this helper exists to show. With a client, the request loop goes on
        until `requests_after` requests used the new cert.
        """
        __tracebackhide__ = True
        from pytest_meshconform.istio.rotation import rotation_window

        old, received = served_cert(self.mesh, target, self.evidence)
        start = old.not_before
        if received is not None and old.not_before <= received < old.not_after:
            start = received  # see RotationResult.lifetime_start
        _, latest = rotation_window(start, old.not_after)
        wait = latest - dt.datetime.now(dt.UTC)
        if wait > longest:
            ttl = "the TTL in force"
            if self.cert_ttl is not None:
                ttl = f"--mesh-cert-ttl={format_duration(self.cert_ttl)}"
            pytest.skip(
                f"{target.key}'s certificate lives {format_duration(old.lifetime)} ({ttl});"
                f" Istio would rotate it by {utc_text(latest)}, {format_duration(wait)} from now,"
                f" longer than this watch waits ({format_duration(longest)}): run with"
                " --mesh-cert-ttl=30s (or set mesh_cert_ttl) to observe rotation"
            )
        self.progress(
            f"watching {target.key}'s certificate {old.serial[:12]}: Istio would rotate it within"
            f" {max(wait.total_seconds(), 0.0):.0f}s (by {utc_text(latest)}; expires"
            f" {utc_text(old.not_after)})"
        )
        client_certs: list[tuple[WorkloadCert, dt.datetime | None]] = []
        if client is not None and client.dataplane != "none":
            client_certs.append(served_cert(self.mesh, client, None))
        stop = threading.Event()
        calls: list[tuple[dt.datetime, float, HttpResult]] = []

        def loop() -> None:
            while not stop.is_set() and client is not None:
                sent = dt.datetime.now(dt.UTC)
                started = time.monotonic()
                result = client.curl(target, path="/get", timeout=5)
                calls.append((sent, time.monotonic() - started, result))

        def rotated() -> tuple[dt.datetime, WorkloadCert] | None:
            now = dt.datetime.now(dt.UTC)
            current = current_cert(self.mesh, target, None)
            return (now, current) if current.serial != old.serial else None

        def served_after(moment: dt.datetime) -> bool | None:
            made = sum(1 for sent, _, _ in list(calls) if sent > moment)
            return True if made >= requests_after or not worker.is_alive() else None

        worker = threading.Thread(target=loop, name="meshconform-rotation-load", daemon=True)
        worker.start()
        try:
            deadline_at = old.not_after + dt.timedelta(seconds=slack)
            try:
                now, current = poll(
                    rotated,
                    timeout=(deadline_at - dt.datetime.now(dt.UTC)).total_seconds(),
                    interval=poll_interval,
                    what=f"certificate {old.serial} of {target.key} rotated",
                )
            except WaitTimeout:
                raise AssertionError(
                    f"{target.key}: certificate {old.serial} was not rotated before it expired"
                    f" (NotAfter {utc_text(old.not_after)}, waited until"
                    f" {utc_text(dt.datetime.now(dt.UTC))})"
                ) from None
            if client is not None:
                with suppress(WaitTimeout):
                    poll(
                        lambda: served_after(now),
                        timeout=15,
                        interval=poll_interval,
                        what=f"{requests_after} requests with the new certificate",
                    )
        finally:
            stop.set()
            worker.join(timeout=15)
        new_received = served_cert(self.mesh, target, None)[1]
        if client_certs and client is not None:
            client_certs.append(served_cert(self.mesh, client, None))
        self.evidence.add_text(
            f"rotation of {target.key}",
            f"old {old.serial} -> new {current.serial} seen at {now.isoformat()}",
        )
        result = RotationResult(
            workload=target.key,
            old=old,
            new=current,
            observed_at=now,
            poll_interval=poll_interval,
            requests_before=sum(1 for sent, _, _ in calls if sent <= now),
            requests_after=sum(1 for sent, _, _ in calls if sent > now),
            failures=[r for _, _, r in calls if not r.ok],
            old_received_at=received,
            calls=list(calls),
            new_received_at=new_received,
            client_certs=client_certs,
        )
        if result.failures:
            self.evidence.add_text(
                f"failed requests during the rotation of {target.key}", result.describe_failures()
            )
        self.evidence.observed.rotations.append(
            RotationRecord(
                workload=target.key,
                old_serial=old.serial,
                new_serial=current.serial,
                old_not_before=_rfc3339(old.not_before),
                old_not_after=_rfc3339(old.not_after),
                new_not_before=_rfc3339(current.not_before),
                new_not_after=_rfc3339(current.not_after),
                observed_at=_rfc3339(now),
                fraction=round(result.fraction_elapsed, 4),
                requests_before=result.requests_before,
                requests_after=result.requests_after,
                failed_requests=len(result.failures),
            )
        )
        return result


def _clock(moment: dt.datetime) -> str:
    """A moment as a UTC wall-clock time to the millisecond: ``18:19:05.812``."""
    return moment.astimezone(dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def rotation(mesh: Mesh, request: pytest.FixtureRequest) -> RotationWatcher:
    """`rotation.watch(httpbin, client=sleep)`: see a certificate rotate under load."""
    settings = request.config.stash[mesh_settings_key]
    return RotationWatcher(
        mesh,
        evidence_window(mesh, request),
        progress_writer(request.config),
        cert_ttl=settings.cert_ttl,
    )
