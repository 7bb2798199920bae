"""The propagation wait of the kube backend (``backends/kube/propagation.py``) against the fake
cluster: what its timeout says (one sidecar a line, the first differences, the last dump kept
under --mesh-artifacts), transient API and exec errors retried within the deadline and named,
permanent ones ending it at once, and ``--mesh-propagation=version`` (the weaker check: each
affected sidecar accepting a newer xDS push)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_world import (
    BAR,
    FOO,
    RUN,
    World,
    authz,
    dest_rule,
    fake_world,
    peer_auth,
    proxy_id,
    sidecar_pods,
)

from pytest_meshconform.backends.kube.backend import KubeMesh
from pytest_meshconform.backends.kube.client import KubeApiError
from pytest_meshconform.backends.kube.propagation import (
    grouped_chains,
    propagation_timeout_message,
)
from pytest_meshconform.mesh import MeshError, PropagationTimeout

VERSION = "2025-03-14T09:26:41Z"  # the hand-made dumps' push time (tests/data/kube)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with fake_world(tmp_path) as world:
        yield world


@pytest.fixture
def started(world: World) -> Iterator[KubeMesh]:
    mesh = world.mesh(artifacts=world.tmp_path / "artifacts")
    mesh.start()
    yield mesh
    mesh.close()


NAMESPACE_DENY = authz(
    "no-delete",
    {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
)


# --- the timeout explains itself ----------------------------------------------------------------


def test_the_timeout_names_each_sidecar_on_its_line_with_its_dump_file(
    world: World, started: KubeMesh
) -> None:
    world.istio.stuck = {proxy_id(started, "httpbin", "foo"), proxy_id(started, "sleep", "foo")}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    head, *lines = str(timeout.value).splitlines()
    assert head == (
        f"PeerAuthentication {FOO}/default applied but not every sidecar implements it after 1s"
        " (--mesh-propagation-timeout 0:00:01):"
    )
    directory = world.tmp_path / "artifacts" / "propagation" / f"{RUN}-1"
    versions = f"[listeners {VERSION}/12, clusters {VERSION}/12]"
    assert lines == [
        f"  httpbin.{FOO}: inbound port 8080: PERMISSIVE (chains: tls/mTLS"
        " alpn=istio,istio-peer-exchange,istio-http/1.0,istio-http/1.1,istio-h2,"
        f" raw_buffer/plain), expected STRICT {versions}; last config_dump:"
        f" {directory / f'httpbin.{FOO}.config_dump.json'}",
        # sleep.foo's own client cluster to httpbin.foo stays auto mTLS either way: it is
        # not late for anything this change decides
    ]
    dump = json.loads((directory / f"httpbin.{FOO}.config_dump.json").read_text())
    assert dump["configs"][2]["version_info"] == f"{VERSION}/12"  # the dump the wait read last
    assert stat.S_IMODE((directory / f"httpbin.{FOO}.config_dump.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # a second timeout of the run keeps its own dumps
    with pytest.raises(PropagationTimeout, match=f"{RUN}-2/httpbin"):
        started.apply(peer_auth("foo", "DISABLE"))


def no_tls_single_request(namespace: str) -> dict[str, Any]:
    """A DestinationRule turning TLS off and keep-alive off for httpbin.<namespace>."""
    rule = dest_rule(namespace, "DISABLE")
    rule["spec"]["trafficPolicy"]["connectionPool"] = {"http": {"maxRequestsPerConnection": 1}}
    return rule


def test_the_first_differences_are_shown_and_the_rest_counted(
    world: World, started: KubeMesh
) -> None:
    """A client stuck before two DestinationRules of two differences each: its line shows
    three, the fourth is counted."""
    world.istio.stuck = {proxy_id(started, "sleep", "bar")}
    with pytest.raises(PropagationTimeout):
        started.apply(no_tls_single_request("foo"))
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(no_tls_single_request("bar"))
    (line,) = str(timeout.value).splitlines()[1:]
    assert line.startswith(f"  sleep.{BAR}: cluster outbound|8000||httpbin.")
    assert line.count("; cluster outbound|8000||httpbin.") == 2  # three differences
    assert " (and 1 more) [listeners " in line


def test_without_artifacts_the_timeout_says_how_to_keep_the_dumps(world: World) -> None:
    mesh = world.mesh()
    mesh.start()
    try:
        world.istio.stuck = {proxy_id(mesh, "httpbin", "bar")}
        with pytest.raises(PropagationTimeout) as timeout:
            mesh.apply(peer_auth("bar", "STRICT"))
    finally:
        mesh.close()
    assert str(timeout.value).splitlines()[-1] == (
        "  (pass --mesh-artifacts=DIR to keep each sidecar's last config_dump)"
    )


def test_rbac_differences_of_many_chains_read_as_one() -> None:
    have = "RBAC no RBAC filter (want DENY['x'])"
    assert grouped_chains(
        [
            "inbound port 8080: PERMISSIVE, expected STRICT",
            f"virtualInbound chain a (passthrough, HTTP): {have}",
            f"virtualInbound chain b (passthrough, TCP): {have}",
            f"virtualInbound chain b (passthrough, TCP): {have}",
            "virtualInbound chain c (port 8080, TCP): RBAC ALLOW[] (want DENY['x'])",
        ]
    ) == (
        "inbound port 8080: PERMISSIVE, expected STRICT",
        f"virtualInbound chains a (passthrough, HTTP), b (passthrough, TCP): {have}",
        "virtualInbound chain c (port 8080, TCP): RBAC ALLOW[] (want DENY['x'])",
    )


def test_the_message_of_a_wait_that_never_read_the_policies() -> None:
    message = propagation_timeout_message(
        "PeerAuthentication ns/default applied",
        waited=60.2,
        timeout="--mesh-propagation-timeout 0:01:00",
        mode="model",
        lagging={},
        dumps={},
        artifacts=None,
        transient=[KubeApiError("list ns: HTTP 503 Service Unavailable", 503)] * 3,
        unknown=True,
    )
    assert message.splitlines() == [
        "PeerAuthentication ns/default applied but what the sidecars must do could not be read"
        " within 60s (--mesh-propagation-timeout 0:01:00)",
        "  3 transient API/exec errors were retried, the last: list ns: HTTP 503 Service"
        " Unavailable",
    ]


# --- transient and permanent API errors ---------------------------------------------------------


def test_transient_exec_errors_are_retried_and_named_when_the_deadline_passes(
    world: World, started: KubeMesh
) -> None:
    world.istio.stuck = {proxy_id(started, "httpbin", "foo")}
    world.cluster.flaky = {"exec": 2}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(peer_auth("foo", "STRICT"))
    assert world.cluster.flaky == {"exec": 0}
    assert str(timeout.value).splitlines()[-1] == (
        "  2 transient API/exec errors were retried, the last: exec: HTTP 503 Service Unavailable"
    )


def test_transient_exec_errors_within_the_deadline_pass(world: World, started: KubeMesh) -> None:
    world.cluster.flaky = {"exec": 3}
    started.apply(peer_auth("foo", "STRICT"))
    assert world.cluster.flaky == {"exec": 0}


def test_a_permanent_exec_error_ends_the_wait_at_once(world: World, started: KubeMesh) -> None:
    """No right to exec (403) will not pass by waiting: before, it was read as a lagging
    sidecar and waited out until the deadline."""
    world.cluster.forbidden = {"exec"}
    began = time.monotonic()
    with pytest.raises(KubeApiError, match="exec: HTTP 403 Forbidden"):
        started.apply(peer_auth("foo", "STRICT"))
    assert time.monotonic() - began < 0.9  # the deadline is 1s


def test_a_transient_error_on_the_run_namespaces_is_retried(
    world: World, started: KubeMesh
) -> None:
    world.cluster.flaky = {f"list {FOO}": 2}
    started.apply(peer_auth("foo", "STRICT"))
    assert world.cluster.flaky == {f"list {FOO}": 0}


def test_a_transient_error_on_the_root_namespace_is_no_refusal(world: World) -> None:
    """A 503 listing the root namespace is retried. Before, it was taken for a user who may
    not read it: what a mesh-wide policy decides went unchecked, and a sidecar still
    PERMISSIVE under a mesh-wide STRICT passed."""
    world.cluster.apply(peer_auth("istio-system", "STRICT"))
    mesh = world.mesh()
    mesh.start()
    try:
        world.istio.stuck = {proxy_id(mesh, "httpbin", "bar")}
        world.cluster.flaky = {"list istio-system": 1}
        with pytest.raises(PropagationTimeout, match=f"httpbin.{BAR}: inbound port 8080"):
            mesh.apply(peer_auth("foo", "STRICT"))
        assert world.cluster.flaky == {"list istio-system": 0}
    finally:
        mesh.close()


# --- sidecars without an inbound listener -------------------------------------------------------


def test_every_sidecar_has_passthrough_chains_carrying_the_rbac_filters(
    world: World, started: KubeMesh
) -> None:
    """Real istiod gives every sidecar a virtualInbound with passthrough chains (sleep too),
    each carrying the RBAC filters of the policies that select it; a namespace-wide policy
    is waited for on sleep's chains as on httpbin's."""
    world.istio.stuck = {proxy_id(started, "sleep", "foo")}
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(NAMESPACE_DENY)
    (line,) = str(timeout.value).splitlines()[1:]
    assert line.startswith(
        f"  sleep.{FOO}: virtualInbound chains virtualInbound-catchall-http (passthrough, HTTP),"
        " virtualInbound (passthrough, TCP): RBAC no RBAC filter (want DENY["
    )


def test_a_sidecar_without_virtual_inbound_is_not_taken_to_enforce_rbac(
    world: World, started: KubeMesh
) -> None:
    """A dump without virtualInbound has no chain to carry RBAC filters; before, the RBAC
    check found nothing to compare and the policy counted as in force."""

    def no_inbound(dump: dict[str, Any]) -> None:
        listeners = dump["configs"][2]["dynamic_listeners"]
        if not any("destination_port" in json.dumps(entry) for entry in listeners[1:]):
            return
        chains = listeners[1]["active_state"]["listener"]["filter_chains"]
        if not any(c.get("filter_chain_match", {}).get("destination_port") == 8080 for c in chains):
            listeners[:] = [entry for entry in listeners if entry["name"] != "virtualInbound"]

    world.istio.rewrite_dump = no_inbound  # sleep pods lose their virtualInbound
    with pytest.raises(PropagationTimeout) as timeout:
        started.apply(NAMESPACE_DENY)
    message = str(timeout.value)
    assert f"  sleep.{FOO}: no active virtualInbound listener, expected RBAC filters (DENY)" in (
        message
    )
    assert f"httpbin.{FOO}:" not in message


# --- --mesh-propagation=version ---------------------------------------------------------------


def test_version_mode_waits_for_a_push_not_for_the_models_facts(world: World) -> None:
    """An Istio that renders RBAC differently from the model (here: none at all) times out
    every AuthorizationPolicy under the model check; the version check passes once each
    affected sidecar has accepted a newer listener push."""

    def no_rbac(dump: dict[str, Any]) -> None:
        text = json.dumps(dump)
        if "rbac" in text:
            for entry in dump["configs"][2]["dynamic_listeners"]:
                for chain in (
                    entry.get("active_state", {}).get("listener", {}).get("filter_chains", [])
                ):
                    chain["filters"] = [f for f in chain["filters"] if "rbac" not in f["name"]]
                    for f in chain["filters"]:
                        config = f.get("typed_config", {})
                        if "http_filters" in config:
                            config["http_filters"] = [
                                h for h in config["http_filters"] if "rbac" not in h["name"]
                            ]

    world.istio.rewrite_dump = no_rbac
    model = world.mesh()
    model.start()
    try:
        with pytest.raises(PropagationTimeout):
            model.apply(NAMESPACE_DENY)
        model.delete(NAMESPACE_DENY)
    finally:
        model.close()
    mesh = world.mesh(propagation="version")
    mesh.start()
    try:
        world.istio.lag_reads = 2
        pushed = dict(world.istio.pushes)
        mesh.apply(NAMESPACE_DENY)
        pods = sidecar_pods(mesh)
        for key in (f"sleep.{FOO}", f"httpbin.{FOO}"):  # the namespace-wide policy's sidecars
            assert world.istio.pushes[pods[key]] == pushed.get(pods[key], 0) + 1
    finally:
        mesh.close()


def test_version_mode_names_the_sidecar_whose_version_did_not_move(world: World) -> None:
    mesh = world.mesh(propagation="version", artifacts=world.tmp_path / "artifacts")
    mesh.start()
    try:
        world.istio.stuck = {proxy_id(mesh, "httpbin", "foo")}
        with pytest.raises(PropagationTimeout) as timeout:
            mesh.apply(peer_auth("foo", "STRICT"))
    finally:
        mesh.close()
    head, line = str(timeout.value).splitlines()
    assert head == (
        f"PeerAuthentication {FOO}/default applied but not every sidecar accepted a newer xDS"
        " push (--mesh-propagation=version) after 1s (--mesh-propagation-timeout 0:00:01):"
    )
    assert line.startswith(
        f"  httpbin.{FOO}: no newer xDS push accepted: listeners still at version {VERSION}/12,"
        f" clusters still at version {VERSION}/12, as before the change; last config_dump: "
    )
    assert line.endswith(f"{RUN}-1/httpbin.{FOO}.config_dump.json")


def test_version_mode_waits_only_for_the_sidecars_the_change_affects(world: World) -> None:
    """A policy for httpbin.foo alone changes what only its sidecar must do; istiod may push
    the others or not: they are not waited for."""
    httpbin_only = authz(
        "httpbin-deny-delete",
        {
            "selector": {"matchLabels": {"app": "httpbin"}},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        },
    )
    mesh = world.mesh(propagation="version")
    mesh.start()
    try:
        world.istio.stuck = {proxy_id(mesh, "sleep", "foo"), proxy_id(mesh, "httpbin", "bar")}
        mesh.apply(httpbin_only)
        world.istio.stuck.add(proxy_id(mesh, "httpbin", "foo"))
        with pytest.raises(PropagationTimeout) as timeout:
            mesh.delete(httpbin_only)
        assert [x.split(":")[0] for x in str(timeout.value).splitlines()[1:-1]] == [
            f"  httpbin.{FOO}"
        ]
    finally:
        mesh.close()


def test_authorization_policies_wait_for_a_listener_push_only(world: World) -> None:
    """istiod does not push CDS for an AuthorizationPolicy (cds.go skippedCdsConfigs)."""
    mesh = world.mesh(propagation="version")
    mesh.start()
    try:
        seen: list[str] = []

        def cluster_version_frozen(dump: dict[str, Any]) -> None:
            dump["configs"][1]["version_info"] = "frozen"
            seen.append("read")

        world.istio.rewrite_dump = cluster_version_frozen
        mesh.apply(NAMESPACE_DENY)
        assert seen
    finally:
        mesh.close()


def test_version_mode_refuses_to_guess_without_the_versions_before(world: World) -> None:
    mesh = world.mesh(propagation="version")
    mesh.start()
    try:
        world.istio.envoy_admin_errors["config_dump"] = (503, b"no healthy upstream")
        with pytest.raises(MeshError) as failure:
            mesh.apply(peer_auth("foo", "STRICT"))
        assert str(failure.value).startswith(
            "--mesh-propagation=version: cannot read the xDS versions the sidecars have before"
            f" the change: httpbin.{BAR}: config_dump not readable:"
        )
        assert ("PeerAuthentication", FOO) not in {
            (k[1], k[2]) for k in world.cluster.objects
        }  # nothing was applied
    finally:
        mesh.close()
