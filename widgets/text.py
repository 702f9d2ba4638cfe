"""Text helpers shared by the widgets: data shown literally, durations, status symbols.

Everything that came from an agent, a workflow file or the database goes through `plain()`:
it becomes a `rich.text.Text` (never parsed as markup) with control characters made visible,
so an output of `[red]x[/red]` or an escape sequence is displayed as those characters.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

SYMBOLS: dict[str, str] = {
    "pending": "○",
    "ready": "◌",
    "running": "●",
    "retrying": "↻",
    "waiting_review": "◇",
    "succeeded": "✓",
    "failed": "✗",
    "skipped": "–",
    "cancelled": "⊘",
    "rejected": "⊗",
    "interrupted": "⏹",
}
"""One symbol per run or step status (colour alone never carries the meaning)."""

STATUS_CLASS: dict[str, str] = {
    "pending": "muted",
    "ready": "muted",
    "running": "accent",
    "retrying": "warning",
    "waiting_review": "warning",
    "succeeded": "success",
    "failed": "error",
    "skipped": "muted",
    "cancelled": "warning",
    "rejected": "error",
    "interrupted": "warning",
}
"""Status -> one of the widgets' style families (success, error, warning, accent, muted)."""

FAMILY_STYLE: dict[str, str] = {
    "success": "green",
    "error": "bold red",
    "warning": "yellow",
    "accent": "bold cyan",
    "muted": "dim",
}
"""Rich styles of the style families, for widgets that draw rich Text."""


def plain(value: Any, *, single_line: bool = False, limit: int | None = None) -> Text:
    """`value` as literal text; `single_line` also turns newlines and tabs into `\\n`, `\\t`."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        text = to_json(value)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    pattern = _CONTROL_ALL if single_line else _CONTROL
    text = pattern.sub(_visible, text)
    return Text(text, no_wrap=single_line, end="")


def _visible(m: re.Match[str]) -> str:
    ch = m.group()
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch) or f"\\x{ord(ch):02x}"


def to_json(value: Any, *, indent: int | None = None) -> str:
    """JSON text of a value (non-JSON values through `str`)."""
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
    except (TypeError, ValueError):
        return str(value)


def status_text(status: str, *, symbol: bool = True) -> Text:
    """`✓ succeeded` in the status colour."""
    family = STATUS_CLASS.get(status, "muted")
    label = f"{SYMBOLS.get(status, '?')} {status}" if symbol else status
    return Text(label.replace("_", " "), style=FAMILY_STYLE[family], end="")


def duration(seconds: float | None) -> str:
    """Short human duration: 320ms, 4.2s, 3m07s, 2h05m."""
    if seconds is None:
        return "-"
    if seconds < 0:
        seconds = 0.0
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def ago(t: float | None, now: float) -> str:
    """`12s ago`, `3m04s ago`; `-` for no time."""
    if t is None:
        return "-"
    return f"{duration(max(0.0, now - t))} ago"


def clock(t: float | None) -> str:
    """Local wall-clock time of day."""
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t))


def percent(value: float | None) -> str:
    """0.953 -> `95.3%`; None -> `-`."""
    return "-" if value is None else f"{value * 100:.1f}%"


def millis(value: float | None) -> str:
    """A latency in milliseconds, compact."""
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.0f}s"
    if value >= 1000:
        return f"{value / 1000:.1f}s"
    return f"{value:.0f}ms"
