"""Parse and validate one policy document: located issues, with "did you mean" hints.

Every issue is reported as ``file:line:column: message`` (1-based line and column). The YAML is
read by ``policy.safe_yaml``; the values are validated against ``policy.schema`` and checked for
contradictions inside the document (``policy.semantics``). Pure: text in, ``Parsed`` out (reading
files is ``adapters.policy_files``).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from rebalancerd.policy.document import Parsed
from rebalancerd.policy.issues import (
    PolicyError,
    PolicyIssue,
    mark_position,
    short_repr,
    text_position,
)
from rebalancerd.policy.safe_yaml import MAX_PROBLEMS_PER_FILE, Marks, parse_yaml
from rebalancerd.policy.schema import Policy
from rebalancerd.policy.semantics import semantic_problems

MAX_FILE_BYTES = 256 * 1024


# ----------------------------------------------------------------------------------------------
# pydantic errors -> located issues


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
    msg = f"unknown key {short_repr(key)}{where}"
    hint = _did_you_mean(key, parent.model_fields) if parent is not None else ""
    if not hint and key in _FIELD_PATHS:
        hint = f" (it belongs under {_FIELD_PATHS[key][0]!r})"
    return msg + hint


def _pydantic_problems(e: ValidationError, source: str, marks: Marks) -> list[PolicyIssue]:
    out: list[PolicyIssue] = []
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
                msg += f" (got {short_repr(inp)})"
                if typ in ("enum", "literal_error") and isinstance(inp, str):
                    expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
                    msg += _did_you_mean(inp, expected)
            mark = marks.at(loc)
        line, col = mark_position(mark)
        out.append(PolicyIssue(source, line, col, msg))
    return out


# ----------------------------------------------------------------------------------------------
# parse one document


def parse_policy_text(text: str | bytes, source: str = "<policy>") -> Parsed:
    """Parse and validate one policy document; never raises for bad input."""
    if isinstance(text, bytes):
        if len(text) > MAX_FILE_BYTES:
            return Parsed(source, None, Marks(), [file_too_large(source, len(text))])
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line, col = text_position(e.object[: e.start].decode("utf-8", "replace"), 10**9)
            return Parsed(source, None, Marks(), [PolicyIssue(source, line, col, "not UTF-8 text")])
    if len(text) > MAX_FILE_BYTES:
        return Parsed(source, None, Marks(), [file_too_large(source, len(text))])
    data, marks, problems = parse_yaml(text, source)
    if problems:
        return Parsed(source, None, marks, problems)
    if not isinstance(data, dict):
        return Parsed(
            source, None, marks, [PolicyIssue(source, 1, 1, "a policy must be a mapping of keys")]
        )
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        found = _pydantic_problems(e, source, marks)
        return Parsed(source, None, marks, sorted(found, key=lambda p: (p.line, p.column)))
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        return Parsed(source, None, marks, [PolicyIssue(source, 1, 1, f"invalid policy: {e}")])
    parsed = Parsed(source, policy, marks, [])
    parsed.problems = sorted(semantic_problems([parsed]), key=lambda p: (p.line, p.column))
    if parsed.problems:
        parsed.policy = None
    return parsed


def file_too_large(source: str, n: int) -> PolicyIssue:
    """The issue for a policy file over ``MAX_FILE_BYTES``."""
    return PolicyIssue(source, 1, 1, f"policy file too large ({n} bytes > {MAX_FILE_BYTES})")


def load_policy_text(text: str | bytes, source: str = "<policy>") -> Policy:
    parsed = parse_policy_text(text, source)
    if parsed.policy is None:
        raise PolicyError(parsed.problems)
    return parsed.policy
