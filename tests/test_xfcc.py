"""Tests for pytest_meshconform.evidence.xfcc.

Literal headers are transcribed from the sources cited next to each one; the expected values
were read off those sources (their own assertions, or the documented meaning of each key), not
produced by the parser. The certificate test derives its expectations from openssl.
"""

from __future__ import annotations

import shutil
import string
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings, strategies as st

import pytest_meshconform
from pytest_meshconform.evidence.xfcc import XfccElement, XfccError, parse_xfcc

# --- literal examples from Envoy and Istio -------------------------------------------------

# envoyproxy/envoy docs/root/configuration/http/http_conn_man/headers.rst, examples 1-3.
ENVOY_DOCS_ONE_URI = (
    "By=http://frontend.lyft.com;"
    "Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
    'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
    "URI=http://testclient.lyft.com"
)
ENVOY_DOCS_TWO_CERTS = (
    "By=http://frontend.lyft.com;"
    "Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
    "URI=http://testclient.lyft.com,"
    "By=http://backend.lyft.com;"
    "Hash=9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;"
    "URI=http://frontend.lyft.com"
)
ENVOY_DOCS_URI_AND_DNS = (
    "By=http://frontend.lyft.com;"
    "Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
    'Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
    "URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com"
)
# envoyproxy/envoy test/integration/xfcc_integration_test.{h,cc}, MtlsAppendForwardSubjectUriDns:
# previous_xfcc_ + "," + current_xfcc_by_hash_ + client_subject_ + client_uri_san_ + dns.
ENVOY_INTEGRATION_APPEND_FORWARD = (
    "By=spiffe://lyft.com/frontend;Hash=123456;URI=spiffe://lyft.com/testclient,"
    "By=spiffe://lyft.com/backend-team;"
    "Hash=e0f3c8ce5e2ea305f0701ff512e36e2e97928284a228bcf77332d33930a1b6fd;"
    'Subject="emailAddress=frontend-team@lyft.com,CN=Test Frontend Team,'
    'OU=Lyft Engineering,O=Lyft,L=San Francisco,ST=California,C=US";'
    "URI=spiffe://lyft.com/frontend-team;DNS=lyft.com;DNS=www.lyft.com"
)
# envoyproxy/envoy test/common/http/conn_manager_utility_test.cc (the Cert + DNS case): the
# mocked urlEncodedPemEncodedPeerCertificate() is "%3D%3Dabc%0Ade%3D", i.e. "==abc\nde=".
ENVOY_UNIT_TEST_CERT = (
    'By=test://foo.com/be;Hash=abcdefg;URI=test://foo.com/fe;Cert="%3D%3Dabc%0Ade%3D";'
    "DNS=www.example.com"
)
# istio/istio security/pkg/server/ca/authenticate/xfcc_authenticator_test.go, "Xfcc Header
# multiple hops". Note "%0cert" is the escape %0c (form feed) followed by "ert".
ISTIO_MULTIPLE_HOPS = (
    'Hash=hash;Cert="-----BEGIN%20CERTIFICATE-----%0cert%0A-----END%20CERTIFICATE-----%0A";'
    'Subject="CN=hello,OU=hello,O=Acme\\, Inc.";'
    "URI=spiffe://mesh.example.com/ns/firstns/sa/firstsa;"
    "DNS=hello.west.example.com;DNS=hello.east.example.com,"
    'By=spiffe://mesh.example.com/ns/hellons/sa/hellosa;Hash=again;Subject="";'
    "URI=spiffe://mesh.example.com/ns/otherns/sa/othersa"
)
# Same file, "Xfcc Header single hop".
ISTIO_SINGLE_HOP = 'Hash=meshclient;Subject="";URI=spiffe://mesh.example.com/ns/otherns/sa/othersa'
# istio/istio.io content/en/docs/tasks/security/authorization/authz-custom/index.md: the header a
# sidecar wrote for curl -> httpbin in namespace foo (the By=;Hash=;Subject="";URI= form of
# docs/istio-facts.md), as logged by the ext-authz server.
ISTIO_DOCS_SIDECAR = (
    "By=spiffe://cluster.local/ns/foo/sa/httpbin;"
    "Hash=dd14782fa2f439724d271dbed846ef843ff40d3932b615da650d028db655fc8d;"
    'Subject="";URI=spiffe://cluster.local/ns/foo/sa/curl'
)
# alecholmes/xfccparser parser_test.go (vendored by Istio): two stored versions of its success
# case, one with Envoy's empty "URI=" and one with two URI SANs in one element.
XFCCPARSER_EMPTY_URI = (
    'Hash=hash;Cert="-----BEGIN%20CERTIFICATE-----%0cert%0A-----END%20CERTIFICATE-----%0A";'
    'Subject="CN=hello,OU=hello,O=Acme\\, Inc.";URI=;'
    "DNS=hello.west.example.com;DNS=hello.east.example.com,"
    'By=spiffe://mesh.example.com/ns/hellons/sa/hellosa;Hash=again;Subject="";'
    "URI=spiffe://mesh.example.com/ns/otherns/sa/othersa"
)
XFCCPARSER_TWO_URIS = (
    'Hash=hash;Cert="-----BEGIN%20CERTIFICATE-----%0cert%0A-----END%20CERTIFICATE-----%0A";'
    'Subject="CN=hello,OU=hello,O=Acme\\, Inc.";'
    "DNS=hello.west.example.com;DNS=hello.east.example.com,"
    'By=spiffe://mesh.example.com/ns/hellons/sa/hellosa;Hash=again;Subject="";'
    "URI=spiffe://mesh.example.com/ns/otherns/sa/othersa;"
    "URI=spiffe://mesh.example.com/ns/otherns/sa2/othersa2"
)

HELLO_CERT = "-----BEGIN CERTIFICATE-----\x0cert\n-----END CERTIFICATE-----\n"
HELLO_SUBJECT = r"CN=hello,OU=hello,O=Acme\, Inc."
OTHERSA = "spiffe://mesh.example.com/ns/otherns/sa/othersa"
# The two hops of the Istio / xfccparser multi-hop headers; the variants differ in URIs only.
HELLO_HOP = XfccElement(
    hash="hash",
    cert=HELLO_CERT,
    subject=HELLO_SUBJECT,
    dns=("hello.west.example.com", "hello.east.example.com"),
)
HELLOSA_HOP = XfccElement(
    by=("spiffe://mesh.example.com/ns/hellons/sa/hellosa",), hash="again", uri=(OTHERSA,)
)
LYFT_HASH = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
LYFT_SUBJECT = "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"

LITERAL_CASES = {
    "envoy-docs-one-uri": (
        ENVOY_DOCS_ONE_URI,
        (
            XfccElement(
                by=("http://frontend.lyft.com",),
                hash=LYFT_HASH,
                subject=LYFT_SUBJECT,
                uri=("http://testclient.lyft.com",),
            ),
        ),
    ),
    "envoy-docs-two-certs": (
        ENVOY_DOCS_TWO_CERTS,
        (
            XfccElement(
                by=("http://frontend.lyft.com",),
                hash=LYFT_HASH,
                uri=("http://testclient.lyft.com",),
            ),
            XfccElement(
                by=("http://backend.lyft.com",),
                hash="9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e",
                uri=("http://frontend.lyft.com",),
            ),
        ),
    ),
    "envoy-docs-uri-and-dns": (
        ENVOY_DOCS_URI_AND_DNS,
        (
            XfccElement(
                by=("http://frontend.lyft.com",),
                hash=LYFT_HASH,
                subject=LYFT_SUBJECT,
                uri=("http://testclient.lyft.com",),
                dns=("lyft.com", "www.lyft.com"),
            ),
        ),
    ),
    "envoy-integration-append-forward": (
        ENVOY_INTEGRATION_APPEND_FORWARD,
        (
            XfccElement(
                by=("spiffe://lyft.com/frontend",),
                hash="123456",
                uri=("spiffe://lyft.com/testclient",),
            ),
            XfccElement(
                by=("spiffe://lyft.com/backend-team",),
                hash="e0f3c8ce5e2ea305f0701ff512e36e2e97928284a228bcf77332d33930a1b6fd",
                subject=(
                    "emailAddress=frontend-team@lyft.com,CN=Test Frontend Team,"
                    "OU=Lyft Engineering,O=Lyft,L=San Francisco,ST=California,C=US"
                ),
                uri=("spiffe://lyft.com/frontend-team",),
                dns=("lyft.com", "www.lyft.com"),
            ),
        ),
    ),
    "envoy-unit-test-cert": (
        ENVOY_UNIT_TEST_CERT,
        (
            XfccElement(
                by=("test://foo.com/be",),
                hash="abcdefg",
                cert="==abc\nde=",
                uri=("test://foo.com/fe",),
                dns=("www.example.com",),
            ),
        ),
    ),
    "istio-multiple-hops": (
        ISTIO_MULTIPLE_HOPS,
        (
            replace(HELLO_HOP, uri=("spiffe://mesh.example.com/ns/firstns/sa/firstsa",)),
            HELLOSA_HOP,
        ),
    ),
    "istio-single-hop": (ISTIO_SINGLE_HOP, (XfccElement(hash="meshclient", uri=(OTHERSA,)),)),
    "istio-docs-sidecar": (
        ISTIO_DOCS_SIDECAR,
        (
            XfccElement(
                by=("spiffe://cluster.local/ns/foo/sa/httpbin",),
                hash="dd14782fa2f439724d271dbed846ef843ff40d3932b615da650d028db655fc8d",
                uri=("spiffe://cluster.local/ns/foo/sa/curl",),
            ),
        ),
    ),
    "xfccparser-empty-uri": (XFCCPARSER_EMPTY_URI, (HELLO_HOP, HELLOSA_HOP)),
    "xfccparser-two-uris": (
        XFCCPARSER_TWO_URIS,
        (
            HELLO_HOP,
            replace(
                HELLOSA_HOP,
                uri=(OTHERSA, "spiffe://mesh.example.com/ns/otherns/sa2/othersa2"),
            ),
        ),
    ),
}


@pytest.mark.parametrize(
    ("header", "expected"), list(LITERAL_CASES.values()), ids=list(LITERAL_CASES)
)
def test_literal_headers_from_envoy_and_istio(
    header: str, expected: tuple[XfccElement, ...]
) -> None:
    assert parse_xfcc(header) == expected


def test_sidecar_header_names_client_and_server_spiffe_ids() -> None:
    (element,) = parse_xfcc(ISTIO_DOCS_SIDECAR)
    assert element.spiffe_uri == "spiffe://cluster.local/ns/foo/sa/curl"
    assert element.by_spiffe_uri == "spiffe://cluster.local/ns/foo/sa/httpbin"


def test_spiffe_conveniences_skip_other_schemes_and_allow_absence() -> None:
    element = XfccElement(
        by=("http://backend.lyft.com",),
        uri=("http://testclient.lyft.com", "spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/c"),
    )
    assert element.spiffe_uri == "spiffe://td/ns/a/sa/b"
    assert element.by_spiffe_uri is None
    assert XfccElement().spiffe_uri is None


def test_the_xfcc_reader_type_is_on_the_package_face_and_the_parser_is_not() -> None:
    """`xfcc` returns XfccElements (on the face); the parser stays in evidence.xfcc."""
    assert pytest_meshconform.XfccElement is XfccElement
    assert parse_xfcc.__name__ not in pytest_meshconform.__all__
    assert XfccError.__name__ not in pytest_meshconform.__all__


# --- grammar decisions -----------------------------------------------------------------------


@pytest.mark.parametrize("header", ["", " ", "\t  ", "\r\n"])
def test_empty_or_blank_header_is_zero_elements(header: str) -> None:
    assert parse_xfcc(header) == ()


def test_keys_are_case_insensitive() -> None:
    header = 'by=a;HASH=b;cErT="c";chain="d";SUBJECT="e";uri=f;Dns=g'
    assert parse_xfcc(header) == (
        XfccElement(by=("a",), hash="b", cert="c", chain="d", subject="e", uri=("f",), dns=("g",)),
    )


def test_by_uri_and_dns_repeat_within_one_element_in_order() -> None:
    header = "By=b1;URI=u1;DNS=d1;By=b2;DNS=d2;URI=u2;DNS=d3"
    assert parse_xfcc(header) == (
        XfccElement(by=("b1", "b2"), uri=("u1", "u2"), dns=("d1", "d2", "d3")),
    )


def test_empty_values_mean_absent() -> None:
    # Envoy writes "URI=" for a peer without a URI SAN and Subject="" for an empty subject.
    header = 'By=;Hash=;Cert="";Chain=;Subject="";URI=;DNS=""'
    assert parse_xfcc(header) == (XfccElement(),)


def test_unknown_keys_are_ignored() -> None:
    # "SAN" is what Envoy wrote before it had URI; xfccparser rejects unknown keys, we ignore them.
    header = 'SAN=spiffe://old/form;Foo="a;b,c";URI=spiffe://td/ns/a/sa/b;unknown=hello'
    assert parse_xfcc(header) == (XfccElement(uri=("spiffe://td/ns/a/sa/b",)),)
    assert parse_xfcc("unknown=hello") == (XfccElement(),)


def test_subject_is_opaque_text() -> None:
    # xfccparser turns Subject into a DN and so rejects these; the Subject is kept as written.
    assert parse_xfcc('Subject="random"') == (XfccElement(subject="random"),)
    assert parse_xfcc('Subject="random=hello"') == (XfccElement(subject="random=hello"),)


def test_any_key_may_be_quoted_and_separators_inside_quotes_are_data() -> None:
    header = 'By="spiffe://a/b;c,d";Hash="ab=cd";URI="x,y";DNS="p;q"'
    assert parse_xfcc(header) == (
        XfccElement(by=("spiffe://a/b;c,d",), hash="ab=cd", uri=("x,y",), dns=("p;q",)),
    )


def test_only_quote_and_backslash_are_escapes_inside_quotes() -> None:
    header = r'Subject="CN=say \"hi\",O=Acme\, Inc.,OU=a\\b,L=x\+y\2C"'
    assert parse_xfcc(header) == (
        XfccElement(subject=r'CN=say "hi",O=Acme\, Inc.,OU=a\b,L=x\+y\2C'),
    )


def test_backslash_outside_quotes_is_an_ordinary_character() -> None:
    assert parse_xfcc(r"URI=a\b") == (XfccElement(uri=(r"a\b",)),)


def test_unquoted_value_may_contain_equals() -> None:
    # Envoy does not quote By/URI (its TODO: "Handle the special characters in By and URI").
    assert parse_xfcc("URI=spiffe://td/x?a=b") == (XfccElement(uri=("spiffe://td/x?a=b",)),)


def test_whitespace_around_separators_is_tolerated() -> None:
    header = ' By=a ; Hash=h\t;\tURI=u ,  By=b;URI="  padded  " '
    assert parse_xfcc(header) == (
        XfccElement(by=("a",), hash="h", uri=("u",)),
        XfccElement(by=("b",), uri=("  padded  ",)),
    )


def test_cert_and_chain_plus_is_not_a_space() -> None:
    assert parse_xfcc('Cert="a+b%2Bc%20d";Chain=x%0Ay') == (
        XfccElement(cert="a+b+c d", chain="x\ny"),
    )


@dataclass(frozen=True)
class Malformed:
    header: str
    problem: str
    fragment: str
    position: int
    element: int


MALFORMED = [
    # istio xfcc_authenticator_test.go "junk xfcc header"; xfccparser "Hash" and "Hash=;Hash".
    Malformed("junk xfcc header", "pair without '='", "junk xfcc header", 0, 1),
    Malformed("Hash", "pair without '='", "Hash", 0, 1),
    Malformed("Hash=;Hash", "pair without '='", "Hash", 6, 1),
    Malformed('By=a;Subject="abc', "unterminated quote", '"abc', 13, 1),
    Malformed('Subject="abc\\"', "unterminated quote", '"abc\\"', 8, 1),
    Malformed("By=a,URI=b;=x", "empty key", "=x", 11, 2),
    Malformed("B y=x", "invalid key 'B y'", "B y=x", 0, 1),
    Malformed('"By"=x', "invalid key '\"By\"'", '"By"=x', 0, 1),
    Malformed("By= x", "whitespace after '='", "By= x", 0, 1),
    Malformed("By =x", "invalid key 'By '", "By =x", 0, 1),
    Malformed('Subject="abc"def', "value quoted only in part", 'Subject="abc"def', 0, 1),
    Malformed('Subject=abc"def"', "value quoted only in part", 'Subject=abc"def"', 0, 1),
    Malformed('URI=a"b;c"', "value quoted only in part", 'URI=a"b;c"', 0, 1),
    Malformed('By=a;URI="x" "y"', "value quoted only in part", 'URI="x" "y"', 5, 1),
    Malformed("By=a,,By=b", "empty element", "", 5, 2),
    Malformed("By=a, ,By=b", "empty element", " ", 5, 2),
    Malformed(",By=a", "empty element", "", 0, 1),
    Malformed("By=a,", "empty element", "", 5, 2),
    Malformed("By=a;;URI=b", "empty pair", "", 5, 1),
    Malformed("By=a;", "empty pair", "", 5, 1),
    Malformed("Hash=a;Hash=b", "repeated key 'Hash'", "Hash=b", 7, 1),
    Malformed('Subject="";subject="x"', "repeated key 'subject'", 'subject="x"', 11, 1),
    Malformed('URI=u,Cert="%zz"', "Cert: '%zz' is not a percent-escape", 'Cert="%zz"', 6, 2),
    Malformed('Chain="abc%4"', "Chain: '%4' is not a percent-escape", 'Chain="abc%4"', 0, 1),
    Malformed(
        'Cert="%FF"',
        "Cert: percent-decoded bytes are not UTF-8 (invalid start byte at byte 0)",
        'Cert="%FF"',
        0,
        1,
    ),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[case.header for case in MALFORMED])
def test_malformed_header_raises_with_the_offending_fragment(case: Malformed) -> None:
    with pytest.raises(XfccError) as caught:
        parse_xfcc(case.header)
    error = caught.value
    assert (error.problem, error.fragment, error.position, error.element) == (
        case.problem,
        case.fragment,
        case.position,
        case.element,
    )
    assert str(error) == (
        f"{case.problem} (element {case.element}, offset {case.position}): {case.fragment!r}"
    )
    assert isinstance(error, ValueError)


def test_long_fragments_are_shortened_in_the_message_only() -> None:
    cert_value = "A" * 200 + "%G0"
    with pytest.raises(XfccError) as caught:
        parse_xfcc(f'Cert="{cert_value}"')
    assert caught.value.fragment == f'Cert="{cert_value}"'
    assert str(caught.value) == (
        "Cert: '%G0' is not a percent-escape (element 1, offset 0): "
        + repr('Cert="' + "A" * 71 + "...")
    )


# --- a real certificate, encoded the way Envoy encodes it -----------------------------------

# Envoy's PercentEncoding::urlEncode (source/common/http/utility.cc, kUrlEncodedCharTable):
# "%-encode all ASCII character codepoints, EXCEPT: ALPHA | DIGIT | * | - | . | _", uppercase hex.
_ENVOY_UNENCODED = frozenset(string.ascii_letters + string.digits + "*-._")


def envoy_url_encode(text: str) -> str:
    return "".join(
        chr(byte) if chr(byte) in _ENVOY_UNENCODED else f"%{byte:02X}" for byte in text.encode()
    )


def envoy_legacy_pem_encode(pem: str) -> str:
    # Older Envoy (ssl_socket.cc, urlEncodedPemEncodedPeerCertificate) did exactly this.
    for raw, encoded in (("\n", "%0A"), (" ", "%20"), ("+", "%2B"), ("/", "%2F"), ("=", "%3D")):
        pem = pem.replace(raw, encoded)
    return pem


@dataclass(frozen=True)
class RealCerts:
    leaf_pem: str
    ca_pem: str
    subject_rfc2253: str
    sha256_hex: str


def _openssl(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout


@pytest.fixture(scope="module")
def real_certs(tmp_path_factory: pytest.TempPathFactory) -> RealCerts:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    work = tmp_path_factory.mktemp("xfcc-certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/O=cluster.local", cwd=work)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "leaf.key", "-out", "leaf.csr",
             "-subj", "/O=Acme, Inc./CN=hello", cwd=work)  # fmt: skip
    (work / "san.ext").write_text(
        "subjectAltName=URI:spiffe://cluster.local/ns/foo/sa/curl,DNS:curl.foo.svc\n"
    )
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "leaf.pem",
             cwd=work)  # fmt: skip
    subject = _openssl("x509", "-in", "leaf.pem", "-noout", "-subject", "-nameopt", "RFC2253",
                       cwd=work)  # fmt: skip
    fingerprint = _openssl("x509", "-in", "leaf.pem", "-noout", "-fingerprint", "-sha256",
                           cwd=work)  # fmt: skip
    return RealCerts(
        leaf_pem=(work / "leaf.pem").read_text(),
        ca_pem=(work / "ca.pem").read_text(),
        subject_rfc2253=subject.strip().removeprefix("subject="),
        sha256_hex=fingerprint.strip().split("=", 1)[1].replace(":", "").lower(),
    )


def test_real_certificate_round_trips_through_envoy_encoding(real_certs: RealCerts) -> None:
    # openssl prints the RFC 2253 subject with a DN escape, like Istio's test value.
    assert real_certs.subject_rfc2253 == r"CN=hello,O=Acme\, Inc."
    encoded_cert = envoy_url_encode(real_certs.leaf_pem)
    assert encoded_cert == envoy_legacy_pem_encode(real_certs.leaf_pem)
    encoded_chain = envoy_url_encode(real_certs.leaf_pem) + envoy_url_encode(real_certs.ca_pem)
    # Field order as mutateXfccRequestHeader writes them: By, Hash, then the configured details.
    header = (
        "By=spiffe://cluster.local/ns/foo/sa/httpbin;"
        f"Hash={real_certs.sha256_hex};"
        f'Cert="{encoded_cert}";Chain="{encoded_chain}";'
        f'Subject="{real_certs.subject_rfc2253}";'
        "URI=spiffe://cluster.local/ns/foo/sa/curl;DNS=curl.foo.svc"
    )

    (element,) = parse_xfcc(header)

    assert element == XfccElement(
        by=("spiffe://cluster.local/ns/foo/sa/httpbin",),
        hash=real_certs.sha256_hex,
        cert=real_certs.leaf_pem,
        chain=real_certs.leaf_pem + real_certs.ca_pem,
        subject=r"CN=hello,O=Acme\, Inc.",
        uri=("spiffe://cluster.local/ns/foo/sa/curl",),
        dns=("curl.foo.svc",),
    )
    assert element.cert is not None and element.chain is not None
    leaf = x509.load_pem_x509_certificate(element.cert.encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [element.spiffe_uri]
    assert len(x509.load_pem_x509_certificates(element.chain.encode())) == 2


# --- properties --------------------------------------------------------------------------------

_WHITESPACE = " \t\r\n"
_GRAMMAR_CHARS = list('ByURIDNSHashCertSubject=;,"\\ \t%0aF')


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=st.sampled_from(_GRAMMAR_CHARS))))
def test_any_text_parses_or_raises_xfcc_error(header: str) -> None:
    try:
        elements = parse_xfcc(header)
    except XfccError as error:
        # The fragment is a real piece of the header, at the reported offset.
        assert header[error.position : error.position + len(error.fragment)] == error.fragment
        assert error.element >= 1
    else:
        assert isinstance(elements, tuple)
        assert all(isinstance(element, XfccElement) for element in elements)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _can_stay_unquoted(value: str) -> bool:
    return not any(char in value for char in ',;"') and (
        value == "" or (value[0] not in _WHITESPACE and value[-1] not in _WHITESPACE)
    )


@st.composite
def _rendered(draw: st.DrawFn, value: str) -> str:
    """A value as a header writer might put it: bare when that is possible, else quoted."""
    if _can_stay_unquoted(value) and draw(st.booleans()):
        return value
    return _quote(value)


@st.composite
def _key(draw: st.DrawFn, name: str) -> str:
    return draw(st.sampled_from([name, name.lower(), name.upper()]))


# Values lean on the characters the grammar cares about, plus some non-ASCII.
_VALUE = st.text(alphabet=st.sampled_from(list('aZ09:/.-_=%+ \t\n,;"\\éß€𝄞')), max_size=12)
_OPTIONAL_VALUE = st.none() | _VALUE
_SEPARATOR_SPACE = st.sampled_from(["", " ", "\t", "  "])
_UNKNOWN_KEY = st.sampled_from(["SAN", "X-Trace", "foo", "By2", "uris"])


@st.composite
def _element(draw: st.DrawFn) -> tuple[list[str], XfccElement]:
    groups: dict[str, list[str]] = {}  # pairs per key, in the order their values must come back
    many: dict[str, list[str]] = {}
    for name in ("By", "URI", "DNS"):
        many[name] = draw(st.lists(_VALUE, max_size=2))
        groups[name] = [f"{draw(_key(name))}={draw(_rendered(value))}" for value in many[name]]
    single: dict[str, str | None] = {}
    for name in ("Hash", "Subject"):
        single[name] = value = draw(_OPTIONAL_VALUE)
        if value is not None:
            groups[name] = [f"{draw(_key(name))}={draw(_rendered(value))}"]
    for name in ("Cert", "Chain"):
        # Any Unicode survives the percent-encoding; the XFCC quoting never sees a quote.
        single[name] = pem = draw(st.none() | st.text(max_size=16))
        if pem is not None:
            groups[name] = [f"{draw(_key(name))}={_quote(envoy_url_encode(pem))}"]
    groups["unknown"] = [
        f"{draw(_UNKNOWN_KEY)}={draw(_rendered(draw(_VALUE)))}"
        for _ in range(draw(st.integers(0, 2)))
    ]
    if not any(groups.values()):
        groups["URI"] = ["URI="]
    # Interleave the keys at random, keeping each key's own values in order.
    turns = [name for name, pairs in groups.items() for _ in pairs]
    pairs = [groups[name].pop(0) for name in draw(st.permutations(turns))]
    expected = XfccElement(
        by=tuple(value for value in many["By"] if value),
        hash=single["Hash"] or None,
        cert=single["Cert"] or None,
        chain=single["Chain"] or None,
        subject=single["Subject"] or None,
        uri=tuple(value for value in many["URI"] if value),
        dns=tuple(value for value in many["DNS"] if value),
    )
    return pairs, expected


@st.composite
def _header(draw: st.DrawFn) -> tuple[str, tuple[XfccElement, ...]]:
    elements = draw(st.lists(_element(), min_size=1, max_size=2))

    def joined(parts: list[str], separator: str) -> str:
        out = parts[0]
        for part in parts[1:]:
            out += draw(_SEPARATOR_SPACE) + separator + draw(_SEPARATOR_SPACE) + part
        return out

    text = joined([joined(pairs, ";") for pairs, _ in elements], ",")
    text = draw(_SEPARATOR_SPACE) + text + draw(_SEPARATOR_SPACE)
    return text, tuple(expected for _, expected in elements)


@settings(max_examples=200, deadline=None)
@given(_header())
def test_well_formed_headers_parse_back_to_their_values(
    case: tuple[str, tuple[XfccElement, ...]],
) -> None:
    header, expected = case
    assert parse_xfcc(header) == expected
