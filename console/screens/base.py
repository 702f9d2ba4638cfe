"""What every console screen shares: the status line, snapshots in, `/` filter, `esc` back,
and the operator actions (decide a review, undo an entry, cancel a run) with their dialogs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget

from console.screens.dialogs import ChoiceScreen, CommentScreen, ConfirmScreen, DetailScreen
from engine.errors import FlowdeckError
from engine.views import ReviewRow, RunRow, Snapshot, UndoRow
from widgets.filter_bar import FilterBar
from widgets.review_panel import ReviewPanel, proposal
from widgets.status_line import StatusLine
from widgets.text import plain
from widgets.undo_panel import UndoHistory, entry_detail

if TYPE_CHECKING:
    from console.app import FlowdeckApp


class FlowdeckScreen(Screen):
    """A screen fed snapshots by the app."""

    TITLE_TEXT = ""
    FILTER_PLACEHOLDER = "filter"

    DEFAULT_CSS = """
    FlowdeckScreen .panel {
        border: round $foreground 25%;
        border-title-color: $foreground 80%;
        border-title-style: bold;
        border-subtitle-color: $foreground 50%;
    }
    FlowdeckScreen .panel:focus-within {
        border: round $accent;
    }
    """

    BINDINGS = [
        Binding("slash", "filter", "Filter", id="screen.filter"),
        Binding("escape", "back", "Back", id="screen.back"),
    ]

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-normal"), (160, "-wide")]

    focused: Reactive[Widget | None] = Reactive(None, repaint=False)
    """The focused widget. Textual's screen repaints all of itself when it changes (a focus
    move then costs a full paint, 40-60 ms on a busy overview); the widgets whose look
    depends on the focus repaint themselves (their styles change), so here it does not."""

    @property
    def fd_app(self) -> FlowdeckApp:
        return self.app  # type: ignore[return-value]

    ready = False
    """Composed and mounted: safe to show snapshots."""

    @on(events.Mount)
    def _mark_ready(self) -> None:
        self.ready = True

    @on(events.Unmount)
    def _mark_gone(self) -> None:
        self.ready = False

    def compose_status(self) -> ComposeResult:
        yield StatusLine(self.TITLE_TEXT)

    def compose_filter(self) -> ComposeResult:
        yield FilterBar(self.FILTER_PLACEHOLDER)

    def show(self, snapshot: Snapshot) -> None:
        """Show a new snapshot (called by the app; subclasses add their panels)."""
        self.query_one(StatusLine).show(snapshot, self.fd_app.source_label)

    _styled_for: tuple | None = None

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        # Textual restyles the whole screen on every push, which throws away every widget's
        # rendered lines: the run screen then costs a full render instead of redrawing the
        # widgets whose data changed. Its styles change only with the CSS (theme), the size
        # or the terminal's focus, so the restyle is skipped while those stay the same.
        # (This handler runs before Screen's own, which reads `refresh_styles`.)
        key = self.style_key()
        if key == self._styled_for:
            event.refresh_styles = False
        self._styled_for = key
        self.fd_app.screen_shown(self)

    def style_key(self) -> tuple:
        """What the screen's styles depend on besides its own state (see `on_screen_resume`)."""
        app = self.app
        return (app.theme, getattr(app, "_css_update_count", object()), app.size, app.app_focus)

    @property
    def main_widget(self) -> Widget | None:
        """What gets the focus back after the filter."""
        return None

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    @on(FilterBar.Changed)
    def _filter_changed(self, event: FilterBar.Changed) -> None:
        self.apply_filter(event.value)

    @on(FilterBar.Done)
    def _filter_done(self, event: FilterBar.Done) -> None:
        if self.main_widget is not None:
            self.main_widget.focus()

    def apply_filter(self, text: str) -> None:
        """Filter what the screen lists."""

    def action_back(self) -> None:
        self.fd_app.back()

    # ------------------------------------------------------------------ actions

    def report(self, error: Exception) -> None:
        message = (
            str(error) if isinstance(error, FlowdeckError) else f"{type(error).__name__}: {error}"
        )
        self.notify(message, severity="error", title="not done", markup=False)

    @on(ReviewPanel.Decided)
    def _review_decided(self, event: ReviewPanel.Decided) -> None:
        event.stop()
        self.decide_review(event.review, event.decision)

    @on(ReviewPanel.DetailRequested)
    def _review_detail(self, event: ReviewPanel.DetailRequested) -> None:
        event.stop()
        now = self.fd_app.now()
        self.app.push_screen(
            DetailScreen(f"review #{event.review.id}", proposal(event.review, now))
        )

    @work(group="actions")
    async def decide_review(self, review: ReviewRow, decision: str) -> None:
        comment: str | None = None
        if decision == "reject":
            comment = await self.app.push_screen_wait(
                CommentScreen(
                    f"Reject review #{review.id}",
                    plain(f"{review.run_id}/{review.step_id}  {review.operation or ''}"),
                    placeholder="why (shown to the team, stored with the decision)",
                )
            )
            if comment is None:
                return
        choice: str | None = None
        options = candidate_options(review)
        if decision == "approve" and options:
            best = max(range(len(options)), key=lambda i: options[i][2])
            choice = await self.app.push_screen_wait(
                ChoiceScreen(
                    f"Route review #{review.id}: which one?",
                    [(name, label) for name, label, _ in options],
                    selected=best,
                    body=plain(review.reason or ""),
                )
            )
            if choice is None:
                return
        try:
            status = await self.fd_app.operator.decide(
                review.id, decision, comment or None, choice=choice
            )
        except Exception as e:
            self.report(e)
            return
        self.fd_app.feed.wake()  # read the effect first: the notice below costs a layout
        picked = f" ({choice})" if choice else ""
        self.notify(
            f"review #{review.id} {status}{picked}: {review.step_id}",
            title="decision",
            markup=False,
        )

    @on(UndoHistory.UndoRequested)
    def _undo_requested(self, event: UndoHistory.UndoRequested) -> None:
        event.stop()
        self.undo_entry(event.entry)

    @on(UndoHistory.DetailRequested)
    def _undo_detail(self, event: UndoHistory.DetailRequested) -> None:
        event.stop()
        body = entry_detail(event.entry, self.fd_app.now())
        self.app.push_screen(DetailScreen(f"undo entry #{event.entry.id}", body))

    @work(group="actions")
    async def undo_entry(self, entry: UndoRow) -> None:
        why = entry.why_not(self.fd_app.now())
        if why is not None:
            self.notify(
                f"undo #{entry.id} cannot be undone: {why}", severity="warning", markup=False
            )
            return
        what = plain(entry.description or f"{entry.agent or ''} {entry.operation or ''}")
        body = Text.assemble(
            "Undo entry ", (f"#{entry.id}", "bold"), " of step ", plain(entry.step_id), ":\n",
            what, "\n", ("This runs the compensating action now.", "dim"),
        )  # fmt: skip
        retry = entry.status == "failed"
        title = "Try this undo again?" if retry else "Undo this action?"
        if not await self.app.push_screen_wait(ConfirmScreen(title, body, yes="Undo")):
            return
        panel = next(iter(self.query(UndoHistory)), None)
        try:
            result = await self.fd_app.operator.undo(entry.id, retry=retry)
        except Exception as e:
            self.report(e)
            if panel is not None:
                panel.show_result(Text.assemble(("✗ undo failed: ", "bold red"), plain(str(e))))
            return
        self.fd_app.feed.wake()
        self.notify(f"undo #{entry.id}: {result}", title="undone", markup=False)
        if panel is not None:
            panel.show_result(Text.assemble(("✓ ", "bold green"), plain(f"#{entry.id}: {result}")))

    @work(group="actions")
    async def cancel_run(self, run: RunRow) -> None:
        if run.status in ("succeeded", "failed", "cancelled"):
            self.notify(f"run {run.id} already ended ({run.status})", severity="warning")
            return
        body = Text.assemble(
            "Cancel run ", (run.id, "bold"), " (", plain(run.workflow), ")?\n",
            (f"{run.steps_done}/{run.steps_total} steps done; running steps are stopped.", "dim"),
        )  # fmt: skip
        if not await self.app.push_screen_wait(
            ConfirmScreen("Cancel this run?", body, yes="Cancel run")
        ):
            return
        try:
            result = await self.fd_app.operator.cancel_run(run.id)
        except Exception as e:
            self.report(e)
            return
        self.fd_app.feed.wake()
        self.notify(f"run {run.id}: {result}", title="cancel", markup=False)


def candidate_options(review: ReviewRow) -> list[tuple[str, Text, float]]:
    """(name, label, score) of a review's named candidates (route reviews); [] for others."""
    out: list[tuple[str, Text, float]] = []
    for c in review.candidates or []:
        name = c.get("name") if isinstance(c, dict) else c
        if not isinstance(name, str):
            continue
        score = c.get("confidence") if isinstance(c, dict) else None
        score = float(score) if isinstance(score, int | float) else 0.0
        label = plain(name)
        if isinstance(c, dict) and c.get("target") and c["target"] != name:
            label.append(" → ")
            label.append_text(plain(c["target"]))
        label.append(f"  {score:.2f}", style="dim")
        out.append((name, label, score))
    return out
