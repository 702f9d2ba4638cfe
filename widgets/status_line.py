"""StatusLine: the top line of every screen: where we are and what needs attention.

Shows the screen title, run counts by status, pending reviews (oldest waiting time), open
breakers and the health score, so nothing waits unseen whatever the screen. Fed a
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
        )
        if key == self._key:
            return
        self._key = key
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("flowdeck ", style="bold")
        text.append(self.title_text, style="bold cyan")
        counts = snap.run_counts
        for status, style in (("running", "cyan"), ("succeeded", "green"), ("failed", "red")):
            if counts.get(status):
                text.append(f"  {SYMBOLS[status]} {counts[status]} {status}", style=style)
        if snap.pending_count:
            text.append(f"  ◇ {snap.pending_count} review", style="bold yellow")
            text.append("s" if snap.pending_count > 1 else "", style="bold yellow")
            if oldest is not None:
                text.append(f" (oldest {duration(snap.now - oldest)})", style="yellow")
        if snap.breakers:
            text.append(f"  ⚡ {len(snap.breakers)} open breaker", style="bold red")
            text.append("s" if len(snap.breakers) > 1 else "", style="bold red")
        if health is not None:
            style = HEALTH_STYLE.get(health.status, "")
            text.append("  health ", style="dim")
            text.append(f"{health.score:.0f}", style=f"bold {style}")
        if source:  # last: on a narrow terminal the counts and alerts matter more
            text.append(f"  {source}", style="dim")
        self.update(text, layout=False)
