"""Safe, capped YAML for policy files: values with the marks where they start.

YAML is read with a ``yaml.SafeLoader`` subclass that
- resolves plain scalars like YAML 1.2's core schema: only ``true``/``false`` are booleans (``yes``,
  ``no``, ``on``, ``off`` stay strings), no sexagesimal numbers (``12:30`` stays a string), no
  implicit timestamps, no merge keys (``<<``);
- rejects duplicate keys, non-scalar keys, tags other than str/int/float/bool/null/seq/map, and
  several documents in one file;
- caps the number of aliases, the nesting depth and the number of nodes after alias expansion (so
  "billion laughs" documents are refused in microseconds, not expanded).

Pure: it parses text it is given (no file access).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from rebalancerd.policy.issues import PolicyIssue, mark_position, short_repr, text_position

MAX_ALIASES = 64
MAX_DEPTH = 24
MAX_NODES = 50_000
MAX_PROBLEMS_PER_FILE = 50

Path_ = tuple[str | int, ...]


STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
SEQ = "tag:yaml.org,2002:seq"
MAP = "tag:yaml.org,2002:map"

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^[-+]?[0-9]+$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_SCALAR_RE = {BOOL: _BOOL_RE, INT: _INT_RE, FLOAT: _FLOAT_RE, NULL: _NULL_RE}


class _Limit(yaml.MarkedYAMLError):
    """A resource cap was hit (size, aliases, depth, nodes, recursion)."""


class PolicyLoader(yaml.SafeLoader):
    """Safe, capped YAML composer. Only composes nodes; values are built by ``_Builder``."""

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                ev = self.peek_event()  # type: ignore[no-untyped-call]
                raise _Limit(None, None, f"more than {MAX_ALIASES} aliases", ev.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                ev = self.peek_event()  # type: ignore[no-untyped-call]
                raise _Limit(None, None, f"nested deeper than {MAX_DEPTH} levels", ev.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


PolicyLoader.add_implicit_resolver(BOOL, _BOOL_RE, list("tTfF"))
PolicyLoader.add_implicit_resolver(INT, _INT_RE, list("-+0123456789"))
PolicyLoader.add_implicit_resolver(FLOAT, _FLOAT_RE, list("-+0123456789."))
PolicyLoader.add_implicit_resolver(NULL, _NULL_RE, ["~", "n", "N", ""])


@dataclass(slots=True)
class Marks:
    """Where each value (and the key naming it) starts in the file, by path."""

    value: dict[Path_, yaml.Mark] = field(default_factory=dict)
    key: dict[Path_, yaml.Mark] = field(default_factory=dict)

    def at(self, path: Sequence[Any], prefer_key: bool = False) -> yaml.Mark | None:
        p = tuple(path)
        while True:
            if prefer_key and p in self.key:
                return self.key[p]
            if p in self.value:
                return self.value[p]
            if not p:
                return None
            p = p[:-1]


class _BuildProblem(Exception):
    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


class _Builder:
    """Turn composed nodes into plain dicts/lists/scalars, recording marks, enforcing caps."""

    def __init__(self) -> None:
        self.marks = Marks()
        self.problems: list[tuple[yaml.Mark | None, str]] = []
        self.nodes = 0
        self._stack: set[int] = set()

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _BuildProblem(
                node.start_mark, f"document expands to more than {MAX_NODES} values (alias bomb?)"
            )
        if depth > MAX_DEPTH:
            raise _BuildProblem(node.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        self.marks.value.setdefault(path, node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if id(node) in self._stack:
            raise _BuildProblem(node.start_mark, "recursive alias")
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != SEQ:
                    self.problems.append((node.start_mark, f"unsupported YAML tag {node.tag!r}"))
                return [self.build(c, (*path, i), depth + 1) for i, c in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, depth)
        finally:
            self._stack.discard(id(node))
        raise _BuildProblem(node.start_mark, "unsupported YAML node")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        if node.tag != MAP:
            self.problems.append((node.start_mark, f"unsupported YAML tag {node.tag!r}"))
        out: dict[str, Any] = {}
        first: dict[str, yaml.Mark] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.problems.append((knode.start_mark, "mapping keys must be plain strings"))
                continue
            key = str(knode.value)
            if key == "<<" and knode.style is None:
                self.problems.append(
                    (knode.start_mark, "merge keys (<<) are not supported: write the keys out")
                )
                continue
            if key in first:
                m = first[key]
                self.problems.append(
                    (knode.start_mark, f"duplicate key {key!r} (first at line {m.line + 1})")
                )
                continue
            first[key] = knode.start_mark
            self.marks.key[(*path, key)] = knode.start_mark
            out[key] = self.build(vnode, (*path, key), depth + 1)
        return out

    def _text(self, node: yaml.ScalarNode, v: str) -> str | None:
        if not any("\ud800" <= c <= "\udfff" for c in v):
            return v
        # "\ud83d\ude00" escapes (as JSON writes them) make surrogate pairs: join them
        try:
            return v.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            self.problems.append((node.start_mark, "string holds a lone UTF-16 surrogate"))
            return None

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag, v = node.tag, node.value
        if tag == STR:
            return self._text(node, v)
        rx = _SCALAR_RE.get(tag)
        if rx is None:
            self.problems.append((node.start_mark, f"unsupported YAML tag {tag!r}"))
            return None
        if not rx.match(v):
            self.problems.append((node.start_mark, f"{short_repr(v)} is not a valid {tag[18:]}"))
            return None
        if tag == BOOL:
            return v.lower() == "true"
        if tag == NULL:
            return None
        if tag == INT:
            try:
                return int(v)
            except ValueError:
                self.problems.append((node.start_mark, f"integer {short_repr(v)} is too large"))
                return None
        lv = v.lower()
        if lv.endswith(".inf"):
            return -math.inf if lv.startswith("-") else math.inf
        if lv == ".nan":
            return math.nan
        return float(v)


def parse_yaml(text: str, source: str) -> tuple[Any, Marks, list[PolicyIssue]]:
    """One YAML document -> (plain value, marks, issues); the value is None on a fatal issue."""

    def issue(mark: yaml.Mark | None, msg: str) -> PolicyIssue:
        line, col = mark_position(mark)
        return PolicyIssue(source, line, col, msg)

    loader: PolicyLoader | None = None
    try:
        loader = PolicyLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        if "expected a single document" in msg:
            msg = "a policy file holds one YAML document (found a second '---')"
        return None, Marks(), [issue(mark, msg)]
    except yaml.reader.ReaderError as e:
        line, col = text_position(text, e.position)
        return (
            None,
            Marks(),
            [
                PolicyIssue(
                    source,
                    line,
                    col,
                    f"unacceptable character #x{e.character:04x}"
                    if isinstance(e.character, int)
                    else str(e),
                )
            ],
        )
    except yaml.YAMLError as e:  # pragma: no cover - every YAML error above is marked
        return None, Marks(), [PolicyIssue(source, 1, 1, f"invalid YAML: {e}")]
    except RecursionError:
        return None, Marks(), [PolicyIssue(source, 1, 1, "document nested too deeply")]
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, Marks(), [PolicyIssue(source, 1, 1, "empty policy file")]
    b = _Builder()
    try:
        data = b.build(node, (), 0)
    except _BuildProblem as e:
        return None, b.marks, [issue(e.mark, e.message)]
    problems = [issue(m, msg) for m, msg in b.problems[:MAX_PROBLEMS_PER_FILE]]
    return data, b.marks, problems
