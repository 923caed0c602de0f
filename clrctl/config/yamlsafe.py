"""The one YAML loader of clrctl: safe, bounded, and strict about duplicate keys.

``yaml.safe_load`` builds aliases as shared references, so a 369-byte file of nested aliases
("billion laughs") loads instantly and then exhausts memory in whatever walks it (pydantic,
deepcopy, an error message echoing it); 500 nested lists overflow the composer's recursion.
:func:`load` refuses a document whose tree, aliases expanded, has more than
:data:`MAX_NODES` nodes or is deeper than :data:`MAX_DEPTH`, and a mapping that repeats a key
(YAML says keys are unique; PyYAML silently keeps the last). Each refusal is a
:class:`yaml.YAMLError` with ``problem`` and ``problem_mark``, so callers report it like any
other YAML error. Torch-free.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Far above any real config (the largest bundled one has ~100 nodes), far below what hurts.
MAX_NODES = 100_000
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


class BoundedYAMLError(yaml.YAMLError):
    """A document refused by :class:`BoundedLoader`: ``problem`` says why, at ``problem_mark``."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark

    def __str__(self) -> str:
        where = f" at line {self.problem_mark.line + 1}" if self.problem_mark is not None else ""
        return f"{self.problem}{where}"


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that bounds depth while composing and the expanded size before
    constructing anything, and refuses duplicate mapping keys."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Node:
        # Composing recurses once per level: stop before Python's recursion limit does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise BoundedYAMLError(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        _check_unique_keys(node)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: Node) -> None:
    """Walk the tree as its consumers will, every alias expanded, and stop at the first node
    past :data:`MAX_NODES` or :data:`MAX_DEPTH` (so the walk itself is bounded: a cycle too)."""
    stack: list[tuple[Node, int]] = [(root, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise BoundedYAMLError(f"expands to more than {MAX_NODES:,} values (aliases of aliases?)",
                                   node.start_mark)
        if depth > MAX_DEPTH:
            raise BoundedYAMLError(f"nested deeper than {MAX_DEPTH} levels (through aliases?)", node.start_mark)
        if isinstance(node, SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend(((key, depth + 1), (value, depth + 1)))


def _check_unique_keys(node: MappingNode) -> None:
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
            continue  # `<<: *base` merges may be overridden by the mapping's own keys
        ident = (key.tag, key.value)
        if ident in seen:
            raise BoundedYAMLError(f"duplicate key {key.value!r}", key.start_mark)
        seen.add(ident)


def load(text: str) -> Any:
    """``yaml.safe_load`` within the bounds above (raises :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass
