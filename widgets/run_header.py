"""RunHeader: one run's id, workflow, status, progress and duration on one or two lines.

When the line does not fit, the bar gets shorter and the step counts lose their words
(`↻1 ○2`: the symbols are those of the DAG).

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
        self._last: tuple[RunView | None, float, str] | None = None

    def show(self, view: RunView | None, now: float, run_id: str) -> None:
        width = self.content_region.width
        key = (view.run if view else None, int(now), run_id, width)
        self._last = (view, now, run_id)
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
        text = self._line(view, now, counts, compact=False)
        if width and text.cell_len > width:  # narrow: shorter bar, step counts without words
            text = self._line(view, now, counts, compact=True)
        if run.error:
            text.append("\n")
            err = plain(run.error, single_line=True, limit=300)
            err.stylize("red")
            text.append_text(err)
        lines = 2 if run.error else 1
        self.update(text, layout=lines != self._lines)
        self._lines = lines

    def on_resize(self) -> None:
        if self._last is not None:
            self.show(*self._last)

    @staticmethod
    def _line(view: RunView, now: float, counts: dict[str, int], *, compact: bool) -> Text:
        run = view.run
        text = Text(no_wrap=True, overflow="ellipsis")
        if not compact:
            text.append("run ", style="dim")
        text.append_text(plain(run.id))
        text.append("  ")
        text.append_text(plain(run.workflow, single_line=True, limit=24 if compact else 40))
        text.append("  ")
        text.append_text(status_text(run.status))
        text.append("  ")
        text.append_text(progress_bar(run.steps_done, run.steps_total, width=6 if compact else 12))
        text.append(f"  {duration(run.duration(now))}", style="dim")
        sep = " " if compact else "  "
        for status in ("running", "retrying", "waiting_review", "failed", "skipped", "pending"):
            if counts.get(status):
                label = f"{counts[status]}" if compact else f" {counts[status]} "
                label += "" if compact else status.replace("_", " ")
                text.append(f"{sep}{SYMBOLS[status]}{label}", style="dim")
        return text
