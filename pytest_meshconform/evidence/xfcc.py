"""Parse Envoy's ``x-forwarded-client-cert`` (XFCC) header.

XFCC is how the server side of a mesh learns who called it over mTLS: the sidecar that
terminated the connection writes ``By`` (its own URI SAN), ``Hash`` (SHA-256 of the peer's
certificate), ``Subject``, ``URI`` and ``DNS`` (the peer's SANs) and optionally ``Cert`` and
``Chain`` (the peer's PEM, URL-encoded). The suites read the header back from the workload to
prove that a request really arrived over mutual TLS, and from whom.

Grammar (Envoy's documented format, ``config/http/http_conn_man/headers``, checked against
``ConnectionManagerUtility::mutateXfccRequestHeader``), with the choices made where the
documentation is silent:

- Elements are separated by ``,`` and key/value pairs by ``;``, but only outside double quotes.
  A proxy appends one element per hop, so the last element is the nearest hop. Callers that
  receive the header several times join the field values with ``,`` first (RFC 9110 5.3).
- Keys are case-insensitive tokens. ``By``, ``URI`` and ``DNS`` may repeat, also within one
  element (Envoy writes one pair per SAN); ``Hash``, ``Cert``, ``Chain`` and ``Subject`` may
  not (a second one is an error: the parser will not pick one). Unknown keys are ignored, but
  must still be well formed.
- An empty value means absent: Envoy writes ``URI=`` when the peer has no URI SAN and
  ``Subject=""`` when the subject is empty.
- Any value may be double-quoted; the quotes are removed. Inside quotes only ``\\"`` and
  ``\\\\`` are XFCC escapes; any other backslash stays, so the ``\\,`` of a distinguished name
  such as ``O=Acme\\, Inc.`` belongs to the Subject. A value that is quoted only in part
  (``a"b"``, ``"a"b``) is an error. Outside quotes a backslash is an ordinary character.
- ``Subject`` is opaque: Envoy emits RFC 2253 (``CN=a,O=b``) and older builds the OpenSSL
  one-line form (``/C=US/CN=b``).
- ``Cert`` and ``Chain`` are percent-decoded to PEM text. Every ``%`` must start a ``%XX``
  escape and the result must be UTF-8; ``+`` is a plus sign, not a space. A value holding a
  lone surrogate (``"\\udcff"`` from a JSON escape) is not UTF-8 either.
- Whitespace (space, tab, CR, LF) around ``,`` and ``;`` and at either end of the header is
  tolerated: Envoy never writes it, proxies in between may. Whitespace around ``=`` is not: a
  key is a token, and a value does not start with whitespace.
- An empty or whitespace-only header is zero elements. An empty element (``a=1,,b=2``, or a
  leading or trailing comma) and an empty pair (``a=1;;b=2``, ``a=1;``) are errors.

Errors are :class:`XfccError`, whose message says what is wrong, in which element (counted
from 1) and at which character offset of the header (counted from 0), and quotes the
offending fragment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = ["XfccElement", "XfccError", "parse_xfcc"]

_WHITESPACE = " \t\r\n"
# RFC 9110 token characters: what a key may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SINGLE_VALUED = ("hash", "cert", "chain", "subject")
_PERCENT_ENCODED = {"cert": "Cert", "chain": "Chain"}  # lower-case key -> name in messages
_MESSAGE_FRAGMENT_LIMIT = 80


class XfccError(ValueError):
    """A header that does not follow the XFCC grammar; names the offending fragment."""

    def __init__(self, problem: str, *, fragment: str, position: int, element: int) -> None:
        shown = fragment
        if len(shown) > _MESSAGE_FRAGMENT_LIMIT:
            shown = shown[: _MESSAGE_FRAGMENT_LIMIT - 3] + "..."
        super().__init__(f"{problem} (element {element}, offset {position}): {shown!r}")
        self.problem = problem
        self.fragment = fragment
        self.position = position
        self.element = element


@dataclass(frozen=True, slots=True)
class XfccElement:
    """What one proxy hop recorded about the client certificate it saw."""

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()

    @property
    def spiffe_uri(self) -> str | None:
        """The client's SPIFFE ID: its first ``spiffe://`` URI SAN, if any."""
        return _first_spiffe(self.uri)

    @property
    def by_spiffe_uri(self) -> str | None:
        """The SPIFFE ID of the proxy that wrote this element (the server side), if any."""
        return _first_spiffe(self.by)


def parse_xfcc(header: str) -> tuple[XfccElement, ...]:
    """Parse an XFCC header value into its elements, first hop first.

    Raises :class:`XfccError` for anything outside the grammar in the module docstring, and
    for a ``header`` that is not a ``str``.
    """
    if not isinstance(header, str):
        raise XfccError(
            f"an XFCC header must be a str, got {type(header).__name__} (decode the field "
            "value first)",
            fragment="",
            position=0,
            element=0,
        )
    if not header.strip(_WHITESPACE):
        return ()
    return tuple(_build_element(pairs) for pairs in _split_elements(header))


@dataclass(frozen=True, slots=True)
class _Fragment:
    """A piece of the header and where it starts, kept for error messages."""

    text: str
    position: int
    element: int


def _split_elements(header: str) -> list[list[_Fragment]]:
    """Split on ``,`` and ``;`` outside quotes; quotes must be balanced."""
    elements: list[list[_Fragment]] = []
    pairs: list[_Fragment] = []
    start = 0
    quote_start = -1
    index = 0
    while index < len(header):
        char = header[index]
        if quote_start >= 0:
            if char == "\\":
                index += 2  # whatever follows a backslash cannot close the quote
                continue
            if char == '"':
                quote_start = -1
        elif char == '"':
            quote_start = index
        elif char in ",;":
            pairs.append(_Fragment(header[start:index], start, len(elements) + 1))
            if char == ",":
                elements.append(pairs)
                pairs = []
            start = index + 1
        index += 1
    if quote_start >= 0:
        unterminated = _Fragment(header[quote_start:], quote_start, len(elements) + 1)
        raise _error("unterminated quote", unterminated)
    pairs.append(_Fragment(header[start:], start, len(elements) + 1))
    elements.append(pairs)
    return elements


def _build_element(pairs: list[_Fragment]) -> XfccElement:
    """One element from its ``key=value`` fragments (each knows its element number)."""
    if len(pairs) == 1 and not pairs[0].text.strip(_WHITESPACE):
        raise _error("empty element", pairs[0])
    single: dict[str, str | None] = {}
    multi: dict[str, list[str]] = {"by": [], "uri": [], "dns": []}
    for raw_pair in pairs:
        pair = _stripped(raw_pair)
        key, value = _parse_pair(pair)
        name = key.lower()
        if name in multi:
            if value:
                multi[name].append(value)
        elif name in _SINGLE_VALUED:
            if name in single:
                raise _error(f"repeated key {key!r}", pair)
            if value and name in _PERCENT_ENCODED:
                value = _percent_decode(value, _PERCENT_ENCODED[name], pair)
            single[name] = value or None
    return XfccElement(
        by=tuple(multi["by"]),
        hash=single.get("hash"),
        cert=single.get("cert"),
        chain=single.get("chain"),
        subject=single.get("subject"),
        uri=tuple(multi["uri"]),
        dns=tuple(multi["dns"]),
    )


def _stripped(fragment: _Fragment) -> _Fragment:
    """The fragment without the whitespace tolerated around separators."""
    leading = len(fragment.text) - len(fragment.text.lstrip(_WHITESPACE))
    return _Fragment(
        fragment.text.strip(_WHITESPACE), fragment.position + leading, fragment.element
    )


def _parse_pair(pair: _Fragment) -> tuple[str, str]:
    """Return ``(key, unquoted value)`` for one stripped ``key=value`` fragment."""
    if not pair.text:
        raise _error("empty pair", pair)
    key, equals, raw_value = pair.text.partition("=")
    if not equals:
        raise _error("pair without '='", pair)
    if not key:
        raise _error("empty key", pair)
    if not _TOKEN.fullmatch(key):
        raise _error(f"invalid key {key!r}", pair)
    if raw_value and raw_value[0] in _WHITESPACE:
        raise _error("whitespace after '='", pair)
    if raw_value.startswith('"'):
        value, end = _unquote(raw_value)
        if end != len(raw_value):
            raise _error("value quoted only in part", pair)
        return key, value
    if '"' in raw_value:
        raise _error("value quoted only in part", pair)
    return key, raw_value


def _unquote(quoted: str) -> tuple[str, int]:
    """Undo XFCC quoting of ``quoted`` (which starts with ``"``); return the value and the
    index just past the closing quote. The splitter has already checked that it exists."""
    out: list[str] = []
    index = 1
    while quoted[index] != '"':
        if quoted[index] == "\\":
            escaped = quoted[index + 1]
            # Only \" and \\ are XFCC escapes; any other (a DN's \, say) stays as written.
            out.append(escaped if escaped in '"\\' else quoted[index : index + 2])
            index += 2
        else:
            out.append(quoted[index])
            index += 1
    return "".join(out), index + 1


def _percent_decode(value: str, key: str, pair: _Fragment) -> str:
    """URL-decode a ``Cert``/``Chain`` value strictly: a broken escape is an error, not text."""
    bad = _BAD_PERCENT_ESCAPE.search(value)
    if bad is not None:
        escape = value[bad.start() : bad.start() + 3]
        raise _error(f"{key}: {escape!r} is not a percent-escape", pair)
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, as a JSON escape can deliver one
        problem = f"{key}: not UTF-8 text (lone surrogate at character {exc.start})"
        raise _error(problem, pair) from exc
    try:
        return unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"{key}: percent-decoded bytes are not UTF-8 ({exc.reason} at byte {exc.start})"
        raise _error(problem, pair) from exc


def _error(problem: str, fragment: _Fragment) -> XfccError:
    return XfccError(
        problem, fragment=fragment.text, position=fragment.position, element=fragment.element
    )


def _first_spiffe(uris: tuple[str, ...]) -> str | None:
    return next((uri for uri in uris if uri.startswith("spiffe://")), None)
