"""engine/views.py: the console's read models, on a real SQLite file written by a real engine."""

from __future__ import annotations

import json
import time

from engine.models import WorkflowSpec
from engine.runner import Engine
from engine.views import (
    SnapshotReader,
    UndoRow,
    decided_reviews,
    pending_reviews,
    run_view,
    runs_page,
)

H = "tests.helpers.console"


def wf(name: str, steps: dict) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "agents": {"py": {"kind": "python"}}, "steps": steps}
    )


def py(fn: str, needs=(), **kw):
    return {"agent": "py", "with": {"call": f"{H}:{fn}", "args": kw.pop("args", {})},
            "needs": list(needs), **kw}  # fmt: skip


async def test_runs_page_progress_filter_and_run_view(store):
    engine = Engine(store)
    await engine.start()
    try:
        spec = wf("fan", {
            "a": py("echo", description="first"),
            "b": py("echo", ["a"]), "c": py("fail", ["a"]), "d": py("echo", ["b", "c"]),
        })  # fmt: skip
        failed = await engine.run(spec)
        ok = await engine.run(wf("single", {"only": py("echo", args={"value": "[b]x[/b]"})}))
    finally:
        await engine.aclose()
    rows = store.read(lambda db: runs_page(db))
    assert [r.id for r in rows] == [ok.run_id, failed.run_id]  # newest first
    assert (rows[1].steps_done, rows[1].steps_total, rows[1].status) == (4, 4, "failed")
    assert rows[1].duration(time.time()) >= 0
    assert [r.id for r in store.read(lambda db: runs_page(db, text="FAN"))] == [failed.run_id]
    assert [r.id for r in store.read(lambda db: runs_page(db, text="succ"))] == [ok.run_id]

    view = store.read(lambda db: run_view(db, failed.run_id))
    assert [(s.step_id, s.depth, s.status) for s in view.steps] == [
        ("a", 0, "succeeded"), ("b", 1, "succeeded"), ("c", 1, "failed"), ("d", 2, "skipped"),
    ]  # fmt: skip
    a, c, d = view.step("a"), view.step("c"), view.step("d")
    assert a.description == "first" and a.params["call"] == f"{H}:echo"
    assert c.error == "RuntimeError: boom" and c.attempts[0].status == "failed"
    assert d.needs == ("b", "c") and d.attempts == ()
    assert store.read(lambda db: run_view(db, "nope")) is None
    only = store.read(lambda db: run_view(db, ok.run_id)).step("only")
    assert only.output == {"value": "[b]x[/b]"}


def _review(store, run_id: str, created: float, status: str = "pending") -> int:
    return store.run_sync(
        lambda db: (
            db.execute(
                "INSERT INTO reviews(run_id, step_id, status, created_at, params, candidates) "
                "VALUES (?, 's', ?, ?, ?, ?)",
                (run_id, status, created, json.dumps({"n": 1}), json.dumps([{"target": "x"}])),
            ).lastrowid
        )
    )


def test_pending_reviews_oldest_first(store):
    newer = _review(store, "r1", 200.0)
    older = _review(store, "r2", 100.0)
    _review(store, "r3", 50.0, status="approved")
    rows = store.read(lambda db: pending_reviews(db))
    assert [r.id for r in rows] == [older, newer]
    assert rows[0].params == {"n": 1} and rows[0].candidates == [{"target": "x"}]


def test_recent_decisions_newest_decision_first_from_the_decided_at_index(store):
    """Reviews are decided in another order than they were opened: the most recent decision
    comes first, read through an index on decided_at (pending ones are not scanned)."""
    first, second, third = (_review(store, f"r{i}", 100.0 + i) for i in range(3))
    _review(store, "r9", 150.0)  # still pending: not a decision
    for review_id, at in ((second, 300.0), (third, 200.0), (first, 400.0)):
        store.run_sync(
            lambda db, review_id=review_id, at=at: db.execute(
                "UPDATE reviews SET status='approved', reviewer='x', decided_at=? WHERE id=?",
                (at, review_id),
            )
        )
    rows = store.read(lambda db: decided_reviews(db))
    assert [r.id for r in rows] == [first, second, third]
    assert [r.id for r in store.read(lambda db: decided_reviews(db, limit=2))] == [first, second]
    plan = store.read(
        lambda db: [
            r[3]
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT rv.*, r.workflow FROM reviews rv "
                "LEFT JOIN runs r ON r.id = rv.run_id WHERE rv.decided_at IS NOT NULL "
                "AND rv.status <> 'pending' ORDER BY rv.decided_at DESC, rv.id DESC LIMIT 10"
            )
        ]
    )
    assert any("reviews_decided" in p for p in plan), plan
    assert not any("TEMP B-TREE" in p for p in plan), plan


def _plan(store, sql: str, params) -> list[str]:
    return store.read(lambda db: [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, params)])


def test_runs_list_reads_a_covering_index_not_the_rows(store):
    """The runs list (console and GET /api/runs) never reads `runs` rows (their large `spec`
    sits before the listed columns): a covering index gives the columns in list order."""
    import engine.queries as queries

    seen: list[str] = []

    def capture(db):
        real = db.query

        def query(sql, params=None):
            seen.append(sql)
            return real(sql, params)

        db.query = query
        try:
            runs_page(db)
            runs_page(db, text="fan")
            queries.list_runs(db)
        finally:
            del db.query

    store.read(capture)
    assert len(seen) == 3
    for sql in seen:
        plan = _plan(store, sql, {"limit": 50, "t": "fan", "status": None})
        assert any("USING COVERING INDEX runs_list" in p for p in plan), (sql, plan)
        assert not any("TEMP B-TREE" in p for p in plan), plan


def test_undo_row_says_why_it_cannot_be_undone():
    def row(status: str, expires: float | None) -> UndoRow:
        return UndoRow(1, "r", "s", None, None, None, 0.0, expires, status, None, None, None, None)

    assert row("done", 200.0).why_not(100.0) is None
    assert row("done", 200.0).time_left(150.0) == 50.0
    assert row("done", 100.0).why_not(150.0) == "the undo window has expired"
    assert row("undone", 200.0).why_not(100.0) == "already undone"
    assert row("void", None).why_not(100.0).startswith("the action did not happen")
    assert row("weird", None).why_not(0.0) == "status is weird"


async def test_snapshot_reader_reads_only_when_something_changed(store, db_path):
    from engine.store import Store

    other = Store.open(db_path)  # the console's own connection
    try:
        reader = SnapshotReader(other.read)
        first = reader.poll(1000.0)
        assert first is not None and first.runs == ()
        assert reader.poll(1001.0) is None  # nothing changed: one pragma, no snapshot
        engine = Engine(store)
        await engine.start()
        try:
            run = await engine.run(wf("w", {"a": py("echo")}))
        finally:
            await engine.aclose()
        snap = reader.poll(1002.0)
        assert snap is not None and [r.id for r in snap.runs] == [run.run_id]
        kinds = [e.kind for e in snap.events]
        assert kinds[0] == "run.created" and kinds[-1] == "run.succeeded"
        assert reader.poll(1003.0) is None
        import dataclasses

        reader.request = dataclasses.replace(reader.request, run_id=run.run_id)
        snap = reader.poll(1004.0)  # a new request reads even without new data
        assert snap.run is not None and snap.run.run.id == run.run_id
        assert snap.last_event_id == snap.events[-1].id
    finally:
        other.close()


async def test_quick_poll_reads_only_the_opened_run_and_defers_analytics(store, db_path):
    """An operator opening a run waits for one run, not for a whole snapshot: a quick poll
    after only `run_id` changed reads that run and keeps the rest; analytics due during a
    quick poll wait for the next full one; data committed meanwhile is read by the next poll."""
    import dataclasses

    from engine.store import Store

    calls: list[float] = []

    def analytics(db, now):
        calls.append(now)
        return {"at": now}

    engine = Engine(store)
    await engine.start()
    other = Store.open(db_path)
    try:
        first = await engine.run(wf("w", {"a": py("echo")}))
        reader = SnapshotReader(other.read, analytics=analytics, analytics_every=3.0)
        full = reader.poll(1000.0)
        assert full is not None and calls == [1000.0]
        await engine.run(wf("w", {"a": py("echo")}))  # new data the quick poll leaves for later
        await store.flush()
        reader.request = dataclasses.replace(reader.request, run_id=first.run_id)
        quick = reader.poll(1010.0, quick=True)
        assert quick is not None and quick.run is not None and quick.run.run.id == first.run_id
        assert quick.runs is full.runs and quick.events is full.events  # kept, not re-read
        assert quick.now == 1010.0 and quick.version > full.version
        assert calls == [1000.0]  # analytics were due, but an operator was waiting
        nxt = reader.poll(1011.0)  # not quick: the new run and the analytics now
        assert nxt is not None and len(nxt.runs) == 2 and nxt.run.run.id == first.run_id
        assert calls == [1000.0, 1011.0] and nxt.analytics == {"at": 1011.0}
        assert reader.poll(1012.0) is None
        # a quick poll that is not only a change of run reads everything but analytics
        reader.request = dataclasses.replace(reader.request, runs_filter="w")
        filtered = reader.poll(1020.0, quick=True)
        assert filtered is not None and len(filtered.runs) == 2 and calls[-1] == 1011.0
    finally:
        await engine.aclose()
        other.close()


async def test_listing_runs_counts_steps_only_for_runs_not_ended(tmp_path):
    """A run ends only once every step has, so an ended run's progress is its step total: the
    runs list (console and GET /api/runs) does the same SQLite work for a 1-step and a 200-step
    ended run (virtual-machine steps counted with SQLite's progress handler, not timed), while a
    run still going counts its ended steps."""
    import asyncio

    from engine import queries
    from engine.store import Store
    from tests.helpers.console import GATES

    def measured(store, fn):
        def read(db):
            ops = [0]

            def tick() -> int:
                ops[0] += 1
                return 0

            db.conn.set_progress_handler(tick, 1)
            try:
                rows = fn(db)
                return ops[0], rows
            finally:
                db.conn.set_progress_handler(None, 1)

        return store.read(read)

    cost: dict[int, list[int]] = {}
    for n in (1, 200):
        store = Store.open(tmp_path / f"{n}.db")
        engine = Engine(store)
        await engine.start()
        try:
            await engine.run(wf("w", {f"s{i:03d}": py("echo") for i in range(n)}))
            await store.flush()
            ops_page, page = measured(store, lambda db: runs_page(db))
            ops_api, api = measured(store, lambda db: queries.list_runs(db))
            assert [(r.status, r.steps_done, r.steps_total) for r in page] == [("succeeded", n, n)]
            assert [(r["steps_done"], r["steps_total"]) for r in api] == [(n, n)]
            cost[n] = [ops_page, ops_api]
            if n == 200:  # a run going on: 2 of 3 steps ended, one waits on a gate
                GATES.pop("views-progress", None)
                waiting = py("gate", args={"name": "views-progress"})
                going = await engine.submit(
                    wf("g", {"a": py("echo"), "b": py("echo"), "c": waiting})
                )
                for _ in range(500):
                    await store.flush()
                    rows = store.read(lambda db: runs_page(db))
                    if rows[0].steps_done == 2:
                        break
                    await asyncio.sleep(0.01)
                assert (rows[0].id, rows[0].status, rows[0].steps_done) == (
                    going.run_id,
                    "running",
                    2,
                )
                GATES["views-progress"].set()
                await going.wait()
        finally:
            await engine.aclose()
            store.close()
    assert cost[200][0] < 2 * cost[1][0] and cost[200][1] < 2 * cost[1][1], cost
