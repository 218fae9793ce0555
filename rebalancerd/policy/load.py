"""Load and check policy files: safe YAML, located errors, contradictions, several files combined.

Every problem is reported as ``file:line:column: message`` (1-based line and column).

YAML is read with a ``yaml.SafeLoader`` subclass that
- resolves plain scalars like YAML 1.2's core schema: only ``true``/``false`` are booleans (``yes``,
  ``no``, ``on``, ``off`` stay strings), no sexagesimal numbers (``12:30`` stays a string), no
  implicit timestamps, no merge keys (``<<``);
- rejects duplicate keys, non-scalar keys, tags other than str/int/float/bool/null/seq/map, and
  several documents in one file;
- caps the file size, the number of aliases, the nesting depth and the number of nodes after alias
  expansion (so "billion laughs" documents are refused in microseconds, not expanded).

Reading files is the only I/O here (no sockets, no asyncio).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rebalancerd.policy.schema import (
    _DAYS,
    Limits,
    Migration,
    Policy,
    Rules,
    Scope,
    TimeWindow,
    default_policy,
    minutes,
)

MAX_FILE_BYTES = 256 * 1024
MAX_ALIASES = 64
MAX_DEPTH = 24
MAX_NODES = 50_000
MAX_PROBLEMS_PER_FILE = 50
MAX_FILES = 256
POLICY_SUFFIXES = (".yaml", ".yml")

Path_ = tuple[str | int, ...]


# ----------------------------------------------------------------------------------------------
# problems


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


class PolicyError(Exception):
    """One or more problems in policy files; ``str()`` is one ``file:line:col: msg`` per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def one_line(self) -> str:
        n = len(self.problems)
        first = str(self.problems[0]) if self.problems else "invalid policy"
        return first if n <= 1 else f"{first} (and {n - 1} more problems)"


# ----------------------------------------------------------------------------------------------
# YAML


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
class _Marks:
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
        self.marks = _Marks()
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
            self.problems.append((node.start_mark, f"{_short(v)} is not a valid {tag[18:]}"))
            return None
        if tag == BOOL:
            return v.lower() == "true"
        if tag == NULL:
            return None
        if tag == INT:
            try:
                return int(v)
            except ValueError:
                self.problems.append((node.start_mark, f"integer {_short(v)} is too large"))
                return None
        lv = v.lower()
        if lv.endswith(".inf"):
            return -math.inf if lv.startswith("-") else math.inf
        if lv == ".nan":
            return math.nan
        return float(v)


def _short(v: Any, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 4] + "...'"


def _mark_pos(mark: yaml.Mark | None) -> tuple[int, int]:
    if mark is None:
        return 1, 1
    return mark.line + 1, mark.column + 1


def _position(text: str, index: int) -> tuple[int, int]:
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


@dataclass(slots=True)
class Parsed:
    """The outcome of reading one policy document."""

    source: str
    policy: Policy | None
    marks: _Marks
    problems: list[Problem]


def _parse_yaml(text: str, source: str) -> tuple[Any, _Marks, list[Problem]]:
    def prob(mark: yaml.Mark | None, msg: str) -> Problem:
        line, col = _mark_pos(mark)
        return Problem(source, line, col, msg)

    loader: PolicyLoader | None = None
    try:
        loader = PolicyLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        if "expected a single document" in msg:
            msg = "a policy file holds one YAML document (found a second '---')"
        return None, _Marks(), [prob(mark, msg)]
    except yaml.reader.ReaderError as e:
        line, col = _position(text, e.position)
        return (
            None,
            _Marks(),
            [
                Problem(
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
        return None, _Marks(), [Problem(source, 1, 1, f"invalid YAML: {e}")]
    except RecursionError:
        return None, _Marks(), [Problem(source, 1, 1, "document nested too deeply")]
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, _Marks(), [Problem(source, 1, 1, "empty policy file")]
    b = _Builder()
    try:
        data = b.build(node, (), 0)
    except _BuildProblem as e:
        return None, b.marks, [prob(e.mark, e.message)]
    problems = [prob(m, msg) for m, msg in b.problems[:MAX_PROBLEMS_PER_FILE]]
    return data, b.marks, problems


# ----------------------------------------------------------------------------------------------
# pydantic errors -> located problems


def _unwrap(tp: Any) -> type[BaseModel] | None:
    """The model type inside list[...] / X | None / Annotated[...], if any."""
    for _ in range(8):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated or origin is list:
            tp = args[0]
        elif origin is typing.Union or origin is types.UnionType:
            models = [a for a in args if _unwrap(a) is not None]
            if not models:
                return None
            tp = models[0]
        else:
            return None
    return None


def _model_at(path: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Policy
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        f = model.model_fields.get(str(part))
        if f is None:
            return None
        model = _unwrap(f.annotation)
    return model


def _all_field_paths() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, f in model.model_fields.items():
            dotted = f"{prefix}{name}"
            out.setdefault(name, []).append(dotted)
            sub = _unwrap(f.annotation)
            if sub is not None and depth < 6:
                listy = typing.get_origin(f.annotation) is list
                walk(sub, dotted + ("[]." if listy else "."), depth + 1)

    walk(Policy, "", 0)
    return out


_FIELD_PATHS = _all_field_paths()


def _dotted(loc: Sequence[Any]) -> str:
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        else:
            s += ("." if s else "") + str(part)
    return s or "(top level)"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    best = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {best[0]!r}?)" if best else ""


def _unknown_key(loc: tuple[Any, ...]) -> str:
    key = str(loc[-1])
    parent = _model_at(loc[:-1])
    where = f" in {_dotted(loc[:-1])}" if loc[:-1] else ""
    msg = f"unknown key {_short(key)}{where}"
    hint = _did_you_mean(key, parent.model_fields) if parent is not None else ""
    if not hint and key in _FIELD_PATHS:
        hint = f" (it belongs under {_FIELD_PATHS[key][0]!r})"
    return msg + hint


def _pydantic_problems(e: ValidationError, source: str, marks: _Marks) -> list[Problem]:
    out: list[Problem] = []
    for err in e.errors(include_url=False)[:MAX_PROBLEMS_PER_FILE]:
        loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        typ = err["type"]
        inp = err.get("input")
        if typ == "extra_forbidden" and loc:
            msg = _unknown_key(loc)
            mark = marks.at(loc, prefer_key=True)
        elif typ == "missing":
            msg = f"{_dotted(loc)}: required key missing"
            mark = marks.at(loc[:-1])
        else:
            text = str(err["msg"])
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msg = f"{_dotted(loc)}: {text}"
            if isinstance(inp, (str, int, float, bool)) and not isinstance(inp, type):
                msg += f" (got {_short(inp)})"
                if typ in ("enum", "literal_error") and isinstance(inp, str):
                    expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                    msg += _did_you_mean(inp, expected)
            mark = marks.at(loc)
        line, col = _mark_pos(mark)
        out.append(Problem(source, line, col, msg))
    return out


# ----------------------------------------------------------------------------------------------
# parse one document


def parse_policy_text(text: str | bytes, source: str = "<policy>") -> Parsed:
    """Parse and validate one policy document; never raises for bad input."""
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            return Parsed(source, None, _Marks(), [_too_big(source, len(text))])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line, col = _position(e.object[: e.start].decode("utf-8", "replace"), 10**9)
            return Parsed(source, None, _Marks(), [Problem(source, line, col, "not UTF-8 text")])
    if len(text) > MAX_FILE_BYTES:
        return Parsed(source, None, _Marks(), [_too_big(source, len(text))])
    data, marks, problems = _parse_yaml(text, source)
    if problems:
        return Parsed(source, None, marks, problems)
    if not isinstance(data, dict):
        return Parsed(
            source, None, marks, [Problem(source, 1, 1, "a policy must be a mapping of keys")]
        )
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        found = _pydantic_problems(e, source, marks)
        return Parsed(source, None, marks, sorted(found, key=lambda p: (p.line, p.column)))
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        return Parsed(source, None, marks, [Problem(source, 1, 1, f"invalid policy: {e}")])
    parsed = Parsed(source, policy, marks, [])
    parsed.problems = sorted(semantic_problems([parsed]), key=lambda p: (p.line, p.column))
    if parsed.problems:
        parsed.policy = None
    return parsed


def _too_big(source: str, n: int) -> Problem:
    return Problem(source, 1, 1, f"policy file too large ({n} bytes > {MAX_FILE_BYTES})")


def load_policy_text(text: str | bytes, source: str = "<policy>") -> Policy:
    parsed = parse_policy_text(text, source)
    if parsed.policy is None:
        raise PolicyError(parsed.problems)
    return parsed.policy


def _read(path: Path) -> bytes | Problem:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return Problem(str(path), 1, 1, "no such file")
    except IsADirectoryError:
        return Problem(str(path), 1, 1, "is a directory")
    except OSError as e:
        return Problem(str(path), 1, 1, f"cannot read: {e.strerror or e}")
    if len(data) > MAX_FILE_BYTES:
        return _too_big(str(path), len(data))
    return data


def parse_policy_file(path: str | Path) -> Parsed:
    p = Path(path)
    data = _read(p)
    if isinstance(data, Problem):
        return Parsed(str(p), None, _Marks(), [data])
    return parse_policy_text(data, str(p))


def load_policy_file(path: str | Path) -> Policy:
    """One policy file -> Policy, or PolicyError listing every located problem."""
    parsed = parse_policy_file(path)
    if parsed.policy is None:
        raise PolicyError(parsed.problems)
    return parsed.policy


# ----------------------------------------------------------------------------------------------
# contradictions (within one file or across the files of a directory)

_GLOB = re.compile(r"[*?\[]")


def _literal(name: str) -> bool:
    return not _GLOB.search(name)


@dataclass(slots=True)
class _Src:
    parsed: Parsed
    policy: Policy

    def problem(self, path: Sequence[Any], msg: str, prefer_key: bool = False) -> Problem:
        line, col = _mark_pos(self.parsed.marks.at(path, prefer_key))
        return Problem(self.parsed.source, line, col, msg)


def semantic_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """Rules that can never all hold, found without a snapshot (names and globs compared as
    written). Checked over the union of the rules of all given documents."""
    srcs = [_Src(p, p.policy) for p in parsed if p.policy is not None]
    out: list[Problem] = []
    out += _duplicate_members(srcs)
    out += _affinity_vs_anti(srcs)
    out += _pin_conflicts(srcs)
    return out[: MAX_PROBLEMS_PER_FILE * max(1, len(srcs))]


def _duplicate_members(srcs: list[_Src]) -> Iterator[Problem]:
    for s in srcs:
        for kind in ("affinity", "anti_affinity"):
            for i, g in enumerate(getattr(s.policy.rules, kind)):
                seen: set[str] = set()
                for j, vm in enumerate(g.vms):
                    if vm in seen:
                        yield s.problem(
                            ("rules", kind, i, "vms", j),
                            f"{kind} group {g.name!r} lists {vm!r} twice",
                        )
                    seen.add(vm)


def _affinity_vs_anti(srcs: list[_Src]) -> Iterator[Problem]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    group_of: dict[str, list[str]] = {}
    for s in srcs:
        for g in s.policy.rules.affinity:
            first = g.vms[0]
            for vm in g.vms[1:]:
                parent[find(vm)] = find(first)
            for vm in g.vms:
                group_of.setdefault(vm, []).append(g.name)
    if not parent:
        return
    for s in srcs:
        for i, g in enumerate(s.policy.rules.anti_affinity):
            seen: dict[str, str] = {}
            for j, vm in enumerate(g.vms):
                if vm not in parent:
                    continue
                root = find(vm)
                if root in seen and seen[root] != vm:
                    other = seen[root]
                    names = sorted(set(group_of.get(vm, []) + group_of.get(other, [])))
                    yield s.problem(
                        ("rules", "anti_affinity", i, "vms", j),
                        f"VMs {other!r} and {vm!r} are in anti-affinity group {g.name!r} but "
                        f"affinity group(s) {', '.join(repr(n) for n in names)} keep them together",
                    )
                seen.setdefault(root, vm)


def _pin_conflicts(srcs: list[_Src]) -> Iterator[Problem]:
    # hard pins with only literal host names, per VM pattern as written
    pins: dict[str, list[tuple[_Src, int, frozenset[str]]]] = {}
    forever: list[str] = []
    for s in srcs:
        forever += [m.host for m in s.policy.rules.maintenance if m.end is None]
        for i, p in enumerate(s.policy.rules.pins):
            if p.hard and all(_literal(h) for h in p.hosts):
                pins.setdefault(p.vm, []).append((s, i, frozenset(p.hosts)))
    effective: dict[str, frozenset[str]] = {}
    for vm, entries in pins.items():
        hosts = entries[0][2]
        for s, i, hs in entries[1:]:
            if not (hosts & hs):
                yield s.problem(
                    ("rules", "pins", i, "hosts"),
                    f"VM {vm!r} is hard-pinned to disjoint host sets "
                    f"({', '.join(sorted(hosts))} / {', '.join(sorted(hs))}): "
                    "no host satisfies both",
                )
            hosts = hosts & hs
        if not hosts:
            continue
        effective[vm] = hosts
        s, i, _ = entries[-1]
        usable = {h for h in hosts if not any(fnmatchcase(h, m) for m in forever)}
        if not usable:
            yield s.problem(
                ("rules", "pins", i, "hosts"),
                f"VM {vm!r} is hard-pinned to {', '.join(sorted(hosts))}, "
                "in maintenance with no end",
            )
        sc = s.policy.scope
        if sc.hosts and not sc.host_tags:
            outside = {h for h in hosts if not any(fnmatchcase(h, pat) for pat in sc.hosts)}
            if outside == hosts:
                yield s.problem(
                    ("rules", "pins", i, "hosts"),
                    f"VM {vm!r} is hard-pinned to {', '.join(sorted(hosts))}, outside this "
                    "policy's scope.hosts",
                )
    if not effective:
        return
    for s in srcs:
        for i, g in enumerate(s.policy.rules.anti_affinity):
            if not g.hard:
                continue
            members = [(vm, effective[vm]) for vm in dict.fromkeys(g.vms) if vm in effective]
            # every distinct pin set S: do more members fit only inside S than S has hosts?
            # (quadratic, so bounded; beyond the bound only identical pin sets are compared)
            by_set: dict[frozenset[str], list[str]] = {}
            for vm, hs in members:
                by_set.setdefault(hs, []).append(vm)
            full = len(by_set) <= 200
            for hs in by_set:
                inside = (
                    [m for t, ms in by_set.items() if t <= hs for m in ms] if full else by_set[hs]
                )
                if len(inside) > len(hs):
                    yield s.problem(
                        ("rules", "anti_affinity", i, "vms"),
                        f"anti-affinity group {g.name!r}: {', '.join(inside)} are hard-pinned to "
                        f"only {len(hs)} host(s) ({', '.join(sorted(hs))}) but must be apart",
                    )
                    break
        for i, g in enumerate(s.policy.rules.affinity):
            if not g.hard:
                continue
            sets = [effective[vm] for vm in g.vms if vm in effective]
            if len(sets) >= 2 and not frozenset.intersection(*sets):
                yield s.problem(
                    ("rules", "affinity", i, "vms"),
                    f"affinity group {g.name!r}: its VMs are hard-pinned to host sets with "
                    "no host in common",
                )


# ----------------------------------------------------------------------------------------------
# several policies


WEEK = 7 * 1440
Interval = tuple[int, int]


def _week_intervals(windows: Sequence[TimeWindow]) -> list[Interval]:
    raw: list[Interval] = []
    for w in windows:
        s, e = minutes(w.start), minutes(w.end)
        for d in w.days:
            a = _DAYS.index(d) * 1440 + s
            b = a - s + (e if e > s else 1440 + e)
            if b <= WEEK:
                raw.append((a, b))
            else:
                raw += [(a, WEEK), (0, b - WEEK)]
    raw.sort()
    out: list[Interval] = []
    for a, b in raw:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersect(x: list[Interval], y: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def _hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _to_windows(intervals: list[Interval]) -> list[TimeWindow]:
    by_time: dict[tuple[str, str], list[str]] = {}
    for a, b in intervals:
        while a < b:
            d = a // 1440
            end = min(b, (d + 1) * 1440)
            key = (_hhmm(a - d * 1440), _hhmm(end - d * 1440))
            by_time.setdefault(key, []).append(_DAYS[d])
            a = end
    return [TimeWindow(days=days, start=s, end=e) for (s, e), days in by_time.items()]


def _dedup(items: Iterable[Any]) -> list[Any]:
    """Items in order, repeats dropped (linear: models are compared by their JSON)."""
    seen: set[Any] = set()
    out: list[Any] = []
    for x in items:
        key = x.model_dump_json() if isinstance(x, BaseModel) else x
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


def _scope_union(scopes: Sequence[Scope]) -> Scope:
    all_hosts = any(not s.hosts and not s.host_tags for s in scopes)
    all_vms = any(not s.vms and not s.vm_tags for s in scopes)
    return Scope(
        hosts=[] if all_hosts else _dedup(h for s in scopes for h in s.hosts),
        host_tags=[] if all_hosts else _dedup(h for s in scopes for h in s.host_tags),
        vms=[] if all_vms else _dedup(v for s in scopes for v in s.vms),
        vm_tags=[] if all_vms else _dedup(v for s in scopes for v in s.vm_tags),
    )


def ordered(policies: Sequence[Policy]) -> list[Policy]:
    """Highest priority first; equal priorities by name."""
    return sorted(policies, key=lambda p: (-p.priority, p.name))


def combine(policies: Sequence[Policy]) -> Policy:
    """The one policy in force when several apply (see docs/policies.md, "Several policies").

    - The primary policy (highest ``priority``, then name) decides ``mode``, ``targets``,
      ``migration.default``, ``energy`` and ``rules.evacuate_degraded``.
    - ``dry_run`` is on if any policy says so.
    - ``scope`` is the union of the scopes (a policy with an empty scope covers everything).
    - Rules add up: affinity, anti-affinity, pins, exclusions and maintenance of all policies.
    - Limits: the most restrictive wins: the smallest ``max_*`` and byte budget, the longest
      cooldown, every blackout, and migrations only where the allowed windows of *all* policies
      that define windows overlap. Windows and blackouts must share one time zone.
    - Migration classes are concatenated in priority order (the first matching class wins).
    """
    if not policies:
        return default_policy()
    pol = ordered(policies)
    primary = pol[0]
    if len(pol) == 1:
        return primary
    budgets = [p.limits.max_mib_per_hour for p in pol if p.limits.max_mib_per_hour is not None]
    with_windows = [p for p in pol if p.limits.windows]
    windows = list(with_windows[0].limits.windows) if with_windows else []
    if len(with_windows) > 1:
        iv = _week_intervals(with_windows[0].limits.windows)
        for p in with_windows[1:]:
            iv = _intersect(iv, _week_intervals(p.limits.windows))
        windows = _to_windows(iv)
    tz_from = [p for p in pol if p.limits.windows or p.limits.blackouts]
    limits = Limits(
        max_concurrent=min(p.limits.max_concurrent for p in pol),
        max_per_source=min(p.limits.max_per_source for p in pol),
        max_per_target=min(p.limits.max_per_target for p in pol),
        max_per_cycle=min(p.limits.max_per_cycle for p in pol),
        max_mib_per_hour=min(budgets) if budgets else None,
        cooldown_s=max(p.limits.cooldown_s for p in pol),
        windows=windows,
        blackouts=_dedup(b for p in pol for b in p.limits.blackouts),
        timezone=(tz_from[0] if tz_from else primary).limits.timezone,
    )
    rules = Rules(
        affinity=_dedup(g for p in pol for g in p.rules.affinity),
        anti_affinity=_dedup(g for p in pol for g in p.rules.anti_affinity),
        pins=_dedup(x for p in pol for x in p.rules.pins),
        exclusions=_dedup(x for p in pol for x in p.rules.exclusions),
        maintenance=_dedup(x for p in pol for x in p.rules.maintenance),
        evacuate_degraded=primary.rules.evacuate_degraded,
    )
    name = "+".join(p.name for p in pol)
    if len(name) > 253:
        name = f"{primary.name}+{len(pol) - 1} more"[:253]
    return primary.model_copy(
        update={
            "name": name,
            "dry_run": any(p.dry_run for p in pol),
            "scope": _scope_union([p.scope for p in pol]),
            "rules": rules,
            "limits": limits,
            "migration": Migration(
                default=primary.migration.default,
                classes=[c for p in pol for c in p.migration.classes],
            ),
        }
    )


def set_problems(parsed: Sequence[Parsed]) -> list[Problem]:
    """Problems only visible when the files are read together."""
    srcs = [_Src(p, p.policy) for p in parsed if p.policy is not None]
    out: list[Problem] = []
    names: dict[str, _Src] = {}
    for s in srcs:
        if s.policy.name in names:
            out.append(
                s.problem(
                    ("name",),
                    f"policy name {s.policy.name!r} is also used by "
                    f"{names[s.policy.name].parsed.source}",
                )
            )
        names.setdefault(s.policy.name, s)
    timed = [s for s in srcs if s.policy.limits.windows or s.policy.limits.blackouts]
    for s in timed[1:]:
        if s.policy.limits.timezone != timed[0].policy.limits.timezone:
            out.append(
                s.problem(
                    ("limits", "timezone"),
                    f"limits.timezone {s.policy.limits.timezone!r} differs from "
                    f"{timed[0].policy.limits.timezone!r} in {timed[0].parsed.source}: "
                    "policies with windows or blackouts must use one time zone",
                    prefer_key=True,
                )
            )
    with_windows = [s for s in srcs if s.policy.limits.windows]
    if len(with_windows) > 1:
        iv = _week_intervals(with_windows[0].policy.limits.windows)
        for s in with_windows[1:]:
            iv = _intersect(iv, _week_intervals(s.policy.limits.windows))
            if not iv:
                earlier = with_windows[: with_windows.index(s)]
                out.append(
                    s.problem(
                        ("limits", "windows"),
                        "limits.windows never overlap those of "
                        f"{', '.join(w.parsed.source for w in earlier)}"
                        ": no migration could ever start",
                        prefer_key=True,
                    )
                )
                break
    if len(srcs) > 1:
        out += semantic_problems([s.parsed for s in srcs])
        # contradictions inside one file were reported already
        own = {p for s in srcs for p in semantic_problems([s.parsed])}
        out = [p for p in out if p not in own]
    return out


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies of a directory (or given programmatically), in file-name order."""

    policies: tuple[Policy, ...] = ()
    files: tuple[str, ...] = ()

    def effective(self) -> Policy:
        """The policy in force: see ``combine``. No policy at all = ``default_policy()``."""
        return combine(self.policies)


def policy_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(
        p
        for p in d.iterdir()
        if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and not p.is_dir()
    )


def parse_policy_dir(directory: str | Path) -> tuple[list[Parsed], list[Problem]]:
    d = Path(directory)
    try:
        files = policy_files(d)
    except FileNotFoundError:
        return [], [Problem(str(d), 1, 1, "no such directory")]
    except NotADirectoryError:
        return [], [Problem(str(d), 1, 1, "not a directory")]
    except OSError as e:
        return [], [Problem(str(d), 1, 1, f"cannot list: {e.strerror or e}")]
    if len(files) > MAX_FILES:
        return [], [Problem(str(d), 1, 1, f"more than {MAX_FILES} policy files")]
    parsed = [parse_policy_file(f) for f in files]
    problems = [p for x in parsed for p in x.problems]
    if not problems:
        problems = set_problems(parsed)
    return parsed, problems


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Every ``*.yaml``/``*.yml`` file of a directory (hidden files skipped), checked one by one
    and together. Any problem -> PolicyError with all of them. An empty directory is an empty
    set (its effective policy is the default)."""
    parsed, problems = parse_policy_dir(directory)
    if problems:
        raise PolicyError(problems)
    return PolicySet(
        tuple(p.policy for p in parsed if p.policy is not None), tuple(p.source for p in parsed)
    )


def load_policy_path(path: str | Path) -> PolicySet:
    """A directory (as ``load_policy_dir``) or a single file."""
    p = Path(path)
    if p.is_dir():
        return load_policy_dir(p)
    return PolicySet((load_policy_file(p),), (str(p),))
