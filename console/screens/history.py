"""The undo history screen: entries with status and time left; `u` undoes after a confirm."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widget import Widget

from console.screens.base import FlowdeckScreen
from engine.views import Snapshot
from widgets.key_bar import KeyBar
from widgets.undo_panel import UndoHistory


class HistoryScreen(FlowdeckScreen):
    """What can still be taken back."""

    TITLE_TEXT = "undo history"
    FILTER_PLACEHOLDER = "entries whose run, step, action or status contains…"

    DEFAULT_CSS = """
    HistoryScreen UndoHistory { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        panel = UndoHistory(classes="panel")
        panel.border_title = "undo history · newest first"
        yield panel
        yield from self.compose_filter()
        yield KeyBar()

    @property
    def main_widget(self) -> Widget:
        return self.query_one(UndoHistory).table

    def on_mount(self) -> None:
        self.main_widget.focus()

    def show(self, snapshot: Snapshot) -> None:
        super().show(snapshot)
        self.query_one(UndoHistory).show(snapshot.undo, snapshot.now)

    def apply_filter(self, text: str) -> None:
        self.query_one(UndoHistory).filter_text = text
        if self.fd_app.snapshot is not None:
            self.show(self.fd_app.snapshot)
