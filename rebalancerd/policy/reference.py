"""The field reference of docs/policies.md, generated from the models (so it cannot drift)."""

from __future__ import annotations

import json
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rebalancerd.policy.schema import Policy

BEGIN = "<!-- BEGIN GENERATED REFERENCE (rebalancerd policy schema --markdown) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _models(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    out: list[tuple[str, type[BaseModel]]] = []
    seen: set[type[BaseModel]] = set()

    def walk(path: str, model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        out.append((path, model))
        for name, f in model.model_fields.items():
            sub = _model_in(f.annotation)
            if sub is not None:
                listy = typing.get_origin(f.annotation) is list
                walk(f"{path}.{name}" + ("[]" if listy else "") if path else name, sub)

    walk("", root)
    return out


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in typing.get_args(tp):
        m = _model_in(a)
        if m is not None:
            return m
    return None


def _type(tp: Any) -> str:
    s = str(tp)
    for a, b in (
        ("typing.", ""),
        ("rebalancerd.policy.schema.", ""),
        ("Annotated[", ""),
        ("<class '", ""),
        ("'>", ""),
    ):
        s = s.replace(a, b)
    if isinstance(tp, type):
        return tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if args:
        return " \\| ".join(_type(a) for a in args)
    return s


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "**required**"
    if f.default_factory is not None:
        v = f.default_factory()  # type: ignore[call-arg]
        if isinstance(v, BaseModel):
            return "(see section)"
        return f"`{json.dumps(v)}`"
    d = f.default
    if d is PydanticUndefined:
        return ""
    if hasattr(d, "value"):
        d = d.value
    return f"`{json.dumps(d)}`"


def reference_markdown() -> str:
    """Markdown tables: one per section, each field with type, default and description."""
    lines = [BEGIN, ""]
    for path, model in _models(Policy):
        title = path or "top level"
        lines.append(f"### `{title}`")
        lines.append("")
        if model.__doc__:
            lines.append(" ".join(model.__doc__.split()))
            lines.append("")
        lines.append("| key | type | default | meaning |")
        lines.append("|---|---|---|---|")
        for name, f in model.model_fields.items():
            desc = " ".join((f.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{name}` | {_type(f.annotation)} | {_default(f)} | {desc} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"
