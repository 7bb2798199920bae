"""The human-readable reports without a mesh: the document model rendered as HTML and
Markdown (escaping, colour coding, the rotation chart, brief mode), --mesh-report repeated,
and a test's docstring as its description in every format (YAML, HTML, Markdown, and JUnit
when its family allows test case properties)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from browser import computed_styles
from test_observations import sample

from pytest_meshconform.report.observations import ObservedTable
from pytest_meshconform.report.render import (
    Block,
    Document,
    Entry,
    Section,
    Timeline,
    render_html,
    render_markdown,
)
from pytest_meshconform.settings import MeshSettings, OptionLayer, SettingsError

TABLE = ObservedTable(
    title="a <b>matrix</b> | of outcomes",
    rows=("sleep.foo", "sleep.legacy"),
    columns=("httpbin.foo",),
    expected=(("mTLS",), ("reset",)),
    observed=(("mTLS",), ("plaintext",)),
    corner="client \\ server",
)


def document(*entries: Entry) -> Document:
    return Document(
        title="audit <of> things",
        status="failure",
        summary="1 passed, 1 failed",
        header=(("Mesh", "istio 1.25 <kind>"), ("Settings", "cluster=kind")),
        sections=(Section("checks", "failure", entries, subtitle="checks.py"),),
        notes=("faults <injected>",),
        generated="2026-12-03T06:00:00Z",
    )


FAILED = Entry(
    title="test_matrix",
    status="failed",
    description="Each client calls each server.",
    message="AssertionError: <differs>",
    duration=1.5,
    facts=(("Requests", ("sleep.foo -> httpbin.foo: HTTP 200",)),),
    tables=(TABLE,),
    evidence=(Block("log httpbin.foo envoy-access.log (this test)", "GET /x <y> ```"),),
)
PASSED = Entry(title="test_ok", status="passed", description="Fine.", duration=0.1)


def test_html_is_self_contained_escaped_and_colour_coded() -> None:
    page = render_html(document(FAILED, PASSED))
    assert page.startswith("<!DOCTYPE html>")
    for needle in ("<script", " src=", " href=", "@import", "url("):
        assert needle not in page  # nothing to run, nothing to fetch
    assert "default-src 'none'" in page  # and the page forbids it anyway
    assert "audit &lt;of&gt; things" in page and "<of>" not in page
    assert "AssertionError: &lt;differs&gt;" in page
    assert "<caption>a &lt;b&gt;matrix&lt;/b&gt; | of outcomes: 1 cells differ</caption>" in page
    assert '<td class="ok" title="as expected">mTLS</td>' in page
    assert (
        '<td class="mismatch" title="expected reset, observed plaintext">plaintext'
        '<span class="want">expected reset</span></td>'
    ) in page
    assert '<section class="entry bad" data-status="failed">' in page
    assert '<section class="entry good" data-status="passed">' in page
    assert "<pre>GET /x &lt;y&gt; ```</pre>" in page
    assert '<p class="note">faults &lt;injected&gt;</p>' in page


GREEN, RED, GREY = "rgb(26, 127, 55)", "rgb(207, 34, 46)", "rgb(110, 119, 129)"


def test_a_real_browser_draws_each_badge_in_its_own_colour(tmp_path: Path) -> None:
    """In a failed report (red page, red section), a passed test's badge is still green: the
    colour Chromium computed for each badge is its own status's, not its section's."""
    skipped = Entry(title="test_skipped", status="skipped", message="no ambient")
    unrun = Entry(title="test_unrun", status="notrun")
    page = tmp_path / "r.html"
    page.write_text(render_html(document(FAILED, PASSED, skipped, unrun)))
    badges = computed_styles(tmp_path, page, ".badge", ["background-color", "color"])
    assert [(b.text, b.style["background-color"]) for b in badges] == [
        ("failure", RED),  # the page
        ("failure", RED),  # the section
        ("failed", RED),
        ("passed", GREEN),
        ("skipped", GREY),
        ("not run", GREY),  # in words
    ]
    assert {b.style["color"] for b in badges} == {"rgb(255, 255, 255)"}
    # a failure's message is red, a skip reason is not
    messages = computed_styles(tmp_path, page, ".message", ["background-color"])
    assert [(m.text, m.style["background-color"]) for m in messages] == [
        ("AssertionError: <differs>", "rgb(255, 235, 233)"),
        ("no ambient", "rgb(246, 248, 250)"),
    ]


AGAINST_THE_BASELINE = """
import pytest


def test_a():
    pass


@pytest.mark.xfail(reason="broken since 1.25", strict=False)
def test_b():
    raise AssertionError("XFCC missing")


def test_c():
    pass


def test_e():
    raise AssertionError("plaintext was not refused")
"""


def test_a_real_browser_shows_a_failed_run_as_failed_with_its_passes_green(
    pytester: pytest.Pytester,
) -> None:
    """A run of a real plugin against a baseline: it fails (a new failure, a regression), and
    Chromium shows the page as failed in words, the passed tests green and the failed one red."""
    from test_report import REFERENCE_YAML

    (pytester.path / "baseline.yaml").write_text(REFERENCE_YAML)
    pytester.makepyfile(test_strict=AGAINST_THE_BASELINE)
    result = pytester.runpytest(
        *("-p", "no:randomly", "-p", "no:cacheprovider", "--mesh-baseline=baseline.yaml"),
        *("--mesh-report=r.yaml", "--mesh-report=r.html"),
    )
    result.assert_outcomes(passed=2, failed=1, xfailed=1)
    page = pytester.path / "r.html"
    verdict = "2 passed, 1 failed, 1 xfailed; the run failed: regressions against the baseline"
    (summary,) = computed_styles(pytester.path, page, "p.summary", ["display"])
    assert summary.text == verdict
    (title,) = computed_styles(pytester.path, page, "h1 .badge", ["background-color"])
    assert (title.text, title.style["background-color"]) == ("failure", RED)
    badges = computed_styles(pytester.path, page, ".entry .badge", ["background-color"])
    # the comparison's entries first (regressions, fixes, new tests), then the tests
    assert [(b.text, b.style["background-color"]) for b in badges] == [
        ("regression", RED),
        ("fixed", GREEN),
        ("new", GREY),
        ("removed", GREY),
        ("passed", GREEN),
        ("xfailed", GREY),
        ("passed", GREEN),
        ("failed", RED),
    ]
    cells = computed_styles(pytester.path, page, "table.header td", ["color"])
    assert f"failure: {verdict}" in [cell.text for cell in cells]  # the Result row


def test_markdown_escapes_cells_and_fences_evidence() -> None:
    text = render_markdown(document(FAILED, PASSED))
    lines = text.splitlines()
    assert lines[0] == "# audit <of> things: ❌ failure"
    assert "| Mesh | istio 1.25 <kind> |" in lines
    assert "> **Warning:** faults <injected>" in lines
    assert "**a <b>matrix</b> \\| of outcomes**: 1 cells differ" in lines
    assert "| client \\\\ server | httpbin.foo |" in lines
    assert "| sleep.legacy | ❌ **plaintext** (expected reset) |" in lines
    assert "| sleep.foo | ✅ mTLS |" in lines
    evidence = lines.index("*log httpbin.foo envoy-access.log (this test)*")
    assert lines[evidence + 2 : evidence + 5] == ["````", "GET /x <y> ```", "````"]
    assert "#### ✅ **test_ok**: passed (0.10s)" in lines


def test_brief_markdown_keeps_passing_entries_to_one_line() -> None:
    matrix = ObservedTable("m", ("a",), ("b",), (("mTLS",),), (("mTLS",),))
    with_table = Entry("test_matrix_ok", "passed", description="Has a matrix.", tables=(matrix,))
    text = render_markdown(document(FAILED, PASSED, with_table), brief=True)
    lines = text.splitlines()
    assert "- ✅ **test_ok**: passed (0.10s): Fine." in lines
    assert "| sleep.legacy | ❌ **plaintext** (expected reset) |" in text  # failures in full
    assert "GET /x <y> ```" in text
    # a passing test's tables are kept, without the rest of its details
    at = lines.index("#### ✅ **test_matrix_ok**: passed")
    assert lines[at + 2 : at + 6] == ["**m**: as expected", "", "|   | b |", "|---|---|"]
    assert "> Has a matrix." not in lines


def test_the_rotation_timeline_is_an_inline_svg() -> None:
    (rotation,) = sample().rotations
    timeline = Timeline.of(rotation)
    assert timeline.old_start == datetime(2026, 12, 3, 6, 0, 0, tzinfo=UTC)
    assert timeline.observed_at == datetime(2026, 12, 3, 6, 0, 15, 100000, tzinfo=UTC)
    page = render_html(document(Entry("test_rotation", "passed", timelines=(timeline,))))
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    root = ET.fromstring(svg)  # well-formed SVG
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts == [
        "old certificate",
        "new certificate",
        "06:00:00",
        "06:00:45",
        "rotation seen 06:00:15",
        "half-life",
    ]
    rects = [r.attrib for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    # 45 s drawn over 620 px: the old certificate is 30 s wide, the new one starts at 15 s
    assert [float(r["width"]) for r in rects] == pytest.approx([413.3, 413.3], abs=0.1)
    assert float(rects[1]["x"]) == pytest.approx(10 + 620 * 15 / 45, abs=0.1)


def layers(*reports: str) -> tuple[OptionLayer, OptionLayer]:
    cli = OptionLayer(
        origin="cli",
        base_dir=Path("/run"),
        report=reports[0] if reports else None,
        more_reports=reports[1:],
    )
    return cli, OptionLayer(origin="ini", base_dir=Path("/proj"), report="ini.yaml")


def test_mesh_report_may_be_given_for_each_format() -> None:
    settings = MeshSettings.resolve(*layers("r.html", "r.yaml", "r.md", "copy.json"))
    assert settings.report == Path("/run/r.yaml")  # the record: baseline, evidence paths
    assert settings.extra_reports == (
        Path("/run/r.html"),
        Path("/run/r.md"),
        Path("/run/copy.json"),
    )
    assert settings.header_lines()[1] == (
        "meshconform: report=/run/r.yaml report=/run/r.html report=/run/r.md report=/run/copy.json"
    )
    only_html = MeshSettings.resolve(*layers("r.html"))
    assert only_html.report is None and only_html.extra_reports == (Path("/run/r.html"),)
    from_ini = MeshSettings.resolve(*layers())
    assert from_ini.report == Path("/proj/ini.yaml") and from_ini.extra_reports == ()
    with pytest.raises(SettingsError, match=r"^--mesh-report: invalid report path 'r\.pdf'"):
        MeshSettings.resolve(*layers("r.html", "r.pdf"))


def test_a_docstring_is_the_description_in_every_format(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain='''
def test_documented():
    """Says what it checks.

    On two paragraphs."""


def test_bare():
    pass
'''
    )
    result = pytester.runpytest(
        "-p",
        "no:randomly",
        "--mesh-report=r.yaml",
        "--mesh-report=r.html",
        "--mesh-report=r.md",
        "--junitxml=junit.xml",
        "-o",
        "junit_family=xunit1",  # xunit2 (the default) has no test case properties
    )
    result.assert_outcomes(passed=2)
    want = "Says what it checks.\n\nOn two paragraphs."
    tests = yaml.safe_load((pytester.path / "r.yaml").read_text())["suites"][0]["tests"]
    assert [t.get("description") for t in tests] == [want, None]
    assert '<p class="desc">Says what it checks.\n\nOn two paragraphs.</p>' in (
        (pytester.path / "r.html").read_text()
    )
    assert "> Says what it checks.\n>\n> On two paragraphs." in (
        (pytester.path / "r.md").read_text()
    )
    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    documented = suite.find("testcase[@name='test_documented']/properties/property")
    assert documented is not None and documented.attrib == {"name": "description", "value": want}
    assert suite.find("testcase[@name='test_bare']/properties") is None
    # no mesh was used: nothing goes to a CI step summary
    assert "meshconform report: " in result.stdout.str()


def test_under_artifacts_a_passing_test_keeps_its_evidence_too(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_pass="""
from pytest_meshconform.report.exhibits import evidence_of


def test_proved(request):
    evidence = evidence_of(request.node)
    evidence.add_text("curl sleep.foo -> httpbin.foo", "HTTP 200")
    evidence.observed.touch("sleep.foo", "httpbin.foo")


def test_nothing_to_keep():
    pass
"""
    )
    result = pytester.runpytest(
        "-p", "no:randomly", "--mesh-report=r.yaml", "--mesh-artifacts=evidence"
    )
    result.assert_outcomes(passed=2)
    kept = pytester.path / "evidence" / "test_pass.py__test_proved"
    assert sorted(p.name for p in kept.iterdir()) == [
        ".meshconform-evidence",
        "curl_sleep.foo_-_httpbin.foo.txt",
        "summary.txt",
    ]
    assert (kept / "summary.txt").read_text() == ("workloads touched:\n  sleep.foo, httpbin.foo")
    tests = yaml.safe_load((pytester.path / "r.yaml").read_text())["suites"][0]["tests"]
    assert tests[0]["evidence"]["directory"] == "evidence/test_pass.py__test_proved"
    assert "evidence" not in tests[1]
    from pytest_meshconform.report import load_report

    assert load_report(pytester.path / "r.yaml").tests[0].outcome == "passed"  # it loads back
    # the terminal says where the evidence is, and of which tests
    result.stdout.fnmatch_lines([f"*- meshconform evidence: {kept.parent} (1 test: 1 passed) -*"])
    assert "failed" not in result.stdout.str()


PYTHON_VALUES = re.compile(r"\b(None|True|False)\b")


def test_every_report_says_words_not_python_values(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every outcome, evidence, settings and a mesh, in each format: no `None`, `True` or
    `False` reaches a reader, and the settings are one row."""
    from test_report_plugin import IDENTITY_MODULE, OUTCOMES_MODULE, STAND_IN_MESH

    pytester.makeconftest(STAND_IN_MESH)
    pytester.makepyfile(test_strict=OUTCOMES_MODULE, test_identity=IDENTITY_MODULE)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "summary.md"))
    result = pytester.runpytest(
        *("-p", "no:randomly", "--mesh-report=r.yaml", "--mesh-report=r.html"),
        *("--mesh-report=r.md", "--mesh-artifacts=evidence", "--mesh-cert-ttl=1h"),
    )
    result.assert_outcomes(passed=4, failed=2, skipped=1, errors=2, xfailed=1, xpassed=1)
    page = (pytester.path / "r.html").read_text()
    texts = {
        "html": re.sub(r"<[^>]+>", " ", page),
        "markdown": (pytester.path / "r.md").read_text(),
        "step summary": (pytester.path / "summary.md").read_text(),
        "yaml": (pytester.path / "r.yaml").read_text(),
        "terminal": "\n".join(
            line for line in result.outlines if "meshconform" in line and "def " not in line
        ),
    }
    for name, text in texts.items():
        assert PYTHON_VALUES.findall(text) == [], (name, text)
    assert page.count("<th>Settings</th>") == 1
    (settings,) = [line for line in texts["markdown"].splitlines() if line.startswith("| Settings")]
    assert settings == (
        "| Settings | cluster=local cert-ttl=1h keep=no;"
        f" report={pytester.path / 'r.yaml'} report={pytester.path / 'r.html'}"
        f" report={pytester.path / 'r.md'} artifacts={pytester.path / 'evidence'} |"
    )
