"""Retention: delete old ended runs with everything that belongs to them, in small batches.

A run is pruned when all of these hold:

* it ended (`succeeded`, `failed` or `cancelled`, with `ended_at`) before `now - older_than`;
  runs still pending, running or interrupted (resumable) are never touched;
* none of its reviews is `pending`;
* none of its undo entries can still be undone: every entry is `undone` or `void`, or its
  `expires_at` has passed (an entry without `expires_at` keeps its run).

With the run go its steps, attempts, events, reviews, undo entries, routing decisions and
commands. Events not tied to a run (`run_id` NULL) older than the cutoff go too. Each batch
(`batch` runs, or `batch` events) is its own short transaction in the store's writer thread, so
the engine's writes interleave with a long prune. The analytics rollups follow the deleted
attempts through their triggers, so analytics stay exact for what is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from engine.store import Store

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("flowdeck.retention")

ENDED = ("succeeded", "failed", "cancelled")
DEFAULT_BATCH = 100
"""Runs deleted per transaction."""

_KEEP_REVIEW = "EXISTS (SELECT 1 FROM reviews v WHERE v.run_id = r.id AND v.status = 'pending')"
_KEEP_UNDO = (
    "EXISTS (SELECT 1 FROM undo_log u WHERE u.run_id = r.id "
    "AND u.status NOT IN ('undone', 'void') AND (u.expires_at IS NULL OR u.expires_at > :now))"
)
_OLD_ENDED = (
    "r.created_at < :cutoff AND r.ended_at IS NOT NULL AND r.ended_at < :cutoff "
    "AND r.status IN ('succeeded', 'failed', 'cancelled')"
)
_CHILDREN = ("attempts", "steps", "events", "reviews", "undo_log", "routes", "commands")


class PruneResult(BaseModel):
    """What a prune deleted (or, with `dry_run`, would delete) and what it kept."""

    cutoff: float
    """Runs that ended before this time (epoch seconds) were candidates."""
    dry_run: bool = False
    """Nothing was deleted; the counts say what would be."""
    runs: int = 0
    """Runs deleted."""
    steps: int = 0
    """Step rows deleted."""
    attempts: int = 0
    """Attempt rows deleted."""
    events: int = 0
    """Event rows deleted (of the runs, plus run-less events older than the cutoff)."""
    reviews: int = 0
    """Decided reviews deleted."""
    undo_log: int = 0
    """Expired or finished undo entries deleted."""
    routes: int = 0
    """Routing decisions deleted."""
    commands: int = 0
    """Command rows deleted."""
    batches: int = 0
    """Transactions used."""
    kept_pending_review: int = 0
    """Old ended runs kept because a review of theirs is pending."""
    kept_undo_window: int = 0
    """Old ended runs kept because an undo entry of theirs can still be undone."""


Cursor = tuple[float, int] | None
"""(created_at, rowid) of the last run looked at: batches walk the runs_created index."""


def _run_batch(
    db: sqlite_utils.Database, cutoff: float, now: float, after: Cursor, batch: int
) -> tuple[dict[str, int], Cursor]:
    """Delete up to `batch` prunable runs after `after`; runs in the writer thread."""
    conn = db.conn
    where = f"{_OLD_ENDED} AND NOT {_KEEP_REVIEW} AND NOT {_KEEP_UNDO}"
    params: dict[str, Any] = {"cutoff": cutoff, "now": now, "batch": batch}
    if after is not None:
        where += " AND (r.created_at, r.rowid) > (:after_t, :after_row)"
        params.update(after_t=after[0], after_row=after[1])
    rows = conn.execute(
        f"SELECT r.id, r.created_at, r.rowid FROM runs r INDEXED BY runs_created WHERE {where} "
        "ORDER BY r.created_at, r.rowid LIMIT :batch",
        params,
    ).fetchall()
    counts = dict.fromkeys(("runs", *_CHILDREN), 0)
    if not rows:
        return counts, None
    ids = [r[0] for r in rows]
    marks = ",".join("?" * len(ids))
    for table in _CHILDREN:
        counts[table] = conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", ids).rowcount
    counts["runs"] = conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", ids).rowcount
    return counts, (rows[-1][1], rows[-1][2])


def _event_batch(db: sqlite_utils.Database, cutoff: float, batch: int) -> int:
    """Delete up to `batch` run-less events older than the cutoff; in the writer."""
    return db.conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE run_id IS NULL "
        "AND ts < ? ORDER BY id LIMIT ?)",
        (cutoff, batch),
    ).rowcount


def _kept(db: sqlite_utils.Database, cutoff: float, now: float) -> tuple[int, int]:
    params = {"cutoff": cutoff, "now": now}
    review = db.conn.execute(
        f"SELECT count(*) FROM runs r WHERE {_OLD_ENDED} AND {_KEEP_REVIEW}", params
    ).fetchone()[0]
    undo = db.conn.execute(
        f"SELECT count(*) FROM runs r WHERE {_OLD_ENDED} AND NOT {_KEEP_REVIEW} AND {_KEEP_UNDO}",
        params,
    ).fetchone()[0]
    return review, undo


def _would_delete(db: sqlite_utils.Database, cutoff: float, now: float) -> dict[str, int]:
    params = {"cutoff": cutoff, "now": now}
    ids = f"SELECT r.id FROM runs r WHERE {_OLD_ENDED} AND NOT {_KEEP_REVIEW} AND NOT {_KEEP_UNDO}"
    counts = {
        table: db.conn.execute(
            f"SELECT count(*) FROM {table} WHERE run_id IN ({ids})", params
        ).fetchone()[0]
        for table in _CHILDREN
    }
    counts["runs"] = db.conn.execute(f"SELECT count(*) FROM ({ids})", params).fetchone()[0]
    counts["events"] += db.conn.execute(
        "SELECT count(*) FROM events WHERE run_id IS NULL AND ts < ?", [cutoff]
    ).fetchone()[0]
    return counts


def _add(result: PruneResult, counts: dict[str, int]) -> None:
    for key, n in counts.items():
        setattr(result, key, getattr(result, key) + n)


def _check(older_than: float, batch: int) -> None:
    if older_than < 0:
        raise ValueError("older_than must be >= 0 seconds")
    if batch < 1:
        raise ValueError("batch must be >= 1")


def prune(
    store: Store,
    older_than: float,
    *,
    batch: int = DEFAULT_BATCH,
    now: float | None = None,
    dry_run: bool = False,
    pause: float = 0.0,
) -> PruneResult:
    """Delete runs that ended more than `older_than` seconds ago (see the module docstring).

    Blocking: for the CLI and threads. Each batch is one `store.run_sync` transaction; `pause`
    seconds are slept between batches to leave the writer to others.
    """
    _check(older_than, batch)
    now = time.time() if now is None else now
    cutoff = now - older_than
    result = PruneResult(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        _add(result, store.read(lambda db: _would_delete(db, cutoff, now)))
    else:
        after: Cursor = None
        while True:
            counts, after = store.run_sync(
                lambda db, after=after: _run_batch(db, cutoff, now, after, batch)
            )
            if after is None:
                break
            _add(result, counts)
            result.batches += 1
            if pause:
                time.sleep(pause)
        while n := store.run_sync(lambda db: _event_batch(db, cutoff, batch * 20)):
            result.events += n
            result.batches += 1
    result.kept_pending_review, result.kept_undo_window = store.read(
        lambda db: _kept(db, cutoff, now)
    )
    return result


async def aprune(
    store: Store,
    older_than: float,
    *,
    batch: int = DEFAULT_BATCH,
    now: float | None = None,
    pause: float = 0.0,
) -> PruneResult:
    """`prune` for the event loop: every batch awaits the writer, never blocking the loop."""
    _check(older_than, batch)
    now = time.time() if now is None else now
    cutoff = now - older_than
    result = PruneResult(cutoff=cutoff)
    after: Cursor = None
    while True:
        counts, after = await store.run(
            lambda db, after=after: _run_batch(db, cutoff, now, after, batch)
        )
        if after is None:
            break
        _add(result, counts)
        result.batches += 1
        await asyncio.sleep(pause)
    while n := await store.run(lambda db: _event_batch(db, cutoff, batch * 20)):
        result.events += n
        result.batches += 1
        await asyncio.sleep(pause)
    result.kept_pending_review, result.kept_undo_window = await store.aread(
        lambda db: _kept(db, cutoff, now)
    )
    return result


async def retention_loop(
    store: Store,
    days: float,
    interval: float = 3600.0,
    *,
    batch: int = DEFAULT_BATCH,
    clock: Callable[[], float] = time.time,
    on_result: Callable[[PruneResult], None] | None = None,
) -> None:
    """Prune runs older than `days` now and then every `interval` seconds, until cancelled.

    For `flowdeck serve --retain-days N`: start it as a task and cancel it on shutdown. A failed
    round is logged and retried at the next interval.
    """
    if days <= 0:
        raise ValueError("days must be > 0")
    while True:
        try:
            result = await aprune(store, days * 86400, batch=batch, now=clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention: prune failed; retrying in %g s", interval)
        else:
            if result.runs or result.events:
                log.info(
                    "retention: pruned %d runs (%d attempts, %d events) older than %g days",
                    result.runs,
                    result.attempts,
                    result.events,
                    days,
                )
            if on_result is not None:
                on_result(result)
        await asyncio.sleep(interval)
