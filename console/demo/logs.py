"""Where the demo's log records go: a file beside the demo DB under the console (stderr would
draw over the screen), one short line each on stderr in headless mode."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path


class _OneLine(logging.Formatter):
    """No tracebacks: `--debug` is the place for those."""

    def formatException(self, ei: object) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip()


def route_logs(*, to_file: Path | None, debug: bool = False) -> Callable[[], None]:
    """Send `flowdeck.*` records to `to_file` (or stderr when None); returns the undo."""
    handler: logging.Handler
    if to_file is not None:
        handler = logging.FileHandler(to_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "flowdeck demo: %(levelname)s %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(fmt) if debug else _OneLine(fmt))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    if debug:
        root.setLevel(logging.DEBUG)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()

    return undo
