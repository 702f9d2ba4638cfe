"""RunsTable: the runs, newest first, with live status, progress n/m and duration.

Fed `engine.views.RunRow`s through `show(runs, now)`; `enter` posts `RunsTable.RunChosen`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
from textual.message import Message

from engine.views import RunRow
from widgets.live_table import LiveTable
from widgets.text import duration, plain, status_text


def progress_bar(done: int, total: int, width: int = 8) -> Text:
    """`████░░░░ 4/8`"""
    filled = 0 if total <= 0 else round(width * done / total)
    text = Text(no_wrap=True, end="")
    text.append("█" * filled, style="green")
    text.append("░" * (width - filled), style="dim")
    text.append(f" {done}/{total}")
    return text


def _red(text: Text) -> Text:
    text.stylize("red")
    return text


class RunsTable(LiveTable):
    """Runs with status, progress and duration."""

    DEFAULT_CSS = """
    RunsTable {
        height: 1fr;
        overflow-x: hidden;
    }
    """

    BINDINGS = [Binding("enter", "choose", "Open run", id="runs.open")]

    class RunChosen(Message):
        """The operator opened a run."""

        def __init__(self, table: RunsTable, run_id: str):
            super().__init__()
            self.table = table
            self.run_id = run_id
            """The chosen run."""

        @property
        def control(self) -> RunsTable:
            return self.table

    def on_mount(self) -> None:
        self.add_column("run", key="run")
        self.add_column("workflow", key="workflow", max_width=28)
        self.add_column("status", key="status")
        self.add_column("progress", key="progress")
        self.add_column("duration", key="duration", justify="right")
        self.add_column("error", key="error")

    def show(self, runs: Sequence[RunRow], now: float) -> None:
        self.set_rows(
            [
                (
                    r.id,
                    (
                        plain(r.id),
                        plain(r.workflow, single_line=True, limit=28),
                        status_text(r.status),
                        progress_bar(r.steps_done, r.steps_total),
                        Text(duration(r.duration(now)), justify="right"),
                        _red(plain(r.error or "", single_line=True, limit=60)),
                    ),
                )
                for r in runs
            ]
        )

    class RunHighlighted(Message):
        """The cursor moved to another run."""

        def __init__(self, table: RunsTable, run_id: str):
            super().__init__()
            self.table = table
            self.run_id = run_id
            """The run under the cursor."""

        @property
        def control(self) -> RunsTable:
            return self.table

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        if event.table is not self:
            return
        event.stop()
        if event.key is not None:
            self.post_message(self.RunHighlighted(self, event.key))

    def action_choose(self) -> None:
        key = self.current_key
        if key is not None:
            self.post_message(self.RunChosen(self, key))

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        if event.table is not self:
            return
        event.stop()
        self.post_message(self.RunChosen(self, event.key))
