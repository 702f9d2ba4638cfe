"""StatusLine: the top line of every screen: where we are and what needs attention.

Shows the screen title, the health score (first: it is the headline figure), run counts by
status, pending reviews (oldest waiting time) and open breakers, so nothing waits unseen
whatever the screen. When the line does not fit, the counts lose their words (`● 4  ✓ 87`). Fed a
`engine.views.Snapshot` via `show()`.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.views import Snapshot
from widgets.text import SYMBOLS, duration

HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


class StatusLine(Static):
    """One line of counts and alerts."""

    DEFAULT_CSS = """
    StatusLine {
        dock: top;
        height: 1;
        background: $panel;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, title: str, *, id: str | None = None):
        super().__init__("", id=id)
        self.title_text = title
        """What the screen is."""
        self._key: tuple | None = None
        self._last: tuple[Snapshot, str] | None = None

    def show(self, snap: Snapshot, source: str = "") -> None:
        health = getattr(snap.analytics, "health", None)
        oldest = snap.pending_reviews[0].created_at if snap.pending_reviews else None
        key = (
            tuple(sorted(snap.run_counts.items())),
            snap.pending_count,
            int(snap.now - oldest) if oldest else None,
            len(snap.breakers),
            (health.score, health.status) if health else None,
            source,
            self.content_region.width,
        )
        self._last = (snap, source)
        if key == self._key:
            return
        self._key = key
        width = self.content_region.width
        compact = bool(width) and self._line(snap, "", compact=False).cell_len > width
        # Narrow: symbols and numbers, no words (the source label alone may be cut).
        text = self._line(snap, source, compact=compact)
        self.update(text, layout=False)

    def on_resize(self) -> None:
        if self._last is not None:
            self.show(*self._last)

    def _line(self, snap: Snapshot, source: str, *, compact: bool) -> Text:
        health = getattr(snap.analytics, "health", None)
        oldest = snap.pending_reviews[0].created_at if snap.pending_reviews else None
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("flowdeck ", style="bold")
        text.append(self.title_text, style="bold cyan")
        if health is not None:  # the headline figure: first, so no width cuts it off
            style = HEALTH_STYLE.get(health.status, "")
            text.append("  health ", style="dim")
            text.append(f"{health.score:.0f}", style=f"bold {style}")
        counts = snap.run_counts
        for status, style in (("running", "cyan"), ("succeeded", "green"), ("failed", "red")):
            if counts.get(status):
                label = "" if compact else f" {status}"
                text.append(f"  {SYMBOLS[status]} {counts[status]}{label}", style=style)
        if snap.pending_count:
            plural = "s" if snap.pending_count > 1 else ""
            label = "" if compact else f" review{plural}"
            text.append(f"  ◇ {snap.pending_count}{label}", style="bold yellow")
            if oldest is not None:
                age = duration(snap.now - oldest)
                text.append(f" ({age})" if compact else f" (oldest {age})", style="yellow")
        if snap.breakers:
            plural = "s" if len(snap.breakers) > 1 else ""
            label = "" if compact else f" open breaker{plural}"
            text.append(f"  ⚡ {len(snap.breakers)}{label}", style="bold red")
        if source:  # last: on a narrow terminal the counts and alerts matter more
            text.append(f"  {source}", style="dim")
        return text
