"""The reviews screen: every pending review, oldest first, with its proposal."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widget import Widget

from console.screens.base import FlowdeckScreen
from engine.views import Snapshot
from widgets.key_bar import KeyBar
from widgets.review_panel import ReviewPanel


class ReviewsScreen(FlowdeckScreen):
    """Approve (`a`) or reject (`r`) what waits for a person."""

    TITLE_TEXT = "reviews"
    FILTER_PLACEHOLDER = "reviews whose run, step, workflow, agent or operation contains…"

    DEFAULT_CSS = """
    ReviewsScreen ReviewPanel { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        panel = ReviewPanel(classes="panel")
        panel.border_title = "pending reviews · oldest first"
        yield panel
        yield from self.compose_filter()
        yield KeyBar()

    @property
    def main_widget(self) -> Widget:
        return self.query_one(ReviewPanel).table

    def on_mount(self) -> None:
        self.main_widget.focus()

    def show(self, snapshot: Snapshot) -> None:
        super().show(snapshot)
        self.query_one(ReviewPanel).show(
            snapshot.pending_reviews, snapshot.decided_reviews, snapshot.now
        )

    def apply_filter(self, text: str) -> None:
        self.query_one(ReviewPanel).filter_text = text
        if self.fd_app.snapshot is not None:
            self.show(self.fd_app.snapshot)
