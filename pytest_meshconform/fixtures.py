"""meshconform's fixtures: the user's API for writing mTLS conformance suites.

Registered by the plugin in `pytest_configure`. Importing this module is cheap: the backends,
the kubernetes client, cryptography and dpkt are imported inside the fixtures that need them.

- `mesh` (session): the backend chosen by --mesh-cluster, brought up once, closed at the end.
- `sleep`, `httpbin`, `naked_sleep`, `workload(name, namespace)`: `WorkloadHandle`s with
  `.curl(url) -> HttpResult`.
- `apply_policy(manifest | yaml_text | path)`: apply, wait for the proxies, restore after the test.
- `xfcc(client, server)`: the X-Forwarded-Client-Cert the server saw (None when absent).
- `cert_of(workload)`: the certificate the sidecar serves now (`certs.WorkloadCert`).
- `capture(workload, port=None)`: `with capture(httpbin) as cap:` -> `cap.flows`, `cap.pcap_path`.
- `rotation`: `rotation.watch(workload)` -> old/new cert, when, lifetime fraction, failed requests.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from .evidence import Evidence, evidence_of
from .http import HttpError, HttpResult, curl_argv, header_from_httpbin, parse_curl_output
from .mesh import Mesh, MeshError, MeshInfo, MeshUnavailable, MeshWideNotAllowed, Workload
from .plugin import mesh_settings_key

if TYPE_CHECKING:
    from .certs import WorkloadCert
    from .wire import Capture, Flow
    from .xfcc import XfccElement

ALL_FEATURES: Final = frozenset(
    {
        "mtls",
        "peer-authentication",
        "port-level-mtls",
        "destination-rule",
        "xfcc",
        "capture",
        "certificates",
        "rotation",
        "mesh-wide",
    }
)
"""Feature names the built-in suites use with @pytest.mark.mesh_features(...)."""

_preflight_done_key: Final = pytest.StashKey[bool]()


# -- session: the mesh ---------------------------------------------------------------------------


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Write progress lines to the terminal even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(message: str) -> None:
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"meshconform: {message}")
        else:
            reporter.write_line(f"meshconform: {message}")

    return write


def _preflight(config: pytest.Config) -> None:
    settings = config.stash[mesh_settings_key]
    if settings.cluster == "local":
        from .local.host import preflight

        preflight()
    else:
        from . import kube

        check = getattr(kube, "preflight", None)
        if check is None:
            raise MeshUnavailable(f"--mesh-cluster={settings.cluster} is not available yet")
        check(config, settings)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Check, once and before any test runs, that the chosen mesh can run here at all."""
    if config.stash.get(_preflight_done_key, False) or config.option.collectonly:
        return
    if not any("mesh" in getattr(item, "fixturenames", ()) for item in items):
        return
    config.stash[_preflight_done_key] = True
    try:
        _preflight(config)
    except MeshUnavailable as exc:
        raise pytest.UsageError(f"meshconform: {exc}") from None


def _open_mesh(config: pytest.Config) -> Mesh:
    settings = config.stash[mesh_settings_key]
    progress = _progress(config)
    if settings.cluster == "local":
        from .local.backend import LocalMesh
        from .local.control import Faults

        return LocalMesh(
            settings.cert_ttl,
            faults=Faults.parse(settings.faults),
            keep=settings.keep,
            progress=progress,
        ).start()
    if settings.faults:
        raise pytest.UsageError("--mesh-fault exists only for --mesh-cluster=local")
    from . import kube

    opener = getattr(kube, "open_mesh", None)
    if opener is None:
        raise MeshUnavailable(f"--mesh-cluster={settings.cluster} is not available yet")
    mesh: Mesh = opener(config, settings, progress)
    return mesh


@pytest.fixture(scope="session")
def mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The mesh under test, chosen by --mesh-cluster; closed (or kept) at the end of the run."""
    started = time.monotonic()
    try:
        opened = _open_mesh(request.config)
    except MeshUnavailable as exc:
        pytest.exit(f"meshconform: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    from .report import mesh_info_key

    settings = request.config.stash[mesh_settings_key]
    request.config.stash[mesh_info_key] = MeshInfo.of(
        opened,
        name=getattr(opened, "name", settings.cluster),
        revision=getattr(opened, "revision", None),
    )
    request.config.stash[_mesh_key] = opened
    _progress(request.config)(f"mesh ready ({opened.backend}) in {time.monotonic() - started:.1f}s")
    restore = _teardown_on_sigterm()
    try:
        yield opened
    finally:
        try:
            opened.close()
        finally:
            restore()


def _teardown_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM (a CI job's timeout, `kill`) end the run like Ctrl-C does, so the mesh is
    torn down instead of left for the next run to sweep. Only when nobody else handles it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM: tearing the mesh down")

    signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


_mesh_key: Final = pytest.StashKey[Mesh]()


# -- markers: features and versions ----------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+(?:\.\d+)*)", text)
    if match is None:
        raise ValueError(f"no version number in {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


@pytest.fixture(autouse=True)
def _mesh_markers(request: pytest.FixtureRequest) -> None:
    """Skip a test whose `mesh_features` / `mesh_min_version` the mesh does not meet."""
    node = request.node
    features = [name for m in node.iter_markers("mesh_features") for name in m.args]
    min_version = next((m.args[0] for m in node.iter_markers("mesh_min_version") if m.args), None)
    if not features and min_version is None:
        return
    the_mesh: Mesh = request.getfixturevalue("mesh")
    available = frozenset(getattr(the_mesh, "features", ALL_FEATURES))
    missing = sorted(set(features) - available)
    if missing:
        hint = " (pass --mesh-allow-mesh-wide to allow it)" if "mesh-wide" in missing else ""
        pytest.skip(f"the mesh lacks feature(s): {', '.join(missing)}{hint}")
    if min_version is not None:
        compat = getattr(the_mesh, "istio_version", None) or the_mesh.version
        try:
            have, need = _version_tuple(str(compat)), _version_tuple(str(min_version))
        except ValueError as exc:
            pytest.skip(f"cannot compare mesh version: {exc}")
        if have < need:
            pytest.skip(f"needs mesh version >= {min_version}, the mesh is {compat}")


# -- workloads -----------------------------------------------------------------------------------


@dataclass
class WorkloadHandle:
    """A workload of the mesh, with the actions a suite needs (curl, exec) and its identity."""

    mesh: Mesh
    workload: Workload
    evidence: Evidence

    @property
    def name(self) -> str:
        return self.workload.name

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    @property
    def key(self) -> str:
        return self.workload.key

    @property
    def has_sidecar(self) -> bool:
        return self.workload.has_sidecar

    @property
    def spiffe_id(self) -> str:
        return self.workload.spiffe_id(self.mesh.trust_domain)

    def url(self, path: str = "/headers", port: int = 8000) -> str:
        """The Service URL of this workload (`http://<name>.<namespace>:<port><path>`)."""
        return f"http://{self.name}.{self.namespace}:{port}{path}"

    def exec(self, argv: Sequence[str], timeout: float = 30.0) -> Any:
        return self.mesh.exec(self.workload, argv, timeout)

    def curl(
        self,
        target: str | WorkloadHandle,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        data: str | None = None,
        timeout: float = 10.0,
        path: str = "/headers",
    ) -> HttpResult:
        """Request `target` (a URL, or a workload's Service) from inside this workload's pod."""
        url = target.url(path) if isinstance(target, WorkloadHandle) else target
        argv = curl_argv(url, method=method, headers=headers, data=data, timeout=timeout)
        result = self.mesh.exec(self.workload, argv, timeout + 5)
        http = parse_curl_output(url, self.key, result.returncode, result.stdout, result.stderr)
        self.evidence.add_text(f"curl {self.key} -> {url}", _describe_http(http))
        return http

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:  # pytest prints fixtures' reprs with a failure: keep it short
        sidecar = "sidecar" if self.has_sidecar else "no sidecar"
        return f"<WorkloadHandle {self.key} ({sidecar}) on the {self.mesh.backend} mesh>"


def _describe_http(http: HttpResult) -> str:
    lines = [http.describe()]
    lines += [f"{k}: {v}" for k, v in http.headers.items()]
    if http.body:
        lines += ["", http.body[:4000].decode(errors="replace")]
    return "\n".join(lines)


@pytest.fixture
def workload(mesh: Mesh, request: pytest.FixtureRequest) -> Callable[[str, str], WorkloadHandle]:
    """`workload("sleep", "bar")`: any workload of the topology."""
    evidence = evidence_of(request.node)

    def get(name: str, namespace: str) -> WorkloadHandle:
        return WorkloadHandle(mesh, mesh.workload(name, namespace), evidence)

    return get


@pytest.fixture
def sleep(workload: Callable[[str, str], WorkloadHandle]) -> WorkloadHandle:
    """The curl client with a sidecar (namespace foo)."""
    return workload("sleep", "foo")


@pytest.fixture
def httpbin(workload: Callable[[str, str], WorkloadHandle]) -> WorkloadHandle:
    """The httpbin server with a sidecar (namespace foo)."""
    return workload("httpbin", "foo")


@pytest.fixture
def naked_sleep(workload: Callable[[str, str], WorkloadHandle]) -> WorkloadHandle:
    """The curl client without a sidecar (namespace legacy)."""
    return workload("sleep", "legacy")


# -- policies --------------------------------------------------------------------------------------


PolicySource = Mapping[str, Any] | str | Path


def _manifests_from(source: PolicySource) -> list[dict[str, Any]]:
    from .policy import parse_policies

    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"policy file not found: {path}")
        source = path.read_text()
    if isinstance(source, Mapping):
        return [parse_policies([source])[0].to_manifest()]
    return [p.to_manifest() for p in parse_policies(source)]


def _policy_key(mesh: Mesh, manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    """kind, namespace, name; the namespace as the suite spells it (a kube run maps `foo` to a
    per-run namespace, and suites use both spellings)."""
    meta = manifest.get("metadata", {})
    namespace = str(meta.get("namespace") or "default")
    logical = getattr(mesh, "logical_namespace", None)
    if logical is not None:
        namespace = str(logical(namespace))
    return (
        str(manifest.get("kind")),
        namespace,
        str(meta.get("name")),
    )


@pytest.fixture
def apply_policy(
    mesh: Mesh, request: pytest.FixtureRequest
) -> Iterator[Callable[[PolicySource], list[dict[str, Any]]]]:
    """Apply Istio policies for this test; afterwards restore exactly what was there before."""
    before = {_policy_key(mesh, m): dict(m) for m in mesh.policies()}
    applied: dict[tuple[str, str, str], dict[str, Any]] = {}
    evidence = evidence_of(request.node)

    def apply(source: PolicySource) -> list[dict[str, Any]]:
        manifests = _manifests_from(source)
        for manifest in manifests:
            key = _policy_key(mesh, manifest)
            _check_mesh_wide(request, mesh, manifest)
            try:
                mesh.apply(manifest)
            except MeshWideNotAllowed as exc:
                pytest.skip(str(exc))
            applied[key] = manifest
            evidence.add_text(f"policy {'/'.join(key)}", _yaml(manifest))
        return manifests

    yield apply
    errors = []
    for key, manifest in reversed(list(applied.items())):
        try:
            if key in before:
                mesh.apply(before[key])
            else:
                mesh.delete(manifest)
        except MeshError as exc:
            errors.append(f"{'/'.join(key)}: {exc}")
    if errors:
        raise MeshError(
            "could not restore the policies in force before the test: " + "; ".join(errors)
        )


def _check_mesh_wide(
    request: pytest.FixtureRequest, mesh: Mesh, manifest: Mapping[str, Any]
) -> None:
    meta = manifest.get("metadata", {})
    spec = manifest.get("spec") or {}
    if (
        meta.get("namespace") == mesh.root_namespace
        and manifest.get("kind") == "PeerAuthentication"
        and not spec.get("selector")
        and request.node.get_closest_marker("mesh_wide") is None
    ):
        raise pytest.UsageError(
            f"{request.node.nodeid} applies a mesh-wide PeerAuthentication in"
            f" {mesh.root_namespace} but is not marked @pytest.mark.mesh_wide (shared-cluster runs"
            " deselect mesh-wide tests by that marker)"
        )


def _yaml(manifest: Mapping[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(dict(manifest), sort_keys=False))


# -- evidence helpers: XFCC, certificates, captures -------------------------------------------


@pytest.fixture
def xfcc() -> Callable[..., tuple[XfccElement, ...] | None]:
    """`xfcc(client, server)`: request server's /headers from client; the XFCC the server saw."""

    def get(client: WorkloadHandle, server: WorkloadHandle) -> tuple[XfccElement, ...] | None:
        from .xfcc import parse_xfcc

        result = client.curl(server, path="/headers")
        if not result.ok:
            raise HttpError(f"cannot read X-Forwarded-Client-Cert: {result}")
        header = header_from_httpbin(result.json(), "X-Forwarded-Client-Cert")
        if header is None:
            return None
        client.evidence.add_text(f"xfcc seen by {server.key}", header)
        return parse_xfcc(header)

    return get


@pytest.fixture
def cert_of(
    mesh: Mesh, request: pytest.FixtureRequest
) -> Callable[[WorkloadHandle | Workload], WorkloadCert]:
    """`cert_of(workload)`: the workload certificate its sidecar serves right now."""
    evidence = evidence_of(request.node)

    def get(target: WorkloadHandle | Workload) -> WorkloadCert:
        return _current_cert(mesh, target, evidence)

    return get


def _current_cert(
    mesh: Mesh, target: WorkloadHandle | Workload, evidence: Evidence | None
) -> WorkloadCert:
    from .certs import parse_envoy_secrets

    w = target.workload if isinstance(target, WorkloadHandle) else target
    if not w.has_sidecar:
        raise MeshError(f"{w.key} has no sidecar, so no workload certificate")
    secrets = parse_envoy_secrets(mesh.envoy_admin(w, "/config_dump"))
    if secrets.workload is None:
        raise MeshError(
            f"the sidecar of {w.key} serves no workload certificate (no 'default' secret)"
        )
    if evidence is not None:
        cert = secrets.workload
        evidence.add_text(
            f"cert of {w.key}",
            f"{cert.spiffe_id} serial={cert.serial} not_before={cert.not_before.isoformat()}"
            f" not_after={cert.not_after.isoformat()}",
        )
    return secrets.workload


class EmptyCaptureError(AssertionError):
    """A capture saw no packet of the flow it was meant to observe: never a pass."""


@dataclass
class CaptureResult:
    """Filled when the `capture` block ends: the parsed capture and where the pcap is."""

    workload: Workload
    port: int | None
    capture: Capture | None = None
    pcap_path: Path | None = None

    def _parsed(self) -> Capture:
        if self.capture is None:
            raise RuntimeError("the capture is read when its `with` block ends")
        return self.capture

    @property
    def flows(self) -> tuple[Flow, ...]:
        return self._parsed().flows

    @property
    def tls_flows(self) -> tuple[Flow, ...]:
        return self._parsed().tls_flows

    @property
    def plaintext_flows(self) -> tuple[Flow, ...]:
        return self._parsed().plaintext_flows

    def flows_from(self, client: WorkloadHandle | str) -> tuple[Flow, ...]:
        """Flows whose client address is `client`'s pod IP (local mesh) or the given IP."""
        ip = client if isinstance(client, str) else _pod_ip(client)
        return tuple(f for f in self.flows if f.client[0] == ip)

    def __str__(self) -> str:
        return f"capture at {self.workload.key} port {self.port or 'any'}: {self.pcap_path}"


def _pod_ip(handle: WorkloadHandle) -> str:
    pod_ip = getattr(handle.mesh, "pod_ip", None)
    if pod_ip is None:
        raise MeshError(f"the {handle.mesh.backend} backend cannot tell pod IPs")
    return str(pod_ip(handle.workload))


def _dropped_packets(tcpdump_stderr: str) -> int:
    """tcpdump's closing count of packets the kernel dropped (0 when it printed none)."""
    found = re.search(r"(\d+) packets? dropped by kernel", tcpdump_stderr)
    return int(found.group(1)) if found else 0


@pytest.fixture
def capture(mesh: Mesh, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """`with capture(workload, port=None) as cap:` records the pod's wire traffic (not loopback).

    After the block, `cap.flows` etc. hold the parsed capture. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw the
    traffic at all. Pass `allow_empty=True` to opt out.
    """
    evidence = evidence_of(request.node)

    @contextmanager
    def run(
        target: WorkloadHandle | Workload, port: int | None = None, *, allow_empty: bool = False
    ) -> Iterator[CaptureResult]:
        from .wire import analyze_pcap

        w = target.workload if isinstance(target, WorkloadHandle) else target
        if port is None and w.container_ports:
            port = w.container_ports[0]
        result = CaptureResult(workload=w, port=port)
        with mesh.capture(w, port) as recording:
            yield result
        result.pcap_path = recording.path
        dropped = _dropped_packets(recording.tool_stderr)
        if dropped:
            raise MeshError(
                f"the capture at {w.key} is incomplete: tcpdump reports {dropped} packets dropped"
                f" by the kernel ({recording.path}); evidence with holes proves nothing"
            )
        result.capture = analyze_pcap(recording.pcap)
        if recording.path is not None:
            evidence.add_file(f"pcap {w.key} port {port or 'any'}", recording.path)
        wanted = result.capture.flows if port is None else result.capture.flows_to(port)
        if not wanted and not allow_empty:
            raise EmptyCaptureError(
                f"{result} saw no TCP flow{'' if port is None else f' to port {port}'}; an empty"
                " capture proves nothing (is the traffic going where the test thinks?)"
            )

    return run


# -- rotation --------------------------------------------------------------------------------------


@dataclass
class RotationResult:
    workload: str
    old: WorkloadCert
    new: WorkloadCert
    observed_at: dt.datetime  # first time the new serial was seen
    poll_interval: float  # seconds between looks: the bound on how late `observed_at` is
    requests_before: int  # requests made while the old certificate was served
    requests_after: int  # requests made after the new one was seen
    failures: list[HttpResult] = field(default_factory=list)

    @property
    def fraction_elapsed(self) -> float:
        """How much of the old cert's lifetime had passed when the new one was first seen."""
        from .certs import lifetime_elapsed

        return lifetime_elapsed(self.old.not_before, self.old.not_after, self.observed_at)

    def __str__(self) -> str:
        return (
            f"{self.workload}: serial {self.old.serial} -> {self.new.serial} at"
            f" {self.observed_at.isoformat()} ({self.fraction_elapsed:.3f} of the old lifetime"
            f" {self.old.lifetime}); requests: {self.requests_before} before,"
            f" {self.requests_after} after, {len(self.failures)} failed"
        )


class RotationWatcher:
    def __init__(
        self, mesh: Mesh, evidence: Evidence, progress: Callable[[str], None] | None = None
    ) -> None:
        self.mesh = mesh
        self.evidence = evidence
        self.progress = progress or (lambda message: None)

    def watch(
        self,
        target: WorkloadHandle,
        *,
        client: WorkloadHandle | None = None,
        slack: float = 5.0,
        poll_interval: float = 0.05,
        requests_after: int = 3,
    ) -> RotationResult:
        """Wait for `target`'s certificate to change while `client` keeps calling it.

        Gives up `slack` seconds after the old certificate's NotAfter: a cert that was not
        rotated before it expired is exactly the failure this helper exists to show. With a
        client, the request loop goes on until `requests_after` requests used the new cert.
        """
        old = _current_cert(self.mesh, target, self.evidence)
        deadline_at = old.not_after + dt.timedelta(seconds=slack)
        from .certs import rotation_window

        _, latest = rotation_window(old.not_before, old.not_after)
        wait = (latest - dt.datetime.now(dt.UTC)).total_seconds()
        self.progress(
            f"watching {target.key}'s certificate {old.serial[:12]}: Istio would rotate it within"
            f" {max(wait, 0.0):.0f}s (expires {old.not_after:%H:%M:%S} UTC)"
        )
        stop = threading.Event()
        calls: list[tuple[dt.datetime, HttpResult]] = []

        def loop() -> None:
            while not stop.is_set() and client is not None:
                sent = dt.datetime.now(dt.UTC)
                calls.append((sent, client.curl(target, path="/get", timeout=5)))

        worker = threading.Thread(target=loop, name="meshconform-rotation-load", daemon=True)
        worker.start()
        try:
            while True:
                now = dt.datetime.now(dt.UTC)
                current = _current_cert(self.mesh, target, None)
                if current.serial != old.serial:
                    break
                if now > deadline_at:
                    raise AssertionError(
                        f"{target.key}: certificate {old.serial} was not rotated before it expired"
                        f" (NotAfter {old.not_after.isoformat()}, waited until {now.isoformat()})"
                    )
                time.sleep(poll_interval)
            give_up = time.monotonic() + 15
            while client is not None and time.monotonic() < give_up and worker.is_alive():
                if sum(1 for sent, _ in list(calls) if sent > now) >= requests_after:
                    break
                time.sleep(poll_interval)
        finally:
            stop.set()
            worker.join(timeout=15)
        self.evidence.add_text(
            f"rotation of {target.key}",
            f"old {old.serial} -> new {current.serial} seen at {now.isoformat()}",
        )
        return RotationResult(
            workload=target.key,
            old=old,
            new=current,
            observed_at=now,
            poll_interval=poll_interval,
            requests_before=sum(1 for sent, _ in calls if sent <= now),
            requests_after=sum(1 for sent, _ in calls if sent > now),
            failures=[r for _, r in calls if not r.ok],
        )


@pytest.fixture
def rotation(mesh: Mesh, request: pytest.FixtureRequest) -> RotationWatcher:
    """`rotation.watch(httpbin, client=sleep)`: see a certificate rotate under load."""
    return RotationWatcher(mesh, evidence_of(request.node), _progress(request.config))


# -- evidence on failure -----------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when == "call":
        mesh = item.config.stash.get(_mesh_key, None)
        evidence = evidence_of(item)
        if mesh is not None and "mesh" in getattr(item, "fixturenames", ()):
            for w in mesh.workloads():
                try:
                    for name, text in mesh.logs(w).items():
                        evidence.add_text(f"log {w.key} {name}", text[-20000:])
                except MeshError:
                    continue
    return report
