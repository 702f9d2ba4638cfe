"""Read workflow files (YAML or JSON) into `WorkflowSpec`, with positioned, readable problems.

Every problem is one line `FILE:LINE:COL: field.path: message` (1-based line and column) and all
problems of a file are reported at once: syntax, duplicate keys, schema errors from pydantic
(unknown keys with a did-you-mean, wrong types, missing fields) and the semantic checks of
`engine.dag.validate` (unknown agents and steps, cycles, expressions, agent parameters).

Parsing never builds a recursive structure: YAML is read as a stream of parser events (libyaml
when available) and JSON by a small iterative scanner, both recording the position of every key
and list item by field path. Nesting depth, document size, node count and alias expansion are
capped, so no input (binary, huge, 10,000 levels deep, a billion laughs) gets more than a
problem line.
"""

from __future__ import annotations

import bisect
import codecs
import copy
import difflib
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from json.decoder import JSONDecodeError, scanstring
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from engine import dag
from engine.errors import InputError, WorkflowError
from engine.models import (
    AgentSpec,
    InputSpec,
    ReviewSpec,
    RouteSpec,
    StepSpec,
    UndoSpec,
    WorkflowSpec,
)

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "check_files",
    "load_workflow",
    "load_workflow_text",
    "parse_inputs",
]

MAX_BYTES = 5 * 1024 * 1024
"""Files larger than this are refused with one problem line."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists accepted."""
MAX_NODES = 500_000
"""Most values accepted in one document, counting each use of a YAML alias in full."""

Path = tuple[str | int, ...]
Pos = tuple[int, int]

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MISSING: Any = object()
_BAD_KEY: Any = object()
_MERGE: Any = object()

# Characters neither YAML nor JSON allow in a document (C0/C1 controls except tab/LF/CR/NEL,
# surrogates, U+FFFE/U+FFFF).
_BAD_CHAR = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass
class _Parsed:
    """A document as Python data plus where each field path starts in the text."""

    data: Any = _MISSING
    positions: dict[Path, Pos] = field(default_factory=dict)
    problems: list[tuple[Path, Pos, str]] = field(default_factory=list)


class _Stop(Exception):
    """Parsing cannot go on; the reason is already in the problems."""


# --------------------------------------------------------------------------- public API


def load_workflow(path: str | FsPath) -> WorkflowSpec:
    """Read and validate the workflow file at `path`; raises `WorkflowError` with every problem."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise WorkflowError(
            [_line(name, (1, 1), (), f"cannot read file: {e.strerror or e}")]
        ) from None
    return load_workflow_text(raw, name)


def load_workflow_text(text: str | bytes, filename: str) -> WorkflowSpec:
    """Validate a workflow given as text (or raw bytes); `filename` picks the format and is used
    in problem lines. `.json` is JSON, `.yaml`/`.yml` YAML; otherwise the content decides."""
    try:
        return _load(text, filename)
    except WorkflowError:
        raise
    except (Exception, RecursionError, MemoryError) as e:  # a bug of ours: still one line
        raise WorkflowError(
            [_line(filename, (1, 1), (), f"internal error while reading: {type(e).__name__}: {e}")]
        ) from e


def check_files(paths: Iterable[str | FsPath]) -> list[str]:
    """Every problem of every file, for `flowdeck validate FILE...` (empty list: all valid)."""
    problems: list[str] = []
    for path in paths:
        try:
            load_workflow(path)
        except WorkflowError as e:
            problems.extend(e.problems)
    return problems


# --------------------------------------------------------------------------- orchestration


def _load(text: str | bytes, filename: str) -> WorkflowSpec:
    parsed = _read(text, filename)
    problems = list(parsed.problems)
    spec: WorkflowSpec | None = None
    if parsed.data is not _MISSING:  # _MISSING: a syntax error or a cap stopped the parse
        spec, found = _check(parsed.data)
        problems += [(p, _locate(parsed.positions, p), m) for p, m in found]
    if problems:
        lines: list[str] = []
        for path, pos, message in sorted(problems, key=lambda item: item[1]):
            line = _line(filename, pos, path, message)
            if line not in lines:
                lines.append(line)
        raise WorkflowError(lines)
    assert spec is not None
    return spec


def _check(data: Any) -> tuple[WorkflowSpec | None, list[tuple[Path, str]]]:
    """Schema, then semantic problems of a parsed document (the spec when there are none)."""
    if not isinstance(data, dict):
        what = "an empty document" if data is None else _kind(data)
        return None, [((), f"a workflow is a mapping with 'name' and 'steps', got {what}")]
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as e:
        schema = _schema_problems(data, e.errors())
        bad = [p for p, _ in schema]
        lenient = _lenient_spec(data, bad)
        if lenient is None:
            return None, schema
        semantic = dag.validate(lenient) + _default_problems(lenient)
        # what is already reported as broken is not reported again through its consequences
        semantic = [(p, m) for p, m in semantic if not any(p[: len(b)] == b for b in bad)]
        return None, schema + semantic
    found = dag.validate(spec) + _default_problems(spec)
    return (None if found else spec), found


def _read(text: str | bytes, filename: str) -> _Parsed:
    if len(text) > MAX_BYTES:
        mb = MAX_BYTES // (1024 * 1024)
        return _Parsed(problems=[((), (1, 1), f"file is too large (more than {mb} MB)")])
    if isinstance(text, bytes | bytearray):
        decoded, problem = _decode(bytes(text))
        if decoded is None:
            return _Parsed(problems=[problem])  # type: ignore[list-item]
        text = decoded
    text = text.removeprefix("\ufeff")
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        ch = bad.group()
        what = "binary data (NUL byte)" if ch == "\0" else f"character U+{ord(ch):04X}"
        message = f"{what} is not allowed in a workflow file"
        return _Parsed(problems=[((), _LineIndex(text).pos(bad.start()), message)])
    if not text.strip():
        return _Parsed(
            problems=[((), (1, 1), "file is empty; a workflow needs 'name' and 'steps'")]
        )

    lower = filename.lower()
    if lower.endswith(".json"):
        return _parse_json(text)
    if lower.endswith((".yaml", ".yml")):
        return _parse_yaml(text)
    if text.lstrip()[:1] in ("{", "["):
        as_json = _parse_json(text)
        if as_json.data is _MISSING:
            as_yaml = _parse_yaml(text)
            if as_yaml.data is not _MISSING:
                return as_yaml
        return as_json
    return _parse_yaml(text)


def _decode(raw: bytes) -> tuple[str | None, tuple[Path, Pos, str] | None]:
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom) and not raw.startswith(codecs.BOM_UTF32_LE):
            try:
                return raw[len(bom) :].decode(codec), None
            except UnicodeDecodeError:
                return None, ((), (1, 1), "not valid UTF-16 text")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if b"\0" in raw[:8192]:
        return None, ((), (1, 1), "binary data (NUL byte), not a YAML or JSON workflow")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        byte = raw[e.start : e.start + 1].hex()
        return None, ((), (line, col), f"not valid UTF-8 text (byte 0x{byte})")


# --------------------------------------------------------------------------- positions, lines


class _LineIndex:
    """Offset -> 1-based (line, column) for text where only LF ends a line."""

    def __init__(self, text: str):
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def pos(self, offset: int) -> Pos:
        i = bisect.bisect_right(self.starts, offset) - 1
        return i + 1, offset - self.starts[i] + 1


def _locate(positions: Mapping[Path, Pos], path: Path) -> Pos:
    """Position of `path`, else of its nearest parent that has one, else 1:1."""
    for end in range(len(path), 0, -1):
        pos = positions.get(path[:end])
        if pos is not None:
            return pos
    return (1, 1)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_path(path: Path) -> str:
    """`steps.ticket.with.json.title`, `steps.a.needs[0]`; `(root)` for the document.

    Very deep paths keep their first and last five parts around `...`.
    """
    out = ""
    if len(path) > 12:
        return f"{format_path(path[:5])}...{format_path(path[-5:])}"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(_short(part), ensure_ascii=False)}]"
    return out or "(root)"


def _line(filename: str, pos: Pos, path: Path, message: str) -> str:
    text = f"{filename}:{pos[0]}:{pos[1]}: {format_path(path)}: {message}"
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_short(value)!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# --------------------------------------------------------------------------- YAML

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {
    ".inf": math.inf, ".Inf": math.inf, ".INF": math.inf,
    "+.inf": math.inf, "+.Inf": math.inf, "+.INF": math.inf,
    "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
}  # fmt: skip
_CORE = "tag:yaml.org,2002:"


def _plain_scalar(text: str) -> Any:
    """YAML 1.2 core schema: no `yes`/`no`/`on` booleans, no timestamps, no sexagesimals."""
    if text in _NULLS:
        return None
    if text in _TRUES:
        return True
    if text in _FALSES:
        return False
    try:
        if _INT.fullmatch(text):
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(text)
    except ValueError:  # more digits than int() converts
        return text
    return _SPECIAL_FLOATS.get(text, text)


def _tagged_scalar(tag: str, text: str) -> Any:
    """Value of an explicitly tagged scalar; raises ValueError for what we do not support."""
    name = tag.removeprefix(_CORE) if tag.startswith(_CORE) else None
    if tag == "!" or name == "str":
        return text
    if name == "null" and text in _NULLS:
        return None
    if name == "bool" and text in _TRUES | _FALSES:
        return text in _TRUES
    if name in ("int", "float"):
        value = _plain_scalar(text)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value) if name == "int" and float(value).is_integer() else value
        raise ValueError(f"'{_short(text)}' is not a valid !!{name}")
    if name in ("null", "bool"):
        raise ValueError(f"'{_short(text)}' is not a valid !!{name}")
    raise ValueError(f"unsupported tag '{_short(tag)}'")


class _Frame:
    __slots__ = ("anchor", "container", "explicit", "key", "mark", "merges", "path", "size")

    def __init__(self, container: Any, path: Path, anchor: str | None, mark: Any):
        self.container = container
        self.path = path
        self.anchor = anchor
        self.mark = mark
        self.size = 1
        self.key: Any = _MISSING  # mappings: the key waiting for its value
        self.explicit: set[str] = set()
        self.merges: list[dict[str, Any]] = []


def _parse_yaml(text: str) -> _Parsed:
    out = _Parsed()
    problems = out.problems
    positions = out.positions
    anchors: dict[str, tuple[Any, int] | None] = {}
    stack: list[_Frame] = []
    state = {"nodes": 0, "docs": 0}

    def pos_of(mark: Any) -> Pos:
        return mark.line + 1, mark.column + 1

    def here() -> Path:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        if top.key is not _MISSING and top.key is not _BAD_KEY and top.key is not _MERGE:
            return (*top.path, top.key)
        return top.path

    def count(n: int, mark: Any) -> None:
        state["nodes"] += n
        if state["nodes"] > MAX_NODES:
            problems.append(
                (
                    here(),
                    pos_of(mark),
                    f"too many values (over {MAX_NODES} after expanding aliases)",
                )
            )
            raise _Stop

    def starting(mark: Any) -> Path:
        """Record where a node about to start is (list items; keys are recorded in set_key)."""
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.container, list):
            path = (*top.path, len(top.container))
            positions[path] = pos_of(mark)
            return path
        if top.key is _MISSING:  # a key that is a mapping or list: reported in set_key
            return (*top.path, "?")
        return here()

    def set_key(top: _Frame, key: Any, raw: str | None, mark: Any, merge_ok: bool) -> None:
        if merge_ok and key == "<<":
            top.key = _MERGE
            return
        if isinstance(key, bool | int | float) and raw is not None:
            key = raw  # `1:` or `true:` as a key means the text, as in JSON
        if not isinstance(key, str):
            problems.append(((*top.path,), pos_of(mark), f"keys must be strings, got {_kind(key)}"))
            top.key = _BAD_KEY
            return
        path = (*top.path, key)
        if key in top.explicit:
            problems.append((path, pos_of(mark), f"duplicate key '{_short(key)}'"))
        top.explicit.add(key)
        positions[path] = pos_of(mark)
        top.key = key

    def place(
        value: Any, size: int, mark: Any, raw: str | None = None, plain: bool = False
    ) -> None:
        """Attach a finished node to its parent."""
        if not stack:
            out.data = value
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.container, list):
            top.container.append(value)
            return
        if top.key is _MISSING:
            set_key(top, value, raw, mark, plain)
            return
        key, top.key = top.key, _MISSING
        if key is _BAD_KEY:
            return
        if key is _MERGE:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(s, dict) for s in sources):
                problems.append(
                    (top.path, pos_of(mark), "'<<' (merge) needs a mapping or a list of mappings")
                )
                return
            top.merges.extend(sources)
            return
        top.container[key] = value

    try:
        for ev in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(ev, yaml.DocumentStartEvent):
                state["docs"] += 1
                if state["docs"] > 1:
                    problems.append(
                        ((), pos_of(ev.start_mark), "only one YAML document per file (found '---')")
                    )
                    raise _Stop
            elif isinstance(ev, yaml.ScalarEvent):
                count(1, ev.start_mark)
                path = starting(ev.start_mark)
                plain = ev.tag is None and ev.implicit[0]
                if ev.tag is None:
                    value = _plain_scalar(ev.value) if plain else ev.value
                else:
                    try:
                        value = _tagged_scalar(ev.tag, ev.value)
                    except ValueError as e:
                        problems.append((path, pos_of(ev.start_mark), str(e)))
                        value = ev.value
                if ev.anchor is not None:
                    anchors[ev.anchor] = (value, 1)
                place(value, 1, ev.start_mark, ev.value if plain else None, plain)
            elif isinstance(ev, yaml.AliasEvent):
                path = starting(ev.start_mark)
                target = anchors.get(ev.anchor, _MISSING)
                if target is _MISSING or target is None:
                    why = "is not defined before" if target is _MISSING else "refers to itself"
                    problems.append(
                        (path, pos_of(ev.start_mark), f"alias '*{_short(ev.anchor)}' {why}")
                    )
                    count(1, ev.start_mark)
                    place(None, 1, ev.start_mark)
                else:
                    value, size = target
                    count(size, ev.start_mark)
                    place(value, size, ev.start_mark)
            elif isinstance(ev, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                count(1, ev.start_mark)
                path = starting(ev.start_mark)
                if len(stack) >= MAX_DEPTH:
                    problems.append(
                        (
                            path,
                            pos_of(ev.start_mark),
                            f"nested too deeply (over {MAX_DEPTH} levels)",
                        )
                    )
                    raise _Stop
                is_seq = isinstance(ev, yaml.SequenceStartEvent)
                expected = f"{_CORE}seq" if is_seq else f"{_CORE}map"
                if ev.tag not in (None, "!", expected):
                    problems.append(
                        (path, pos_of(ev.start_mark), f"unsupported tag '{_short(ev.tag)}'")
                    )
                if ev.anchor is not None:
                    anchors[ev.anchor] = None
                stack.append(_Frame([] if is_seq else {}, path, ev.anchor, ev.start_mark))
            elif isinstance(ev, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                frame = stack.pop()
                value = frame.container
                if frame.merges:
                    merged: dict[str, Any] = {}
                    for source in frame.merges:
                        for k, v in source.items():
                            merged.setdefault(k, v)
                    merged.update(value)
                    value = merged
                if frame.anchor is not None:
                    anchors[frame.anchor] = (value, frame.size)
                place(value, frame.size, frame.mark)
    except _Stop:
        out.data = _MISSING
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        pos = pos_of(mark) if mark is not None else (1, 1)
        message = f"invalid YAML: {e.problem or e.context or 'syntax error'}"
        if e.context and e.problem and e.context_mark is not None:
            cpos = pos_of(e.context_mark)
            if cpos != pos:
                message += f" ({e.context} at line {cpos[0]}, column {cpos[1]})"
        lines = text.splitlines()
        if 0 < pos[0] <= len(lines) and lines[pos[0] - 1][pos[1] - 1 : pos[1]] == "\t":
            message += "; YAML does not allow tabs for indentation, use spaces"
        problems.append((here(), pos, message))
        out.data = _MISSING
    except yaml.YAMLError as e:
        problems.append((here(), (1, 1), f"invalid YAML: {e}"))
        out.data = _MISSING
    if state["docs"] == 0 and not problems:  # only comments
        out.data = None
    return out


# --------------------------------------------------------------------------- JSON

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}


def _parse_json(text: str) -> _Parsed:
    """Strict JSON (RFC 8259) without recursion, recording positions like `_parse_yaml`."""
    out = _Parsed()
    index = _LineIndex(text)
    positions = out.positions
    n = len(text)
    stack: list[_Frame] = []
    nodes = 0

    def here() -> Path:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        return (*top.path, top.key) if top.key is not _MISSING else top.path

    def fail(message: str, at: int) -> _Parsed:
        out.problems.append((here(), index.pos(min(at, n)), message))
        out.data = _MISSING
        return out

    def found(at: int) -> str:
        return "end of file" if at >= n else repr(text[at])

    def attach(value: Any) -> None:
        if not stack:
            out.data = value
            return
        top = stack[-1]
        if isinstance(top.container, list):
            top.container.append(value)
        else:
            top.container[top.key] = value
            top.key = _MISSING

    def skip(at: int) -> int:
        return _WS.match(text, at).end()  # type: ignore[union-attr]

    i = skip(0)
    expect = "value"  # value | first_value (after '[') | key | first_key (after '{') | after
    while True:
        if expect == "after":
            i = skip(i)
            if not stack:
                if i < n:
                    return fail(f"invalid JSON: unexpected {found(i)} after the document", i)
                return out
            close = "]" if isinstance(stack[-1].container, list) else "}"
            if text.startswith(",", i):
                i = skip(i + 1)
                if text.startswith(close, i):
                    return fail(f"invalid JSON: trailing comma before '{close}'", i)
                expect = "value" if close == "]" else "key"
            elif text.startswith(close, i):
                attach(stack.pop().container)
                i += 1
            else:
                return fail(f"invalid JSON: expected ',' or '{close}', found {found(i)}", i)
            continue

        if (expect == "first_value" and text.startswith("]", i)) or (
            expect == "first_key" and text.startswith("}", i)
        ):
            attach(stack.pop().container)
            i += 1
            expect = "after"
            continue

        if expect in ("key", "first_key"):
            if not text.startswith('"', i):
                return fail(f"invalid JSON: expected a key in double quotes, found {found(i)}", i)
            try:
                key, j = scanstring(text, i + 1, True)
            except JSONDecodeError as e:
                return fail(f"invalid JSON: {e.msg.lower().removesuffix(' at')}", e.pos)
            top = stack[-1]
            path = (*top.path, key)
            if key in top.container:
                out.problems.append((path, index.pos(i), f"duplicate key '{_short(key)}'"))
            positions[path] = index.pos(i)
            top.key = key
            i = skip(j)
            if not text.startswith(":", i):
                return fail(f"invalid JSON: expected ':' after the key, found {found(i)}", i)
            i = skip(i + 1)
            expect = "value"
            continue

        # a value
        if i >= n:
            return fail("invalid JSON: unexpected end of file, expected a value", i)
        if stack and isinstance(stack[-1].container, list):
            positions[here()] = index.pos(i)
        nodes += 1
        if nodes > MAX_NODES:
            return fail(f"too many values (over {MAX_NODES})", i)
        c = text[i]
        value: Any
        if c in "{[":
            if len(stack) >= MAX_DEPTH:
                return fail(f"nested too deeply (over {MAX_DEPTH} levels)", i)
            stack.append(_Frame({} if c == "{" else [], here(), None, None))
            i = skip(i + 1)
            expect = "first_key" if c == "{" else "first_value"
            continue
        if c == '"':
            try:
                value, i = scanstring(text, i + 1, True)
            except JSONDecodeError as e:
                return fail(f"invalid JSON: {e.msg.lower().removesuffix(' at')}", e.pos)
        elif m := _NUMBER.match(text, i):
            try:
                value = float(m.group()) if m.group(1) or m.group(2) else int(m.group())
            except ValueError:
                return fail("invalid JSON: number has too many digits", i)
            i = m.end()
        else:
            for word, literal in _LITERALS.items():
                if text.startswith(word, i):
                    value = literal
                    i += len(word)
                    break
            else:
                return fail(f"invalid JSON: expected a value, found {found(i)}", i)
        attach(value)
        expect = "after"


# --------------------------------------------------------------------------- schema problems


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _unwrap_model(arg)
            if model is not None:
                return model
    return None


def _annotation_at(path: Path) -> Any:
    """The type expected at `path` of a workflow document (None when unknown)."""
    annotation: Any = WorkflowSpec
    for part in path:
        model = _unwrap_model(annotation)
        if model is not None:
            for name, info in model.model_fields.items():
                if part in (name, info.alias):
                    annotation = info.annotation
                    break
            else:
                return None
            continue
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is dict and len(args) == 2:
            annotation = args[1]
        elif origin is list and args:
            annotation = args[0]
        else:
            return None
    return annotation


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _real_path(data: Any, loc: tuple[Any, ...], missing: bool) -> Path:
    """pydantic `loc` -> path in the document, without union member tags such as `float`."""
    path: list[str | int] = []
    cur = data
    for j, part in enumerate(loc):
        if (isinstance(cur, dict) and isinstance(part, str) and part in cur) or (
            isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        ):
            cur = cur[part]
        elif missing and j == len(loc) - 1 and isinstance(part, str):
            cur = None
        else:
            continue
        path.append(part)
    return tuple(path)


def _show(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        return _kind(value)
    if isinstance(value, str):
        return repr(_short(value))
    return _short(json.dumps(value) if isinstance(value, bool) else str(value))


def _schema_problems(data: Any, errors: list[Any]) -> list[tuple[Path, str]]:
    merged: dict[Path, list[str]] = {}
    for err in errors:
        kind = err.get("type", "")
        path = _real_path(data, tuple(err.get("loc", ())), kind == "missing")
        if kind == "missing":
            message = "missing required field"
        elif kind == "too_short" and path == ("steps",):
            message = "a workflow needs at least one step"
        elif kind == "extra_forbidden":
            key = str(path[-1]) if path else ""
            model = _unwrap_model(_annotation_at(path[:-1]))
            names = _field_names(model) if model is not None else []
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            if close:
                message = f"unknown key '{_short(key)}'; did you mean '{close[0]}'?"
            else:
                message = f"unknown key '{_short(key)}' (allowed: {', '.join(names)})"
        else:
            message = str(err.get("msg", "invalid value"))
            for prefix in ("Value error, ", "Assertion failed, "):
                message = message.removeprefix(prefix)
            for subject in ("Input should", "Dictionary should", "List should"):
                if message.startswith(subject):
                    message = "should" + message[len(subject) :]
            if "input" in err and not isinstance(err["input"], dict):
                message += f", got {_show(err['input'])}"
        messages = merged.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    out = []
    for path, messages in merged.items():
        got = re.search(r", got [^,]*$", messages[0])
        if len(messages) > 1 and got and all(m.endswith(got.group()) for m in messages):
            messages = [m.removesuffix(got.group()) for m in messages]
            out.append((path, " or ".join(messages) + got.group()))
        else:
            out.append((path, " or ".join(messages)))
    return out


_PLACEHOLDER_FIELDS: dict[str, Any] = {
    "review": lambda: ReviewSpec.model_construct(),
    "undo": lambda: UndoSpec.model_construct(with_=None, handler=None, capture=None, agent=None),
    "route": lambda: RouteSpec.model_construct(candidates=[], threshold=0.0),
}


def _prune(work: dict[str, Any], path: Path) -> bool:
    """Make `work` valid at `path` by dropping or replacing the smallest sensible part.

    Returns False when the document is too broken for semantic checks.
    """
    if not path:
        return False
    head = path[0]
    if head == "name":
        work["name"] = "workflow"
        return True
    if head not in ("inputs", "agents", "steps"):
        work.pop(head, None)
        return True
    table = work.get(head)
    if len(path) < 2 or not isinstance(table, dict) or path[1] not in table:
        return False
    key = path[1]
    entry = table[key]
    if head == "inputs":
        table[key] = InputSpec()
    elif head == "agents":
        kind = entry.get("kind") if isinstance(entry, dict) else None
        table[key] = AgentSpec.model_construct(kind=kind if isinstance(kind, str) else None)
    elif not isinstance(entry, dict) or len(path) < 3:
        table[key] = StepSpec.model_construct()
    else:
        name = path[2]
        value = entry.get(name)
        if name == "needs" and isinstance(value, list) and len(path) >= 4:
            entry["needs"] = [n for n in value if isinstance(n, str)]
        elif name in _PLACEHOLDER_FIELDS:
            entry[name] = _PLACEHOLDER_FIELDS[name]()
        else:
            entry.pop(name, None)
    return True


def _lenient_spec(data: dict[str, Any], bad_paths: list[Path]) -> WorkflowSpec | None:
    """A spec with the invalid parts dropped, so semantic checks can run on the rest."""
    work = copy.deepcopy(data)
    for path in bad_paths:
        if not _prune(work, path):
            return None
    for _ in range(5):
        try:
            return WorkflowSpec.model_validate(work)
        except ValidationError as e:
            for err in e.errors():
                path = _real_path(work, tuple(err.get("loc", ())), err.get("type") == "missing")
                if not _prune(work, path):
                    return None
    return None


# --------------------------------------------------------------------------- inputs

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_INT_TEXT = re.compile(r"\s*[-+]?[0-9]+\s*")
_TYPE_WORDS = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean (true/false/1/0/yes/no)",
    "object": "JSON object",
    "array": "JSON array",
}


def _typed(kind: str, value: Any) -> Any:
    """Check an already typed (JSON) value; raises ValueError."""
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and math.isfinite(value)),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if not ok:
        raise ValueError
    return value


def _from_text(kind: str, text: str) -> Any:
    """Convert a `--input k=v` string; raises ValueError."""
    if kind == "string":
        return text
    if kind == "integer":
        if not _INT_TEXT.fullmatch(text):
            raise ValueError
        return int(text)
    if kind == "number":
        if _INT_TEXT.fullmatch(text):
            return int(text)
        number = float(text)
        if not math.isfinite(number):
            raise ValueError
        return number
    if kind == "boolean":
        return _BOOLS[text.strip().lower()]
    value = json.loads(text)
    if not isinstance(value, dict if kind == "object" else list):
        raise ValueError
    return value


def _convert(kind: str, value: Any, from_cli: bool) -> Any:
    try:
        if from_cli and isinstance(value, str):
            return _from_text(kind, value)
        return _typed(kind, value)
    except (ValueError, KeyError, TypeError, RecursionError):
        got = repr(_short(value)) if isinstance(value, str) else _short(_json_text(value))
        raise ValueError(f"expected {_TYPE_WORDS[kind]}, got {got}") from None


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def parse_inputs(
    spec: WorkflowSpec, raw: Mapping[str, Any], *, from_cli: bool = True
) -> dict[str, Any]:
    """Inputs of a run: `raw` converted to the declared types, defaults applied.

    `from_cli=True`: values are `--input k=v` strings (integer, number, boolean
    true/false/1/0/yes/no, object/array as JSON); already typed values are accepted too.
    `from_cli=False` (JSON APIs): values must already have the declared JSON type.
    Declared inputs that are neither given nor defaulted are None. Raises `InputError` with one
    line per problem (`input 'pr': expected integer, got 'abc'`); `.problems` holds the lines.
    """
    problems: list[str] = []
    result: dict[str, Any] = {}
    for name in raw:
        if name not in spec.inputs:
            hint = dag.suggest(str(name), list(spec.inputs))
            if not hint:
                declared = ", ".join(spec.inputs)
                hint = (
                    f" (declared: {declared})" if declared else " (this workflow takes no inputs)"
                )
            problems.append(f"input '{_short(str(name))}': unknown input{hint}")
    for name, decl in spec.inputs.items():
        if name in raw:
            try:
                result[name] = _convert(decl.type, raw[name], from_cli)
            except ValueError as e:
                problems.append(f"input '{name}': {e}")
        elif decl.default is not None:
            result[name] = copy.deepcopy(decl.default)
        elif decl.required:
            how = f" (pass --input {name}=VALUE)" if from_cli else ""
            problems.append(f"input '{name}': required{how}")
        else:
            result[name] = None
    if problems:
        problems = [_UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", p) for p in problems]
        error = InputError("\n".join(problems))
        error.problems = problems  # type: ignore[attr-defined]
        raise error
    return result


def _default_problems(spec: WorkflowSpec) -> list[tuple[Path, str]]:
    """Input defaults that do not have the declared type."""
    out: list[tuple[Path, str]] = []
    for name, decl in spec.inputs.items():
        if decl.default is not None:
            try:
                _typed(decl.type, decl.default)
            except ValueError:
                want = _TYPE_WORDS[decl.type].split(" (")[0]
                out.append(
                    (("inputs", name, "default"), f"expected {want}, got {_show(decl.default)}")
                )
    return out
