"""The run screen: one run's live DAG with the selected step's details.

`n` starts the next attempt of a step waiting out its retry backoff now, `x` cancels the
selected step, `X` cancels the whole run (both confirmed: they cannot be taken back), `/` finds
a step by name, `c` collapses finished and pending steps.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.geometry import Size
from textual.widget import Widget

from console.screens.base import FlowdeckScreen
from console.screens.dialogs import ConfirmScreen
from engine.views import RunView, Snapshot, StepView
from widgets.dag_view import DagView
from widgets.key_bar import KeyBar
from widgets.run_header import RunHeader
from widgets.step_detail import StepDetail
from widgets.text import plain

ENDED = ("succeeded", "failed", "skipped", "cancelled", "rejected")


class RunScreen(FlowdeckScreen):
    """A run as a live graph."""

    TITLE_TEXT = "run"
    FILTER_PLACEHOLDER = "find a step by name…"

    DEFAULT_CSS = """
    RunScreen #run-body { height: 1fr; }
    RunScreen DagView { width: 3fr; }
    RunScreen StepDetail { width: 2fr; min-width: 40; }
    RunScreen.-narrow #run-body { layout: vertical; }
    RunScreen.-narrow DagView { width: 1fr; height: 3fr; }
    RunScreen.-narrow StepDetail { width: 1fr; height: 2fr; min-width: 0; }
    """

    BINDINGS = [
        Binding("n", "retry_now", "Retry now", id="run.retry_now"),
        Binding("x", "cancel_step", "Cancel step", id="run.cancel_step"),
        Binding("X", "cancel_run", "Cancel run", id="run.cancel_run"),
    ]

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        """The run shown."""
        self.view: RunView | None = None
        """The run as last read."""
        self._now = 0.0

    def compose(self) -> ComposeResult:
        yield from self.compose_status()
        yield RunHeader()
        with Horizontal(id="run-body"):
            dag = DagView(classes="panel")
            dag.border_title = "steps by depth · arrows move · c collapse"
            yield dag
            detail = StepDetail(classes="panel")
            detail.border_title = "step"
            yield detail
        yield from self.compose_filter()
        yield KeyBar()

    def set_run(self, run_id: str, *, loading: bool = True) -> None:
        """Show another run (the screen is reused); `loading=False`: its data is shown next,
        so the header is not first set to "loading"."""
        if run_id != self.run_id:
            self.run_id = run_id
            self.view = None
            if self.is_mounted and loading:
                self.query_one(RunHeader).update(Text.assemble("loading run ", plain(run_id), "…"))

    @property
    def main_widget(self) -> Widget:
        return self.query_one(DagView)

    def warm(self, snapshot: Snapshot, size: Size) -> None:
        """Show the snapshot's run, then resolve styles, lay out and render every widget while
        the screen is not on show (see `FlowdeckApp._warm_run_screen`): the first push then
        finds its styles current, its layout done and its widgets' lines drawn."""
        assert snapshot.run is not None
        self.set_run(snapshot.run.run.id, loading=False)
        self.show(snapshot)
        self.update_node_styles(animate=False)
        self._styled_for = self.style_key()
        for _ in range(3):  # again while it asks for one (scrollbars shown by the first)
            self._layout_required = False
            self._refresh_layout(size)
            if not self._layout_required:
                break
        self._compositor.render_update(full=True)

    def on_mount(self) -> None:
        # Mounted while the app is closing, a screen gets no children: nothing to focus then.
        for dag in self.query(DagView).results(DagView):
            dag.focus()

    def show(self, snapshot: Snapshot) -> None:
        super().show(snapshot)
        self._now = snapshot.now
        view = snapshot.run if snapshot.run and snapshot.run.run.id == self.run_id else None
        if view is None and self.view is None:
            self.query_one(RunHeader).update(Text.assemble("loading run ", plain(self.run_id), "…"))
            return
        if view is None:  # the feed is still on another run; keep what we have
            return
        self.view = view
        self.query_one(RunHeader).show(view, snapshot.now, self.run_id)
        dag = self.query_one(DagView)
        dag.show(view.run.id, view.steps, snapshot.now)
        self._show_step()

    def _dependents(self, step_id: str) -> list[str]:
        if self.view is None:
            return []
        return [s.step_id for s in self.view.steps if step_id in s.needs]

    def _show_step(self) -> None:
        dag = self.query_one(DagView)
        step = dag.step_node(dag.selected)
        detail = self.query_one(StepDetail)
        title = f"step {step.step_id}" if step else "step"
        if detail.border_title != title:  # setting it repaints the whole panel
            detail.border_title = title
        params, rendered = self.view.rendered_params(step) if step and self.view else (None, False)
        detail.show(
            step,
            self._dependents(step.step_id) if step else [],
            self._now,
            members=dag.members(dag.selected),
            params=params,
            rendered=rendered,
        )

    @on(DagView.StepSelected)
    def _step_selected(self, event: DagView.StepSelected) -> None:
        self._show_step()

    def apply_filter(self, text: str) -> None:
        if not text or self.view is None:
            return
        needle = text.lower()
        match = next((s for s in self.view.steps if needle in s.step_id.lower()), None)
        if match is not None:
            self.query_one(DagView).select(match.step_id)

    @property
    def selected_step(self) -> StepView | None:
        dag = self.query_one(DagView)
        return dag.step_node(dag.selected)

    @work(group="actions")
    async def action_retry_now(self) -> None:
        step = self.selected_step
        if step is None or step.status != "retrying":
            self.notify("n works on a step waiting to retry", severity="warning")
            return
        try:
            result = await self.fd_app.operator.retry_now(self.run_id, step.step_id)
        except Exception as e:
            self.report(e)
            return
        self.fd_app.feed.wake()
        self.notify(f"{step.step_id}: {result}", markup=False)

    @work(group="actions")
    async def action_cancel_step(self) -> None:
        step = self.selected_step
        if step is None or step.status in ENDED:
            self.notify("x works on a step that has not ended", severity="warning")
            return
        body = Text.assemble(
            "Cancel step ", (step.step_id, "bold"), f" ({step.status.replace('_', ' ')})?\n",
            ("Steps that need it will be skipped.", "dim"),
        )  # fmt: skip
        if not await self.app.push_screen_wait(
            ConfirmScreen("Cancel this step?", body, yes="Cancel step")
        ):
            return
        try:
            result = await self.fd_app.operator.cancel_step(self.run_id, step.step_id)
        except Exception as e:
            self.report(e)
            return
        self.fd_app.feed.wake()
        self.notify(f"{step.step_id}: {result}", markup=False)

    def action_cancel_run(self) -> None:
        if self.view is not None:
            self.cancel_run(self.view.run)
