"""LiveTable: a DataTable fed whole row lists that keeps the cursor on the same row key.

Live data replaces the table many times a second; rebuilding a DataTable would jump the cursor
and the scroll. `set_rows` updates changed cells in place when the row keys are the same, and
otherwise rebuilds and puts the cursor back on the row it was on (or the same position).
Cells that hold data must be `rich.text.Text` (see `widgets.text.plain`): a plain `str` cell
would be parsed as markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

Cell = Text | str
Row = tuple[str, Sequence[Cell]]


class LiveTable(DataTable):
    """A row-cursor table whose rows are replaced by `set_rows`."""

    DEFAULT_CSS = """
    LiveTable {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ):
        super().__init__(name=name, id=id, classes=classes, cursor_type="row", zebra_stripes=False)
        self._keys: list[str] = []
        self._cells: dict[str, tuple[Cell, ...]] = {}

    @property
    def current_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self._keys or not (0 <= self.cursor_row < len(self._keys)):
            return None
        return self._keys[self.cursor_row]

    def set_rows(self, rows: Sequence[Row]) -> None:
        keys = [key for key, _ in rows]
        columns = list(self.columns)
        if keys == self._keys:
            for key, cells in rows:
                old = self._cells.get(key, ())
                cells = tuple(cells)
                if cells == old:
                    continue
                for i, (cell, col) in enumerate(zip(cells, columns, strict=False)):
                    if i >= len(old) or old[i] != cell:
                        self.update_cell(key, col, cell, update_width=False)
                self._cells[key] = cells
            return
        current = self.current_key
        position = self.cursor_row
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._keys = keys
        self._cells = {key: tuple(cells) for key, cells in rows}
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False, scroll=False)
        elif keys:
            self.move_cursor(row=min(position, len(keys) - 1), animate=False, scroll=False)
