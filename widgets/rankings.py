"""AgentRankings: agents ranked by success rate, with calls and P95 latency.

Fed `engine.analytics.RankedAgent`s (rank, agent, calls, success_rate, p95_ms) via `show()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text

from widgets.live_table import LiveTable
from widgets.text import millis, percent, plain


def _rate_style(rate: float | None) -> str:
    if rate is None:
        return "dim"
    return "green" if rate >= 0.95 else "yellow" if rate >= 0.8 else "red"


class AgentRankings(LiveTable):
    """Best agents first."""

    DEFAULT_CSS = """
    AgentRankings {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor=False)
        self.empty = Text("no agent with enough calls yet", style="dim")

    def on_mount(self) -> None:
        self.add_column("#", key="rank")
        self.add_column("agent", key="agent", max_width=20, expand=True)
        self.add_column("success", key="success", justify="right")
        self.add_column("calls", key="calls", justify="right")
        self.add_column("P95", key="p95", justify="right")

    def show(self, rankings: Sequence[Any]) -> None:
        self.set_rows(
            [
                (
                    a.agent,
                    (
                        Text(str(a.rank), style="dim"),
                        plain(a.agent, single_line=True, limit=20),
                        Text(
                            percent(a.success_rate),
                            style=_rate_style(a.success_rate),
                            justify="right",
                        ),
                        Text(str(a.calls), justify="right"),
                        Text(millis(a.p95_ms), justify="right"),
                    ),
                )
                for a in rankings
            ]
        )
