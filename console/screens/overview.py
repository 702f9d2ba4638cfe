"""The overview: health, runs, the oldest pending reviews, agents, latency, breakers, events.

Layout follows the terminal: below 100 columns only the runs, the pending reviews and the
event tail are shown (the status line still carries the health score, review count and open
breakers; `4` shows the analytics); from 100 columns the health, agents and breakers column
and the latency plot join; from 160 everything gets more room.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widget import Widget

from console.screens.base import FlowdeckScreen
from engine.views import Snapshot
from widgets.breakers import BreakerList
from widgets.event_log import EventLog
from widgets.health import HealthScore
from widgets.key_bar import KeyBar
from widgets.latency_plot import LatencyPlot
from widgets.rankings import AgentRankings
from widgets.review_panel import ReviewPanel
from widgets.runs_table import RunsTable


class OverviewScreen(FlowdeckScreen):
    """Everything at a glance."""

    TITLE_TEXT = "overview"
    FILTER_PLACEHOLDER = "runs whose id, workflow or status contains…"

    DEFAULT_CSS = """
    OverviewScreen .panel { height: 1fr; }
    OverviewScreen #ov-top { height: 1fr; }
    OverviewScreen #ov-left { width: 36; }
    OverviewScreen #ov-center { width: 1fr; }
    OverviewScreen #health-panel { height: auto; }
    OverviewScreen #breakers-panel { height: auto; max-height: 8; }
    OverviewScreen #runs-panel { height: 3fr; }
    OverviewScreen #reviews-panel { height: 2fr; min-height: 6; }
    OverviewScreen #ov-bottom { height: 14; }
    OverviewScreen #plot-panel { width: 1fr; }
    OverviewScreen #events-panel { width: 1fr; }

    OverviewScreen.-narrow #ov-left { display: none; }
    OverviewScreen.-narrow #plot-panel { display: none; }
    OverviewScreen.-narrow #ov-bottom { height: 7; }
    OverviewScreen.-wide #ov-left { width: 44; }
    OverviewScreen.-wide #ov-bottom { height: 40%; }
    """

    BINDINGS = [
        Binding("x", "cancel_run", "Cancel run", id="overview.cancel_run"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        with Horizontal(id="ov-top"):
            with Vertical(id="ov-left"):
                with Vertical(id="health-panel", classes="panel") as p:
                    p.border_title = "health"
                    yield HealthScore()
                with Vertical(id="agents-panel", classes="panel") as p:
                    p.border_title = "agents"
                    yield AgentRankings()
                with Vertical(id="breakers-panel", classes="panel") as p:
                    p.border_title = "circuit breakers"
                    yield BreakerList()
            with Vertical(id="ov-center"):
                with Vertical(id="runs-panel", classes="panel") as p:
                    p.border_title = "runs"
                    yield RunsTable()
                with Vertical(id="reviews-panel", classes="panel") as p:
                    p.border_title = "pending reviews · oldest first · a approve  r reject  2 all"
                    yield ReviewPanel(compact=True)
        with Horizontal(id="ov-bottom"):
            with Vertical(id="plot-panel", classes="panel") as p:
                p.border_title = "latency P50 / P95 / P99"
                yield LatencyPlot()
            with Vertical(id="events-panel", classes="panel") as p:
                p.border_title = "events"
                yield EventLog()
        yield from self.compose_filter()
        yield KeyBar()

    @property
    def main_widget(self) -> Widget:
        return self.query_one(RunsTable)

    def on_mount(self) -> None:
        self.query_one(RunsTable).focus()

    def show(self, snapshot: Snapshot) -> None:
        super().show(snapshot)
        now = snapshot.now
        analytics = snapshot.analytics
        self.query_one(HealthScore).show(getattr(analytics, "health", None))
        self.query_one(AgentRankings).show(getattr(analytics, "rankings", None) or [])
        self.query_one(LatencyPlot).show(getattr(analytics, "series", None) or [])
        self.query_one(BreakerList).show(snapshot.breakers, now)
        self.query_one(RunsTable).show(snapshot.runs, now)
        counts = snapshot.run_counts
        total = sum(counts.values())
        shown = len(snapshot.runs)
        filt = self.fd_app.feed.request.runs_filter
        subtitle = f"{shown} matching “{filt}”" if filt else f"newest {shown} of {total}"
        runs_panel = self.query_one("#runs-panel")
        if runs_panel.border_subtitle != subtitle:  # setting it repaints the whole panel
            runs_panel.border_subtitle = subtitle
        self.query_one(ReviewPanel).show(snapshot.pending_reviews, snapshot.decided_reviews, now)
        panel = self.query_one("#reviews-panel")
        if panel.border_subtitle != (subtitle := f"{snapshot.pending_count} pending"):
            panel.border_subtitle = subtitle
        # The queue takes what it needs, the runs the rest; on a short terminal it stops at four
        # rows (its title and the status line still count every pending review).
        cap = 14 if self.size.height >= 30 else 8
        height = max(5, min(len(snapshot.pending_reviews) + 4, cap))
        if panel.styles.height is None or panel.styles.height.value != height:
            panel.styles.height = height
        self.query_one(EventLog).show(snapshot.events)

    def apply_filter(self, text: str) -> None:
        self.fd_app.feed.update(runs_filter=text)

    def on_runs_table_run_highlighted(self, event: RunsTable.RunHighlighted) -> None:
        # Read the run under the cursor along with the next snapshot, so `enter` shows it at once.
        if self.app.screen is self:
            self.fd_app.feed.update(run_id=event.run_id, urgent=False)

    def on_runs_table_run_chosen(self, event: RunsTable.RunChosen) -> None:
        event.stop()
        self.fd_app.open_run(event.run_id)

    def action_cancel_run(self) -> None:
        table = self.query_one(RunsTable)
        snap = self.fd_app.snapshot
        run = next((r for r in (snap.runs if snap else ()) if r.id == table.current_key), None)
        if run is None:
            self.notify("no run selected", severity="warning")
            return
        self.cancel_run(run)
