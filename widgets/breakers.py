"""BreakerList: circuit breakers that are open or half-open (an empty list says so).

Fed `engine.views.BreakerRow`s via `show(breakers, now)`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static

from engine.views import BreakerRow
from widgets.text import ago, plain

STATE_STYLE = {"open": "bold red", "half_open": "yellow", "half-open": "yellow"}


class BreakerList(Static):
    """Open circuit breakers."""

    DEFAULT_CSS = """
    BreakerList {
        height: auto;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__("", id=id, classes=classes)
        self._shown: tuple | None = None
        self._count = -1

    def show(self, breakers: Sequence[BreakerRow], now: float) -> None:
        key = (tuple(breakers), int(now))
        if key == self._shown:
            return
        self._shown = key
        layout = len(breakers) != self._count
        self._count = len(breakers)
        if not breakers:
            self.update(Text("✓ all circuit breakers closed", style="green"), layout=layout)
            return
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, b in enumerate(breakers):
            if i:
                text.append("\n")
            text.append(
                f"⚡ {b.state.replace('_', '-'):<9} ", style=STATE_STYLE.get(b.state, "yellow")
            )
            text.append_text(plain(b.key, single_line=True, limit=40))
            text.append(f"  {b.failures} failures, opened {ago(b.opened_at, now)}", style="dim")
            if b.detail:
                text.append("  ")
                text.append_text(plain(b.detail, single_line=True, limit=60))
        self.update(text, layout=layout)
