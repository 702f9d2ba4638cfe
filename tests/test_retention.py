"""engine/retention.py: what prune deletes and keeps, batching, the async loop, `flowdeck prune`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bench.analytics import naive_compute
from engine import analytics, retention
from engine.store import Store

NOW = 1_700_000_000.0
DAY = 86400.0


def add_run(
    store: Store,
    run_id: str,
    *,
    status: str = "succeeded",
    ended_days_ago: float | None = 40,
    review: str | None = None,
    undo: tuple[str, float | None] | None = None,
    steps: int = 2,
    now: float = NOW,
) -> None:
    """A run with `steps` steps, 2 attempts each, 3 events, a route, a command, and optionally
    a review (status) and an undo entry (status, expires in days from now)."""
    ended = None if ended_days_ago is None else now - ended_days_ago * DAY
    created = (ended if ended is not None else now - 50 * DAY) - 60

    def write(db: Any) -> None:
        c = db.conn
        c.execute(
            "INSERT INTO runs(id, workflow, spec, status, created_at, ended_at) "
            "VALUES (?, 'wf', '{}', ?, ?, ?)",
            (run_id, status, created, ended),
        )
        for s in range(steps):
            c.execute(
                "INSERT INTO steps(run_id, step_id, status, ended_at) VALUES (?, ?, ?, ?)",
                (run_id, f"s{s}", "succeeded", ended),
            )
            for n in (1, 2):
                c.execute(
                    "INSERT INTO attempts(run_id, step_id, number, agent, status, started_at, "
                    "ended_at, duration_ms, error_class, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (run_id, f"s{s}", n, "a", "failed" if n == 1 else "succeeded",
                     created + s, created + s + 1, 1000.0, "http" if n == 1 else None,
                     "HTTP 500" if n == 1 else None),
                )  # fmt: skip
        c.executemany(
            "INSERT INTO events(ts, run_id, kind) VALUES (?, ?, ?)",
            [(created, run_id, "run.created"), (created, run_id, "step.started"),
             (ended or created, run_id, "run.succeeded")],
        )  # fmt: skip
        c.execute(
            "INSERT INTO routes(run_id, step_id, created_at, chosen, best) VALUES (?, 's0', ?, 'a', 'a')",
            (run_id, created),
        )
        c.execute(
            "INSERT INTO commands(created_at, run_id, kind, status) VALUES (?, ?, 'cancel_run', 'done')",
            (created, run_id),
        )
        if review:
            c.execute(
                "INSERT INTO reviews(run_id, step_id, status, created_at, decided_at) "
                "VALUES (?, 's0', ?, ?, ?)",
                (run_id, review, created, None if review == "pending" else created + 5),
            )
        if undo:
            ustatus, expires_in_days = undo
            expires = None if expires_in_days is None else now + expires_in_days * DAY
            c.execute(
                "INSERT INTO undo_log(run_id, step_id, created_at, expires_at, status) "
                "VALUES (?, 's0', ?, ?, ?)",
                (run_id, created, expires, ustatus),
            )

    store.run_sync(write)


def run_ids(store: Store) -> set[str]:
    return {r["id"] for r in store.query("SELECT id FROM runs")}


def count(store: Store, table: str) -> int:
    return store.query(f"SELECT count(*) AS n FROM {table}")[0]["n"]


@pytest.fixture
def mixed(store: Store) -> Store:
    add_run(store, "old-ok")  # pruned
    add_run(store, "old-failed", status="failed", review="rejected")  # pruned, with its review
    add_run(store, "old-cancelled", status="cancelled", ended_days_ago=31)  # pruned
    add_run(store, "old-pending-review", review="pending")  # kept: review pending
    add_run(store, "old-undo-open", undo=("done", 0.5))  # kept: undo window still open
    add_run(store, "old-undo-failed", undo=("failed", 0.5))  # kept: a failed undo can be retried
    add_run(store, "old-undo-no-expiry", undo=("done", None))  # kept: never expires
    add_run(store, "old-undo-expired", undo=("done", -1))  # pruned
    add_run(store, "old-undone", undo=("undone", 0.5))  # pruned: already undone
    add_run(store, "old-void", undo=("void", 0.5))  # pruned: the action never happened
    add_run(store, "old-running", status="running", ended_days_ago=None)  # kept: not ended
    add_run(store, "old-interrupted", status="interrupted", ended_days_ago=None)  # kept: resumable
    add_run(store, "recent", ended_days_ago=29)  # kept: too young
    store.run_sync(
        lambda db: db.conn.executemany(
            "INSERT INTO events(ts, run_id, kind) VALUES (?, NULL, 'breaker.opened')",
            [(NOW - 40 * DAY,), (NOW - 31 * DAY,), (NOW - DAY,)],
        )
    )
    return store


PRUNED = {
    "old-ok", "old-failed", "old-cancelled", "old-undo-expired", "old-undone", "old-void",
}  # fmt: skip


def test_prune_deletes_exactly_the_old_ended_runs(mixed: Store) -> None:
    before = run_ids(mixed)
    result = retention.prune(mixed, 30 * DAY, batch=2, now=NOW)
    assert run_ids(mixed) == before - PRUNED
    assert result.runs == 6
    assert (result.steps, result.attempts, result.routes, result.commands) == (12, 24, 6, 6)
    assert result.events == 6 * 3 + 2  # the runs' events and the two old run-less ones
    assert (result.reviews, result.undo_log) == (1, 3)
    assert (result.kept_pending_review, result.kept_undo_window) == (1, 3)
    assert result.batches >= 3 + 1  # 6 runs in batches of 2, then the run-less events
    assert result.cutoff == NOW - 30 * DAY
    # nothing of the pruned runs is left anywhere
    for table in ("steps", "attempts", "events", "reviews", "undo_log", "routes", "commands"):
        left = {r["run_id"] for r in mixed.query(f"SELECT DISTINCT run_id FROM {table}")}
        assert not left & PRUNED, table
    assert [r["ts"] for r in mixed.query("SELECT ts FROM events WHERE run_id IS NULL")] == [
        NOW - DAY
    ]
    # a second prune has nothing left to do
    again = retention.prune(mixed, 30 * DAY, now=NOW)
    assert (again.runs, again.events, again.batches) == (0, 0, 0)


def test_analytics_stay_exact_for_what_is_kept(mixed: Store) -> None:
    retention.prune(mixed, 30 * DAY, batch=1, now=NOW)
    fast = mixed.read(lambda db: analytics.compute(db, since=None, now=NOW))
    naive = mixed.read(lambda db: naive_compute(db.conn, since=None, now=NOW))
    assert fast.model_dump() == naive.model_dump()
    assert fast.totals.calls == 2 * 2 * 7  # 7 runs kept, 2 steps, 2 attempts each
    rollup = mixed.query(
        "SELECT sum(n) AS n FROM attempt_rollup WHERE grain = 't' AND status <> 'running'"
    )[0]["n"]
    assert rollup == count(mixed, "attempts")


def test_dry_run_counts_without_deleting(mixed: Store) -> None:
    tables = ("runs", "steps", "attempts", "events", "reviews", "undo_log", "routes", "commands")
    before = {t: count(mixed, t) for t in tables}
    dry = retention.prune(mixed, 30 * DAY, now=NOW, dry_run=True)
    assert {t: count(mixed, t) for t in tables} == before
    assert dry.dry_run and dry.batches == 0
    real = retention.prune(mixed, 30 * DAY, now=NOW)
    for t in tables:
        assert getattr(dry, t) == getattr(real, t) == before[t] - count(mixed, t), t


def test_each_batch_is_its_own_transaction(store: Store) -> None:
    for i in range(7):
        add_run(store, f"r{i}", steps=1)
    commits = store.commits
    result = retention.prune(store, 30 * DAY, batch=3, now=NOW)
    assert result.runs == 7
    assert result.batches == 3  # 3 + 3 + 1 runs; their events go with them
    assert store.commits - commits >= result.batches


def test_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError):
        retention.prune(store, -1)
    with pytest.raises(ValueError):
        retention.prune(store, 10, batch=0)


async def test_retention_loop_prunes_and_keeps_going(mixed: Store) -> None:
    results: list[retention.PruneResult] = []
    task = asyncio.create_task(
        retention.retention_loop(
            mixed, 30, interval=0.05, clock=lambda: NOW, batch=2, on_result=results.append
        )
    )
    for _ in range(200):
        await asyncio.sleep(0.01)
        if len(results) >= 2:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results[0].runs == 6 and results[1].runs == 0
    assert run_ids(mixed).isdisjoint(PRUNED)


def test_prune_cli(db_path: Path, cli: Any) -> None:
    now = time.time()
    with Store.open(db_path) as store:
        add_run(store, "old", now=now)
        add_run(store, "kept", review="pending", now=now)
        add_run(store, "young", ended_days_ago=1, now=now)
    r = cli("prune", "--db", str(db_path), "--older-than", "30d", "--dry-run", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["runs"] == 1 and r.json()["dry_run"] is True
    r = cli("prune", "--db", str(db_path), "--older-than", "30d", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert (doc["runs"], doc["attempts"], doc["kept_pending_review"]) == (1, 4, 1)
    with Store.open(db_path) as store:
        assert run_ids(store) == {"kept", "young"}
    r = cli("prune", "--db", str(db_path), "--older-than", "12h")
    assert r.code == 0, r.stderr
    assert "deleted 1 runs" in r.stdout and "kept 1 with a pending review" in r.stdout
    r = cli("prune", "--db", str(db_path), "--older-than", "all")
    assert r.code == 2 and "not a time window" in r.stderr
    r = cli("prune", "--db", str(db_path))
    assert r.code == 2
