"""Helpers for console tests: screen text, waiting on a condition, gated python steps."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Callable
from typing import Any

from textual.app import App

GATES: dict[str, asyncio.Event] = {}
"""Named events a `gate` step waits on (tests set them)."""


async def gate(name: str, **kwargs: Any) -> dict[str, Any]:
    """A python step that runs until the test opens gate `name`."""
    event = GATES.setdefault(name, asyncio.Event())
    await event.wait()
    return {"gate": name, **kwargs}


async def echo(value: Any = None, **kwargs: Any) -> dict[str, Any]:
    return {"value": value, **kwargs}


async def fail(message: str = "boom") -> dict[str, Any]:
    raise RuntimeError(message)


_TEXT = re.compile(
    r'<text[^>]*\sx="([\d.]+)"\s+y="([\d.]+)"\s+textLength="([\d.]+)"[^>]*>(.*?)</text>', re.S
)


def screen_text(app: App) -> str:
    """The visible screen as plain text lines (placed by column from the SVG screenshot)."""
    svg = app.export_screenshot()
    found = [
        (float(x), float(y), float(length), html.unescape(body).replace("\xa0", " "))
        for x, y, length, body in _TEXT.findall(svg)
    ]
    widths = [length / len(body) for _, _, length, body in found if body]
    cell = min(widths) if widths else 1.0
    rows: dict[float, dict[int, str]] = {}
    for x, y, _, body in found:
        row = rows.setdefault(y, {})
        col = round(x / cell)
        for i, ch in enumerate(body):
            row[col + i] = ch
    lines = []
    for y in sorted(rows):
        row = rows[y]
        lines.append("".join(row.get(i, " ") for i in range(max(row) + 1)).rstrip())
    return "\n".join(lines)


async def wait_for(
    pilot: Any, predicate: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    """Pause the pilot until `predicate()` holds (generous timeout only to avoid hangs)."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


FLAKY: dict[str, int] = {}
"""Calls so far per `flaky` name."""


async def flaky(name: str, fails: int = 1) -> dict[str, Any]:
    """Fails (retryably) the first `fails` calls, then succeeds."""
    from engine.errors import ErrorClass, StepError

    FLAKY[name] = FLAKY.get(name, 0) + 1
    if FLAKY[name] <= fails:
        raise StepError(f"flaky {name} call {FLAKY[name]}", ErrorClass.CONNECTION, retryable=True)
    return {"calls": FLAKY[name]}


async def text(value: str) -> str:
    """A python step whose output is a bare JSON string."""
    return value
