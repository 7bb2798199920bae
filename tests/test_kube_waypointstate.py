"""The waypoint reader (``backends/kube/waypointstate.py``) held against real waypoint dumps.

``../shared/testdata/secrets/proxyconfig_full_config_dump.json`` is istioctl's proxy-config
test data (istio/istio 86c9f01fd735, ``istioctl/pkg/proxyconfig/testdata/config_dump.json``):
the ``/config_dump`` of a real waypoint, node
``waypoint~192.168.252.229~httpbin-istio-waypoint-58f646c5ff-dbfkz.default~...``,
``ISTIO_VERSION`` 1.21.0-1226, serving ``httpbin.default`` on 8000 and 8100 with no policy.
Its ``main_internal`` chains (read with ``jq '.configs[] | select(."@type" |
endswith("ListenersConfigDump")) | .dynamic_listeners[] | select(.name == "main_internal") |
.active_state.listener.filter_chains[].name'``): ``inbound-vip|8000||httpbin.default.svc.
cluster.local-http``, ``inbound-vip|8100||httpbin.default.svc.cluster.local-http``,
``direct-tcp``, ``direct-http``: the names before Istio 1.24. Used in place; skipped when absent.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import TESTDATA
from kube_fakes import DATA_DIR

from pytest_meshconform.backends.kube.waypointstate import (
    WaypointExpectation,
    parse_waypoint_authz,
    waypoint_differences,
)
from pytest_meshconform.istio.api import parse_policy
from pytest_meshconform.istio.waypoint import waypoint_authorization
from pytest_meshconform.mesh import Service, Waypoint

REAL_WAYPOINT = TESTDATA / "secrets" / "proxyconfig_full_config_dump.json"
needs_dump = pytest.mark.skipif(not REAL_WAYPOINT.is_file(), reason=f"{REAL_WAYPOINT} is absent")

WAYPOINT = Waypoint("httpbin-istio-waypoint", "default")
HOST = "httpbin.default.svc.cluster.local"
HTTPBIN = Service("httpbin", "default", 8000, 80, "httpbin")


def expectation(policies: list[Any], ports: tuple[int, ...] = (8000, 8100)) -> WaypointExpectation:
    return WaypointExpectation(
        WAYPOINT.key,
        WAYPOINT.namespace,
        WAYPOINT.name,
        {(HOST, port): waypoint_authorization(WAYPOINT, HTTPBIN, policies) for port in ports},
        waypoint_authorization(WAYPOINT, None, policies),
    )


@needs_dump
def test_a_real_1_21_waypoints_chains_are_placed_by_their_names() -> None:
    chains = parse_waypoint_authz(REAL_WAYPOINT.read_bytes())
    assert chains is not None
    assert [(c.authz.name, c.service, c.direct, c.authz.http) for c in chains] == [
        (f"inbound-vip|8000||{HOST}-http", (HOST, 8000), False, True),
        (f"inbound-vip|8100||{HOST}-http", (HOST, 8100), False, True),
        ("direct-tcp", None, True, False),
        ("direct-http", None, True, True),
    ]
    assert all(c.authz.filters == () and c.authz.problem is None for c in chains)


@needs_dump
def test_a_real_waypoint_without_policies_is_what_the_model_expects_then() -> None:
    chains = parse_waypoint_authz(REAL_WAYPOINT.read_bytes())
    assert waypoint_differences(chains, expectation([])) == ()


@needs_dump
def test_a_policy_the_real_waypoint_lacks_is_named_per_chain() -> None:
    viewer = parse_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "viewer", "namespace": "default"},
            "spec": {
                "targetRefs": [{"kind": "Service", "group": "", "name": "httpbin"}],
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
            },
        }
    )
    found = waypoint_differences(
        parse_waypoint_authz(REAL_WAYPOINT.read_bytes()), expectation([viewer])
    )
    want = "ALLOW['ns[default]-policy[viewer]-rule[0]']"
    assert found == tuple(
        f"main_internal chain inbound-vip|{port}||{HOST}-http (HTTP): RBAC no RBAC filter"
        f" (want {want})"
        for port in (8000, 8100)
    )


@needs_dump
def test_a_service_the_waypoint_has_no_chain_for_is_named() -> None:
    found = waypoint_differences(
        parse_waypoint_authz(REAL_WAYPOINT.read_bytes()), expectation([], ports=(8000, 9000))
    )
    assert found == (f"main_internal has no chain for {HOST}:9000",)


def test_a_sidecars_dump_is_no_waypoint() -> None:
    sidecar = (DATA_DIR / "config_dump-httpbin-strict.json").read_bytes()
    assert parse_waypoint_authz(sidecar) is None
    assert waypoint_differences(None, expectation([])) == (
        "no active main_internal listener (istiod has not configured the waypoint)",
    )
