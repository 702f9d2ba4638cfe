"""Modal dialogs: confirm a destructive action, ask for a comment, show a detail."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no for a destructive action; `y`/`enter` confirm, `n`/`esc` cancel."""

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 64;
        max-width: 95%;
        height: auto;
        border: thick $error 70%;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen #confirm-title {
        text-style: bold;
        color: $error;
        margin-bottom: 1;
    }
    ConfirmScreen Horizontal {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ConfirmScreen Button {
        margin-left: 2;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, title: str, body: RenderableType, *, yes: str = "Yes"):
        super().__init__()
        self._title = title
        self._body = body
        self._yes = yes

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self._title), id="confirm-title")
            yield Static(self._body, id="confirm-body")
            with Horizontal():
                yield Button("No (n)", id="no")
                yield Button(f"{self._yes} (y)", id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class CommentScreen(ModalScreen[str | None]):
    """Ask for a comment (e.g. why a review is rejected); `enter` sends, `esc` cancels."""

    DEFAULT_CSS = """
    CommentScreen {
        align: center middle;
    }
    CommentScreen > Vertical {
        width: 72;
        max-width: 95%;
        height: auto;
        border: thick $warning 70%;
        background: $surface;
        padding: 1 2;
    }
    CommentScreen #comment-title {
        text-style: bold;
        margin-bottom: 1;
    }
    CommentScreen #comment-hint {
        color: $foreground 60%;
        margin-top: 1;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="comment.cancel")]

    def __init__(self, title: str, body: RenderableType = "", *, placeholder: str = "comment"):
        super().__init__()
        self._title = title
        self._body = body
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self._title), id="comment-title")
            if self._body:
                yield Static(self._body)
            yield Input(placeholder=self._placeholder, id="comment-input")
            yield Label("enter: send   esc: cancel", id="comment-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class DetailScreen(ModalScreen[None]):
    """A scrollable detail view; `esc`, `enter` or `q` closes it."""

    DEFAULT_CSS = """
    DetailScreen {
        align: center middle;
    }
    DetailScreen > VerticalScroll {
        width: 90%;
        height: 80%;
        border: round $accent;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="detail.close")]

    def __init__(self, title: str, body: RenderableType):
        super().__init__()
        self._title = title
        self._body = body

    def compose(self) -> ComposeResult:
        scroll = VerticalScroll(Static(self._body))
        scroll.border_title = self._title
        yield scroll

    def action_close(self) -> None:
        self.dismiss(None)


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of several named options (a route review's candidates); `enter` picks, `esc`
    cancels. Options are (name, label) with the label already safe rich Text."""

    DEFAULT_CSS = """
    ChoiceScreen {
        align: center middle;
    }
    ChoiceScreen > Vertical {
        width: 72;
        max-width: 95%;
        height: auto;
        max-height: 80%;
        border: thick $accent 70%;
        background: $surface;
        padding: 1 2;
    }
    ChoiceScreen #choice-title {
        text-style: bold;
        margin-bottom: 1;
    }
    ChoiceScreen OptionList {
        height: auto;
        max-height: 16;
    }
    ChoiceScreen #choice-hint {
        color: $foreground 60%;
        margin-top: 1;
    }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(
        self,
        title: str,
        options: list[tuple[str, Text]],
        *,
        selected: int = 0,
        body: Text | None = None,
    ):
        super().__init__()
        self._title = title
        self._options = options
        self._selected = selected
        self._body = body

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        with Vertical():
            yield Label(Text(self._title), id="choice-title")
            if self._body is not None:
                yield Static(self._body)
            yield OptionList(*(Option(label, id=name) for name, label in self._options))
            yield Label("enter: approve this one   esc: cancel", id="choice-hint")

    def on_mount(self) -> None:
        from textual.widgets import OptionList

        options = self.query_one(OptionList)
        options.highlighted = self._selected
        options.focus()

    def on_option_list_option_selected(self, event: Any) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
