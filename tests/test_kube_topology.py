"""Per-run namespaces and the rewriting of policies between logical and real namespaces. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from pytest_meshconform.backends.kube.topology import (
    LocalizedManifest,
    RunNamespaces,
    RunOwner,
    TopologyError,
    WorkloadImages,
    delocalize_manifest,
    dns_domain_from_resolv_conf,
    localize_manifest,
    namespace_manifest,
    owner_text,
    parse_owner,
    topology_services,
    topology_workloads,
    workload_manifests,
)

NAMES = RunNamespaces("1a2b3c")
ROOT = "istio-system"


def test_real_names() -> None:
    assert NAMES.all_real == ("mc-1a2b3c-foo", "mc-1a2b3c-bar", "mc-1a2b3c-legacy")
    assert NAMES.injected_real == ("mc-1a2b3c-foo", "mc-1a2b3c-bar")
    assert NAMES.resolve("bar") == "mc-1a2b3c-bar"
    assert NAMES.resolve("mc-1a2b3c-bar") == "mc-1a2b3c-bar"
    assert NAMES.logical_of("mc-1a2b3c-legacy") == "legacy"
    assert NAMES.logical_of("mc-ffffff-legacy") is None
    assert NAMES.selector == "meshconform.dev/run=1a2b3c"
    with pytest.raises(TopologyError, match="namespace 'mc-ffffff-foo' is not part of this run"):
        NAMES.resolve("mc-ffffff-foo")


@pytest.mark.parametrize("run_id", ["", "UPPER", "a" * 13, "a-b"])
def test_run_ids_are_short_lowercase(run_id: str) -> None:
    with pytest.raises(TopologyError, match="run id"):
        RunNamespaces(run_id)


def test_namespace_manifests() -> None:
    foo = namespace_manifest(NAMES, "foo", None, "ci@runner pid 7")
    assert foo == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "mc-1a2b3c-foo",
            "labels": {
                "app.kubernetes.io/managed-by": "meshconform",
                "meshconform.dev/run": "1a2b3c",
                "meshconform.dev/logical-namespace": "foo",
                "pod-security.kubernetes.io/enforce": "privileged",
                "istio-injection": "enabled",
            },
            "annotations": {"meshconform.dev/owner": "ci@runner pid 7"},
        },
    }
    canary = namespace_manifest(NAMES, "bar", "canary", "x")["metadata"]["labels"]
    assert canary["istio.io/rev"] == "canary" and "istio-injection" not in canary
    legacy = namespace_manifest(NAMES, "legacy", "canary", "x")["metadata"]["labels"]
    assert legacy["istio-injection"] == "disabled" and "istio.io/rev" not in legacy


def test_workload_manifests_follow_istios_samples() -> None:
    images = WorkloadImages("registry.local/curl:8", "registry.local/go-httpbin:2")
    manifests = workload_manifests(NAMES, "legacy", images, timedelta(hours=1, minutes=30))
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("ServiceAccount", "sleep"),
        ("ServiceAccount", "httpbin"),
        ("Service", "httpbin"),
        ("Deployment", "sleep"),
        ("Deployment", "httpbin"),
    ]
    assert {m["metadata"]["namespace"] for m in manifests} == {"mc-1a2b3c-legacy"}
    httpbin = manifests[-1]["spec"]["template"]["spec"]
    assert httpbin["serviceAccountName"] == "httpbin"
    assert httpbin["containers"] == [
        {
            "name": "httpbin",
            "image": "registry.local/go-httpbin:2",
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 8080, "name": "http"}],
        }
    ]
    injected = workload_manifests(NAMES, "foo", images, timedelta(hours=1, minutes=30))
    annotations = injected[-1]["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "proxy.istio.io/config": (
            '{"holdApplicationUntilProxyStarts": true, "proxyMetadata": {"SECRET_TTL": "1h30m"}}'
        )
    }


def test_workloads_and_services() -> None:
    workloads = topology_workloads(NAMES)
    assert [w.key for w in workloads] == [
        "sleep.mc-1a2b3c-foo",
        "httpbin.mc-1a2b3c-foo",
        "sleep.mc-1a2b3c-bar",
        "httpbin.mc-1a2b3c-bar",
        "sleep.mc-1a2b3c-legacy",
        "httpbin.mc-1a2b3c-legacy",
    ]
    assert [w.has_sidecar for w in workloads] == [True, True, True, True, False, False]
    services = topology_services(NAMES)
    assert [s.port for s in services] == [8000, 8000, 8000]
    assert services[0].fqdn == "httpbin.mc-1a2b3c-foo.svc.cluster.local"


def test_localize_namespace_policy() -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "foo", "labels": {"team": "mesh"}},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    localized = localize_manifest(manifest, NAMES, ROOT)
    assert localized == LocalizedManifest(
        manifest={
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {
                "name": "default",
                "namespace": "mc-1a2b3c-foo",
                "labels": {
                    "team": "mesh",
                    "app.kubernetes.io/managed-by": "meshconform",
                    "meshconform.dev/run": "1a2b3c",
                },
            },
            "spec": {"mtls": {"mode": "STRICT"}},
        },
        scope="run",
        group="security.istio.io",
        version="v1",
        kind="PeerAuthentication",
        namespace="mc-1a2b3c-foo",
        name="default",
    )
    assert manifest["metadata"]["namespace"] == "foo"  # the input is not touched


def test_localize_root_namespace_is_mesh_wide() -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ROOT, "resourceVersion": "77"},
        "spec": {"mtls": {"mode": "STRICT"}},
        "status": {},
    }
    localized = localize_manifest(manifest, NAMES, ROOT)
    assert (localized.scope, localized.namespace, localized.describe) == (
        "mesh-wide",
        ROOT,
        "PeerAuthentication istio-system/default",
    )
    assert "resourceVersion" not in localized.manifest["metadata"]
    assert "status" not in localized.manifest


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("httpbin.foo.svc.cluster.local", "httpbin.mc-1a2b3c-foo.svc.cluster.local"),
        ("httpbin.bar", "httpbin.mc-1a2b3c-bar"),
        ("httpbin.legacy.svc", "httpbin.mc-1a2b3c-legacy.svc"),
        ("*.foo.svc.cluster.local", "*.mc-1a2b3c-foo.svc.cluster.local"),
        ("httpbin", "httpbin"),
        ("api.foo.example.com", "api.foo.example.com"),
        ("httpbin.default.svc.cluster.local", "httpbin.default.svc.cluster.local"),
    ],
)
def test_destination_rule_hosts(host: str, expected: str) -> None:
    manifest = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": "foo"},
        "spec": {"host": host, "exportTo": [".", "bar"]},
    }
    spec = localize_manifest(manifest, NAMES, ROOT).manifest["spec"]
    assert spec == {"host": expected, "exportTo": [".", "mc-1a2b3c-bar"]}


def test_authorization_policy_sources() -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow", "namespace": "bar"},
        "spec": {
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["cluster.local/ns/foo/sa/sleep"],
                                "namespaces": ["legacy", "other"],
                            }
                        }
                    ]
                }
            ]
        },
    }
    source = localize_manifest(manifest, NAMES, ROOT).manifest["spec"]["rules"][0]["from"][0]
    assert source == {
        "source": {
            "principals": ["cluster.local/ns/mc-1a2b3c-foo/sa/sleep"],
            "namespaces": ["mc-1a2b3c-legacy", "other"],
        }
    }


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"apiVersion": "v1"}, "apiVersion 'v1': expected <group>/<version>"),
        ({"apiVersion": "apps/v1"}, "only Istio policy APIs"),
        ({"kind": ""}, "kind '': expected the Istio kind"),
        ({"metadata": {"namespace": "foo"}}, r"metadata\.name None"),
        ({"metadata": {"name": "x"}}, r"metadata\.namespace is missing"),
        ({"metadata": {"name": "x", "namespace": "kube-system"}}, "never writes elsewhere"),
        ({"metadata": "x"}, "metadata 'x': expected a mapping"),
    ],
)
def test_refused_manifests_name_the_field(change: dict[str, Any], fragment: str) -> None:
    manifest = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "foo"},
        **change,
    }
    with pytest.raises(TopologyError, match=fragment):
        localize_manifest(manifest, NAMES, ROOT)


def test_delocalize_gives_back_what_the_suite_wrote() -> None:
    written = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "httpbin", "namespace": "bar", "labels": {"team": "mesh"}},
        "spec": {"host": "httpbin.bar.svc.cluster.local"},
    }
    on_cluster = dict(localize_manifest(written, NAMES, ROOT).manifest)
    on_cluster["metadata"] = {
        **on_cluster["metadata"],
        "uid": "c6a5",
        "resourceVersion": "901",
        "generation": 2,
        "creationTimestamp": "2025-03-01T10:00:00Z",
        "managedFields": [{"manager": "meshconform"}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    }
    on_cluster["status"] = {"conditions": []}
    assert delocalize_manifest(on_cluster, NAMES, ROOT) == written


def test_delocalize_keeps_someone_elses_managed_by_label() -> None:
    # a pre-existing mesh-wide policy installed by Helm; only meshconform's own marks go
    on_cluster = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "default",
            "namespace": ROOT,
            "labels": {
                "app.kubernetes.io/managed-by": "Helm",
                "meshconform.dev/run": "1a2b3c",
            },
        },
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    assert delocalize_manifest(on_cluster, NAMES, ROOT)["metadata"] == {
        "name": "default",
        "namespace": ROOT,
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
    }


@pytest.mark.parametrize(
    ("text", "owner"),
    [
        ("dev@build-7 pid 4242", RunOwner("dev", "build-7", 4242)),
        ("1001@runner-abc.internal pid 1", RunOwner("1001", "runner-abc.internal", 1)),
        ("@host pid 7", RunOwner("", "host", 7)),
        ("dev@build-7 pid", None),
        ("dev@build 7 pid 1", None),
        ("somebody", None),
        (None, None),
        (42, None),
    ],
)
def test_owner_annotation(text: object, owner: RunOwner | None) -> None:
    assert parse_owner(text) == owner
    if owner is not None:
        assert owner_text(owner) == text


manifests = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(
            ["security.istio.io/v1", "networking.istio.io/v1beta1", "v1", "x/y", "", None]
        ),
        "kind": st.one_of(st.text(max_size=8), st.none()),
        "metadata": st.one_of(
            st.fixed_dictionaries(
                {
                    "name": st.one_of(st.text(max_size=8), st.none()),
                    "namespace": st.one_of(
                        st.sampled_from(["foo", "bar", "legacy", ROOT, "mc-1a2b3c-foo"]),
                        st.text(max_size=8),
                        st.none(),
                    ),
                }
            ),
            st.text(max_size=3),
            st.none(),
        ),
        "spec": st.recursive(
            st.one_of(st.text(max_size=12), st.integers(), st.none()),
            lambda inner: st.one_of(
                st.lists(inner, max_size=3),
                st.dictionaries(
                    st.sampled_from(
                        ["host", "exportTo", "rules", "from", "source", "principals", "namespaces"]
                    ),
                    inner,
                    max_size=3,
                ),
            ),
            max_leaves=10,
        ),
    }
)


@settings(max_examples=400, deadline=None)
@given(manifests)
def test_arbitrary_manifests_are_placed_or_refused(manifest: dict[str, Any]) -> None:
    try:
        localized = localize_manifest(manifest, NAMES, ROOT)
    except TopologyError:
        return
    assert localized.namespace in (*NAMES.all_real, ROOT)
    back = delocalize_manifest(localized.manifest, NAMES, ROOT)
    assert back["metadata"]["name"] == manifest["metadata"]["name"]


def test_the_dns_domain_comes_from_the_kubelets_search_path() -> None:
    """kubelet, ClusterFirst: ``search <ns>.svc.<domain> svc.<domain> <domain>``."""
    resolv = (
        "search mc-1a2b3c-foo.svc.corp.example svc.corp.example corp.example\n"
        "nameserver 10.96.0.10\noptions ndots:5\n"
    )
    assert dns_domain_from_resolv_conf(resolv, "mc-1a2b3c-foo") == "corp.example"
    with pytest.raises(TopologyError, match=r"no search entry mc-1a2b3c-foo\.svc\.<domain>"):
        dns_domain_from_resolv_conf("nameserver 10.96.0.10\n", "mc-1a2b3c-foo")
    service = topology_services(NAMES)[0]
    assert service.fqdn == "httpbin.mc-1a2b3c-foo.svc.cluster.local"
    assert replace(service, domain="corp.example").fqdn == "httpbin.mc-1a2b3c-foo.svc.corp.example"
