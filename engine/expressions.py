"""`${{ inputs.X }}` and `${{ steps.ID.output.PATH }}`: the only expressions a workflow has.

A string that is exactly one expression takes the referenced value with its JSON type; an
expression inside a longer string is substituted as text (JSON for objects and lists).
Extra roots (`output`, `before`) are available to undo actions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

EXPR_RE = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class ExpressionError(ValueError):
    """An expression that cannot be parsed or whose value is missing."""


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference: `root` is `inputs`, `steps`, ...; `parts` is the dotted rest."""

    text: str
    root: str
    parts: tuple[str, ...]

    @property
    def step(self) -> str | None:
        """The step id of a `steps.ID...` reference."""
        return self.parts[0] if self.root == "steps" and self.parts else None


def parse(expr: str) -> Ref:
    """Parse the inside of `${{ ... }}`."""
    if not PATH_RE.match(expr):
        raise ExpressionError(
            f"'{expr}' is not a reference like inputs.NAME or steps.ID.output.PATH"
        )
    root, *parts = expr.split(".")
    if root == "inputs":
        if len(parts) < 1:
            raise ExpressionError(f"'{expr}': name the input, e.g. inputs.pr")
    elif root == "steps":
        if len(parts) < 2 or parts[1] != "output":
            raise ExpressionError(f"'{expr}': use steps.ID.output or steps.ID.output.PATH")
    elif root not in ("output", "before"):
        raise ExpressionError(f"'{expr}': unknown root '{root}' (use inputs or steps)")
    return Ref(expr, root, tuple(parts))


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every reference found in strings anywhere inside `value`; raises ExpressionError."""
    if isinstance(value, str):
        if "${{" in value:
            for m in EXPR_RE.finditer(value):
                yield parse(m.group(1))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from iter_refs(k)
            yield from iter_refs(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_refs(v)


def has_expressions(value: Any) -> bool:
    if isinstance(value, str):
        return "${{" in value
    if isinstance(value, Mapping):
        return any(has_expressions(k) or has_expressions(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_expressions(v) for v in value)
    return False


def _lookup(ref: Ref, scope: Mapping[str, Any]) -> Any:
    if ref.root == "steps":
        step_id = ref.parts[0]
        steps = scope.get("steps", {})
        if step_id not in steps:
            raise ExpressionError(f"'{ref.text}': step '{step_id}' has no output")
        value: Any = steps[step_id]
        path = ref.parts[2:]
    else:
        if ref.root not in scope:
            raise ExpressionError(f"'{ref.text}': '{ref.root}' is not available here")
        value = scope[ref.root]
        path = ref.parts
    walked = [ref.root] if ref.root != "steps" else ["steps", ref.parts[0], "output"]
    for part in path:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise ExpressionError(f"'{ref.text}': {'.'.join(walked)} has no '{part}'")
        walked.append(part)
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Substitute every expression in `value` using `scope` (`inputs`, `steps`, ...)."""
    if isinstance(value, str):
        if "${{" not in value:
            return value
        m = EXPR_RE.fullmatch(value.strip())
        if m is not None and value.strip().count("${{") == 1:
            return _lookup(parse(m.group(1)), scope)
        return EXPR_RE.sub(lambda m: _as_text(_lookup(parse(m.group(1)), scope)), value)
    if isinstance(value, Mapping):
        return {render(k, scope): render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value
