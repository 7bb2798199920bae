"""Reading a topology file's YAML (pure): each field checked as it is read, and one
`TopologyError` naming the file, the line and the field (docs/topology.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import yaml

__all__ = ["TopologyError", "TopologyReader", "describe_node"]

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_VALUE: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_BOOLEANS: Final[dict[str, bool]] = yaml.constructor.SafeConstructor.bool_values


class TopologyError(ValueError):
    """A topology file the local mesh cannot run; the message names file, line and field."""


@dataclass(frozen=True, slots=True)
class TopologyReader:
    """Reads a topology file's YAML nodes, each value checked, each error naming the file, the
    line and the field."""

    source: str

    def error(self, node: yaml.Node, field: str, problem: str) -> TopologyError:
        return TopologyError(f"{self.source}:{node.start_mark.line + 1}: {field}: {problem}")

    def mapping(
        self, node: yaml.Node, field: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field, f"expected a mapping, got {describe_node(node)}")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key not in allowed:
                raise self.error(
                    key_node,
                    f"{field}.{key}",
                    f"unknown field; known fields: {', '.join(allowed)}",
                )
            if key in result:
                raise self.error(key_node, f"{field}.{key}", "given twice")
            result[key] = value_node
        for key in required:
            if key not in result:
                raise self.error(node, f"{field}.{key}", "required field missing")
        return result

    def sequence(self, node: yaml.Node, field: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, field, f"expected a list, got {describe_node(node)}")
        return list(node.value)

    def string(self, node: yaml.Node, field: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(node, field, f"expected a string, got {describe_node(node)}")
        return str(node.value)

    def name(self, node: yaml.Node, field: str) -> str:
        value = self.string(node, field)
        if not _DNS_LABEL.fullmatch(value):
            raise self.error(
                node,
                field,
                f"{value!r} is not a DNS label (lower-case letters, digits and '-', at most 63)",
            )
        return value

    def boolean(self, node: yaml.Node, field: str) -> bool:
        value = (
            _BOOLEANS.get(str(node.value).lower()) if isinstance(node, yaml.ScalarNode) else None
        )
        if node.tag != "tag:yaml.org,2002:bool" or value is None:
            raise self.error(node, field, f"expected true or false, got {describe_node(node)}")
        return value  # PyYAML's own table (not a YAML round trip per value: that cost 0.1 ms)

    def port(self, node: yaml.Node, field: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.error(node, field, f"expected a port number, got {describe_node(node)}")
        value = int(node.value)
        if not 1 <= value <= 65535:
            raise self.error(node, field, f"port {value} is not in 1..65535")
        return value

    def labels(self, node: yaml.Node, field: str) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, field, f"expected a mapping, got {describe_node(node)}")
        result: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, f"{field} key")
            value = self.string(value_node, f"{field}.{key}")
            if not _LABEL_VALUE.fullmatch(value):
                raise self.error(value_node, f"{field}.{key}", f"{value!r} is not a label value")
            result[key] = value
        return result


def describe_node(node: yaml.Node) -> str:
    """How an error names what it found instead."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return f"{node.value!r}"
