"""EventLog: the most recent engine events, newest at the bottom.

Fed `engine.views.EventRow`s via `show()`; shows as many as fit. Event data is data: it is
shown literally.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from engine.views import EventRow
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


class EventLog(Widget):
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

    def show(self, events: Sequence[EventRow]) -> None:
        last = (self._events[-1].id if self._events else None, len(self._events))
        events = tuple(events)
        if (events[-1].id if events else None, len(events)) == last:
            return
        self._events = events
        self.refresh()

    def render(self) -> Text:
        height = max(1, self.content_size.height)
        lines = [event_line(ev) for ev in self._events[-height:]]
        if not lines:
            return Text("no events yet", style="dim")
        text = Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text
