"""Protobuf's JSON mapping as Envoy's admin API and istioctl print it (pure).

Envoy's admin endpoints write snake_case field names, istioctl's protojson writes camelCase
(``dynamic_active_secrets`` / ``dynamicActiveSecrets``); a field may be spelt either way, not
both. Timestamps are RFC 3339 with up to nanoseconds (digits past the microsecond are dropped;
an instant outside years 1..9999 UTC is an error: protobuf's Timestamp is defined on
0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z only, google/protobuf/timestamp.proto).
``bytes`` are base64, standard or URL-safe alphabet, padding optional. Messages quote at most
a few items of the offending value. Errors are :class:`ProtoJsonError`, naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import reprlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "ProtoJsonError",
    "decode_base64",
    "field",
    "fragment",
    "join",
    "json_list",
    "json_object",
    "load_json_object",
    "optional_string",
    "parse_timestamp",
]

_FRAGMENT_LIMIT: Final = 80
_TIMESTAMP: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# reprlib with small limits: a message quotes a few items of a list, never walks all of it.
_SHORT_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxtuple = _SHORT_REPR.maxlist = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _FRAGMENT_LIMIT


class ProtoJsonError(ValueError):
    """JSON that does not have the shape its protobuf message gives it; names the field."""


def fragment(value: object) -> str:
    """The offending input, quoted and cut short enough for an error message."""
    if isinstance(value, str | bytes):  # the repr of all of it would cost as much as the input
        text = repr(value[:_FRAGMENT_LIMIT])
    else:
        text = _SHORT_REPR.repr(value)
    return text if len(text) <= _FRAGMENT_LIMIT else text[: _FRAGMENT_LIMIT - 3] + "..."


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.capitalize() for word in rest)


def field(obj: Mapping[str, Any], snake: str, where: str) -> Any:
    """``obj[snake]`` or its protojson camelCase twin; both at once is refused."""
    camel = _camel(snake)
    if camel != snake and snake in obj and camel in obj:
        raise ProtoJsonError(f"{where}: both {snake!r} and {camel!r} are present")
    return obj.get(snake, obj.get(camel))


def join(where: str, key: str) -> str:
    """The path of ``key`` inside ``where`` (``where`` empty: the top level)."""
    return f"{where}.{key}" if where else key


def json_object(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` when it is a JSON object; the error names ``where`` and the type found."""
    if not isinstance(value, Mapping):
        raise ProtoJsonError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def json_list(value: Any, where: str) -> list[Any]:
    """``value`` when it is a JSON list (or a tuple, for an already loaded document)."""
    if not isinstance(value, list | tuple):
        raise ProtoJsonError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def optional_string(value: Any, where: str) -> str | None:
    """``value`` when it is a string or absent (None)."""
    if value is None or isinstance(value, str):
        return value
    raise ProtoJsonError(f"{where}: expected a string, got {type(value).__name__}")


def load_json_object(data: Any, what: str) -> Mapping[str, Any]:
    """A JSON object from bytes or text (or one already loaded); ``what`` names the document
    in errors."""
    if isinstance(data, Mapping):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, str):
        raise ProtoJsonError(f"{what} must be bytes, str or a dict, got {type(data).__name__}")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtoJsonError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ProtoJsonError(f"{what} must be a JSON object, got {type(document).__name__}")
    return document


def parse_timestamp(value: Any, where: str) -> datetime:
    """A protobuf JSON Timestamp (RFC 3339), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise ProtoJsonError(f"{where}: expected an RFC 3339 timestamp, got {type(value).__name__}")
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        raise ProtoJsonError(f"{where}: not an RFC 3339 timestamp: {fragment(value)}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, UTC
        )
    except ValueError as exc:
        raise ProtoJsonError(f"{where}: impossible date {fragment(value)} ({exc})") from exc
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ProtoJsonError(f"{where}: bad UTC offset in {fragment(value)}")
        try:
            moment -= sign * timedelta(hours=hours, minutes=minutes)
        except OverflowError as exc:
            raise ProtoJsonError(
                f"{where}: {fragment(value)} is in UTC outside the range of years 1..9999 "
                "(protobuf Timestamp's range)"
            ) from exc
    return moment


def decode_base64(value: Any, where: str) -> bytes:
    """Protobuf JSON ``bytes``: standard or URL-safe base64, padded or not."""
    if not isinstance(value, str):
        raise ProtoJsonError(f"{where}: expected a base64 string, got {type(value).__name__}")
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtoJsonError(f"{where}: not valid base64 ({exc})") from exc
