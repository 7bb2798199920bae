"""Reading an Istio control plane from API objects (built with the kubernetes client's model
classes), its mesh config, and istioctl plumbing. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from kube_fakes import DEFAULT_MESH_CONFIG, istiod_deployment

from pytest_meshconform.backends.kube.control_plane import (
    IstioDataError,
    istioctl_download_url,
    istioctl_install_argv,
    parse_go_duration,
    parse_mesh_config,
    select_istiod,
)
from pytest_meshconform.backends.kube.kind import install_gateway_api_crds
from pytest_meshconform.mesh import MeshUnavailable

# --- istiod -----------------------------------------------------------------------------------


def test_default_istiod() -> None:
    info = select_istiod([istiod_deployment()], None)
    assert info.name == "istiod"
    assert info.namespace == "istio-system"
    assert info.revision == "default"
    assert info.version == "1.25.1"
    assert info.image == "docker.io/istio/pilot:1.25.1"
    assert info.max_workload_cert_ttl == timedelta(days=90)
    assert info.mesh_config_map == "istio"
    assert info.label_selector == "app=istiod,istio.io/rev=default"


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


def test_mesh_config_auto_mtls_is_on_unless_turned_off() -> None:
    """MeshConfig ``enableAutoMtls`` (istio/api mesh/v1alpha1/config.proto): a BoolValue whose
    default is true."""
    assert parse_mesh_config("", "istio-system").enable_auto_mtls is True
    assert parse_mesh_config(DEFAULT_MESH_CONFIG, "istio-system").enable_auto_mtls is True
    off = parse_mesh_config("enableAutoMtls: false\n", "istio-system")
    assert off.enable_auto_mtls is False
    with pytest.raises(IstioDataError, match="enableAutoMtls 'no': expected a boolean"):
        parse_mesh_config("enableAutoMtls: 'no'\n", "istio-system")


def test_mesh_config_errors_name_the_field() -> None:
    with pytest.raises(IstioDataError, match="mesh config is not YAML"):
        parse_mesh_config("trustDomain: [", "istio-system")
    with pytest.raises(IstioDataError, match="trustDomain 5"):
        parse_mesh_config("trustDomain: 5\n", "istio-system")
    with pytest.raises(IstioDataError, match="mesh config defaultConfig"):
        parse_mesh_config("defaultConfig: nope\n", "istio-system")


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
        "meshConfig.defaultConfig.proxyMetadata.SECRET_TTL=30s",
        "--readiness-timeout",
        "600s",
        "--revision",
        "canary",
    ]


def test_istioctl_install_argv_for_ambient() -> None:
    """istio.io's ambient install: ``istioctl install --set profile=ambient``; the agents' and
    ztunnel's SECRET_TTL as for sidecars."""
    argv = istioctl_install_argv(
        Path("istioctl"),
        Path("kubeconfig"),
        "kind-x",
        revision=None,
        cert_ttl=timedelta(minutes=5),
        ready_timeout=timedelta(minutes=10),
        dataplane="ambient",
    )
    assert argv[argv.index("profile=ambient") - 1] == "--set"
    assert "profile=minimal" not in argv
    assert "meshConfig.defaultConfig.proxyMetadata.SECRET_TTL=5m" in argv


class _CrdCluster:
    def __init__(self, present: bool) -> None:
        self.present = present
        self.applied: list[str] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert (api_version, kind, namespace) == (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
        )
        return {"metadata": {"name": name}} if self.present else None

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{manifest['kind']} {manifest['metadata']['name']}")
        return dict(manifest)


# The shape of a Gateway API release's standard-install.yaml: a header comment, then one
# CustomResourceDefinition per document (kubernetes-sigs/gateway-api config/crd/standard)
RELEASE = b"""# Copyright 2025 The Kubernetes Authors.
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gatewayclasses.gateway.networking.k8s.io
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gateways.gateway.networking.k8s.io
"""


def test_the_gateway_api_crds_are_applied_once_from_the_pinned_release() -> None:
    fetched: list[str] = []
    messages: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return RELEASE

    missing = _CrdCluster(present=False)
    assert install_gateway_api_crds(missing, messages.append, fetch)
    assert fetched == [
        "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.4.0/"
        "standard-install.yaml"
    ]
    assert missing.applied == [
        "CustomResourceDefinition gatewayclasses.gateway.networking.k8s.io",
        "CustomResourceDefinition gateways.gateway.networking.k8s.io",
    ]
    present = _CrdCluster(present=True)
    assert not install_gateway_api_crds(present, messages.append, fetch)
    assert present.applied == [] and len(fetched) == 1


def test_no_internet_for_the_gateway_api_crds_names_the_fix() -> None:
    def offline(url: str) -> bytes:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(MeshUnavailable) as error:
        install_gateway_api_crds(_CrdCluster(present=False), lambda m: None, offline)
    assert "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/" in (
        str(error.value)
    )
