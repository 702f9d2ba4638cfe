"""ReviewPanel: pending reviews, oldest first, with the proposal of the selected one.

Each pending review shows its age, run and step, the operation, the confidence and the time
left; the selected one's proposal (rendered inputs, reason, confidence, route candidates) is
shown below the list, and recent decisions (auto-approvals with their reason) under it.
`a` approve and `r` reject post `ReviewPanel.Decided`; `enter` posts
`ReviewPanel.DetailRequested`. The panel does not decide anything itself: the screen does
(and asks for a comment first on reject). A decision made elsewhere disappears with the next
`show()`. `compact=True` shows the list only (for the overview).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from engine.views import ReviewRow
from widgets.live_table import LiveTable
from widgets.text import ago, duration, plain, to_json


def confidence_text(value: float | None, justify: str = "right") -> Text:
    if value is None:
        return Text("-", style="dim", justify=justify)  # type: ignore[arg-type]
    style = "green" if value >= 0.8 else "yellow" if value >= 0.5 else "red"
    return Text(f"{value:.2f}", style=style, justify=justify)  # type: ignore[arg-type]


def proposal(review: ReviewRow, now: float) -> Group:
    """The full proposal of a review, every data field shown literally."""
    head = Text(no_wrap=False)
    head.append(f"review #{review.id} ", style="bold")
    head.append(f"({review.kind}) ", style="dim")
    head.append_text(plain(f"{review.run_id}/{review.step_id}"))
    if review.workflow:
        head.append("  workflow ", style="dim")
        head.append_text(plain(review.workflow))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("agent", plain(f"{review.agent or '-'}  {review.operation or ''}"))
    if review.reason:
        grid.add_row("reason", plain(review.reason))
    grid.add_row("confidence", confidence_text(review.confidence, "left"))
    waited = ago(review.created_at, now)
    if review.expires_at is not None:
        left = review.expires_at - now
        waited += (
            f", {duration(left)} left (then {review.on_timeout or 'reject'})"
            if left > 0
            else f", expired (on timeout: {review.on_timeout or 'reject'})"
        )
    grid.add_row("waiting", Text(waited))
    if review.candidates:
        grid.add_row("candidates", _candidates(review.candidates))
    if review.status != "pending":
        who = "auto (learned preference)" if review.auto else (review.reviewer or "-")
        grid.add_row("decision", plain(f"{review.status} by {who}"))
        if review.comment:
            grid.add_row("comment", plain(review.comment))
    grid.add_row("inputs", plain(to_json(review.params, indent=2)))
    return Group(head, grid)


def _candidates(candidates: object) -> Text:
    if not isinstance(candidates, list):
        return plain(candidates)
    text = Text()
    for i, c in enumerate(candidates):
        if i:
            text.append("\n")
        if isinstance(c, dict):
            name = c.get("name") or c.get("target") or c.get("agent")
            text.append_text(plain(f"{name}"))
            if c.get("target") and c.get("target") != name:
                text.append(" → ", style="dim")
                text.append_text(plain(c["target"]))
            score = c.get("confidence", c.get("score"))
            if isinstance(score, int | float):
                text.append(" ")
                text.append_text(confidence_text(float(score), "left"))
        else:
            text.append_text(plain(c))
    return text


def decided_line(review: ReviewRow, now: float) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    approved = review.status == "approved"
    text.append("✓ " if approved else "✗ ", style="green" if approved else "red")
    text.append("auto-" if review.auto else "", style="magenta")
    text.append(f"{review.status:<9}", style="green" if approved else "red")
    text.append(" ")
    text.append_text(plain(f"{review.run_id}/{review.step_id}", single_line=True))
    if review.reviewer and not review.auto:
        text.append(" by ", style="dim")
        text.append_text(plain(review.reviewer, single_line=True, limit=24))
    if review.choice:
        text.append(" → ", style="dim")
        text.append_text(plain(review.choice, single_line=True, limit=24))
    why = review.comment or (review.reason if review.auto else None)
    if why:
        text.append("  ")
        text.append_text(plain(why, single_line=True, limit=90))
    text.append(f"  {ago(review.decided_at, now)}", style="dim")
    return text


class ReviewPanel(Vertical):
    """Pending reviews and their proposals."""

    DEFAULT_CSS = """
    ReviewPanel {
        height: 1fr;
    }
    ReviewPanel > LiveTable {
        height: auto;
        max-height: 40%;
        min-height: 3;
    }
    ReviewPanel.-compact > LiveTable {
        height: 1fr;
        max-height: 100%;
    }
    ReviewPanel > #review-detail {
        height: 1fr;
        border-top: solid $foreground 20%;
        padding: 0 1;
    }
    ReviewPanel > #review-decided {
        height: auto;
        max-height: 7;
        border-top: solid $foreground 20%;
        padding: 0 1;
    }
    ReviewPanel.-compact > #review-detail, ReviewPanel.-compact > #review-decided {
        display: none;
    }
    """

    BINDINGS = [
        Binding("a", "decide('approve')", "Approve", id="reviews.approve"),
        Binding("r", "decide('reject')", "Reject", id="reviews.reject"),
        Binding("enter", "detail", "Detail", id="reviews.detail"),
    ]

    class Decided(Message):
        """The operator approved or rejected the selected review (not yet applied)."""

        def __init__(self, panel: ReviewPanel, review: ReviewRow, decision: str):
            super().__init__()
            self.panel = panel
            self.review = review
            """The review as the operator saw it."""
            self.decision = decision
            """`approve` or `reject`."""

        @property
        def control(self) -> ReviewPanel:
            return self.panel

    class DetailRequested(Message):
        """The operator wants the whole proposal of a review."""

        def __init__(self, panel: ReviewPanel, review: ReviewRow):
            super().__init__()
            self.panel = panel
            self.review = review
            """The review to show."""

        @property
        def control(self) -> ReviewPanel:
            return self.panel

    def __init__(self, *, compact: bool = False, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.set_class(compact, "-compact")
        self.filter_text = ""
        """Only reviews whose run, step, workflow, agent or operation contain this."""
        self._reviews: tuple[ReviewRow, ...] = ()
        self._decided: tuple[ReviewRow, ...] = ()
        self._now = 0.0
        self._detail_key: tuple | None = None
        self._decided_key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield LiveTable(id="review-table")
        yield VerticalScroll(Static(id="review-proposal"), id="review-detail")
        yield Static(id="review-decided")

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def on_mount(self) -> None:
        table = self.table
        table.add_column("#", key="id")
        table.add_column("waiting", key="age")
        table.add_column("run/step", key="step")
        table.add_column("operation", key="operation", expand=True)
        table.add_column("conf", key="confidence")
        table.add_column("left", key="left")

    @property
    def selected(self) -> ReviewRow | None:
        """The review under the cursor."""
        key = self.table.current_key
        return next((r for r in self._reviews if str(r.id) == key), None)

    def show(self, pending: Sequence[ReviewRow], decided: Sequence[ReviewRow], now: float) -> None:
        self._now = now
        needle = self.filter_text.lower()
        self._reviews = tuple(
            r
            for r in pending
            if not needle
            or needle
            in " ".join(
                str(v) for v in (r.run_id, r.step_id, r.workflow, r.agent, r.operation, r.kind)
            ).lower()
        )
        self._decided = tuple(decided)
        rows = []
        for r in self._reviews:
            left = "-" if r.expires_at is None else duration(max(0.0, r.expires_at - now))
            rows.append(
                (
                    str(r.id),
                    (
                        Text(str(r.id), style="dim"),
                        Text(duration(now - r.created_at), justify="right"),
                        plain(f"{r.run_id[:8]}/{r.step_id}", single_line=True, limit=40),
                        plain(r.operation or r.agent or "-", single_line=True, limit=32),
                        confidence_text(r.confidence),
                        Text(left, justify="right"),
                    ),
                )
            )
        self.table.set_rows(rows)
        if self.border_subtitle != (subtitle := f"{len(self._reviews)} pending"):
            self.border_subtitle = subtitle
        self._show_detail()
        decided_key = (self._decided[:5], int(now))
        if decided_key == self._decided_key or self.has_class("-compact"):
            return
        self._decided_key = decided_key
        decided_widget = self.query_one("#review-decided", Static)
        if self._decided:
            decided_widget.update(
                Group(
                    Text("recent decisions", style="bold"),
                    *(decided_line(r, now) for r in self._decided),
                )
            )
        else:
            decided_widget.update(Text("no decisions yet", style="dim"))

    def _show_detail(self) -> None:
        if self.has_class("-compact"):
            return
        review = self.selected
        key = (review, int(self._now))
        if key == self._detail_key:
            return
        self._detail_key = key
        proposal_widget = self.query_one("#review-proposal", Static)
        if review is None:
            proposal_widget.update(Text("nothing waits for a review", style="dim"))
        else:
            proposal_widget.update(proposal(review, self._now))

    def on_live_table_highlighted(self, event: LiveTable.Highlighted) -> None:
        event.stop()
        self._show_detail()

    def on_live_table_selected(self, event: LiveTable.Selected) -> None:
        event.stop()
        self.action_detail()

    def action_decide(self, decision: str) -> None:
        review = self.selected
        if review is None:
            self.notify("no pending review selected", severity="warning")
            return
        self.post_message(self.Decided(self, review, decision))

    def action_detail(self) -> None:
        review = self.selected
        if review is not None:
            self.post_message(self.DetailRequested(self, review))
