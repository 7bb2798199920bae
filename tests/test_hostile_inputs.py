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

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import hostile_inputs as hi
import pytest
import yaml
from conftest import load_benchmark

from pytest_meshconform import userfiles
from pytest_meshconform.audit.cli import EXIT_USAGE
from pytest_meshconform.backends.local.topology_file import (
    TopologyError,
    load_topology,
    parse_topology,
)
from pytest_meshconform.cli import EXIT_BAD_INPUT
from pytest_meshconform.evidence.certs import (
    CertError,
    load_pem_chain,
    parse_envoy_certs,
)
from pytest_meshconform.evidence.wire import analyze_pcap
from pytest_meshconform.evidence.xfcc import XfccError, parse_xfcc
from pytest_meshconform.istio.api import PolicyError, parse_policies, parse_policy
from pytest_meshconform.istio.sidecar_dump import parse_envoy_secrets
from pytest_meshconform.report import ReportError, load_report

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


# --------------------------------------------------------------------------- users' files
# Issue 23, finding 3: every file a user names is read by `userfiles` (a regular file, capped,
# strict UTF-8, nesting bounded, linear), and every entry point turns its error into one line
# naming the file, with the entry point's usage status. Real files, real processes.

NESTED = "[" * 100_000


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def _read_in_thread(path: Path, kind: str) -> str:
    """The error `read_text` raises, read in a thread so a read that blocks fails the test."""
    outcome: list[str] = []

    def read() -> None:
        try:
            userfiles.read_text(path, kind)
            outcome.append("read")
        except userfiles.InputFileError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert outcome, f"reading {path} blocked"
    return outcome[0]


@pytest.mark.parametrize(
    ("make", "described"),
    [
        (_fifo, "a FIFO (named pipe)"),
        (lambda d: _symlink(d / "zero.yaml", "/dev/zero"), "a character device"),
        (lambda d: _symlink(d / "self.yaml", "/proc/self/mem"), "not a regular file"),
        (lambda d: d, "a directory"),
    ],
    ids=["fifo", "dev-zero", "proc-self-mem", "directory"],
)
def test_only_a_regular_file_is_read_and_nothing_blocks(
    tmp_path: Path, make: Callable[[Path], Path], described: str
) -> None:
    path = make(tmp_path)
    message = _read_in_thread(path, "report")
    if described == "not a regular file":  # /proc/self/mem is a regular file of size 0...
        assert message != "read" or path.resolve().is_file()
        return
    assert message == f"{path}: cannot read the report: it is {described}, not a regular file"


def _symlink(link: Path, target: str) -> Path:
    link.symlink_to(target)
    return link


def test_a_file_over_the_cap_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(userfiles.SIZE_LIMIT_VARIABLE, raising=False)
    cap = userfiles.SIZE_LIMITS["topology file"]
    path = tmp_path / "big.yaml"
    path.write_text("#" * cap + "\n")
    with pytest.raises(userfiles.InputFileError) as refused:
        userfiles.read_text(path, "topology file")
    assert str(refused.value) == (
        f"{path}: the topology file is {cap + 1} bytes, more than the limit of {cap} bytes for a"
        f" topology file (set MESHCONFORM_MAX_INPUT_BYTES, e.g. MESHCONFORM_MAX_INPUT_BYTES=256M,"
        " to raise it)"
    )
    monkeypatch.setenv(userfiles.SIZE_LIMIT_VARIABLE, "2M")
    assert len(userfiles.read_text(path, "topology file")) == cap + 1
    monkeypatch.setenv(userfiles.SIZE_LIMIT_VARIABLE, "lots")
    with pytest.raises(userfiles.InputFileError, match="MESHCONFORM_MAX_INPUT_BYTES='lots'"):
        userfiles.read_text(path, "topology file")


def test_non_utf8_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_bytes(b"namespaces:\n  - name: f\xe9o\n")
    with pytest.raises(userfiles.InputFileError) as refused:
        userfiles.read_text(path, "topology file")
    assert str(refused.value) == (
        f"{path}: the topology file is not UTF-8: byte 23 (line 2) is 0xe9 (invalid"
        " continuation byte)"
    )


@pytest.mark.parametrize(
    "text",
    [NESTED, "- " * 100_000 + "x", "a: " + "[" * 101 + "]" * 101, "{a: " * 200 + "1" + "}" * 200],
    ids=["flow", "block", "just-over", "mappings"],
)
def test_topology_nesting_is_bounded(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as refused:
        load_topology(path)
    assert str(refused.value) == (
        f"{path}:1: nested deeper than 100 levels (lists and mappings inside each other)"
    )


def test_nesting_up_to_the_bound_is_composed_as_pyyaml_composes_it() -> None:
    text = "a: " + "[" * 99 + "]" * 99 + "\nb: &x {c: [1, 2.5, ~, yes, 2020-01-01]}\nd: *x\n"
    (mine,) = userfiles.compose_yaml(text, "t.yaml")
    theirs = yaml.compose(text, Loader=yaml.SafeLoader)
    assert yaml.serialize(mine) == yaml.serialize(theirs)
    assert userfiles.load_yaml(text, "t.yaml") == yaml.safe_load(text)


def test_report_nesting_is_bounded_in_json_and_yaml(tmp_path: Path) -> None:
    for name in ("deep.json", "deep.yaml"):
        path = tmp_path / name
        path.write_text(NESTED)
        with pytest.raises(ReportError, match=r"^\S+deep\.(json|yaml): nested deeper than 100"):
            load_report(path)
    assert userfiles.load_json('{"a": "[[[[", "b": [[1]]}', "x.json") == {"a": "[[[[", "b": [[1]]}
    with pytest.raises(userfiles.InputFileError, match="nested deeper than 100 levels"):
        userfiles.load_json("[" * 101 + "]" * 101, "x.json")


def test_an_explicit_scalar_tag_of_the_wrong_form_is_a_file_error(tmp_path: Path) -> None:
    # PyYAML's constructors trust the form: `!!timestamp apiVersion` raised AttributeError out of
    # construct_yaml_timestamp (found by test_a_report_file_raises_only_report_errors)
    path = tmp_path / "report.yaml"
    path.write_text("kind: ConformanceReport\n!!timestamp apiVersion: meshconform/v1alpha1\n")
    with pytest.raises(
        ReportError, match=r"report\.yaml: not valid YAML: 'apiVersion' is not a valid !!timestamp"
    ):
        load_report(path)
    for text, tag in (("a: !!int zz", "int"), ("a: !!float x", "float"), ("a: !!bool 2", "bool")):
        with pytest.raises(userfiles.InputFileError, match=rf"is not a valid !!{tag} \(line 1\)"):
            userfiles.load_yaml(text, "t.yaml")
    text = "a: !!timestamp 2026-12-07\nb: !!int 0x1F\nc: !!float .5\nd: !!bool yes\n"
    assert userfiles.load_yaml(text, "t.yaml") == yaml.safe_load(text)


def test_an_unclosed_json_string_is_scanned_once() -> None:
    def unclosed(n: int) -> str:
        return '"' + '\\"' * n

    ratio = _ratio(
        lambda: userfiles.json_depth(unclosed(1_000_000)),
        lambda: userfiles.json_depth(unclosed(250_000)),
    )
    assert ratio < GROWTH_RATIO, f"4x an unclosed string costs {ratio:.0f}x"


def test_topology_alias_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMB)
    with pytest.raises(TopologyError, match="excessive aliasing"):
        load_topology(path)


_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def _namespaces(count: int) -> str:
    return "namespaces:\n" + "".join(
        f"  - {{name: ns-{i}, injected: {'true' if i % 2 else 'false'}}}\n" for i in range(count)
    )


def _workloads(count: int) -> str:
    head = "namespaces:\n  - name: foo\n    injected: true\n    workloads:\n"
    return head + "".join(f"      - {{name: w{i}, kind: sleep}}\n" for i in range(count))


def _load_quietly(text: str) -> None:
    with contextlib.suppress(TopologyError):
        parse_topology(text, "t.yaml")


def test_the_topology_loader_is_linear() -> None:
    # Before: a YAML round trip per boolean, PyYAML's pure-Python scanner, a workload name
    # compared with every earlier one (1 MB: 10 s of namespaces, 62 s of workloads).
    small, large = _namespaces(1_000), _namespaces(4_000)
    ratio = _ratio(lambda: _load_quietly(large), lambda: _load_quietly(small))
    assert ratio < GROWTH_RATIO, f"4x the namespaces cost {ratio:.0f}x"
    hostile = _workloads(4_000)  # stops at the 201st workload, whatever follows
    benign = _namespaces(len(hostile) // 40)
    assert abs(len(benign) - len(hostile)) < len(hostile) // 2
    ratio = _ratio(lambda: _load_quietly(hostile), lambda: _load_quietly(benign))
    assert ratio < BENIGN_RATIO, f"too many workloads cost {ratio:.0f}x as many namespaces"


# --- the entry points, as a user runs them


def _meshconform(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_meshconform.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line_naming(result: subprocess.CompletedProcess[str], path: Path) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    assert str(path) in line, line
    return line


def test_meshconform_diff_on_hostile_reports_is_a_usage_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(NESTED)
    zero = _symlink(tmp_path / "zero.yaml", "/dev/zero")
    fifo = _fifo(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"apiVersion: \xff\n")
    for path in (deep, zero, fifo, latin):
        result = _meshconform("diff", str(path), str(path))
        assert result.returncode == EXIT_BAD_INPUT, result
        _one_line_naming(result, path)


def test_meshconform_audit_on_hostile_topology_and_policy_is_a_usage_error(
    tmp_path: Path,
) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"namespaces:\n  - name: f\xe9o\n")
    deep = tmp_path / "deep.yaml"
    deep.write_text(NESTED)
    for option in ("--mesh-topology", "--policy"):
        for path in (latin, deep, _symlink(tmp_path / f"zero{option}.yaml", "/dev/zero")):
            result = _meshconform("audit", f"{option}={path}")
            assert result.returncode == EXIT_USAGE, result
            _one_line_naming(result, path)


def test_pytest_on_a_hostile_topology_or_baseline_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile("def test_x(mesh):\n    pass\n")
    latin = pytester.path / "latin.yaml"
    latin.write_bytes(b"namespaces:\n  - name: f\xe9o\n")
    deep = pytester.path / "deep.json"
    deep.write_text(NESTED)
    for option, path in (("--mesh-topology", latin), ("--mesh-baseline", deep)):
        result = pytester.runpytest_subprocess(f"{option}={path}", "-p", "no:randomly")
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stderr.str()
        errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
        assert len(errors) == 1 and str(path) in errors[0], result.stderr.str()
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_the_hostile_input_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("bench_hostile_inputs")
    assert bench.main(["--fuzz", "1", "--only", "meshconform diff"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^  meshconform diff +100k nested \[ +\d+\.\d\d s +\d+ MiB  exit 4", out, re.M
    )
    assert re.search(r"^  13 runs, 0 misbehaved; 1-min load average", out, re.M), out
