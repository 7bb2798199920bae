"""Which ports istio-iptables intercepts (``istio/interception.py``) and the nat rules the local
mesh renders from it, against Istio's own artifacts: the injector's output for a pod without
annotations (``../shared/testdata/istio-inject/``, skipped when absent), the injection template's
``-d`` expression (``injection-template.yaml`` + ``excludeInboundPort`` in
``pkg/kube/inject/template.go``), istio-iptables' goldens ``inbound-ports-include.golden`` and
``inbound-ports-wildcard.golden`` (``tools/istio-iptables/pkg/capture/testdata/``, istio/istio
86c9f01fd735; their ``ISTIO_INBOUND`` lines transcribed below) and the injector's validation
(``pkg/kube/inject/validate.go``).
"""

from __future__ import annotations

import pytest
import yaml
from conftest import TESTDATA

from pytest_meshconform.backends.local.iptables import istio_iptables_rules
from pytest_meshconform.backends.local.topology_file import TopologyError, parse_topology
from pytest_meshconform.istio.interception import (
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    INCLUDE_INBOUND_PORTS,
    STATUS_PORT,
    InterceptionError,
    sidecar_interception,
)

INJECTED = TESTDATA / "istio-inject" / "pod-native-default-1.28.0.yaml"


@pytest.mark.skipif(not INJECTED.is_file(), reason=f"{INJECTED} is absent")
def test_no_annotations_give_the_injectors_arguments() -> None:
    (pod,) = [d for d in yaml.safe_load_all(INJECTED.read_text()) if d and d["kind"] == "Pod"]
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "istio-init"]
    args = init["args"]
    injected = (args[args.index("-b")], args[args.index("-b") + 1])
    injected += (args[args.index("-d")], args[args.index("-d") + 1])
    assert injected == ("-b", "*", "-d", "15090,15021,15020")  # as the file has it
    assert sidecar_interception({}).iptables_arguments == injected


@pytest.mark.parametrize(
    ("annotations", "excluded"),
    [
        # "15090,15021,{{ excludeInboundPort <status port> <excludeInboundPorts> }}"
        ({EXCLUDE_INBOUND_PORTS: "5432"}, "15090,15021,5432,15020"),
        ({EXCLUDE_INBOUND_PORTS: " 5432, 9000 "}, "15090,15021,5432,9000,15020"),
        ({EXCLUDE_INBOUND_PORTS: "15020,5432"}, "15090,15021,15020,5432"),  # already there
        ({STATUS_PORT: "0"}, "15090,15021"),  # "Nothing to do"
        ({STATUS_PORT: "15999", EXCLUDE_INBOUND_PORTS: "81"}, "15090,15021,81,15999"),
    ],
)
def test_excluded_inbound_ports_follow_the_injection_template(
    annotations: dict[str, str], excluded: str
) -> None:
    interception = sidecar_interception(annotations)
    assert interception.iptables_arguments[:4] == ("-b", "*", "-d", excluded)


def _pod_rules(annotations: str) -> list[str]:
    topology = parse_topology(
        "namespaces:\n  - name: shop\n    dataplane: sidecar\n    workloads:\n"
        f"      - {{name: db, kind: tcp-echo, ports: [5432, 8080], annotations: {annotations}}}\n"
    )
    (pod,) = topology.pods
    return istio_iptables_rules(pod, topology).splitlines()


def test_an_include_list_redirects_only_its_ports_as_the_golden() -> None:
    rules = _pod_rules("{traffic.sidecar.istio.io/includeInboundPorts: '32000,31000'}")
    inbound = [r for r in rules if "ISTIO_INBOUND" in r and not r.startswith(":")]
    # inbound-ports-include.golden (cfg.InboundPortsInclude = "32000,31000")
    assert sorted(inbound) == sorted(
        [
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT",
        ]
    )


def test_the_wildcard_lets_the_excluded_ports_through_then_redirects_the_rest() -> None:
    rules = _pod_rules("{traffic.sidecar.istio.io/excludeInboundPorts: '5432'}")
    inbound = [r for r in rules if "ISTIO_INBOUND" in r and not r.startswith(":")]
    # inbound-ports-wildcard.golden has the first two and the last line; -d adds the RETURNs
    assert inbound == [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]


def test_an_empty_include_list_intercepts_nothing_inbound() -> None:
    rules = _pod_rules("{traffic.sidecar.istio.io/includeInboundPorts: ''}")
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" not in rules
    assert not any("ISTIO_IN_REDIRECT" in r for r in rules if r.startswith("-A ISTIO_INBOUND"))


def test_excluded_outbound_ports_return_before_anything_else_in_istio_output() -> None:
    rules = _pod_rules("{traffic.sidecar.istio.io/excludeOutboundPorts: '5432,6379'}")
    output = [r for r in rules if r.startswith("-A ISTIO_OUTPUT")]
    # run.go: "Apply port based exclusions. Must be applied before connections back to self
    # are redirected." (tcp only here: the local mesh intercepts no UDP)
    assert output[:2] == [
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN",
    ]


def test_each_bypass_names_its_reason() -> None:
    default = sidecar_interception({})
    assert default.inbound_captured(8080) and default.inbound_bypass(8080) is None
    assert default.inbound_bypass(15090) == (
        "15090 is Envoy's Prometheus port (excluded by Istio's injection template)"
    )
    assert default.inbound_bypass(15021) is not None and "health" in default.inbound_bypass(15021)
    assert default.inbound_bypass(15008) == "15008 is HBONE's port (istio-iptables lets it through)"
    excluded = sidecar_interception({EXCLUDE_INBOUND_PORTS: "5432"})
    assert excluded.inbound_bypass(5432) == f"in {EXCLUDE_INBOUND_PORTS}"
    included = sidecar_interception({INCLUDE_INBOUND_PORTS: "8080"})
    assert included.inbound_bypass(5432) == f"not in {INCLUDE_INBOUND_PORTS} ('8080')"
    assert not sidecar_interception({EXCLUDE_OUTBOUND_PORTS: "5432"}).outbound_captured(5432)


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        (
            EXCLUDE_INBOUND_PORTS,
            "abc",
            "invalid value 'abc' for annotation 'traffic.sidecar.istio.io/excludeInboundPorts':"
            " excludeInboundPorts invalid: failed parsing port 'abc'",
        ),
        (INCLUDE_INBOUND_PORTS, "80,,81", "includeInboundPorts invalid: failed parsing port ''"),
        (EXCLUDE_OUTBOUND_PORTS, "70000", "excludeOutboundPorts invalid: failed parsing port"),
        (STATUS_PORT, "-1", "excludeInboundPorts invalid: failed parsing port '-1'"),
    ],
)
def test_values_the_injector_refuses(annotation: str, value: str, message: str) -> None:
    with pytest.raises(InterceptionError) as info:
        sidecar_interception({annotation: value})
    assert message in str(info.value)


def test_a_topology_with_a_bad_annotation_names_its_line() -> None:
    text = (
        "namespaces:\n  - name: shop\n    dataplane: sidecar\n    workloads:\n      - name: db\n"
        "        kind: tcp-echo\n"
        "        annotations:\n          traffic.sidecar.istio.io/excludeInboundPorts: 'x'\n"
    )
    with pytest.raises(
        TopologyError,
        match=r"shop.yaml:8: .*annotations\.traffic\.sidecar"
        r"\.istio\.io/excludeInboundPorts: invalid value 'x'",
    ):
        parse_topology(text, "shop.yaml")
