"""The analytics screen: health components in detail, agent rankings, latency percentiles."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Static

from console.screens.base import FlowdeckScreen
from engine.views import Snapshot
from widgets.health import HealthScore
from widgets.key_bar import KeyBar
from widgets.latency_plot import LatencyPlot
from widgets.rankings import AgentRankings
from widgets.text import millis, percent


def totals_text(analytics: Any) -> Text:
    if analytics is None:
        return Text("")
    t = analytics.totals
    text = Text()
    text.append(f"{t.calls} calls", style="bold")
    text.append(
        f"  success {percent(t.success_rate)}  retries {t.retries}  mean {millis(t.mean_ms)}"
    )
    if t.total_tokens:
        text.append(f"  tokens {t.total_tokens}")
    return text


class AnalyticsScreen(FlowdeckScreen):
    """How the agents are doing over the last hour."""

    TITLE_TEXT = "analytics (last hour)"

    DEFAULT_CSS = """
    AnalyticsScreen #an-top { height: auto; max-height: 50%; }
    AnalyticsScreen #an-health { width: 1fr; height: auto; }
    AnalyticsScreen #an-agents { width: 1fr; height: 100%; min-height: 8; }
    AnalyticsScreen #an-plot { height: 1fr; }
    AnalyticsScreen.-narrow #an-top { layout: vertical; }
    """

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        with Horizontal(id="an-top"):
            with Vertical(id="an-health", classes="panel") as p:
                p.border_title = "health score"
                yield HealthScore(detailed=True)
                yield Static(id="an-totals")
            with Vertical(id="an-agents", classes="panel") as p:
                p.border_title = "agents · best first"
                yield AgentRankings()
        with Vertical(id="an-plot", classes="panel") as p:
            p.border_title = "latency per minute: P50 / P95 / P99"
            yield LatencyPlot()
        yield from self.compose_filter()
        yield KeyBar()

    @property
    def main_widget(self) -> Widget:
        return self.query_one(AgentRankings)

    def show(self, snapshot: Snapshot) -> None:
        super().show(snapshot)
        analytics = snapshot.analytics
        health = getattr(analytics, "health", None)
        self.query_one(HealthScore).show(health)
        self.query_one("#an-totals", Static).update(totals_text(analytics))
        self.query_one(AgentRankings).show(getattr(analytics, "rankings", None) or [])
        self.query_one(LatencyPlot).show(getattr(analytics, "series", None) or [])
