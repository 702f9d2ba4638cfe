"""UndoHistory: the undo log, newest first, with status and time left in the undo window.

Entries that cannot be undone say why (expired, already undone, never done). `u` posts
`UndoHistory.UndoRequested` for the selected entry (the screen confirms and performs it);
`enter` posts `UndoHistory.DetailRequested`. The result of the last undo is shown under the
list by `show_result()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from engine.views import UndoRow
from widgets.live_table import LiveTable
from widgets.text import ago, clock, duration, plain, to_json

STATUS_STYLE = {
    "done": "green",
    "undone": "magenta",
    "undoing": "yellow",
    "failed": "red",
    "prepared": "dim",
    "void": "dim",
}


def entry_detail(entry: UndoRow, now: float) -> Group:
    """Everything about one entry, data shown literally."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("entry", plain(f"#{entry.id}  {entry.run_id}/{entry.step_id}"))
    grid.add_row("action", plain(f"{entry.agent or '-'}  {entry.operation or ''}"))
    if entry.description:
        grid.add_row("undo does", plain(entry.description))
    grid.add_row("status", Text(entry.status, style=STATUS_STYLE.get(entry.status, "")))
    grid.add_row("recorded", Text(f"{clock(entry.created_at)} ({ago(entry.created_at, now)})"))
    why = entry.why_not(now)
    if why is None:
        left = entry.time_left(now)
        grid.add_row(
            "undoable",
            Text("yes" + (f", {duration(left)} left" if left is not None else ""), style="green"),
        )
    else:
        grid.add_row("undoable", Text(f"no: {why}", style="yellow"))
    if entry.undone_at:
        grid.add_row("undone", plain(f"{clock(entry.undone_at)} by {entry.undone_by or '-'}"))
    if entry.result is not None:
        grid.add_row("result", plain(to_json(entry.result, indent=2)))
    if entry.error:
        grid.add_row("error", plain(entry.error, limit=2000))
    return Group(grid)


class UndoHistory(Vertical):
    """The undo log."""

    DEFAULT_CSS = """
    UndoHistory {
        height: 1fr;
    }
    UndoHistory > LiveTable {
        height: auto;
        max-height: 60%;
        min-height: 3;
    }
    UndoHistory.-compact > LiveTable {
        height: 1fr;
        max-height: 100%;
    }
    UndoHistory > #undo-detail {
        height: 1fr;
        border-top: solid $foreground 20%;
        padding: 0 1;
    }
    UndoHistory > #undo-result {
        height: auto;
        padding: 0 1;
    }
    UndoHistory.-compact > #undo-detail, UndoHistory.-compact > #undo-result {
        display: none;
    }
    """

    BINDINGS = [
        Binding("u", "undo", "Undo", id="history.undo"),
        Binding("enter", "detail", "Detail", show=False, id="history.detail"),
    ]

    class UndoRequested(Message):
        """The operator asked to undo an entry (not yet confirmed)."""

        def __init__(self, panel: UndoHistory, entry: UndoRow):
            super().__init__()
            self.panel = panel
            self.entry = entry
            """The entry as the operator saw it."""

        @property
        def control(self) -> UndoHistory:
            return self.panel

    class DetailRequested(Message):
        """The operator wants everything about an entry."""

        def __init__(self, panel: UndoHistory, entry: UndoRow):
            super().__init__()
            self.panel = panel
            self.entry = entry
            """The entry to show."""

        @property
        def control(self) -> UndoHistory:
            return self.panel

    def __init__(self, *, compact: bool = False, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.set_class(compact, "-compact")
        self.filter_text = ""
        """Only entries whose run, step, agent, operation or status contain this."""
        self._entries: tuple[UndoRow, ...] = ()
        self._now = 0.0
        self._detail_key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield LiveTable(id="undo-table")
        yield Static(id="undo-detail")
        yield Static(id="undo-result")

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def on_mount(self) -> None:
        t = self.table
        t.add_column("#", key="id")
        t.add_column("when", key="when")
        t.add_column("run/step", key="step")
        t.add_column("undo does", key="action", expand=True)
        t.add_column("status", key="status")
        t.add_column("undo", key="left")

    @property
    def selected(self) -> UndoRow | None:
        key = self.table.current_key
        return next((e for e in self._entries if str(e.id) == key), None)

    def show(self, entries: Sequence[UndoRow], now: float) -> None:
        self._now = now
        needle = self.filter_text.lower()
        self._entries = tuple(
            e
            for e in entries
            if not needle
            or needle
            in " ".join(
                str(v) for v in (e.run_id, e.step_id, e.agent, e.operation, e.status, e.description)
            ).lower()
        )
        rows = []
        for e in self._entries:
            why = e.short_why(now)
            if why is None:
                left = e.time_left(now)
                undo = Text(
                    f"{duration(left)} left" if left is not None else "available", style="green"
                )
            else:
                undo = Text(why, style="dim")
            rows.append(
                (
                    str(e.id),
                    (
                        Text(str(e.id), style="dim"),
                        Text(clock(e.created_at)),
                        plain(f"{e.run_id[:8]}/{e.step_id}", single_line=True, limit=36),
                        plain(e.description or e.operation or "-", single_line=True, limit=44),
                        Text(e.status, style=STATUS_STYLE.get(e.status, "")),
                        undo,
                    ),
                )
            )
        self.table.set_rows(rows)
        self._show_detail()

    def show_result(self, text: Text) -> None:
        """Show the outcome of the last undo under the list."""
        self.query_one("#undo-result", Static).update(text)

    def _show_detail(self) -> None:
        entry = self.selected
        key = (entry, int(self._now))
        if key == self._detail_key:
            return
        self._detail_key = key
        widget = self.query_one("#undo-detail", Static)
        widget.update(
            entry_detail(entry, self._now) if entry else Text("no undo entries", style="dim")
        )

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        event.stop()
        self._show_detail()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_detail()

    def action_undo(self) -> None:
        entry = self.selected
        if entry is None:
            self.notify("no undo entry selected", severity="warning")
            return
        self.post_message(self.UndoRequested(self, entry))

    def action_detail(self) -> None:
        entry = self.selected
        if entry is not None:
            self.post_message(self.DetailRequested(self, entry))
