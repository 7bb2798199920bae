"""Hostile inputs (issue 14, defects 5 and 6): every parser does work linear in its input and
lets only the project's typed errors out.

Work is compared, never timed against a clock: each test measures the CPU time of this
process (not wall time, so a busy machine does not count) for two inputs and asserts a
generous ratio, far from what the defect produced:

- hostile against benign: the hostile input against a benign one of the same size (ratio at
  most ``BENIGN_RATIO``);
- growth: the same hostile shape at n and at 4n bytes (ratio at most ``GROWTH_RATIO``; linear
  work gives about 4, quadratic about 16).

The inputs come from tests/hostile_inputs.py, which benchmarks/bench_parsers.py runs at 10 MB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import hostile_inputs as hi
import pytest

from pytest_meshconform.evidence.certs import (
    CertError,
    load_pem_chain,
    parse_envoy_certs,
)
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.evidence.xfcc import XfccError, parse_xfcc
from pytest_meshconform.istio.api import PolicyError, parse_policies, parse_policy
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets

BENIGN_RATIO = 10.0
GROWTH_RATIO = 9.0


def _ratio(slow: Callable[[], object], fast: Callable[[], object]) -> float:
    return hi.cpu_per_call(slow) / hi.cpu_per_call(fast)


def _growth(
    make: Callable[[int], bytes | str], parse: Callable[[bytes | str], object], n: int
) -> float:
    small, large = make(n), make(4 * n)
    return _ratio(lambda: parse(large), lambda: parse(small))


# --------------------------------------------------------------------------- defect 5


def test_pem_begin_lines_without_end_cost_what_a_trust_bundle_costs() -> None:
    hostile = hi.secrets_begin_without_end(100_000)
    benign = hi.secrets_big_bundle(100_000)
    with pytest.raises(CertError, match="BEGIN line without its matching END line"):
        parse_envoy_secrets(hostile)
    assert len(parse_envoy_secrets(benign).roots) > 100
    ratio = _ratio(lambda: parse_envoy_secrets(hostile), lambda: parse_envoy_secrets(benign))
    assert ratio < BENIGN_RATIO, f"PEM without END lines costs {ratio:.0f}x a trust bundle"


def test_load_pem_chain_scans_begin_lines_once() -> None:
    growth = _growth(lambda n: "-----BEGIN CERTIFICATE-----\n" * (n // 28), load_pem_chain, 50_000)
    assert growth < GROWTH_RATIO, f"4x the BEGIN lines cost {growth:.1f}x"


def test_obsolete_header_folding_is_read_in_linear_work() -> None:
    hostile = hi.http_folded_header(300_000)
    (flow,) = analyze_pcap(hostile).flows
    (request,) = flow.http_requests
    assert request.headers[1][0] == "X-Folded"
    assert request.headers[1][1] == "a" + " b" * 75_000
    benign = hi.http_many_headers(300_000)
    ratio = _ratio(lambda: analyze_pcap(hostile), lambda: analyze_pcap(benign))
    assert ratio < BENIGN_RATIO, f"folded header lines cost {ratio:.0f}x plain header lines"
    growth = _growth(hi.http_folded_header, analyze_pcap_of, 300_000)
    assert growth < GROWTH_RATIO, f"4x the folded lines cost {growth:.1f}x"


def test_client_hello_in_one_byte_records_is_read_in_linear_work() -> None:
    (flow,) = analyze_pcap(hi.tls_one_byte_records(60_000)).flows
    assert flow.tls is not None and flow.tls.client_hello is not None
    assert flow.tls.client_hello.sni == "httpbin"
    growth = _growth(hi.tls_one_byte_records, analyze_pcap_of, 1_000_000)
    assert growth < GROWTH_RATIO, f"4x the 1-byte records cost {growth:.1f}x"


def analyze_pcap_of(data: bytes | str) -> object:
    assert isinstance(data, bytes)
    return analyze_pcap(data)


def _nodes_walked(error: PolicyError) -> int:
    """How many YAML nodes the loader visited before refusing (it says so in the message)."""
    found = re.search(r"after (\d+) nodes", str(error))
    assert found is not None, error
    return int(found.group(1))


def test_yaml_alias_bomb_in_metadata_name_is_refused_at_once() -> None:
    """Operations counted: go-yaml's rule lets aliases supply at most 99 % of the decoded nodes,
    so the loader stops within about 100 nodes per node of text (here a few thousand), not
    after the 9**12 the aliases expand to; and it costs about what a benign text 10x its size
    costs (ratio under 3)."""
    bomb = hi.alias_bomb_name()
    assert len(bomb) < 600
    with pytest.raises(PolicyError, match="excessive aliasing") as info:
        parse_policy(bomb)
    assert _nodes_walked(info.value) <= 10 * len(bomb)
    benign = hi.policies_many(10 * len(bomb))
    ratio = _ratio(lambda: parse_policy(bomb), lambda: parse_policies(benign))
    assert ratio < 3, f"a 600-byte alias bomb costs {ratio:.1f}x a benign text 10x its size"


def test_a_small_alias_bomb_is_shown_without_expanding_it() -> None:
    """Below the aliasing cap the name is still a list: the message quotes the start of it."""
    bomb = hi.alias_bomb_name(levels=3)
    with pytest.raises(PolicyError, match=r"metadata\.name: expected a string, got a list") as info:
        parse_policy(bomb)
    assert len(str(info.value)) < 300


def test_yaml_merge_keys_cannot_double_a_mapping_per_line() -> None:
    bomb = hi.merge_key_bomb()
    with pytest.raises(PolicyError, match="excessive aliasing") as info:
        parse_policies(bomb)
    assert _nodes_walked(info.value) <= 10 * len(bomb)
    benign = hi.policies_many(10 * len(bomb))
    ratio = _ratio(lambda: parse_policies(bomb), lambda: parse_policies(benign))
    assert ratio < 3, f"merge keys cost {ratio:.1f}x a benign text 10x their size"


def test_a_list_of_aliases_to_itself_is_walked_lazily() -> None:
    """Following an alias to a long list must not queue the whole list each time."""
    hostile = hi.self_alias_list(30_000)
    with pytest.raises(PolicyError, match="excessive aliasing") as info:
        parse_policies(hostile)
    assert _nodes_walked(info.value) <= 1100
    benign = hi.policies_many(30_000)
    ratio = _ratio(lambda: parse_policies(hostile), lambda: parse_policies(benign))
    assert ratio < BENIGN_RATIO, f"a list of aliases to itself costs {ratio:.0f}x policies"


def test_aliased_items_and_sans_are_not_validated_quadratically() -> None:
    """Small ones are accepted, as by Kubernetes' decoder; big ones refused before validation."""
    policies = parse_policies(hi.alias_items_times_sans(150))
    assert len(policies) == 25
    assert all(len(p.traffic_policy.tls.subject_alt_names) == 25 for p in policies)  # type: ignore[union-attr]
    with pytest.raises(PolicyError, match="excessive aliasing"):
        parse_policies(hi.alias_items_times_sans(16_000))
    growth = _growth(hi.alias_items_times_sans, parse_policies, 16_000)
    assert growth < GROWTH_RATIO, f"4x the aliases cost {growth:.1f}x"


def test_a_base60_integer_is_bounded() -> None:
    with pytest.raises(PolicyError, match="integer of more than 4300 characters"):
        parse_policies(hi.sexagesimal_int(30_000))
    growth = _growth(hi.sexagesimal_int, parse_policies, 30_000)
    assert growth < GROWTH_RATIO, f"4x the base-60 digits cost {growth:.1f}x"


# --------------------------------------------------------------------------- defect 6


def _certs_with(field: str, stamp: str) -> str:
    entry = {
        "serial_number": "01",
        "valid_from": "2026-01-01T00:00:00Z",
        "expiration_time": "2026-01-02T00:00:00Z",
    }
    entry[field] = stamp
    return json.dumps({"certificates": [{"cert_chain": [entry]}]})


@pytest.mark.parametrize("stamp", hi.EDGE_TIMESTAMPS)
@pytest.mark.parametrize("field", ["valid_from", "expiration_time"])
def test_envoy_certs_timestamp_outside_the_datetime_range_is_a_cert_error(
    field: str, stamp: str
) -> None:
    with pytest.raises(CertError, match=rf"{field}: .*outside the range of years 1\.\.9999"):
        parse_envoy_certs(_certs_with(field, stamp))


@pytest.mark.parametrize("stamp", hi.EDGE_TIMESTAMPS)
def test_secret_last_updated_outside_the_datetime_range_is_a_cert_error(stamp: str) -> None:
    dump = json.dumps({"dynamic_active_secrets": [{"name": "default", "last_updated": stamp}]})
    with pytest.raises(CertError, match=r"last_updated: .*outside the range of years 1\.\.9999"):
        parse_envoy_secrets(dump)


@pytest.mark.parametrize("quote", ["", '"'])
@pytest.mark.parametrize("stamp", hi.EDGE_TIMESTAMPS)
def test_policy_creation_timestamp_outside_the_datetime_range_is_a_policy_error(
    stamp: str, quote: str
) -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata:\n  name: a\n  creationTimestamp: {quote}{stamp}{quote}\n"
    )
    with pytest.raises(PolicyError, match=r"outside the range of years 1\.\.9999"):
        parse_policy(text)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.5Z"])
def test_policy_creation_timestamp_at_the_edge_round_trips(stamp: str) -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata:\n  name: a\n  creationTimestamp: '{stamp}'\n"
    )
    policy = parse_policy(text)
    manifest = policy.to_manifest()
    assert manifest["metadata"]["creationTimestamp"][:4] == stamp[:4]
    assert parse_policy(manifest) == policy


@pytest.mark.parametrize("header", ["Cert=\udcff", 'Chain="\udcff%41"', "Cert=%41\udcff"])
def test_xfcc_lone_surrogate_is_an_xfcc_error(header: str) -> None:
    with pytest.raises(XfccError, match="not UTF-8"):
        parse_xfcc(header)


def test_xfcc_that_is_not_a_str_is_an_xfcc_error() -> None:
    with pytest.raises(XfccError, match="must be a str, got bytes"):
        parse_xfcc(b"By=a")  # type: ignore[arg-type]
