"""Logging of long-running commands (`flowdeck serve`): text or JSON lines on stderr.

Records are handed to a queue and written by a listener thread, so a slow stderr never blocks
the event loop. JSON lines carry `time` (ISO 8601, UTC), `level`, `logger`, `message` and, when
the record is about one, `run`, `step` and `event` (plus `data`, HTTP fields, `exc`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from engine.events import Event

FIELDS = (
    "run", "step", "event", "data", "method", "path", "status", "duration_ms", "remote", "url",
)  # fmt: skip
"""Record attributes copied into a JSON line (set with `extra=`)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`TIME LEVEL message key=value...` for people."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{stamp} {record.levelname:<7} {record.getMessage()}"]
        for name in ("run", "step"):
            value = getattr(record, name, None)
            if value is not None:
                parts.append(f"{name}={value}")
        data = getattr(record, "data", None)
        if data:
            parts.append(json.dumps(data, ensure_ascii=False, default=str)[:300])
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BadHttpFilter(logging.Filter):
    """Malformed HTTP from a client is its problem: one warning line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            record.msg = f"{record.getMessage()}: bad HTTP ({exc.message!r})"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup(
    *, json_lines: bool, level: int = logging.INFO, stream: TextIO | None = None
) -> Callable[[], None]:
    """Route the `flowdeck` loggers (and aiohttp's) to stderr; returns a function that flushes
    and stops the writer thread."""
    formatter: logging.Formatter = JsonFormatter() if json_lines else TextFormatter()
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = logging.handlers.QueueHandler(q)
    front.setFormatter(formatter)
    back = logging.StreamHandler(stream or sys.stderr)
    back.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(q, back)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(front)
    root.setLevel(logging.WARNING)
    for name in ("flowdeck", "aiohttp.access"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("aiohttp.server").addFilter(BadHttpFilter())
    listener.start()

    def stop() -> None:
        listener.stop()
        root.removeHandler(front)

    return stop


def event_logger(logger: logging.Logger) -> Callable[[Event], None]:
    """An engine event listener logging each event as one record."""

    def on_event(ev: Event) -> None:
        level = logging.WARNING if ev.kind.endswith((".failed", ".rejected")) else logging.INFO
        logger.log(
            level,
            ev.kind,
            extra={"event": ev.kind, "run": ev.run_id, "step": ev.step_id, "data": ev.data or None},
        )

    return on_event


class AccessLogger(AbstractAccessLogger):
    """aiohttp access log with method, path, status, duration and peer as fields."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
            },
        )
