# Over 800 lines: each fixture with the typed class it returns (PolicyApplier, Capturer, XfccReader,
# CertReader, RotationWatcher...), registered as one plugin module; see docs/architecture.md.
"""meshconform's fixtures: the user's API for writing mTLS conformance suites.

Registered by the plugin in `pytest_configure`. Importing this module is cheap: the backends,
the kubernetes client, cryptography and dpkt are imported inside the fixtures that need them.
Each fixture returns a named, exported type (annotate your tests with them):

- `mesh` (session) -> `Mesh`: the backend chosen by --mesh-cluster, brought up once.
- `sleep`, `httpbin`, `naked_sleep` -> `WorkloadHandle`; `workload` -> `WorkloadLookup`
  (`workload("sleep", "bar")`). A handle's `.curl(target)` returns an `HttpResult`.
- `apply_policy` -> `PolicyApplier`: apply, wait for the proxies, restore after the test.
- `xfcc` -> `XfccReader`: the X-Forwarded-Client-Cert the server saw (None when absent).
- `cert_of` -> `CertReader`: the certificate the sidecar serves now (`WorkloadCert`).
- `capture` -> `Capturer`: `with capture(httpbin) as cap:` -> `CaptureResult`.
- `rotation` -> `RotationWatcher`: `.watch(workload)` -> `RotationResult`.

The helpers hide their own frames from tracebacks (`__tracebackhide__`): a failure points at
the test's line.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import pytest

from pytest_meshconform import signals
from pytest_meshconform.backends.registry import Progress, backend_for
from pytest_meshconform.evidence.curl import (
    HttpError,
    HttpResult,
    curl_argv,
    header_from_httpbin,
    parse_curl_output,
)
from pytest_meshconform.mesh import (
    ExecResult,
    Feature,
    Mesh,
    MeshError,
    MeshInfo,
    MeshUnavailable,
    MeshWideNotAllowed,
    Workload,
)
from pytest_meshconform.plugin.options import backend_run, mesh_settings_key, usage_errors
from pytest_meshconform.report.exhibits import Evidence, evidence_of
from pytest_meshconform.report.observations import RequestRecord, RotationRecord
from pytest_meshconform.settings import format_duration
from pytest_meshconform.signals import signal_name
from pytest_meshconform.waiting import WaitTimeout, poll

if TYPE_CHECKING:
    from pytest_meshconform.evidence.certs import WorkloadCert
    from pytest_meshconform.evidence.wire import Capture, Flow
    from pytest_meshconform.evidence.xfcc import XfccElement
    from pytest_meshconform.istio.api.policy import Policy
    from pytest_meshconform.mesh import LogPositions

__all__ = [
    "LONGEST_ROTATION_WATCH",
    "CaptureResult",
    "Capturer",
    "CertReader",
    "EmptyCaptureError",
    "PolicyApplier",
    "PolicySource",
    "RotationResult",
    "RotationWatcher",
    "UnmatchedPolicyError",
    "WorkloadHandle",
    "WorkloadLookup",
    "XfccReader",
]

_preflight_done_key: Final = pytest.StashKey[bool]()


# -- session: the mesh ---------------------------------------------------------------------------


def _progress(config: pytest.Config) -> Progress:
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


def _check_markers(items: Sequence[pytest.Item]) -> None:
    """Unknown `mesh_features` names and versionless `mesh_min_version`s are usage errors:
    a typo must not skip a suite quietly."""
    known = {f.value for f in Feature}
    for item in items:
        for marker in item.iter_markers("mesh_features"):
            unknown = [name for name in marker.args if name not in known]
            if unknown:
                raise pytest.UsageError(
                    f"{item.nodeid}: unknown mesh feature(s) {', '.join(map(repr, unknown))} in"
                    f" @pytest.mark.mesh_features; known features: {', '.join(Feature)}"
                )
        for marker in item.iter_markers("mesh_min_version"):
            try:
                _version_tuple(str(marker.args[0]) if marker.args else "")
            except ValueError:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.mesh_min_version needs a version such as"
                    f" '1.24', got {marker.args!r}"
                ) from None


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Check the markers, then, once and before any test runs, that the chosen mesh can run
    here at all."""
    _check_markers(items)
    if config.stash.get(_preflight_done_key, False) or config.option.collectonly:
        return
    if not any("mesh" in getattr(item, "fixturenames", ()) for item in items):
        return
    config.stash[_preflight_done_key] = True
    settings = config.stash[mesh_settings_key]
    try:
        with usage_errors():
            backend_for(settings.cluster).preflight(backend_run(config))
    except MeshUnavailable as exc:
        raise pytest.UsageError(f"meshconform: {exc}") from None


@pytest.fixture(scope="session")
def mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The mesh under test, chosen by --mesh-cluster; closed (or kept) at the end of the run.

    From before the backend creates anything until it is closed, SIGTERM and SIGHUP (a CI
    job's timeout, a closed terminal) end the run like Ctrl-C does, so the mesh is torn down
    instead of left for the next run to sweep (`signals`).
    """
    started = time.monotonic()
    settings = request.config.stash[mesh_settings_key]
    owner = signals.acquire()
    try:
        try:
            with usage_errors():
                opened = backend_for(settings.cluster).open(
                    backend_run(request.config), _progress(request.config)
                )
        except MeshUnavailable as exc:
            pytest.exit(f"meshconform: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        from pytest_meshconform.plugin.report import mesh_info_key

        request.config.stash[mesh_info_key] = MeshInfo.of(opened)
        request.config.stash[_mesh_key] = opened
        _progress(request.config)(
            f"mesh ready ({opened.backend}) in {time.monotonic() - started:.1f}s"
        )
        try:
            yield opened
        finally:
            # Any backend's teardown runs to its end, whatever signals arrive meanwhile; one
            # that did ends the run as interrupted (pytest is past taking a KeyboardInterrupt).
            with signals.held(deliver=False) as held:
                opened.close()
            if held.signum is not None:
                request.session.exitstatus = pytest.ExitCode.INTERRUPTED
                _progress(request.config)(
                    f"{signal_name(held.signum)} during the mesh's teardown: held until it was"
                    " done; the run ends as interrupted"
                )
    finally:
        signals.release(owner)


_mesh_key: Final = pytest.StashKey[Mesh]()


# -- markers: features and versions ----------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+(?:\.\d+)*)", text)
    if match is None:
        raise ValueError(f"no version number in {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


@pytest.fixture(autouse=True)
def _mesh_markers(request: pytest.FixtureRequest) -> None:
    """Skip a test whose `mesh_features` / `mesh_min_version` the mesh does not meet (names
    and versions were checked at collection)."""
    node = request.node
    features = [name for m in node.iter_markers("mesh_features") for name in m.args]
    min_version = next((m.args[0] for m in node.iter_markers("mesh_min_version") if m.args), None)
    if not features and min_version is None:
        return
    the_mesh: Mesh = request.getfixturevalue("mesh")
    missing = sorted(set(features) - set(the_mesh.features))
    if missing:
        hint = " (pass --mesh-allow-mesh-wide to allow it)" if Feature.MESH_WIDE in missing else ""
        pytest.skip(f"the mesh lacks feature(s): {', '.join(missing)}{hint}")
    if min_version is not None:
        have, need = _version_tuple(the_mesh.istio_version), _version_tuple(str(min_version))
        if have < need:
            pytest.skip(
                f"needs mesh version >= {min_version}, the mesh is {the_mesh.istio_version}"
            )


@pytest.fixture(autouse=True)
def _mesh_window(request: pytest.FixtureRequest) -> None:
    """A test that uses the mesh starts its time window before any other fixture acts."""
    if "mesh" in getattr(request, "fixturenames", ()):
        _evidence_window(request.getfixturevalue("mesh"), request)


# -- workloads -----------------------------------------------------------------------------------


@final
@dataclass
class WorkloadHandle:
    """A workload of the mesh, with the actions a suite needs (curl, exec) and its identity.

    What `sleep`, `httpbin`, `naked_sleep` and `workload(name, namespace)` return.
    """

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

    def exec(self, argv: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run argv in the workload's pod as the app's user (in the app container on kube)."""
        __tracebackhide__ = True
        self.evidence.observed.touch(self.key)
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
        __tracebackhide__ = True
        url = target.url(path) if isinstance(target, WorkloadHandle) else target
        server = target.key if isinstance(target, WorkloadHandle) else self._workload_of(url)
        self.evidence.observed.touch(self.key, server)
        argv = curl_argv(url, method=method, headers=headers, data=data, timeout=timeout)
        result = self.mesh.exec(self.workload, argv, timeout + 5)
        http = parse_curl_output(url, self.key, result.returncode, result.stdout, result.stderr)
        new = self.evidence.observed.add_request(
            RequestRecord(
                client=self.key,
                url=url,
                server=server,
                status=http.status,
                exit_code=http.exit_code,
                outcome=_outcome_of(http),
            )
        )
        if new:  # a request loop (rotation) keeps one text per change of outcome
            self.evidence.add_text(f"curl {self.key} -> {url}", _describe_http(http))
        return http

    def _workload_of(self, url: str) -> str | None:
        """The workload behind a Service URL (`http://httpbin.foo:8000/...`), if it is one."""
        from urllib.parse import urlsplit

        host = (urlsplit(url).hostname or "").removesuffix(".svc.cluster.local")
        name, _, namespace = host.partition(".")
        for w in self.mesh.workloads():
            if w.name == name and namespace in (
                w.namespace,
                self.mesh.logical_namespace(w.namespace),
            ):
                return w.key
        return None

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:  # pytest prints fixtures' reprs with a failure: keep it short
        sidecar = "sidecar" if self.has_sidecar else "no sidecar"
        return f"<WorkloadHandle {self.key} ({sidecar}) on the {self.mesh.backend} mesh>"


def _outcome_of(http: HttpResult) -> str:
    from pytest_meshconform.evidence.curl import CURL_EXIT_REASONS

    if http.status is not None:
        return f"HTTP {http.status}" + (f", curl exit {http.exit_code}" if http.exit_code else "")
    reason = CURL_EXIT_REASONS.get(http.exit_code, "see curl's manual")
    return f"no HTTP response, curl exit {http.exit_code} ({reason})"


def _describe_http(http: HttpResult) -> str:
    lines = [http.describe()]
    lines += [f"{k}: {v}" for k, v in http.headers.items()]
    if http.body:
        lines += ["", http.body[:4000].decode(errors="replace")]
    return "\n".join(lines)


@final
class WorkloadLookup:
    """What the `workload` fixture returns: `workload("sleep", "bar")` -> `WorkloadHandle`."""

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __call__(
        self, name: str, namespace: str, *, skip_if_missing: bool = False
    ) -> WorkloadHandle:
        """Any workload of the topology; the namespace as the suites spell it (`foo`).

        With ``skip_if_missing=True`` a workload the mesh's topology lacks (a
        ``--mesh-topology`` without it) skips the test, naming it, instead of failing.
        """
        __tracebackhide__ = True
        if skip_if_missing and not any(
            w.name == name and self._mesh.logical_namespace(w.namespace) == namespace
            for w in self._mesh.workloads()
        ):
            pytest.skip(
                f"the mesh's topology has no workload {name}.{namespace}, which this test needs"
            )
        return WorkloadHandle(self._mesh, self._mesh.workload(name, namespace), self._evidence)


def _evidence_window(mesh: Mesh, request: pytest.FixtureRequest) -> Evidence:
    """The test's Evidence; the first mesh fixture of a test marks where its time window
    starts (the mesh's log positions), so a failure shows only the log lines it caused."""
    evidence = evidence_of(request.node)
    if evidence.log_positions is None:
        # A suite's stand-in mesh (a test double of its own) may not implement the log members:
        # its tests then have no window (and show no logs), they do not error.
        with suppress(MeshError, AttributeError, NotImplementedError):
            evidence.log_positions = mesh.log_positions()
    return evidence


@pytest.fixture
def workload(mesh: Mesh, request: pytest.FixtureRequest) -> WorkloadLookup:
    """`workload("sleep", "bar")`: any workload of the topology."""
    return WorkloadLookup(mesh, _evidence_window(mesh, request))


@pytest.fixture
def sleep(workload: WorkloadLookup) -> WorkloadHandle:
    """The curl client with a sidecar (namespace foo); skips when the topology lacks it."""
    return workload("sleep", "foo", skip_if_missing=True)


@pytest.fixture
def httpbin(workload: WorkloadLookup) -> WorkloadHandle:
    """The httpbin server with a sidecar (namespace foo); skips when the topology lacks it."""
    return workload("httpbin", "foo", skip_if_missing=True)


@pytest.fixture
def naked_sleep(workload: WorkloadLookup) -> WorkloadHandle:
    """The curl client without a sidecar (namespace legacy); skips when the topology lacks
    it."""
    return workload("sleep", "legacy", skip_if_missing=True)


# -- policies --------------------------------------------------------------------------------------


PolicySource = Mapping[str, Any] | str | Path
"""What `apply_policy` takes: a manifest dict, YAML text (one or more documents) or a path."""


class UnmatchedPolicyError(AssertionError):
    """A policy that applies to nothing: its namespace is not in the mesh, or its selector
    matches no workload. A test passing under it would have tested nothing, so it is an error
    unless the test says `apply_policy(..., allow_unmatched=True)`."""


def _policies_from(source: PolicySource) -> list[Policy]:
    from pytest_meshconform.istio.api.policy import parse_policies

    if isinstance(source, Path) or (
        isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"policy file not found: {path}")
        source = path.read_text()
    if isinstance(source, Mapping):
        return [parse_policies([source])[0]]
    return list(parse_policies(source))


def _policy_key(mesh: Mesh, manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    """kind, namespace, name; the namespace as the suite spells it (a kube run maps `foo` to a
    per-run namespace, and suites use both spellings)."""
    meta = manifest.get("metadata", {})
    return (
        str(manifest.get("kind")),
        mesh.logical_namespace(str(meta.get("namespace") or "default")),
        str(meta.get("name")),
    )


@final
class PolicyApplier:
    """What `apply_policy` returns: `apply_policy(manifest | yaml_text | path)`.

    Validates every policy (Istio's rules, see `parse_policy`), refuses policies that apply to
    nothing (`UnmatchedPolicyError`), applies them, and returns once every affected proxy has
    them. After the test, `restore()` puts back exactly what was in force before, even when
    the test failed.
    """

    def __init__(self, mesh: Mesh, node: pytest.Item, evidence: Evidence) -> None:
        self._mesh = mesh
        self._node = node
        self._evidence = evidence
        self._before = {_policy_key(mesh, m): dict(m) for m in mesh.policies()}
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __call__(
        self, source: PolicySource, *, allow_unmatched: bool = False
    ) -> list[dict[str, Any]]:
        """Apply the policies in `source`; returns their manifests as applied.

        `allow_unmatched=True` applies a policy whose namespace is missing or whose selector
        matches no workload (for tests about exactly that).
        """
        __tracebackhide__ = True
        policies = _policies_from(source)
        if not allow_unmatched:
            from pytest_meshconform.istio.selection import unmatched_reason

            workloads = self._mesh.workloads()
            for policy in policies:
                problem = unmatched_reason(
                    policy, workloads, self._mesh.root_namespace, self._mesh.logical_namespace
                )
                if problem is not None:
                    raise UnmatchedPolicyError(
                        f"{policy.kind} {policy.namespace or 'default'}/{policy.name} would"
                        f" apply to nothing: {problem}. Fix the policy, or pass"
                        " allow_unmatched=True if the test means it"
                    )
        manifests = [policy.to_manifest() for policy in policies]
        for manifest in manifests:
            key = _policy_key(self._mesh, manifest)
            _check_mesh_wide(self._node, self._mesh, manifest)
            try:
                self._mesh.apply(manifest)
            except MeshWideNotAllowed as exc:
                pytest.skip(str(exc))
            self._applied[key] = manifest
            self._evidence.add_text(f"policy {'/'.join(key)}", _yaml(manifest))
            self._evidence.observed.policies.append(_policy_line(key, manifest))
        return manifests

    def __repr__(self) -> str:  # pytest prints fixture values with a failure: what was applied
        applied = ", ".join("/".join(key) for key in self._applied) or "nothing yet"
        return f"<PolicyApplier on the {self._mesh.backend} mesh: applied {applied}>"

    def restore(self) -> None:
        """Put back the policies in force before the test (delete the ones it added)."""
        errors = []
        for key, manifest in reversed(list(self._applied.items())):
            try:
                if key in self._before:
                    self._mesh.apply(self._before[key])
                else:
                    self._mesh.delete(manifest)
            except MeshError as exc:
                errors.append(f"{'/'.join(key)}: {exc}")
        self._applied.clear()
        if errors:
            raise MeshError(
                "could not restore the policies in force before the test: " + "; ".join(errors)
            )


@pytest.fixture
def apply_policy(mesh: Mesh, request: pytest.FixtureRequest) -> Iterator[PolicyApplier]:
    """Apply Istio policies for this test; afterwards restore exactly what was there before."""
    applier = PolicyApplier(mesh, request.node, _evidence_window(mesh, request))
    yield applier
    applier.restore()


def _check_mesh_wide(node: pytest.Item, mesh: Mesh, manifest: Mapping[str, Any]) -> None:
    __tracebackhide__ = True
    meta = manifest.get("metadata", {})
    spec = manifest.get("spec") or {}
    kind = manifest.get("kind")
    # A root-namespace AuthorizationPolicy reaches every namespace, selector or not.
    wide = kind == "AuthorizationPolicy" or (
        kind == "PeerAuthentication" and not spec.get("selector")
    )
    if (
        meta.get("namespace") == mesh.root_namespace
        and wide
        and node.get_closest_marker("mesh_wide") is None
    ):
        raise pytest.UsageError(
            f"{node.nodeid} applies a mesh-wide {kind} in"
            f" {mesh.root_namespace} but is not marked @pytest.mark.mesh_wide (shared-cluster runs"
            " deselect mesh-wide tests by that marker)"
        )


def _policy_line(key: tuple[str, str, str], manifest: Mapping[str, Any]) -> str:
    """`PeerAuthentication foo/default {"mtls": {"mode": "STRICT"}}`: one line per policy."""
    import json

    kind, namespace, name = key
    spec = json.dumps(manifest.get("spec") or {}, separators=(", ", ": "), sort_keys=False)
    return f"{kind} {namespace}/{name} {spec}"


def _yaml(manifest: Mapping[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(dict(manifest), sort_keys=False))


# -- evidence helpers: XFCC, certificates, captures -------------------------------------------


@final
class XfccReader:
    """What `xfcc` returns: `xfcc(client, server)` requests the server's /headers from the
    client and returns the parsed X-Forwarded-Client-Cert the server saw, or None without one."""

    def __call__(
        self, client: WorkloadHandle, server: WorkloadHandle
    ) -> tuple[XfccElement, ...] | None:
        __tracebackhide__ = True
        from pytest_meshconform.evidence.xfcc import parse_xfcc

        result = client.curl(server, path="/headers")
        if not result.ok:
            raise HttpError(f"cannot read X-Forwarded-Client-Cert: {result}")
        header = header_from_httpbin(result.json(), "X-Forwarded-Client-Cert")
        if header is None:
            return None
        client.evidence.add_text(f"xfcc seen by {server.key}", header)
        elements = parse_xfcc(header)
        for element in elements:
            uris = ", ".join(element.uri) or "no URI"
            client.evidence.observed.identities.append(
                f"XFCC at {server.key} from {client.key}: URI={uris}"
                + (f" By={', '.join(element.by)}" if element.by else "")
            )
        return elements


@pytest.fixture
def xfcc() -> XfccReader:
    """`xfcc(client, server)`: request server's /headers from client; the XFCC the server saw."""
    return XfccReader()


@final
class CertReader:
    """What `cert_of` returns: `cert_of(workload)` -> the `WorkloadCert` its sidecar serves now
    (read from the sidecar's Envoy admin `/config_dump`)."""

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __call__(self, target: WorkloadHandle | Workload) -> WorkloadCert:
        __tracebackhide__ = True
        return _current_cert(self._mesh, target, self._evidence)


@pytest.fixture
def cert_of(mesh: Mesh, request: pytest.FixtureRequest) -> CertReader:
    """`cert_of(workload)`: the workload certificate its sidecar serves right now."""
    return CertReader(mesh, _evidence_window(mesh, request))


def _current_cert(
    mesh: Mesh, target: WorkloadHandle | Workload, evidence: Evidence | None
) -> WorkloadCert:
    __tracebackhide__ = True
    return _served_cert(mesh, target, evidence)[0]


def _served_cert(
    mesh: Mesh, target: WorkloadHandle | Workload, evidence: Evidence | None
) -> tuple[WorkloadCert, dt.datetime | None]:
    """The workload certificate the sidecar serves, and when the sidecar got it (Envoy's
    `last_updated` of its `default` secret; None when the dump does not say)."""
    __tracebackhide__ = True
    from pytest_meshconform.istio.envoy import WORKLOAD_SECRET
    from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets

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
        evidence.observed.touch(w.key)
        evidence.observed.identities.append(
            f"certificate of {w.key}: {cert.spiffe_id} serial {cert.serial[:16]} valid"
            f" {_utc(cert.not_before)} to {_utc(cert.not_after)}"
        )
        evidence.add_text(
            f"cert of {w.key}",
            f"{cert.spiffe_id} serial={cert.serial} not_before={cert.not_before.isoformat()}"
            f" not_after={cert.not_after.isoformat()}",
        )
    served = secrets.secret(WORKLOAD_SECRET)
    return secrets.workload, (served.last_updated if served is not None else None)


class EmptyCaptureError(AssertionError):
    """A capture saw no packet of the flow it was meant to observe: never a pass."""


@final
@dataclass
class CaptureResult:
    """What `with capture(workload) as cap:` binds; filled when the block ends: the parsed
    capture (`flows`, `tls_flows`, `plaintext_flows`, `flows_from(client)`) and the pcap."""

    workload: Workload
    port: int | None
    capture: Capture | None = None
    pcap_path: Path | None = None
    names: Mapping[str, str] = field(default_factory=dict)  # pod IP -> workload key

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

    def flow_lines(self) -> list[str]:
        """One line per flow: client -> server:port, TLS version, SNI, ALPN, plaintext bytes."""
        if self.capture is None:
            return []
        return [flow_line(flow, self.names) for flow in self.capture.flows]

    def __str__(self) -> str:
        where = f"capture at {self.workload.key} port {self.port or 'any'}"
        if self.capture is None:
            return f"{where} (still recording)"
        flows = self.capture.flows
        head = f"{where}: {len(flows)} flow{'' if len(flows) == 1 else 's'} ({self.pcap_path})"
        return "\n".join([head, *(f"  {line}" for line in self.flow_lines())])

    __repr__ = __str__  # `assert ..., cap` prints the repr: the flows, not a dataclass dump


def flow_line(flow: Flow, names: Mapping[str, str] | None = None) -> str:
    """`sleep.foo:41234 -> httpbin.foo:8080 TLSv1.3 SNI=outbound_.8000_._.httpbin... ALPN=
    istio-http/1.1 plaintext 0 B`: what one TCP flow of a capture was, for a person."""
    names = names or {}

    def end(address: tuple[str, int]) -> str:
        return f"{names.get(address[0], address[0])}:{address[1]}"

    parts = [f"{end(flow.client)} -> {end(flow.server)}"]
    tls = flow.tls
    if tls is not None:
        hello = tls.client_hello
        server_hello = tls.server_hello
        alpn = server_hello.alpn if server_hello and server_hello.alpn else None
        offered = ",".join(hello.alpn) if hello and hello.alpn else "-"
        parts.append(tls.version or "TLS (no ServerHello)")
        parts.append(f"SNI={hello.sni if hello and hello.sni else '-'}")
        parts.append(f"ALPN={alpn}" if alpn else f"ALPN offered={offered}")
        parts.append("plaintext 0 B")
    else:
        parts.append(f"plaintext {flow.client_bytes + flow.server_bytes} B")
        if flow.http_requests:
            first = flow.http_requests[0]
            parts.append(f"{first.method} {first.target}")
        if flow.http_responses:
            parts.append(f"-> {flow.http_responses[0].status}")
    if flow.rst_seen:
        parts.append("RST")
    return " ".join(parts)


def _pod_ip(handle: WorkloadHandle) -> str:
    return handle.mesh.pod_ip(handle.workload)


def _dropped_packets(tcpdump_stderr: str) -> int:
    """tcpdump's closing count of packets the kernel dropped (0 when it printed none)."""
    found = re.search(r"(\d+) packets? dropped by kernel", tcpdump_stderr)
    return int(found.group(1)) if found else 0


def _service_port_hint(mesh: Mesh, workload: Workload, port: int) -> str:
    """When `port` is a Service port of `workload`'s Service, the container port to use."""
    if port in workload.container_ports:
        return ""
    namespace = mesh.logical_namespace(workload.namespace)
    for service in mesh.services():
        if (
            service.port == port
            and mesh.logical_namespace(service.namespace) == namespace
            and service.target_port in workload.container_ports
        ):
            return (
                f". Port {port} is the port of Service {service.name}.{namespace}; the pod"
                f" listens on {service.target_port}: capture(..., port={service.target_port})"
            )
    return ""


@final
class Capturer:
    """What `capture` returns: `with capture(workload, port=None) as cap:` records the pod's
    wire traffic (not loopback) for the duration of the block -> `CaptureResult`.

    `port` defaults to the workload's first container port. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw
    the traffic at all. `allow_empty=True` opts out (for tests that expect silence).
    """

    def __init__(self, mesh: Mesh, evidence: Evidence) -> None:
        self._mesh = mesh
        self._evidence = evidence

    def __repr__(self) -> str:
        return f"<Capturer on the {self._mesh.backend} mesh>"

    def _names(self) -> dict[str, str]:
        names = {}
        for w in self._mesh.workloads():
            with suppress(MeshError):
                names[self._mesh.pod_ip(w)] = w.key
        return names

    def __call__(
        self,
        target: WorkloadHandle | Workload,
        port: int | None = None,
        *,
        allow_empty: bool = False,
    ) -> AbstractContextManager[CaptureResult]:
        return self._run(target, port, allow_empty)

    @contextmanager
    def _run(
        self, target: WorkloadHandle | Workload, port: int | None, allow_empty: bool
    ) -> Iterator[CaptureResult]:
        __tracebackhide__ = True
        from pytest_meshconform.evidence.wire import analyze_pcap

        w = target.workload if isinstance(target, WorkloadHandle) else target
        if port is None and w.container_ports:
            port = w.container_ports[0]
        result = CaptureResult(workload=w, port=port, names=self._names())
        self._evidence.observed.touch(w.key)
        with self._mesh.capture(w, port) as recording:
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
            self._evidence.add_file(f"pcap {w.key} port {port or 'any'}", recording.path)
        self._evidence.observed.flows.extend(f"at {w.key}: {line}" for line in result.flow_lines())
        seen = result.capture.flows if port is None else result.capture.flows_to(port)
        if not any(is_block_traffic(flow) for flow in seen) and not allow_empty:
            hint = "" if port is None else _service_port_hint(self._mesh, w, port)
            tails = len(seen)
            if tails:
                hint += (
                    f" (only the closing packets of {tails} connection(s) opened before the"
                    " block, which carry nothing)"
                )
            raise EmptyCaptureError(
                f"{result} saw no TCP flow{'' if port is None else f' to port {port}'}; an empty"
                f" capture proves nothing (is the traffic going where the test thinks?){hint}"
            )


def is_block_traffic(flow: Flow) -> bool:
    """Whether a captured flow is traffic of the capture's block: it opened there (SYN seen)
    or carried bytes. The bare FIN/RST of a connection opened before the block (a pooled
    connection an earlier test left, closed by a listener drain) is not: a capture that saw
    only that is empty."""
    return (
        flow.direction_from in ("syn", "syn-ack") or flow.client_bytes > 0 or flow.server_bytes > 0
    )


@pytest.fixture
def capture(mesh: Mesh, request: pytest.FixtureRequest) -> Capturer:
    """`with capture(workload, port=None) as cap:` records the pod's wire traffic (not loopback).

    After the block, `cap.flows` etc. hold the parsed capture. A capture with no TCP flow (to
    `port`, when given) raises EmptyCaptureError: absence assertions need a capture that saw the
    traffic at all. Pass `allow_empty=True` to opt out.
    """
    return Capturer(mesh, _evidence_window(mesh, request))


# -- rotation --------------------------------------------------------------------------------------


LONGEST_ROTATION_WATCH: Final = dt.timedelta(minutes=5)
"""`RotationWatcher.watch` skips at once when Istio would rotate later than this from now."""


def _utc(moment: dt.datetime) -> str:
    """A time as users read it: with its date, in UTC (`2026-12-02 16:45:00 UTC`)."""
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


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

    def __str__(self) -> str:
        return (
            f"{self.workload}: serial {self.old.serial} -> {self.new.serial} at"
            f" {self.observed_at.isoformat()} ({self.fraction_elapsed:.3f} of the old lifetime"
            f" {self.lifetime} from {self.lifetime_start.isoformat()});"
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

        old, received = _served_cert(self.mesh, target, self.evidence)
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
                f" Istio would rotate it by {_utc(latest)}, {format_duration(wait)} from now,"
                f" longer than this watch waits ({format_duration(longest)}): run with"
                " --mesh-cert-ttl=30s (or set mesh_cert_ttl) to observe rotation"
            )
        self.progress(
            f"watching {target.key}'s certificate {old.serial[:12]}: Istio would rotate it within"
            f" {max(wait.total_seconds(), 0.0):.0f}s (by {_utc(latest)}; expires"
            f" {_utc(old.not_after)})"
        )
        stop = threading.Event()
        calls: list[tuple[dt.datetime, HttpResult]] = []

        def loop() -> None:
            while not stop.is_set() and client is not None:
                sent = dt.datetime.now(dt.UTC)
                calls.append((sent, client.curl(target, path="/get", timeout=5)))

        def rotated() -> tuple[dt.datetime, WorkloadCert] | None:
            now = dt.datetime.now(dt.UTC)
            current = _current_cert(self.mesh, target, None)
            return (now, current) if current.serial != old.serial else None

        def served_after(moment: dt.datetime) -> bool | None:
            made = sum(1 for sent, _ in list(calls) if sent > moment)
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
                    f" (NotAfter {_utc(old.not_after)}, waited until"
                    f" {_utc(dt.datetime.now(dt.UTC))})"
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
            requests_before=sum(1 for sent, _ in calls if sent <= now),
            requests_after=sum(1 for sent, _ in calls if sent > now),
            failures=[r for _, r in calls if not r.ok],
            old_received_at=received,
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


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def rotation(mesh: Mesh, request: pytest.FixtureRequest) -> RotationWatcher:
    """`rotation.watch(httpbin, client=sleep)`: see a certificate rotate under load."""
    settings = request.config.stash[mesh_settings_key]
    return RotationWatcher(
        mesh,
        _evidence_window(mesh, request),
        _progress(request.config),
        cert_ttl=settings.cert_ttl,
    )


# -- evidence on failure -----------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when == "call":
        mesh = item.config.stash.get(_mesh_key, None)
        evidence = evidence_of(item)
        if mesh is not None and evidence.log_positions is not None:
            _add_window_logs(mesh, evidence, evidence.log_positions)
        if mesh is not None and item.config.stash[mesh_settings_key].artifacts is not None:
            _add_config_dumps(mesh, evidence)
        if evidence.observed:
            # The summary first: what the test did and saw, then the details and the logs.
            evidence.texts = {
                "summary": evidence.observed.summary(),
                **{k: v for k, v in evidence.texts.items() if k != "summary"},
            }
    return report


def _add_window_logs(mesh: Mesh, evidence: Evidence, positions: LogPositions) -> None:
    """The log lines the test's own time window wrote, of the workloads it touched only (of
    every workload when it touched none through the fixtures, e.g. used `mesh` directly)."""
    touched = set(evidence.observed.workloads)
    for w in mesh.workloads():
        if touched and w.key not in touched:
            continue
        try:
            logs = mesh.logs_since(w, positions)
        except MeshError as error:
            evidence.add_text(f"log {w.key}", f"<could not read logs: {error}>")
            continue
        for name, text in logs.items():
            if text.strip():
                evidence.add_text(f"log {w.key} {name} (this test)", text[-20000:])


def _add_config_dumps(mesh: Mesh, evidence: Evidence) -> None:
    """The Envoy config each touched sidecar had when the test failed (files only)."""
    touched = set(evidence.observed.workloads)
    for w in mesh.workloads():
        if w.key not in touched or not w.has_sidecar:
            continue
        try:
            evidence.add_blob(f"config_dump {w.key}", mesh.envoy_admin(w, "/config_dump"), ".json")
        except MeshError as error:
            evidence.add_text(f"config_dump {w.key}", f"<could not read it: {error}>")
