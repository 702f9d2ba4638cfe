"""RunHeader: one run's id, workflow, status, progress and duration on one or two lines.

Fed `engine.views.RunView` via `show()`.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.views import RunView
from widgets.runs_table import progress_bar
from widgets.text import SYMBOLS, duration, plain, status_text


class RunHeader(Static):
    """Summary line of a run."""

    DEFAULT_CSS = """
    RunHeader {
        height: auto;
        padding: 0 1;
        background: $boost;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__("", id=id, classes=classes)
        self._key: tuple | None = None
        self._lines = 0

    def show(self, view: RunView | None, now: float, run_id: str) -> None:
        key = (view.run if view else None, int(now), run_id)
        if key == self._key:
            return
        self._key = key
        if view is None:
            self.update(plain(f"run {run_id}: not found"))
            return
        run = view.run
        counts: dict[str, int] = {}
        for s in view.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("run ", style="dim")
        text.append_text(plain(run.id))
        text.append("  ")
        text.append_text(plain(run.workflow, single_line=True, limit=40))
        text.append("  ")
        text.append_text(status_text(run.status))
        text.append("  ")
        text.append_text(progress_bar(run.steps_done, run.steps_total, width=12))
        text.append(f"  {duration(run.duration(now))}", style="dim")
        for status in ("running", "retrying", "waiting_review", "failed", "skipped", "pending"):
            if counts.get(status):
                text.append(
                    f"  {SYMBOLS[status]} {counts[status]} {status.replace('_', ' ')}", style="dim"
                )
        if run.error:
            text.append("\n")
            err = plain(run.error, single_line=True, limit=300)
            err.stylize("red")
            text.append_text(err)
        lines = 2 if run.error else 1
        self.update(text, layout=lines != self._lines)
        self._lines = lines
