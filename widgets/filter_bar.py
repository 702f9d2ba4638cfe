"""FilterBar: the `/` filter line at the bottom of a screen.

`open()` shows it and focuses the input; typing posts `FilterBar.Changed`; `enter` keeps the
filter and hides the bar, `escape` clears it and hides the bar.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Label


class FilterBar(Horizontal):
    """A one-line filter input."""

    DEFAULT_CSS = """
    FilterBar {
        height: 1;
        display: none;
        background: $boost;
    }
    FilterBar.-open {
        display: block;
    }
    FilterBar > Label {
        width: auto;
        padding: 0 1;
        color: $accent;
    }
    FilterBar > Input, FilterBar > Input:focus {
        border: none;
        height: 1;
        padding: 0;
        width: 1fr;
        background: $boost;
    }
    """

    BINDINGS = [
        Binding("escape", "clear", "Clear filter", show=False, id="filter.clear"),
    ]

    class Changed(Message):
        """The filter text changed."""

        def __init__(self, bar: FilterBar, value: str):
            super().__init__()
            self.bar = bar
            self.value = value
            """The new filter text ('' = no filter)."""

        @property
        def control(self) -> FilterBar:
            return self.bar

    class Done(Message):
        """The operator left the filter (`enter` or `escape`): focus goes back to the screen."""

        def __init__(self, bar: FilterBar):
            super().__init__()
            self.bar = bar

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, placeholder: str = "filter", *, id: str | None = None):
        super().__init__(id=id)
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        yield Label("/")
        yield Input(placeholder=self._placeholder, id="filter-input")

    @property
    def value(self) -> str:
        return self.query_one(Input).value

    def open(self) -> None:
        self.add_class("-open")
        self.query_one(Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not event.value:
            self.remove_class("-open")
        self.post_message(self.Done(self))

    def action_clear(self) -> None:
        self.query_one(Input).value = ""
        self.remove_class("-open")
        self.post_message(self.Done(self))
