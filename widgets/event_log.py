"""EventLog: the most recent engine events, newest at the bottom.

Fed `engine.views.EventRow`s via `show()`; shows as many as fit. Event data is data: it is
shown literally. Drawn with the Line API: each event's line is rendered once (kept by event
id while the width and colours stay), and a new tail refreshes only the rows whose event
changed, so a busy engine's events cost a line each rather than a render of the whole panel.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from engine.views import EventRow
from widgets.base_style import BaseStyle
from widgets.text import clock, plain

KIND_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "rejected": "red",
    "retrying": "yellow",
    "waiting_review": "yellow",
    "cancelled": "yellow",
    "running": "cyan",
    "decided": "magenta",
    "undone": "magenta",
}
DATA_KEYS = ("error", "reason", "decision", "attempt", "wait", "command", "workflow")


def event_line(ev: EventRow) -> Text:
    """One event as a line of text."""
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    text.append(clock(ev.ts) + " ", style="dim")
    style = KIND_STYLE.get(ev.kind.rsplit(".", 1)[-1], "")
    text.append_text(plain(ev.kind, single_line=True))
    text.stylize(style, len(text) - len(ev.kind))
    if ev.run_id:
        text.append(" ")
        text.append_text(plain(ev.run_id, single_line=True))
    if ev.step_id:
        text.append("/", style="dim")
        text.append_text(plain(ev.step_id, single_line=True))
    data = ev.data if isinstance(ev.data, dict) else {}
    for key in DATA_KEYS:
        if key in data and data[key] not in (None, ""):
            text.append(f" {key}=", style="dim")
            text.append_text(plain(data[key], single_line=True, limit=80))
    return text


class EventLog(BaseStyle, Widget):
    """The event tail."""

    DEFAULT_CSS = """
    EventLog {
        height: 1fr;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._events: tuple[EventRow, ...] = ()
        self._lines: dict[int, Strip] = {}
        self._lines_for: tuple | None = None

    def show(self, events: Sequence[EventRow]) -> None:
        last = (self._events[-1].id if self._events else None, len(self._events))
        events = tuple(events)
        if (events[-1].id if events else None, len(events)) == last:
            return
        before = self._shown()
        self._events = events
        after = self._shown()
        if not before or not after:  # to or from "no events yet"
            self.refresh()
            return
        changed = [
            y
            for y in range(max(len(before), len(after)))
            if (before[y].id if y < len(before) else None)
            != (after[y].id if y < len(after) else None)
        ]
        if changed:
            top = self.styles.gutter.top  # content rows start below the top padding/border
            height = changed[-1] - changed[0] + 1
            self.refresh(Region(0, top + changed[0], self.size.width, height))

    def _shown(self) -> tuple[EventRow, ...]:
        height = self.content_size.height
        return self._events[-height:] if height > 0 else ()

    def render_line(self, y: int) -> Strip:
        width = self.content_size.width
        style = self.base_style
        if (width, style) != self._lines_for:  # resized or restyled: render lines again
            self._lines.clear()
            self._lines_for = (width, style)
        shown = self._shown()
        if not shown:
            if y == 0 and self._events == ():
                return self._strip(Text("no events yet", style="dim"), width, style)
            return Strip.blank(width, style)
        if y >= len(shown):
            return Strip.blank(width, style)
        ev = shown[y]
        strip = self._lines.get(ev.id)
        if strip is None:
            if len(self._lines) > 4 * max(64, len(shown)):
                self._lines.clear()
            strip = self._lines[ev.id] = self._strip(event_line(ev), width, style)
        return strip

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        text.no_wrap = True
        text.end = ""
        text.truncate(width, overflow="ellipsis", pad=True)
        segments = [
            Segment(seg.text, style + seg.style if seg.style else style)
            for seg in text.render(self.app.console)
        ]
        return Strip(segments, width).simplify()
