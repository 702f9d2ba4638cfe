"""Events: every state change is one event, appended to the `events` table and given to
in-process listeners.

In process, listeners get each `Event` synchronously (keep them cheap: the CLI progress and the
console only record state and redraw on their own timer). Another process follows the table
with `EventFollower`, by increasing id; replay is reading the table in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.store import Rows, Store

EVENT_SQL = "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?, ?, ?, ?, ?)"
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _encode(data: dict[str, Any]) -> str:
    """`data` as compact JSON. Most events carry a few integers (attempt 2 of 4): those are
    written directly, without the json module's per-call set-up. Keys are keyword names."""
    parts = []
    for key, value in data.items():
        if type(value) is int:
            parts.append(f'"{key}":{value}')
        else:
            return _ENCODE(data)
    return "{" + ",".join(parts) + "}"


EVENT_ROWS = Rows(
    "events",
    5,
    "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES {values}",
)
"""An event row (ts, run_id, step_id, kind, data); ids follow the order of `emit`."""


@dataclass(slots=True)
class Event:
    """One state change."""

    kind: str
    """Dotted name: run.created, run.started, run.succeeded, step.started, step.retrying, ..."""
    run_id: str | None = None
    step_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0
    id: int | None = None
    """Row id in `events`; known when read back from the table."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "data": self.data,
        }


Listener = Callable[[Event], None]


class EventLog:
    """Emits events: one queued INSERT each (group-committed by the store) plus listeners."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None

    def emit(
        self, kind: str, run_id: str | None = None, step_id: str | None = None, **data: Any
    ) -> None:
        ts = self.clock()
        self.store.put(EVENT_ROWS, (ts, run_id, step_id, kind, _encode(data) if data else "{}"))
        if self.listeners:  # the Event is made only for somebody listening
            ev = Event(kind, run_id, step_id, data, ts)
            for listener in self.listeners:
                listener(ev)


def row_to_event(row: dict[str, Any]) -> Event:
    try:
        data = json.loads(row["data"]) if row["data"] else {}
    except ValueError:
        data = {"raw": row["data"]}
    return Event(row["kind"], row["run_id"], row["step_id"], data, row["ts"], row["id"])


class EventFollower:
    """Reads events committed by any process, in id order, from `after_id` on.

    `poll()` first compares `PRAGMA data_version` so an idle poll costs one pragma.
    Call it from a worker thread (it uses the store's per-thread reader).
    """

    def __init__(self, store: Store, after_id: int = 0):
        self.store = store
        self.last_id = after_id
        self._version: int | None = None

    @classmethod
    def from_end(cls, store: Store, backlog: int = 0) -> EventFollower:
        last = store.read(lambda db: db.execute("SELECT max(id) FROM events").fetchone()[0]) or 0
        return cls(store, max(0, last - backlog))

    def changed(self) -> bool:
        version = self.store.data_version()
        if version == self._version:
            return False
        self._version = version
        return True

    def poll(self, limit: int = 5000, *, force: bool = False) -> list[Event]:
        if not force and self._version is not None and not self.changed():
            return []
        if self._version is None:
            self.changed()
        rows = self.store.query(
            "SELECT id, ts, run_id, step_id, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (self.last_id, limit),
        )
        if rows:
            self.last_id = rows[-1]["id"]
            if len(rows) == limit:
                self._version = None  # more to read: do not wait for the next change
        return [row_to_event(r) for r in rows]
