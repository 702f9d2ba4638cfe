"""The `?` help: every key binding active where it was opened, with the id to remap it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


class HelpScreen(ModalScreen[None]):
    """Key bindings: key, what it does, binding id."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > Vertical {
        width: 80;
        max-width: 95%;
        height: 85%;
        border: round $accent;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen DataTable {
        height: 1fr;
    }
    HelpScreen #help-hint {
        color: $foreground 60%;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, rows: list[tuple[str, str, str]], keymap_path: str):
        super().__init__()
        self._rows = rows
        self._keymap_path = keymap_path

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "keys"
            yield DataTable(cursor_type="row", id="help-table")
            yield Label(
                Text(
                    f"Remap a key by its id in {self._keymap_path}, e.g.\n"
                    "  keymap:\n    reviews.approve: ctrl+a"
                ),
                id="help-hint",
            )

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("key", "does", "id")
        for key, description, binding_id in self._rows:
            table.add_row(Text(key, style="bold"), Text(description), Text(binding_id, style="dim"))
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
