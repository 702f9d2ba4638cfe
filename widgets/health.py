"""HealthScore: the 0-100 health score, its status, and the components it is made of.

Fed an `engine.analytics.HealthReport` (or None before the first computation) through
`show()`. The components (success, latency, breakers, reviews) are listed under the score
with a bar and their points; each one's one-line reason is in the tooltip, or in a third
column with `detailed=True`.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from widgets.text import plain

STATUS_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}


class HealthScore(Static):
    """The health score panel."""

    DEFAULT_CSS = """
    HealthScore {
        height: auto;
        min-height: 3;
        padding: 0 1;
    }
    """

    def __init__(
        self, *, detailed: bool = False, id: str | None = None, classes: str | None = None
    ):
        super().__init__("", id=id, classes=classes)
        self.detailed = detailed
        """Show each component's reason next to it."""
        self.report: Any = None
        """The HealthReport shown (None: not computed yet)."""
        self._shown = False

    def show(self, report: Any) -> None:
        if report == self.report and self._shown:
            return
        layout = not self._shown or (report is None) != (self.report is None)
        self._shown = True
        self.report = report
        self.update(self._render_report(report, self.detailed), layout=layout)
        self.tooltip = self._tooltip_for(report)

    @staticmethod
    def _render_report(report: Any, detailed: bool = False) -> Table | Text:
        if report is None:
            return Text("health: computing…", style="dim")
        grid = Table.grid(padding=(0, 1), expand=not detailed)
        grid.add_column(justify="left", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        if detailed:
            grid.add_column(justify="left")
        style = STATUS_STYLE.get(report.status, "bold")
        head = Text.assemble(
            (f"{report.score:.0f}", style), ("/100 ", "dim"), (report.status, style)
        )
        grid.add_row(head, "", *([""] if detailed else []))
        for c in report.components:
            cells = [
                Text.assemble((f"{c.name:<9}", ""), _bar(c.value, 8)),
                Text(f"{c.points:.0f}/{c.weight:.0f}", style="dim"),
            ]
            if detailed:
                cells.append(plain(c.detail))
            grid.add_row(*cells)
        return grid

    @staticmethod
    def _tooltip_for(report: Any) -> Text | None:
        if report is None:
            return None
        text = Text()
        for i, c in enumerate(report.components):
            if i:
                text.append("\n")
            text.append(f"{c.name}: ", style="bold")
            text.append_text(plain(c.detail, single_line=True))
        return text


def _bar(value: float, width: int) -> Text:
    filled = max(0, min(width, round(value * width)))
    style = "green" if value >= 0.9 else "yellow" if value >= 0.7 else "red"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"))
