"""Reading an Istio control plane from API objects (built with the kubernetes client's model
classes), its mesh config, istiod's distribution status, and istioctl plumbing. Pure."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from test_kube_fakes import DEFAULT_MESH_CONFIG, istiod_deployment

from pytest_meshconform.kube.istio import (
    DistributionEndpointMissing,
    DistributionTrackingDisabled,
    IstioDataError,
    ProxyVersions,
    config_distribution_path,
    distribution_key,
    distribution_tracking_removed,
    istio_minor_version,
    istioctl_client_version,
    istioctl_download_url,
    istioctl_install_argv,
    lagging_proxies,
    parse_config_distribution,
    parse_go_duration,
    parse_mesh_config,
    select_istiod,
)

# --- istiod -----------------------------------------------------------------------------------


def test_default_istiod() -> None:
    info = select_istiod([istiod_deployment()], None)
    assert info.name == "istiod"
    assert info.namespace == "istio-system"
    assert info.revision == "default"
    assert info.version == "1.22.8"
    assert info.image == "docker.io/istio/pilot:1.22.8"
    assert info.distribution_tracking is True
    assert info.max_workload_cert_ttl == timedelta(days=90)
    assert info.mesh_config_map == "istio"
    assert info.label_selector == "app=istiod,istio.io/rev=default"


@pytest.mark.parametrize(
    ("value", "tracking"),
    # Go's strconv.ParseBool, which istio's env.Register uses for booleans
    [("true", True), ("1", True), ("T", True), ("True", True), ("false", False), ("yes", False)],
)
def test_distribution_tracking_is_go_boolean(value: str, tracking: bool) -> None:
    assert (
        select_istiod([istiod_deployment(tracking=value)], None).distribution_tracking is tracking
    )


def test_tracking_off_when_unset() -> None:
    assert select_istiod([istiod_deployment(tracking=None)], None).distribution_tracking is False


def test_revisions() -> None:
    deployments = [
        istiod_deployment(),
        istiod_deployment(revision="canary", image="gcr.io/istio-release/pilot:1.26.0-distroless"),
    ]
    assert select_istiod(deployments, None).revision == "default"
    canary = select_istiod(deployments, "canary")
    assert (canary.name, canary.version, canary.mesh_config_map) == (
        "istiod-canary",
        "1.26.0",
        "istio-canary",
    )
    with pytest.raises(IstioDataError, match=r"no istiod of revision 'stable' \(found revisions"):
        select_istiod(deployments, "stable")


def test_a_single_revisioned_istiod_is_used_without_asking() -> None:
    only = [istiod_deployment(revision="1-25-1")]
    assert select_istiod(only, None).revision == "1-25-1"


def test_several_revisions_without_default_need_a_choice() -> None:
    deployments = [istiod_deployment(revision="a"), istiod_deployment(revision="b")]
    with pytest.raises(IstioDataError, match="pass --mesh-revision=REV"):
        select_istiod(deployments, None)


def test_no_istiod() -> None:
    with pytest.raises(IstioDataError, match="no istiod Deployment"):
        select_istiod([], None)


def test_version_label_wins_over_image_tag() -> None:
    deployment = istiod_deployment(image="registry.local/pilot@sha256:" + "ab" * 32)
    with pytest.raises(IstioDataError, match="cannot tell the Istio version"):
        select_istiod([deployment], None)
    deployment["metadata"]["labels"]["app.kubernetes.io/version"] = "1.24.3"
    assert select_istiod([deployment], None).version == "1.24.3"


def test_max_workload_cert_ttl_is_a_go_duration() -> None:
    info = select_istiod([istiod_deployment(max_cert_ttl="48h0m0s")], None)
    assert info.max_workload_cert_ttl == timedelta(hours=48)


def test_discovery_container_is_required() -> None:
    deployment = istiod_deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["name"] = "pilot"
    with pytest.raises(IstioDataError, match="no container named 'discovery'"):
        select_istiod([deployment], None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2160h0m0s", timedelta(days=90)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("300ms", timedelta(milliseconds=300)),
        ("0", timedelta(0)),
        ("-5s", timedelta(seconds=-5)),
    ],
)
def test_go_durations(text: str, expected: timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "+", "1h 2m"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(IstioDataError, match="invalid Go duration"):
        parse_go_duration(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_go_duration_parses_or_raises_the_typed_error(text: str) -> None:
    try:
        result = parse_go_duration(text)
    except IstioDataError:
        return
    assert isinstance(result, timedelta)


# --- mesh config ------------------------------------------------------------------------------


def test_mesh_config() -> None:
    info = parse_mesh_config(DEFAULT_MESH_CONFIG, "istio-system")
    assert (info.trust_domain, info.root_namespace, info.secret_ttl) == (
        "cluster.local",
        "istio-system",
        "24h0m0s",
    )


def test_mesh_config_defaults_are_istios() -> None:
    info = parse_mesh_config("", "istio-control")
    assert (info.trust_domain, info.root_namespace, info.secret_ttl) == (
        "cluster.local",
        "istio-control",
        None,
    )


def test_mesh_config_errors_name_the_field() -> None:
    with pytest.raises(IstioDataError, match="mesh config is not YAML"):
        parse_mesh_config("trustDomain: [", "istio-system")
    with pytest.raises(IstioDataError, match="trustDomain 5"):
        parse_mesh_config("trustDomain: 5\n", "istio-system")
    with pytest.raises(IstioDataError, match="mesh config defaultConfig"):
        parse_mesh_config("defaultConfig: nope\n", "istio-system")


# --- config distribution ----------------------------------------------------------------------

# istiod's /debug/config_distribution answer: SyncedVersions with its JSON tags
# (pilot/pkg/xds/debug.go: proxy, cluster_acked, listener_acked, route_acked, endpoint_acked).
DISTRIBUTION = json.dumps(
    [
        {
            "proxy": "sleep-6c8f9d7b5-0q2w.mc-1a2b3c-foo",
            "cluster_acked": "2",
            "listener_acked": "2",
            "route_acked": "2",
            "endpoint_acked": "2",
        },
        {
            "proxy": "httpbin-6c8f9d7b5-1q2w.mc-1a2b3c-foo",
            "cluster_acked": "2",
            "listener_acked": "1",
        },
    ],
    indent=2,
)


def test_distribution_key_is_istios_config_key() -> None:
    assert (
        distribution_key("security.istio.io", "v1", "PeerAuthentication", "foo", "default")
        == "security.istio.io/v1/PeerAuthentication/foo/default"
    )


def test_distribution_path_encodes_the_query() -> None:
    key = "security.istio.io/v1/PeerAuthentication/foo/default"
    assert config_distribution_path(key, "foo") == (
        "/debug/config_distribution?resource=security.istio.io%2Fv1%2FPeerAuthentication"
        "%2Ffoo%2Fdefault&proxy_namespace=foo"
    )


def test_parse_distribution() -> None:
    assert parse_config_distribution(DISTRIBUTION + "\n") == (
        ProxyVersions("sleep-6c8f9d7b5-0q2w.mc-1a2b3c-foo", "2", "2", "2", "2"),
        ProxyVersions("httpbin-6c8f9d7b5-1q2w.mc-1a2b3c-foo", "2", "1", "", ""),
    )
    assert parse_config_distribution(b"null\n") == ()


def test_disabled_tracking_is_recognised() -> None:
    # istiod answers 409 with this text; pilot-discovery request prints it in its error
    message = (
        b"Error: received unsuccessful status code 409: Pilot Version tracking is disabled. It may"
        b" be enabled by setting the PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING environment"
        b" variable to true.\n"
    )
    with pytest.raises(DistributionTrackingDisabled):
        parse_config_distribution(message)


def test_an_istiod_without_the_handler_is_recognised() -> None:
    # Istio >= 1.23 registers no /debug/config_distribution: Go's ServeMux answers 404 with
    # "404 page not found\n" (net/http NotFound), which `pilot-discovery request` does not treat
    # as an error (pilot/pkg/request/command.go: StatusCode > 399 && != 404) and prints with
    # fmt.Println, exit code 0
    with pytest.raises(DistributionEndpointMissing, match=r"Istio 1\.23 and later removed"):
        parse_config_distribution(b"404 page not found\n\n")


# Istio 1.23.0 change notes: "Removed the experimental PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING
# feature flag and corresponding istioctl experimental wait command" (istio/istio#51866).
@pytest.mark.parametrize(
    ("version", "minor", "removed"),
    [
        ("1.22.8", (1, 22), False),
        ("1.22.0-beta.1", (1, 22), False),
        ("1.21.2", (1, 21), False),
        ("1.23.0", (1, 23), True),
        ("1.25.1", (1, 25), True),
        ("1.24-dev", (1, 24), True),
        ("v1.26.0", (1, 26), True),
        ("2.0.0", (2, 0), True),
        ("latest", None, False),  # a custom tag says nothing: istiod's own answer decides
        ("1.2x", None, False),
    ],
)
def test_which_istio_still_tracks_distribution(
    version: str, minor: tuple[int, int] | None, removed: bool
) -> None:
    assert istio_minor_version(version) == minor
    assert distribution_tracking_removed(version) is removed


def test_istioctl_client_version() -> None:
    # `istioctl version --remote=false -o json`: Version{ClientVersion *BuildInfo
    # `json:"clientVersion"`}, BuildInfo{version, revision, golang_version, status, tag}
    # (pkg/version/version.go, pkg/version/cobra.go)
    output = (
        b'{\n  "clientVersion": {\n    "version": "1.22.8",\n    "revision":'
        b' "0c3a3b8a8c51a1e1d06e4e8a2bd0e2b1fb83d3a0",\n    "golang_version": "go1.22.10",\n'
        b'    "status": "Clean",\n    "tag": "1.22.8"\n  }\n}\n'
    )
    assert istioctl_client_version(output) == "1.22.8"
    for bad, fragment in (
        (b"client version: 1.22.8\n", "not JSON"),
        (b"[]", "expected an object"),
        (b'{"clientVersion": {}}', "clientVersion.version None"),
    ):
        with pytest.raises(IstioDataError, match=fragment):
            istioctl_client_version(bad)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("{", "not JSON"),
        ('{"proxy": "x"}', "expected a list"),
        ('[{"cluster_acked": "1"}]', r"config_distribution\[0\]\.proxy"),
        ('[{"proxy": "p", "listener_acked": 3}]', r"config_distribution\[0\]\.listener_acked: 3"),
    ],
)
def test_bad_distribution_answers(data: str, fragment: str) -> None:
    with pytest.raises(IstioDataError, match=fragment):
        parse_config_distribution(data)


def test_lagging_proxies() -> None:
    versions = parse_config_distribution(DISTRIBUTION)
    expected = {
        "sleep-6c8f9d7b5-0q2w.mc-1a2b3c-foo",
        "httpbin-6c8f9d7b5-1q2w.mc-1a2b3c-foo",
        "sleep-6c8f9d7b5-0q2w.mc-1a2b3c-bar",
    }
    assert lagging_proxies(versions, expected, {"2"}) == {
        "httpbin-6c8f9d7b5-1q2w.mc-1a2b3c-foo": "listeners at '1', clusters at '2'",
        "sleep-6c8f9d7b5-0q2w.mc-1a2b3c-bar": "not connected to istiod",
    }
    assert lagging_proxies(versions, {"sleep-6c8f9d7b5-0q2w.mc-1a2b3c-foo"}, {"2"}) == {}
    gone = [ProxyVersions("a.ns", "", "", "", "")]
    assert lagging_proxies(gone, {"a.ns"}, {""}) == {}


# --- istioctl ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "machine", "asset"),
    [
        ("Linux", "x86_64", "istioctl-1.25.1-linux-amd64.tar.gz"),
        ("Linux", "aarch64", "istioctl-1.25.1-linux-arm64.tar.gz"),
        ("Darwin", "x86_64", "istioctl-1.25.1-osx.tar.gz"),
        ("Darwin", "arm64", "istioctl-1.25.1-osx-arm64.tar.gz"),
    ],
)
def test_istioctl_release_assets(system: str, machine: str, asset: str) -> None:
    assert istioctl_download_url("1.25.1", system, machine) == (
        f"https://github.com/istio/istio/releases/download/1.25.1/{asset}"
    )


def test_no_istioctl_for_other_platforms() -> None:
    with pytest.raises(IstioDataError, match="no istioctl release for system 'windows'"):
        istioctl_download_url("1.25.1", "Windows", "AMD64")
    with pytest.raises(IstioDataError, match="machine 's390x'"):
        istioctl_download_url("1.25.1", "Linux", "s390x")


def test_istioctl_install_argv() -> None:
    argv = istioctl_install_argv(
        Path("/opt/istio/bin/istioctl"),
        Path("/w/.pytest-kind/mc-main-abc123/kubeconfig"),
        "kind-mc-main-abc123",
        revision="canary",
        cert_ttl=timedelta(seconds=30),
        ready_timeout=timedelta(minutes=10),
    )
    assert argv == [
        "/opt/istio/bin/istioctl",
        "install",
        "-y",
        "--kubeconfig",
        "/w/.pytest-kind/mc-main-abc123/kubeconfig",
        "--context",
        "kind-mc-main-abc123",
        "--set",
        "profile=minimal",
        "--set",
        "values.pilot.env.PILOT_ENABLE_CONFIG_DISTRIBUTION_TRACKING=true",
        "--set",
        "meshConfig.defaultConfig.proxyMetadata.SECRET_TTL=30s",
        "--readiness-timeout",
        "600s",
        "--revision",
        "canary",
    ]
