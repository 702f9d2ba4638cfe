"""LiveTable: a fast table for data replaced many times a second, cursor kept on its row.

Textual's DataTable re-renders every visible row after any change (one update counter is part
of its cache key), which under a busy engine costs tens of milliseconds per snapshot. This one
draws with the Line API and caches each row's strip by its cells, the column widths and whether
it is under the cursor, so a snapshot that changes two rows re-renders two rows.

`set_rows([(key, cells), ...])` replaces the rows and keeps the cursor on the same key (or the
same position when that key left). Cells are `rich.text.Text` (data must go through
`widgets.text.plain`, so it is never parsed as markup) or plain `str` (shown literally).
Posts `LiveTable.Highlighted` when the cursor moves and `LiveTable.Selected` on `enter` or a
click on the highlighted row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from widgets.base_style import BaseStyle

Cell = Text | str
Row = tuple[str, Sequence[Cell]]


@dataclass(slots=True)
class Column:
    """One column: header label, alignment and width bounds."""

    label: str
    key: str
    justify: str = "left"
    max_width: int | None = None
    width: int = 0
    expand: bool = False
    """Takes the width left over (else the last column does)."""


class LiveTable(BaseStyle, ScrollView, can_focus=True):
    """A row-cursor table whose rows are replaced by `set_rows`."""

    DEFAULT_CSS = """
    LiveTable {
        height: 1fr;
        background: $surface;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    LiveTable > .live-table--header {
        text-style: bold;
        background: $panel;
        color: $foreground;
    }
    LiveTable > .live-table--cursor {
        background: $block-cursor-blurred-background;
    }
    LiveTable:focus > .live-table--cursor {
        background: $block-cursor-background;
    }
    """

    COMPONENT_CLASSES = {"live-table--header", "live-table--cursor"}

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "edge(0)", "First", show=False, id="table.first"),
        Binding("end", "edge(1)", "Last", show=False, id="table.last"),
        Binding("enter", "select", "Select", show=False, id="table.select"),
    ]

    cursor_row: reactive[int] = reactive(0, init=False, layout=False)
    """Index of the row under the cursor."""

    class Highlighted(Message):
        """The cursor moved to another row."""

        def __init__(self, table: LiveTable, key: str | None):
            super().__init__()
            self.table = table
            self.key = key
            """Key of the row under the cursor (None: no rows)."""

        @property
        def control(self) -> LiveTable:
            return self.table

    class Selected(Message):
        """`enter` (or a click) on the row under the cursor."""

        def __init__(self, table: LiveTable, key: str):
            super().__init__()
            self.table = table
            self.key = key
            """Key of the selected row."""

        @property
        def control(self) -> LiveTable:
            return self.table

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        cursor: bool = True,
    ):
        super().__init__(name=name, id=id, classes=classes)
        self.show_cursor = cursor
        """Draw the cursor row (a read-only list sets False)."""
        self.columns: list[Column] = []
        """The columns, in order."""
        self.empty: Text | None = None
        """Shown across the whole width under the header while there are no rows."""
        self._keys: list[str] = []
        self._rows: list[tuple[Cell, ...]] = []
        self._cache: dict[object, tuple[tuple, Strip]] = {}

    # ------------------------------------------------------------------ data

    def add_column(
        self,
        label: str,
        *,
        key: str | None = None,
        justify: str = "left",
        max_width: int | None = None,
        expand: bool = False,
    ) -> None:
        self.columns.append(Column(label, key or label, justify, max_width, len(label), expand))
        self.virtual_size = Size(self._total_width(), len(self._keys) + 1)
        self._cache.pop(None, None)
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self._keys)

    @property
    def current_key(self) -> str | None:
        """Key of the row under the cursor."""
        if 0 <= self.cursor_row < len(self._keys):
            return self._keys[self.cursor_row]
        return None

    def set_rows(self, rows: Sequence[Row]) -> None:
        keys = [key for key, _ in rows]
        cells = [tuple(c) for _, c in rows]
        if keys == self._keys and cells == self._rows:
            return
        current = self.current_key
        self._keys, self._rows = keys, cells
        self._measure()
        self.virtual_size = Size(self._total_width(), len(keys) + 1)
        if current in keys:
            row = keys.index(current)
        else:
            row = min(self.cursor_row, max(0, len(keys) - 1))
        if row != self.cursor_row:
            self.set_reactive(LiveTable.cursor_row, row)
        if self.current_key != current:
            self.post_message(self.Highlighted(self, self.current_key))
        if len(self._cache) > 4 * max(64, len(keys)):
            self._cache.clear()
        self.refresh()

    def move_cursor(self, *, row: int, animate: bool = False, scroll: bool = True) -> None:
        """Put the cursor on row `row` (clamped)."""
        self.cursor_row = max(0, min(row, len(self._keys) - 1))

    def _measure(self) -> None:
        for i, col in enumerate(self.columns):
            width = len(col.label)
            for cells in self._rows:
                if i < len(cells):
                    cell = cells[i]
                    width = max(width, cell.cell_len if isinstance(cell, Text) else len(cell))
            if col.max_width is not None:
                width = min(width, col.max_width)
            col.width = width

    def _total_width(self) -> int:
        return sum(c.width + 2 for c in self.columns)

    # ------------------------------------------------------------------ drawing

    def _line(self, cells: Sequence[Cell], width: int, style: Style) -> Strip:
        line = Text(no_wrap=True, end="")
        widths = [c.width for c in self.columns]
        spare = width - sum(w + 2 for w in widths)
        if widths:
            grow = next((i for i, c in enumerate(self.columns) if c.expand), len(widths) - 1)
            if spare < 0:
                grow = len(widths) - 1  # too narrow: the last column gives way first
            widths[grow] = max(0, widths[grow] + spare)
        for i, col in enumerate(self.columns):
            cell = cells[i] if i < len(cells) else ""
            text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
            text.no_wrap = True
            text.end = ""
            w = max(0, widths[i])
            if text.cell_len > w:
                text.truncate(w, overflow="ellipsis")
            pad = w - text.cell_len
            line.append(" ")
            if col.justify == "right" or text.justify == "right":
                line.append(" " * pad)
                line.append_text(text)
            else:
                line.append_text(text)
                line.append(" " * pad)
            line.append(" ")
        line.truncate(width, pad=True)
        segments = [
            Segment(seg.text, style + seg.style if seg.style else style)
            for seg in line.render(self.app.console)
        ]
        return Strip(segments, width).simplify()

    def _empty_line(self, width: int, style: Style) -> Strip:
        assert self.empty is not None
        line = Text(" ", no_wrap=True, end="")
        line.append_text(self.empty)
        line.truncate(width, overflow="ellipsis", pad=True)
        segments = [
            Segment(seg.text, style + seg.style if seg.style else style)
            for seg in line.render(self.app.console)
        ]
        return Strip(segments, width).simplify()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.base_style
        if y == 0:
            header = self.get_component_rich_style("live-table--header")
            signature = (width, header, tuple(c.width for c in self.columns))
            cached = self._cache.get(None)
            if cached is not None and cached[0] == signature:
                return cached[1]
            strip = self._line([Text(c.label) for c in self.columns], width, header)
            self._cache[None] = (signature, strip)
            return strip
        index = y - 1 + int(self.scroll_y)
        if index == 0 and not self._rows and self.empty is not None:
            return self._empty_line(width, base)
        if index >= len(self._rows):
            return Strip.blank(width, base)
        cursor = self.show_cursor and index == self.cursor_row
        style = base
        if cursor:
            style = base + Style(
                bgcolor=self.get_component_rich_style("live-table--cursor").bgcolor
            )
        signature = (self._rows[index], width, cursor, style, tuple(c.width for c in self.columns))
        cached = self._cache.get(self._keys[index])
        if cached is not None and cached[0] == signature:
            return cached[1]
        strip = self._line(self._rows[index], width, style)
        self._cache[self._keys[index]] = (signature, strip)
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    # ------------------------------------------------------------------ cursor

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh()
        self._scroll_to_cursor()
        self.post_message(self.Highlighted(self, self.current_key))

    def _on_focus(self, event: object) -> None:
        self.refresh()

    def _on_blur(self, event: object) -> None:
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        if not self._keys:
            return
        visible = max(1, self.scrollable_content_region.height - 1)  # below the header
        top = int(self.scroll_y)
        if self.cursor_row < top:
            top = self.cursor_row
        elif self.cursor_row >= top + visible:
            top = self.cursor_row - visible + 1
        if top != int(self.scroll_y):
            self.scroll_to(y=top, animate=False, immediate=True)

    @property
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 2)

    def action_cursor(self, delta: int) -> None:
        if self._keys:
            self.move_cursor(row=self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        if self._keys:
            self.move_cursor(row=self.cursor_row + direction * self._page)

    def action_edge(self, end: int) -> None:
        if self._keys:
            self.move_cursor(row=len(self._keys) - 1 if end else 0)

    def action_select(self) -> None:
        key = self.current_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: Click) -> None:
        if event.y == 0:
            return
        index = event.y - 1 + int(self.scroll_y)
        if 0 <= index < len(self._keys):
            if index == self.cursor_row and event.chain > 1:
                self.action_select()
            self.move_cursor(row=index)
