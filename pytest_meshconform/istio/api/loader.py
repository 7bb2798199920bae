"""The hardened YAML/JSON loader every policy document goes through.

Sources are YAML or JSON text (JSON is YAML). Duplicate keys in a mapping are an error, as they
are for ``kubectl``. YAML has no limits of its own, so it gets Kubernetes' and Python's, and
work stays linear in the input: before a document is constructed its node graph is walked as
go-yaml's decoder walks it (aliases and merge keys followed), and it is refused, as ``kubectl``
refuses it, with "contains excessive aliasing" once more than 99 % of over 1,000 decoded nodes
came through aliases (falling to 10 % between 400,000 and 4,000,000 nodes: go-yaml
``allowedAliasRatio``); an integer scalar longer than 4300 characters (Python's ``int()``
limit; YAML 1.1 base-60 integers would otherwise cost a big-integer multiplication per digit)
is refused, and so is a scalar tagged ``!!bool``, ``!!int``, ``!!float`` or ``!!timestamp``
that does not look like one.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any, Final

import yaml

from pytest_meshconform.istio.api.fields import PolicyError, shorten, show
from pytest_meshconform.userfiles import MAX_DEPTH, YAML_SCALAR_FORMS

__all__ = ["load_yaml"]

# YAML has no limits of its own; these are Kubernetes' and Python's (see _check_yaml_work).
_ALIAS_RATIO_RANGE_LOW: Final = 400_000
_ALIAS_RATIO_RANGE_HIGH: Final = 4_000_000
_MAX_INT_SCALAR: Final = 4300  # sys.int_info.default_max_str_digits
_YAML_INT_TAG: Final = "tag:yaml.org,2002:int"
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
else:  # libyaml's parser when PyYAML has it (about 15 times faster), else PyYAML's own
    _SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently.

    Only scanning, parsing and composing come from libyaml (``CSafeLoader``); resolving tags
    and constructing values are PyYAML's Python ``Resolver`` and ``SafeConstructor`` either
    way, so documents mean the same with or without it.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base constructor reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> list[object]:
    """Every document of ``text``; each node graph is checked before it is constructed."""
    documents: list[object] = []
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader checks the characters here
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            _check_yaml_work(node, len(documents) + 1)
            documents.append(loader.construct_document(node))
    except PolicyError:
        raise
    except yaml.YAMLError as error:
        raise PolicyError(f"not valid YAML: {shorten(' '.join(str(error).split()), 300)}") from None
    except RecursionError:
        raise PolicyError("not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError, LookupError, TypeError) as error:
        # PyYAML's constructors call int(), datetime() and dict lookups on the scalars
        raise PolicyError(
            f"not valid YAML: {type(error).__name__}: {shorten(str(error), 300)}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def _aliasing_allowed(decodes: int) -> float:
    """go-yaml's ``allowedAliasRatio`` (gopkg.in/yaml.v2 decode.go, which kubectl decodes
    with through sigs.k8s.io/yaml): the share of decoded nodes that may come from following
    aliases, 0.99 up to 400,000 nodes, falling to 0.10 at 4,000,000."""
    if decodes <= _ALIAS_RATIO_RANGE_LOW:
        return 0.99
    if decodes >= _ALIAS_RATIO_RANGE_HIGH:
        return 0.10
    spread = _ALIAS_RATIO_RANGE_HIGH - _ALIAS_RATIO_RANGE_LOW
    return 0.99 - 0.89 * (decodes - _ALIAS_RATIO_RANGE_LOW) / spread


def _check_yaml_work(root: yaml.Node, number: int) -> None:
    """Refuse a document whose aliases expand it beyond what Kubernetes decodes, or that holds
    an integer longer than ``_MAX_INT_SCALAR`` characters, before anything is constructed.

    Walks the document as go-yaml's decoder does, following every alias (and YAML merge key,
    which PyYAML copies), and stops as go-yaml stops: once more than 100 of more than 1,000
    decoded nodes came through aliases and their share exceeds :func:`_aliasing_allowed`.
    The walk therefore takes at most about 100 steps per node of the document, and no more
    than its own nodes plus about 400,000 for a big one.
    """
    decodes = aliased = 0
    seen: set[int] = set()
    # One iterator of children per open node (keys and values in document order): a long
    # list reached again through an alias costs one step per child visited, not its length.
    stack: list[tuple[Iterator[yaml.Node], bool]] = [(iter((root,)), False)]
    while stack:
        children, through_alias = stack[-1]
        node = next(children, None)
        if node is None:
            stack.pop()
            continue
        decodes += 1
        if id(node) in seen:
            through_alias = True  # the anchor was decoded before: this is an alias
        elif isinstance(node, yaml.CollectionNode) and len(stack) > MAX_DEPTH:
            raise PolicyError(  # first seen here: the stack is its own nesting
                f"document {number}: nested deeper than {MAX_DEPTH} levels at line"
                f" {node.start_mark.line + 1}"
            )
        seen.add(id(node))
        if through_alias:
            aliased += 1
            if aliased > 100 and decodes > 1000 and aliased / decodes > _aliasing_allowed(decodes):
                raise PolicyError(
                    f"document {number} contains excessive aliasing: after {decodes} nodes, "
                    f"{aliased} came from following YAML aliases, more than the "
                    f"{_aliasing_allowed(decodes):.0%} Kubernetes' YAML decoder (go-yaml) "
                    "allows; write the repeated parts out"
                )
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _YAML_INT_TAG and len(node.value) > _MAX_INT_SCALAR:
                raise PolicyError(
                    f"document {number}: an integer of more than {_MAX_INT_SCALAR} characters "
                    f"at line {node.start_mark.line + 1} (the limit of Python's int())"
                )
            form = YAML_SCALAR_FORMS.get(node.tag)
            if form is not None and not form.match(node.value):  # an explicit !!int x
                raise PolicyError(
                    f"document {number}: {show(node.value)} at line {node.start_mark.line + 1} "
                    f"is not a valid !!{node.tag.rpartition(':')[2]}"
                )
        elif isinstance(node, yaml.SequenceNode):
            stack.append((iter(node.value), through_alias))
        elif isinstance(node, yaml.MappingNode):
            stack.append((itertools.chain.from_iterable(node.value), through_alias))
