"""Undo-log rows: reads, compare-and-set transitions, pruning, and who is alive.

Functions taking `db` are plain sqlite-utils calls: run writes inside `store.run(...)` (one
savepoint in the writer thread) and reads inside `store.read/aread(...)`.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from engine.errors import InputError, NotFound
from engine.models import UndoEntry, UndoStatus, check_undo_transition

if TYPE_CHECKING:
    import sqlite_utils

UNDOABLE_LATER = frozenset({UndoStatus.DONE, UndoStatus.FAILED})
"""Statuses whose window (`expires_at`) still matters."""

UNRESOLVED = frozenset({UndoStatus.PREPARED, UndoStatus.UNDOING})
"""Statuses never pruned: something is (or was) in flight."""

_HOST = socket.gethostname()


def dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def loads(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------- liveness


def process_alive(holder: str | None) -> bool | None:
    """Whether the process named by an engine owner / undo holder (`host:pid:token`) lives.

    None when that cannot be told from here (another host, or a name of another shape).
    """
    if not holder:
        return None
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
        return None
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def holder_alive(holder: str | None, lease_until: float | None, now: float) -> bool:
    """A lease holder counts as alive while its lease runs and its process (if local) exists."""
    if lease_until is None or lease_until <= now:
        return False
    return process_alive(holder) is not False


def run_alive(db: sqlite_utils.Database, run_id: str, now: float) -> dict[str, Any] | None:
    """The run row if an engine is executing it right now, else None."""
    row = next(
        iter(db.query("SELECT id, status, owner, lease_until FROM runs WHERE id = ?", [run_id])),
        None,
    )
    if row is None or row["status"] not in ("pending", "running"):
        return None
    return row if holder_alive(row["owner"], row["lease_until"], now) else None


# --------------------------------------------------------------------------- reads

_SELECT = "SELECT u.*, r.workflow AS workflow FROM undo_log u LEFT JOIN runs r ON r.id = u.run_id"


def get_row(db: sqlite_utils.Database, entry_id: int) -> dict[str, Any]:
    row = next(iter(db.query(f"{_SELECT} WHERE u.id = ?", [entry_id])), None)
    if row is None:
        raise NotFound(f"no undo entry {entry_id} (see `flowdeck history`)")
    return row


def to_entry(row: dict[str, Any], now: float) -> UndoEntry:
    """A row as an `UndoEntry`, with its state right now (`expired`, seconds left)."""
    status = UndoStatus(row["status"])
    expires = row["expires_at"]
    state = status.value
    left = None
    if status in UNDOABLE_LATER and expires is not None:
        if expires <= now:
            state = "expired"
        else:
            left = expires - now
    return UndoEntry(
        id=row["id"],
        run_id=row["run_id"],
        step_id=row["step_id"],
        workflow=row.get("workflow"),
        agent=row["agent"],
        operation=row["operation"],
        params=loads(row["params"]),
        description=row["description"],
        before=loads(row["before"]),
        undo=loads(row["undo"]),
        output=loads(row["output"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=expires,
        status=status,
        state=state,
        seconds_left=left,
        undone_at=row["undone_at"],
        undone_by=row["undone_by"],
        undo_attempts=row["undo_attempts"] or 0,
        result=loads(row["result"]),
        error=row["error"],
    )


def list_entries(
    db: sqlite_utils.Database,
    *,
    now: float,
    limit: int = 50,
    run_id: str | None = None,
    status: str | None = None,
) -> list[UndoEntry]:
    """Newest first. `status` also accepts `expired` (done or failed, window over)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit, "now": now}
    if run_id is not None:
        where.append("u.run_id = :run")
        params["run"] = run_id
    if status is not None:
        if status == "expired":
            where.append("u.status IN ('done', 'failed') AND u.expires_at <= :now")
        elif status in ("done", "failed"):
            where.append("u.status = :status AND (u.expires_at IS NULL OR u.expires_at > :now)")
            params["status"] = status
        elif status in UndoStatus.__members__.values():
            where.append("u.status = :status")
            params["status"] = status
        else:
            known = ", ".join([*(s.value for s in UndoStatus), "expired"])
            raise InputError(f"--status '{status}': not a status (use one of {known})")
    sql = f"{_SELECT} {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY u.id DESC LIMIT :limit"
    return [to_entry(r, now) for r in db.query(sql, params)]


def find_prepared(db: sqlite_utils.Database, run_id: str, step_id: str) -> dict[str, Any] | None:
    """The newest `prepared` entry of a step of a run (left by a crashed engine), if any."""
    return next(
        iter(
            db.query(
                "SELECT id, before, undo FROM undo_log WHERE run_id = ? AND step_id = ? "
                "AND status = 'prepared' ORDER BY id DESC LIMIT 1",
                [run_id, step_id],
            )
        ),
        None,
    )


def max_attempt(db: sqlite_utils.Database, run_id: str, step_id: str) -> int:
    row = db.execute(
        "SELECT max(number) FROM attempts WHERE run_id = ? AND step_id = ?", [run_id, step_id]
    ).fetchone()
    return row[0] or 0


# --------------------------------------------------------------------------- writes


def insert(db: sqlite_utils.Database, **cols: Any) -> int:
    names = ", ".join(cols)
    marks = ", ".join("?" * len(cols))
    cur = db.execute(f"INSERT INTO undo_log({names}) VALUES ({marks})", list(cols.values()))
    return int(cur.lastrowid)


def transition(
    db: sqlite_utils.Database,
    entry_id: int,
    old: UndoStatus,
    new: UndoStatus,
    *,
    where: str = "",
    params: tuple[Any, ...] = (),
    **cols: Any,
) -> bool:
    """Compare-and-set `old -> new` (plus `cols`); False when the entry was not in `old`."""
    check_undo_transition(old, new)
    sets = ", ".join(["status = ?", *(f"{c} = ?" for c in cols)])
    cur = db.execute(
        f"UPDATE undo_log SET {sets} WHERE id = ? AND status = ? {where}",
        [new.value, *cols.values(), entry_id, old.value, *params],
    )
    return cur.rowcount == 1


def prune(db: sqlite_utils.Database, cap: int, now: float) -> int:
    """Delete the oldest expired entries while the log holds more than `cap` entries.

    Only entries whose window is over are pruned (never `prepared` or `undoing` ones), so the
    log may stay above the cap. Returns how many were deleted.
    """
    total = db.execute("SELECT count(*) FROM undo_log").fetchone()[0]
    excess = total - cap
    if excess <= 0:
        return 0
    cur = db.execute(
        "DELETE FROM undo_log WHERE id IN (SELECT id FROM undo_log WHERE status NOT IN "
        "('prepared', 'undoing') AND expires_at IS NOT NULL AND expires_at <= ? "
        "ORDER BY id LIMIT ?)",
        (now, excess),
    )
    return cur.rowcount
