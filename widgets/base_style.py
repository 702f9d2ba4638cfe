"""BaseStyle: a Line API widget's own rich style, worked out once per restyle.

`Widget.rich_style` walks every ancestor's styles on each call (a fraction of a millisecond);
a widget drawn line by line asks for it once per line, dozens of times per paint. Textual
keeps its own per-widget styles (component styles, the visual style) until the widget is
restyled (`notify_style_update`); `base_style` is kept the same way.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style


class BaseStyle:
    """Mixin for Line API widgets (put it before the widget class): `base_style` is
    `rich_style`, cached until restyled. Not a widget itself, so it brings no CSS type."""

    _base_style: Style | None = None
    rich_style: Any

    @property
    def base_style(self) -> Style:
        """The widget's rich style (text colour and background, ancestors included)."""
        style = self._base_style
        if style is None:
            style = self._base_style = self.rich_style
        return style

    def notify_style_update(self) -> None:
        self._base_style = None
        super().notify_style_update()  # type: ignore[misc]
