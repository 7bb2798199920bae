"""Files a user hands meshconform, read one way (pure: the standard library and PyYAML).

Every file the project reads from a user goes through :func:`read_text`: the topology
(``--mesh-topology``, also for ``meshconform audit``), policy files (``meshconform audit
--policy``, ``apply_policy(path)``), reports and baselines (``meshconform diff``,
``--mesh-baseline``). A file is

- a regular file: a FIFO, a device (``/dev/zero``), a socket or a directory is refused from its
  ``stat``, before it is opened (and it is opened non-blocking, so a path swapped for a FIFO in
  between cannot block either);
- at most a size cap per kind of file (:data:`SIZE_LIMITS`), checked before reading and while
  reading (a file that grows is not read past the cap); ``MESHCONFORM_MAX_INPUT_BYTES``
  (:data:`SIZE_LIMIT_VARIABLE`: bytes, or with a ``K``/``M``/``G`` suffix, binary) sets the cap
  for every kind;
- UTF-8, decoded strictly: the error names the byte offset and line of the first bad byte.

The parsers here bound the nesting depth (:data:`MAX_DEPTH`) before anything recursive runs,
and do work linear in the text: :func:`compose_yaml` composes YAML nodes iteratively from the
event stream (libyaml's parser when PyYAML has it), refusing aliases that expand a document the
way Kubernetes' decoder (go-yaml) refuses them; :func:`load_json` checks the depth in one pass
first. Every error is an :class:`InputFileError`: one line, starting with the file's name.
See docs/hostile-input.md.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
from collections.abc import Mapping
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml

__all__ = [
    "MAX_DEPTH",
    "SIZE_LIMITS",
    "SIZE_LIMIT_VARIABLE",
    "YAML_SCALAR_FORMS",
    "InputFileError",
    "compose_yaml",
    "load_json",
    "load_yaml",
    "read_text",
    "size_limit",
]

MiB: Final = 1 << 20

# The caps, by what the file is. A topology runs at most 200 pods (a few KiB each at most); a
# Kubernetes object is at most about 1.5 MiB (etcd's request limit) and a policy file may hold a
# few; a report grows with the suite (about 2 KiB per test with its observations).
SIZE_LIMITS: Final[Mapping[str, int]] = {
    "topology file": 1 * MiB,
    "policy file": 8 * MiB,
    "report": 64 * MiB,
    "exceptions file": 1 * MiB,  # meshconform audit --accept: accepted bypasses, a line each
}
SIZE_LIMIT_VARIABLE: Final = "MESHCONFORM_MAX_INPUT_BYTES"

# Deeper than any topology, Istio resource or report (about 10 levels), far below what Python's
# recursion (the constructors: a few frames per level, 1000 in all) and libyaml (1000) allow.
MAX_DEPTH: Final = 100

# The forms PyYAML's resolver gives !!bool, !!int, !!float and !!timestamp. Its constructors
# trust them: an explicit `!!timestamp apiVersion` breaks construct_yaml_timestamp (AttributeError
# on a failed match), so explicit tags are checked against them before anything is constructed.
YAML_SCALAR_FORMS: Final = {
    tag: pattern
    for resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.values()
    for tag, pattern in resolvers
    if tag.rpartition(":")[2] in ("bool", "int", "float", "timestamp")
}

_CHUNK: Final = 1 << 20
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE: Final = re.compile(r"\s*(\d{1,15})\s*([KMG]?)(?:i?B)?\s*", re.IGNORECASE)
_FILE_TYPES: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(ValueError):
    """A user's file that cannot be read or parsed; one line, starting with the file's name."""


def size_limit(kind: str, environ: Mapping[str, str] | None = None) -> int:
    """The size cap for a kind of file: ``MESHCONFORM_MAX_INPUT_BYTES`` when set, else the
    kind's default (:data:`SIZE_LIMITS`)."""
    value = (os.environ if environ is None else environ).get(SIZE_LIMIT_VARIABLE, "").strip()
    if not value:
        return SIZE_LIMITS[kind]
    match = _SIZE.fullmatch(value)
    if match is None or int(match[1]) == 0:
        raise InputFileError(
            f"{SIZE_LIMIT_VARIABLE}={value!r}: expected a positive number of bytes, optionally"
            " with K, M or G (e.g. 16M)"
        )
    return int(match[1]) * _UNITS[match[2].upper()]


def read_text(path: Path | str, kind: str, *, limit: int | None = None) -> str:
    """The text of a user's file of ``kind`` (a key of :data:`SIZE_LIMITS`, used in messages).

    Raises :class:`InputFileError` ("PATH: problem") when it is missing, unreadable, not a
    regular file, over the cap (``limit``, else :func:`size_limit`) or not UTF-8.
    """
    cap = size_limit(kind) if limit is None else limit
    name = str(path)
    try:
        before = os.stat(path)
        _require_regular(before.st_mode, name, kind)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputFileError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read the {kind}: {_reason(exc)}") from None
    try:
        opened = os.fstat(fd)
        _require_regular(opened.st_mode, name, kind)  # swapped since the stat: refused too
        if opened.st_size > cap:
            raise _too_big(name, kind, opened.st_size, cap)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(_CHUNK, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise _too_big(name, kind, size, cap, grew=True)
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read the {kind}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputFileError(
            f"{name}: the {kind} is not UTF-8: byte {exc.start} (line {line}) is"
            f" 0x{data[exc.start]:02x} ({exc.reason})"
        ) from None


def _require_regular(mode: int, name: str, kind: str) -> None:
    if stat.S_ISREG(mode):
        return
    what = next((label for test, label in _FILE_TYPES if test(mode)), "not a regular file")
    raise InputFileError(f"{name}: cannot read the {kind}: it is {what}, not a regular file")


def _too_big(name: str, kind: str, size: int, cap: int, *, grew: bool = False) -> InputFileError:
    amount = f"grew past {cap} bytes while read" if grew else f"is {size} bytes"
    return InputFileError(
        f"{name}: the {kind} {amount}, more than the limit of {cap} bytes for a {kind}"
        f" (set {SIZE_LIMIT_VARIABLE}, e.g. {SIZE_LIMIT_VARIABLE}=256M, to raise it)"
    )


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


# --- YAML ------------------------------------------------------------------------------------

if TYPE_CHECKING:
    _Loader = yaml.SafeLoader
else:  # libyaml's parser when PyYAML has it (about 15 times faster), else PyYAML's own
    _Loader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader

_ALIAS_RATIO_RANGE_LOW: Final = 400_000
_ALIAS_RATIO_RANGE_HIGH: Final = 4_000_000


def _aliasing_allowed(decodes: int) -> float:
    """go-yaml's ``allowedAliasRatio`` (gopkg.in/yaml.v2 decode.go, what kubectl decodes
    with): the share of decoded nodes that may come from following aliases, 0.99 up to
    400,000 nodes, falling to 0.10 at 4,000,000."""
    if decodes <= _ALIAS_RATIO_RANGE_LOW:
        return 0.99
    if decodes >= _ALIAS_RATIO_RANGE_HIGH:
        return 0.10
    spread = _ALIAS_RATIO_RANGE_HIGH - _ALIAS_RATIO_RANGE_LOW
    return 0.99 - 0.89 * (decodes - _ALIAS_RATIO_RANGE_LOW) / spread


class _Open:
    """A collection being composed: its node, its children so far, its size with aliases
    expanded (go-yaml counts a node each time it is decoded)."""

    __slots__ = ("children", "node", "size")

    def __init__(self, node: yaml.CollectionNode) -> None:
        self.node = node
        self.children: list[yaml.Node] = []
        self.size = 1


def compose_yaml(text: str, source: str, *, line_first: bool = True) -> list[yaml.Node]:
    """The node graph of every document of ``text`` (PyYAML's ``compose_all``, iteratively).

    Refuses, with an :class:`InputFileError` naming ``source`` and the line, YAML that is not
    valid, nested deeper than :data:`MAX_DEPTH`, or whose aliases expand a document beyond what
    Kubernetes' decoder allows (go-yaml: more than 100 of more than 1,000 decoded nodes came
    through aliases and their share exceeds 99 %, falling to 10 % for huge documents).
    Messages read ``source:LINE: problem``, or ``source: problem (line LINE)`` when not
    ``line_first``.
    """
    at = _Located(source, line_first)
    loader = _Loader(text)
    documents: list[yaml.Node] = []
    # The graph is built of new objects that all stay alive: the cyclic garbage collector
    # would walk them again and again as they pile up (half the time of a big file) and could
    # free none of them. It is paused while composing, as it was before, if it was on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _compose_into(loader, at, documents)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if problem == "exceeded maximum nesting depth":  # libyaml's own limit (1000)
            problem = (
                f"nested deeper than {MAX_DEPTH} levels (lists and mappings inside each other)"
            )
        else:
            problem = f"not valid YAML: {problem[:300]}"
        line = mark.line + 1 if mark is not None else None
        raise at(line, problem) from None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    return documents


class _Located:
    """Errors naming the file and a line, in the caller's style."""

    __slots__ = ("line_first", "source")

    def __init__(self, source: str, line_first: bool) -> None:
        self.source = source
        self.line_first = line_first

    def __call__(self, line: int | None, problem: str) -> InputFileError:
        if line is None:
            return InputFileError(f"{self.source}: {problem}")
        if self.line_first:
            return InputFileError(f"{self.source}:{line}: {problem}")
        return InputFileError(f"{self.source}: {problem} (line {line})")


def _compose_into(loader: Any, at: _Located, documents: list[yaml.Node]) -> None:
    anchors: dict[str, yaml.Node] = {}
    sizes: dict[int, int] = {}  # id(node) -> its size with aliases expanded
    resolved: dict[tuple[str, Any], str] = {}  # short plain scalars repeat (keys): resolve once
    stack: list[_Open] = []
    decodes = aliased = 0  # this document's nodes with aliases expanded, and those via aliases
    root: yaml.Node | None = None
    while True:
        event: Any = loader.get_event()
        # Dispatched on its exact class (the parser makes no subclasses), most frequent first.
        cls = type(event)
        node: yaml.Node
        if cls is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                value = event.value
                key = (value, event.implicit)
                tag = resolved.get(key) if len(value) < 64 else None
                if tag is None:
                    tag = loader.resolve(yaml.ScalarNode, value, event.implicit)
                    if len(value) < 64:
                        resolved[key] = tag
            elif (form := YAML_SCALAR_FORMS.get(tag)) is not None and not form.match(event.value):
                raise at(
                    event.start_mark.line + 1,
                    f"not valid YAML: {event.value[:60]!r} is not a valid"
                    f" !!{tag.rpartition(':')[2]}",
                )
            node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            size = 1
            decodes += 1
            if event.anchor is not None:
                anchors[event.anchor] = node
        elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
            if len(stack) >= MAX_DEPTH:
                raise at(
                    event.start_mark.line + 1,
                    f"nested deeper than {MAX_DEPTH} levels (lists and mappings inside each other)",
                )
            kind: type[yaml.CollectionNode] = (
                yaml.SequenceNode if cls is yaml.SequenceStartEvent else yaml.MappingNode
            )
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(kind, None, event.implicit)
            opened = _Open(kind(tag, [], event.start_mark, None, flow_style=event.flow_style))
            if event.anchor is not None:
                anchors[event.anchor] = opened.node
            stack.append(opened)
            continue
        elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
            done = stack.pop()
            node, size = done.node, done.size
            node.end_mark = event.end_mark
            if cls is yaml.MappingEndEvent:
                node.value = list(zip(done.children[0::2], done.children[1::2], strict=True))
            else:
                node.value = done.children
            sizes[id(node)] = size
            decodes += 1
        elif cls is yaml.AliasEvent:
            found = anchors.get(event.anchor)
            if found is None:
                raise at(
                    event.start_mark.line + 1,
                    f"not valid YAML: found undefined alias {event.anchor[:60]!r}",
                )
            node = found
            size = sizes.get(id(node), 1)  # an alias to a collection still open: itself once
            decodes += size
            aliased += size
            if aliased > 100 and decodes > 1000 and aliased / decodes > _aliasing_allowed(decodes):
                raise at(
                    event.start_mark.line + 1,
                    f"excessive aliasing: after {decodes} nodes, {aliased} came from following"
                    f" YAML aliases, more than the {_aliasing_allowed(decodes):.0%} Kubernetes'"
                    " YAML decoder (go-yaml) allows; write the repeated parts out",
                )
        elif cls is yaml.DocumentStartEvent:
            anchors.clear()
            sizes.clear()
            decodes = aliased = 0
            root = None
            continue
        elif cls is yaml.DocumentEndEvent:
            if root is not None:
                documents.append(root)
            continue
        elif event is None or cls is yaml.StreamEndEvent:
            return
        else:  # StreamStartEvent
            continue
        if stack:
            stack[-1].children.append(node)
            stack[-1].size += size
        else:
            root = node


def load_yaml(text: str, source: str) -> object:
    """The one YAML document of ``text`` as Python data (None when empty), built like
    ``yaml.safe_load`` from :func:`compose_yaml`'s nodes."""
    documents = compose_yaml(text, source, line_first=False)
    if len(documents) > 1:
        line = documents[1].start_mark.line + 1
        raise InputFileError(f"{source}: expected one YAML document, found another (line {line})")
    if not documents:
        return None
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_document(documents[0])
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise InputFileError(f"{source}: not valid YAML: {problem[:300]}") from None
    except (ValueError, OverflowError, LookupError, TypeError) as exc:
        # PyYAML's constructors call int(), datetime() and dict lookups on the scalars
        raise InputFileError(
            f"{source}: not valid YAML: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        constructor.dispose()


# --- JSON ------------------------------------------------------------------------------------

# A JSON string, or one left open at the end of the text (so an unclosed one is not rescanned
# from every later quote); possessive, so the engine keeps no backtracking state per escape.
_JSON_STRING: Final = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_DEPTH_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, outside strings (one pass)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets), initial=0))


def load_json(text: str, source: str) -> object:
    """``json.loads(text)``, its nesting checked first; :class:`InputFileError` naming
    ``source`` (and line and column for a syntax error)."""
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise InputFileError(
            f"{source}: nested deeper than {MAX_DEPTH} levels (arrays and objects inside each"
            f" other: {depth})"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{source}: not valid JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer beyond int()'s 4300 digits
        raise InputFileError(f"{source}: not valid JSON: {str(exc)[:300]}") from None
