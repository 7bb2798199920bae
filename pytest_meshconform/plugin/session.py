"""The session's mesh and each test's window onto it.

- `mesh` (session) -> `Mesh`: the backend chosen by --mesh-cluster, checked before collection
  ends (preflight), brought up once, torn down at the end whatever signals arrive.
- The `mesh_features` / `mesh_min_version` markers: checked at collection (a typo is a usage
  error), a test whose needs the mesh does not meet is skipped, naming them.
- Each test's window: the first mesh fixture a test uses marks where the mesh's logs stood
  (`evidence_window`), so a failure shows only the log lines the test caused, and the Envoy
  config of the sidecars it touched.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Final

import pytest

from pytest_meshconform import signals
from pytest_meshconform.backends.registry import Progress, backend_for
from pytest_meshconform.mesh import Feature, Mesh, MeshError, MeshInfo, MeshUnavailable
from pytest_meshconform.plugin import health, interrupts
from pytest_meshconform.plugin.options import backend_run, mesh_settings_key, usage_errors
from pytest_meshconform.report.exhibits import Evidence, evidence_of
from pytest_meshconform.signals import signal_name

if TYPE_CHECKING:
    from pytest_meshconform.mesh import LogPositions

__all__ = ["evidence_window", "mesh", "progress_writer"]

_preflight_done_key: Final = pytest.StashKey[bool]()


def progress_writer(config: pytest.Config) -> Progress:
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
    interrupts.own_signals(config)  # from now on a signal ends the run as interrupted (2)
    settings = config.stash[mesh_settings_key]
    try:
        with usage_errors():
            backend_for(settings.cluster).preflight(backend_run(config))
    except MeshUnavailable as exc:
        raise pytest.UsageError(f"meshconform: {exc}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With ``--mesh-dataplane=ambient`` or ``both``, every test that uses the mesh runs once per
    data plane, its id naming it (``test_strict_resets_plaintext[ambient]``): the session's
    `mesh` is parametrized, so pytest runs the tests of one data plane, closes that mesh, then
    opens the next. The default (sidecar) adds nothing: ids stay as they were."""
    if "mesh" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash.get(mesh_settings_key, None)
    if settings is None or settings.dataplane == "sidecar":
        return
    planes = settings.dataplanes
    metafunc.parametrize("mesh", planes, indirect=True, scope="session", ids=list(planes))


@pytest.fixture(scope="session")
def mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The mesh under test, chosen by --mesh-cluster; closed (or kept) at the end of the run.

    With ``--mesh-dataplane=both`` there is one per data plane (``request.param``), one at a
    time: pytest closes the sidecar mesh before it opens the ambient one.

    From before the backend creates anything until it is closed, SIGTERM and SIGHUP (a CI
    job's timeout, a closed terminal) end the run like Ctrl-C does, so the mesh is torn down
    instead of left for the next run to sweep (`signals`).
    """
    started = time.monotonic()
    settings = request.config.stash[mesh_settings_key]
    interrupts.own_signals(request.config)  # until the session ends (a mesh used unannounced)
    owner = signals.acquire()
    try:
        try:
            with usage_errors():
                opened = backend_for(settings.cluster).open(
                    backend_run(request.config, getattr(request, "param", None)),
                    progress_writer(request.config),
                )
        except MeshUnavailable as exc:
            pytest.exit(f"meshconform: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        from pytest_meshconform.plugin.report import mesh_info_key

        info = MeshInfo.of(opened)
        earlier = request.config.stash.get(mesh_info_key, None)  # another data plane's mesh
        request.config.stash[mesh_info_key] = info if earlier is None else earlier.merged(info)
        request.config.stash[_mesh_key] = opened
        health.mesh_opened(request.config, opened)
        progress_writer(request.config)(
            f"mesh ready ({opened.backend}) in {time.monotonic() - started:.1f}s"
        )
        try:
            yield opened
        finally:
            # Any backend's teardown runs to its end, whatever signals arrive meanwhile; one
            # that did ends the run as interrupted once every teardown is done (`interrupts`).
            health.mesh_closing(request.config)  # the last test's teardown is judged after
            with signals.held(deliver=False) as held:
                opened.close()
            if held.signum is not None:
                interrupts.note(request.config, held.signum, "the mesh's teardown")
                progress_writer(request.config)(
                    f"{signal_name(held.signum)} during the mesh's teardown: held until it was"
                    " done; the run ends as interrupted"
                )
    finally:
        signals.release(owner)


_mesh_key: Final = pytest.StashKey[Mesh]()  # the session's mesh, once the fixture opened it


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
        evidence_window(request.getfixturevalue("mesh"), request)


def evidence_window(mesh: Mesh, request: pytest.FixtureRequest) -> Evidence:
    """The test's Evidence; the first mesh fixture of a test marks where its time window
    starts (the mesh's log positions), so a failure shows only the log lines it caused."""
    evidence = evidence_of(request.node)
    if evidence.log_positions is None:
        # A suite's stand-in mesh (a test double of its own) may not implement the log members:
        # its tests then have no window (and show no logs), they do not error.
        with suppress(MeshError, AttributeError, NotImplementedError):
            evidence.log_positions = mesh.log_positions()
    return evidence


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
