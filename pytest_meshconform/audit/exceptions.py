"""Accepted exceptions: the ports around the mesh a team has decided to live with, as data.

A file (``meshconform audit --accept FILE``) lists them, one entry per pod port::

    exceptions:
      - namespace: payments
        workload: ledger          # the workload (topology workload, or the pod's owner)
        port: 5432                # the container port the bypass is on
        reason: replication from the old data centre, OPS-1234
        expires: 2027-03-31       # optional: after this day the exception no longer counts

The audit exits 0 only when every bypass it finds is accepted and unexpired; each report lists
the accepted ones apart. An entry that matched no bypass is reported as stale (the exception may
have been fixed: the entry can go). The file is read as every user's file is
(:mod:`pytest_meshconform.userfiles`: a regular file, a size cap, strict UTF-8, bounded
nesting); each error is one line, ``FILE:LINE: field: problem``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml

from pytest_meshconform.userfiles import InputFileError, compose_yaml, read_text

__all__ = [
    "AcceptedException",
    "AcceptedExceptions",
    "ExceptionStatus",
    "ExceptionsFileError",
    "load_exceptions",
    "parse_exceptions",
]

_FIELDS: Final = ("namespace", "workload", "port", "reason", "expires")
_REQUIRED: Final = ("namespace", "workload", "port", "reason")
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a DNS subdomain
_DAY: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MAX_ENTRIES: Final = 10_000


class ExceptionsFileError(ValueError):
    """An accepted-exceptions file that cannot be used; one line naming the file and line."""


class ExceptionStatus(StrEnum):
    """What the file says of one bypass."""

    ACCEPTED = "accepted"
    EXPIRED = "expired"
    NOT_ACCEPTED = "not accepted"


@dataclass(frozen=True, slots=True)
class AcceptedException:
    """One accepted bypass: a pod port, why, until when."""

    namespace: str
    workload: str
    port: int
    reason: str
    expires: date | None = None
    line: int = 0  # where the file gives it

    def expired(self, today: date) -> bool:
        """True the day after ``expires`` (the exception counts through its last day)."""
        return self.expires is not None and today > self.expires

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.namespace, self.workload, self.port)

    def describe(self) -> str:
        until = f", until {self.expires.isoformat()}" if self.expires else ""
        return f"{self.namespace}/{self.workload} port {self.port}: {self.reason}{until}"


@dataclass(frozen=True, slots=True)
class AcceptedExceptions:
    """The entries of one file (none: nothing is accepted)."""

    entries: tuple[AcceptedException, ...] = ()
    source: str = ""

    def find(self, namespace: str, workload: str, port: int) -> AcceptedException | None:
        for entry in self.entries:
            if entry.key == (namespace, workload, port):
                return entry
        return None

    def judge(
        self, namespace: str, workload: str, port: int, today: date
    ) -> tuple[ExceptionStatus, AcceptedException | None]:
        """Whether the bypass on ``workload``'s ``port`` is accepted, today."""
        entry = self.find(namespace, workload, port)
        if entry is None:
            return ExceptionStatus.NOT_ACCEPTED, None
        if entry.expired(today):
            return ExceptionStatus.EXPIRED, entry
        return ExceptionStatus.ACCEPTED, entry

    def stale(self, bypasses: Iterable[tuple[str, str, int]]) -> tuple[AcceptedException, ...]:
        """The entries that match none of the bypasses found (fixed, or a typo)."""
        found = set(bypasses)
        return tuple(e for e in self.entries if e.key not in found)


def _error(source: str, node: yaml.Node, field: str, problem: str) -> ExceptionsFileError:
    return ExceptionsFileError(f"{source}:{node.start_mark.line + 1}: {field}: {problem}")


def _scalar(source: str, node: yaml.Node, field: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        raise _error(source, node, field, "expected a value")
    return str(node.value)


def _entry(source: str, node: yaml.Node, field: str) -> AcceptedException:
    if not isinstance(node, yaml.MappingNode):
        raise _error(source, node, field, "expected a mapping (namespace, workload, port, ...)")
    values: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = _scalar(source, key_node, f"{field} key")
        if key not in _FIELDS:
            raise _error(
                source, key_node, f"{field}.{key}", f"unknown field; known: {', '.join(_FIELDS)}"
            )
        if key in values:
            raise _error(source, key_node, f"{field}.{key}", "given twice")
        values[key] = value_node
    for key in _REQUIRED:
        if key not in values:
            raise _error(source, node, f"{field}.{key}", "required field missing")
    names = {}
    for key in ("namespace", "workload"):
        text = _scalar(source, values[key], f"{field}.{key}")
        if not _NAME.fullmatch(text):
            raise _error(
                source, values[key], f"{field}.{key}", f"{text!r} is not a Kubernetes name"
            )
        names[key] = text
    port_node = values["port"]
    port_text = _scalar(source, port_node, f"{field}.port")
    if port_node.tag != "tag:yaml.org,2002:int" or not 1 <= int(port_text) <= 65535:
        raise _error(
            source, port_node, f"{field}.port", f"expected a port (1-65535), got {port_text!r}"
        )
    reason = _scalar(source, values["reason"], f"{field}.reason").strip()
    if not reason:
        raise _error(
            source, values["reason"], f"{field}.reason", "say why the exception is accepted"
        )
    expires = None
    if "expires" in values:
        text = _scalar(source, values["expires"], f"{field}.expires")
        match = _DAY.fullmatch(text)
        try:
            expires = date(int(match[1]), int(match[2]), int(match[3])) if match else None
        except ValueError:
            expires = None
        if expires is None:
            raise _error(
                source,
                values["expires"],
                f"{field}.expires",
                f"expected a day as YYYY-MM-DD, got {text!r}",
            )
    return AcceptedException(
        names["namespace"],
        names["workload"],
        int(port_text),
        reason,
        expires,
        node.start_mark.line + 1,
    )


def parse_exceptions(text: str, source: str = "<exceptions>") -> AcceptedExceptions:
    """The accepted exceptions a YAML text lists (an empty file or ``exceptions: []``: none)."""
    try:
        documents = compose_yaml(text, source)
    except InputFileError as exc:
        raise ExceptionsFileError(str(exc)) from None
    if not documents:
        return AcceptedExceptions((), source)
    if len(documents) > 1:
        raise _error(source, documents[1], "document", "one document expected")
    root = documents[0]
    if not isinstance(root, yaml.MappingNode):
        raise _error(source, root, "top level", "expected a mapping with 'exceptions'")
    entries: list[AcceptedException] = []
    for key_node, value_node in root.value:
        key = _scalar(source, key_node, "top level key")
        if key != "exceptions":
            raise _error(source, key_node, key, "unknown field; the file holds 'exceptions'")
        if value_node.tag == "tag:yaml.org,2002:null":
            continue
        if not isinstance(value_node, yaml.SequenceNode):
            raise _error(source, value_node, "exceptions", "expected a list")
        if len(value_node.value) > _MAX_ENTRIES:
            raise _error(source, value_node, "exceptions", f"more than {_MAX_ENTRIES} entries")
        for index, item in enumerate(value_node.value):
            entry = _entry(source, item, f"exceptions[{index}]")
            first = next((e for e in entries if e.key == entry.key), None)
            if first is not None:
                raise _error(
                    source,
                    item,
                    f"exceptions[{index}]",
                    f"{entry.namespace}/{entry.workload} port {entry.port} is already accepted"
                    f" at line {first.line}",
                )
            entries.append(entry)
    return AcceptedExceptions(tuple(entries), source)


def load_exceptions(path: Path | str) -> AcceptedExceptions:
    """Read and parse an accepted-exceptions file (``ExceptionsFileError``, one line)."""
    try:
        text = read_text(path, "exceptions file")
    except InputFileError as exc:
        raise ExceptionsFileError(str(exc)) from None
    return parse_exceptions(text, str(path))
