"""StepDetail: everything about the selected step of a run.

Status, agent and operation, attempt n/m, duration or retry countdown, needs and dependents,
the step's inputs (its `with:` filled in from the run's inputs and upstream outputs, or the
template while those are missing), its output, its error and every attempt. All data is shown
literally. Fed `engine.views.StepView` via `show()`; a collapsed group shows its members.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.views import StepView
from widgets.base_style import BaseStyle
from widgets.text import clock, duration, plain, status_text, to_json

OUTPUT_LIMIT = 4000


def step_renderable(
    step: StepView,
    dependents: Sequence[str],
    now: float,
    params: Any = None,
    rendered: bool = False,
) -> RenderableType:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    title = Text()
    title.append_text(plain(step.step_id))
    title.append("  ")
    title.append_text(status_text(step.status))
    if step.destructive:
        title.append("  destructive", style="bold magenta")
    if step.description:
        grid.add_row("", plain(step.description))
    grid.add_row(
        "agent", plain(f"{step.agent or '-'} ({step.kind or '-'})  {step.operation or ''}")
    )
    attempt = Text(f"{step.attempt}/{step.max_attempts}")
    retry_in = step.retry_in(now)
    if retry_in is not None:
        attempt.append(f"  next attempt in {duration(retry_in)}", style="yellow")
        attempt.append("  (n: now)", style="dim")
    grid.add_row("attempt", attempt)
    grid.add_row(
        "time",
        Text(f"started {clock(step.started_at)}  took {duration(step.duration(now))}"),
    )
    grid.add_row("needs", plain(", ".join(step.needs) or "-"))
    grid.add_row("needed by", plain(", ".join(dependents) or "-"))
    if rendered:
        grid.add_row("inputs", plain(to_json(params, indent=2), limit=OUTPUT_LIMIT))
    elif step.params is not None:
        grid.add_row("with", plain(to_json(step.params, indent=2), limit=OUTPUT_LIMIT))
    if step.output is not None:
        grid.add_row(
            "output",
            plain(
                to_json(step.output, indent=2) if not isinstance(step.output, str) else step.output,
                limit=OUTPUT_LIMIT,
            ),
        )
    if step.error:
        err = Text()
        if step.error_class:
            err.append(f"[{step.error_class}] ", style="bold red")
        err.append_text(plain(step.error, limit=OUTPUT_LIMIT))
        grid.add_row("error", err)
    parts: list[RenderableType] = [title, grid]
    if step.attempts:
        attempts = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold dim")
        for col in ("#", "status", "started", "took", "error"):
            attempts.add_column(col, no_wrap=col != "error")
        for a in step.attempts:
            error = Text()
            if a.error_class:
                error.append(f"[{a.error_class}] ", style="red")
            error.append_text(plain(a.error or "", single_line=True, limit=200))
            if a.next_retry_at:
                error.append(f" retry at {clock(a.next_retry_at)}", style="dim")
            attempts.add_row(
                str(a.number),
                status_text(a.status),
                clock(a.started_at),
                duration(a.duration_ms / 1000 if a.duration_ms is not None else None),
                error,
            )
        parts += [Text("attempts", style="bold"), attempts]
    return Group(*parts)


class StepDetail(BaseStyle, ScrollView, can_focus=True):
    """Details of the selected step.

    Drawn with the Line API: the details are rendered to lines once per change, and a change
    refreshes only the lines that differ (a live duration redraws one line); the panel is laid
    out again only when the number of lines changes.
    """

    DEFAULT_CSS = """
    StepDetail {
        width: 1fr;
        height: 1fr;
        padding: 0 1;
        overflow-x: hidden;
        overflow-y: auto;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._key: tuple | None = None
        self._renderable: RenderableType = Text("select a step", style="dim")
        self._strips: list[Strip] = []
        self._drawn_for: tuple | None = None

    def show(
        self,
        step: StepView | None,
        dependents: Sequence[str],
        now: float,
        *,
        members: Sequence[str] = (),
        params: Any = None,
        rendered: bool = False,
    ) -> None:
        live = step is not None and (
            step.status in ("running", "retrying") or (step.started_at and not step.ended_at)
        )
        key = (step, tuple(dependents), tuple(members), int(now) if live else None, params)
        if key == self._key:
            return
        self._key = key
        if step is None and members:
            self._renderable = Group(
                Text(f"{len(members)} steps (collapsed; c expands)", style="bold"),
                plain(", ".join(members)),
            )
        elif step is None:
            self._renderable = Text("select a step", style="dim")
        else:
            self._renderable = step_renderable(step, dependents, now, params, rendered)
        self._drawn_for = None
        self._draw()

    @property
    def text(self) -> str:
        """What the panel shows, as plain lines."""
        return "\n".join(strip.text.rstrip() for strip in self._strips)

    def _draw(self) -> None:
        """Render the details to lines at the current width; refresh the lines that changed."""
        if not self.is_mounted:
            return
        region = self.content_region
        width, height = region.width, region.height
        if width <= 0:
            return  # not laid out yet: drawn on the first resize
        style = self.base_style
        drawn_for = (width, height, style)
        if drawn_for == self._drawn_for:
            return
        lines = self._render(width, style)
        if len(lines) > height and width > 1:  # the scrollbar takes a column
            lines = self._render(width - 1, style)
        before = self._strips
        self._strips = lines
        self._drawn_for = drawn_for
        self.virtual_size = Size(max((s.cell_length for s in lines), default=0), len(lines))
        blank = Strip.blank(0)
        changed = [
            y
            for y in range(max(len(before), len(lines)))
            if (before[y] if y < len(before) else blank) != (lines[y] if y < len(lines) else blank)
        ]
        start = 0
        for i, y in enumerate(changed):  # one refresh per run of adjacent lines
            if i + 1 == len(changed) or changed[i + 1] != y + 1:
                self.refresh_lines(changed[start], y - changed[start] + 1)
                start = i + 1

    def _render(self, width: int, style: Style) -> list[Strip]:
        console = self.app.console
        options = console.options.update(width=width, height=None, highlight=False)
        lines = console.render_lines(self._renderable, options, style=style, pad=True)
        return [Strip(line, width) for line in lines]

    def render_line(self, y: int) -> Strip:
        row = y + int(self.scroll_y)
        width = self.scrollable_content_region.width
        if row < len(self._strips):
            return self._strips[row].crop_extend(0, width, self.base_style)
        return Strip.blank(width, self.base_style)

    def on_resize(self) -> None:
        self._draw()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._drawn_for = None  # colours changed: render again with the new base style
        self.call_later(self._draw)
