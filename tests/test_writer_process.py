"""The store's writer process: the engine's rows are written by a process of their own, beside
the event loop; calls, barriers and stops are gates it waits at for the writer thread."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import psutil
import pytest

from engine.errors import DatabaseError
from engine.events import EVENT_ROWS
from engine.runner import ATTEMPT_ROWS, STEP_ROWS
from engine.store import Store


def _writer_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "engine.writer" in " ".join(p.cmdline())]


def test_rows_are_written_by_a_process_of_their_own(tmp_path):
    before = {p.pid for p in _writer_processes()}
    with Store.open(tmp_path / "w.db") as store:
        mine = [p for p in _writer_processes() if p.pid not in before]
        assert len(mine) == 1
        store.put(EVENT_ROWS, (1.0, "r", None, "k", "{}"))
        store.flush_sync()
        assert store.query("SELECT kind FROM events") == [{"kind": "k"}]
    assert not mine[0].is_running() or mine[0].status() == psutil.STATUS_ZOMBIE


def test_thread_mode_writes_the_same(tmp_path):
    """FLOWDECK_WRITER=thread (or a process that cannot start) writes in the writer thread."""
    with Store.open(tmp_path / "t.db", bulk_process=False) as store:
        assert store._child is None
        store.put(EVENT_ROWS, (1.0, "r", None, "k", "{}"))
        store.execute("INSERT INTO events(ts, run_id, kind) VALUES (2, 'r', 'plain')")
        store.flush_sync()
        assert [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")] == [
            "k",
            "plain",
        ]


def test_a_call_sees_every_row_queued_before_it_and_none_after(tmp_path):
    """Queue order holds across the two writers: a call (run by the thread) sees what was put
    before it, and what is put after it is written after it."""
    with Store.open(tmp_path / "o.db") as store:
        for i in range(500):
            store.put(EVENT_ROWS, (float(i), "r", None, "before", "{}"))
        seen = store.call(
            lambda db: (
                db.execute("SELECT count(*) FROM events").fetchone()[0],
                db.execute(
                    "INSERT INTO events(ts, run_id, kind) VALUES (-1, 'r', 'call')"
                ).lastrowid,
            )
        )
        for i in range(500):
            store.put(EVENT_ROWS, (float(i), "r", None, "after", "{}"))
        store.flush_sync()
        count, call_id = seen.result()
        assert count == 500
        kinds = [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")]
        assert kinds == ["before"] * 500 + ["call"] + ["after"] * 500
        assert call_id == 501


async def test_rows_from_the_loop_go_out_once_per_iteration_and_land(tmp_path):
    with Store.open(tmp_path / "l.db") as store:
        store.execute(
            "INSERT INTO runs(id, workflow, spec, inputs, status, created_at, steps_total) "
            "VALUES ('r', 'w', '{}', '{}', 'running', 0, 2)"
        )
        store.execute("INSERT INTO steps(run_id, step_id, status) VALUES ('r', 'a', 'pending')")
        for status in ("running", "succeeded"):
            store.put(
                STEP_ROWS, (status, 1, 1.0, None, None, None, None, None, None, None, "r", "a")
            )
        store.put(
            ATTEMPT_ROWS,
            ("r", "a", 1, "py", None, "succeeded", 1.0, 2.0, 1000.0, None, None, None, None, None),
        )
        await asyncio.sleep(0)  # the loop's send
        await store.flush()
        assert store.query("SELECT status, started_at FROM steps") == [
            {"status": "succeeded", "started_at": 1.0}
        ]
        assert store.query("SELECT count(*) AS n FROM attempts") == [{"n": 1}]


def test_a_failing_statement_is_reported_and_the_rest_is_kept(tmp_path):
    with Store.open(tmp_path / "f.db") as store:
        store.put(EVENT_ROWS, (1.0, "r", None, "kept", "{}"))
        store.execute("INSERT INTO no_such_table VALUES (1)")
        store.put(EVENT_ROWS, (2.0, "r", None, "kept too", "{}"))
        store.flush_sync()
        assert isinstance(store.failure, DatabaseError)
        assert "no_such_table" in str(store.failure)
        assert [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")] == [
            "kept",
            "kept too",
        ]


def test_a_killed_writer_process_fails_the_waiters_instead_of_hanging(tmp_path):
    store = Store.open(tmp_path / "k.db")
    try:
        store.put(EVENT_ROWS, (1.0, "r", None, "k", "{}"))
        store.flush_sync()
        (child,) = [p for p in _writer_processes() if p.pid == store._child.pid]
        child.kill()
        child.wait(10)
        done = threading.Event()
        errors: list[BaseException] = []

        def flush() -> None:
            try:
                store.put(EVENT_ROWS, (2.0, "r", None, "lost", "{}"))
                store.flush_sync()
            except DatabaseError as e:
                errors.append(e)
            done.set()

        threading.Thread(target=flush, daemon=True).start()
        assert done.wait(10), "flush hung after the writer process died"
        assert isinstance(store.failure, DatabaseError)
        assert "writer process" in str(store.failure)
        # What was committed before is still there; the thread writes from now on.
        assert {"kind": "k"} in store.query("SELECT kind FROM events")
        store.put(EVENT_ROWS, (3.0, "r", None, "later", "{}"))
        store.flush_sync()
        assert {"kind": "later"} in store.query("SELECT kind FROM events")
    finally:
        store.close()


def test_the_writer_process_ignores_ctrl_c_sent_to_the_process_group(tmp_path):
    """Ctrl-C reaches the whole process group; the engine handles it and still writes its
    final states, so the writer process must not die of it: it has a process group of its own,
    and ignores the two signals sent to it directly."""
    with Store.open(tmp_path / "c.db") as store:
        assert os.getpgid(store._child.pid) != os.getpgid(0)
        store.flush_sync()  # the process is up (its handlers are set)
        os.kill(store._child.pid, signal.SIGINT)
        os.kill(store._child.pid, signal.SIGTERM)
        store.put(EVENT_ROWS, (1.0, "r", None, "after ctrl-c", "{}"))
        store.flush_sync()
        assert store.failure is None
        assert store.query("SELECT kind FROM events") == [{"kind": "after ctrl-c"}]


@pytest.mark.parametrize("bulk_process", [True, False], ids=["process", "thread"])
def test_many_producer_threads_in_either_mode(tmp_path, bulk_process):
    n_threads, per_thread = 4, 2000
    with Store.open(tmp_path / "m.db", bulk_process=bulk_process) as store:

        def produce(t: int) -> None:
            for i in range(per_thread):
                store.put(EVENT_ROWS, (float(i), f"r{t}", None, "k", "{}"))
                if i % 400 == 0:
                    store.flush_sync()

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        store.flush_sync()
        for t in range(n_threads):
            ts = [
                r["ts"]
                for r in store.query(
                    "SELECT ts FROM events WHERE run_id = ? ORDER BY id", (f"r{t}",)
                )
            ]
            assert ts == [float(i) for i in range(per_thread)]


async def test_the_loop_never_waits_for_a_writer_held_up_by_another_process(tmp_path):
    """Another process holding the write lock holds the writer process up; rows keep coming
    from the loop (more than the pipe between them holds) and the loop goes on: they wait in
    the store, in order, and all land once the lock is let go. (The loop used to stall in the
    pipe write until the lock was released.)"""
    import sqlite3

    path = tmp_path / "held.db"
    store = Store.open(path, busy_timeout=60)
    try:
        await store.flush()
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        let_go, gave_up = threading.Event(), threading.Event()

        def hold() -> None:
            if not let_go.wait(30):  # only if the loop stalled (it would wait for the lock)
                gave_up.set()
            holder.execute("COMMIT")
            holder.close()

        holding = threading.Thread(target=hold)
        holding.start()
        pad = "x" * 100
        n = 20_000  # over 2 MB of rows (each one different): twice what the pipe holds
        for i in range(n):
            store.put(EVENT_ROWS, (float(i), "r", f"s{i}", "step.succeeded", f"{pad}{i}"))
            if i % 1000 == 0:
                await asyncio.sleep(0)  # loop iterations: the store sends what it has
        still_held = not gave_up.is_set()
        let_go.set()
        await store.flush()
        holding.join()
        assert still_held, "the loop waited for the lock another process held"
        ts = [r["ts"] for r in store.query("SELECT ts FROM events WHERE run_id = 'r' ORDER BY id")]
        assert ts == [float(i) for i in range(n)]
    finally:
        store.close()


def test_a_process_started_ahead_is_the_next_stores_and_told_its_file(tmp_path):
    """`flowdeck run` starts the writer process before its imports (`writer.prespawn`); the
    first store opened takes that process, which learns its file from its first message."""
    from engine import writer

    before = {p.pid for p in _writer_processes()}
    writer.prespawn()
    (ahead,) = [p for p in _writer_processes() if p.pid not in before]
    with Store.open(tmp_path / "a.db") as first, Store.open(tmp_path / "b.db") as second:
        assert first._child.pid == ahead.pid
        assert second._child.pid not in before | {ahead.pid}  # the next store starts its own
        for store, kind in ((first, "one"), (second, "two")):
            store.put(EVENT_ROWS, (1.0, "r", None, kind, "{}"))
            store.flush_sync()
        assert first.query("SELECT kind FROM events") == [{"kind": "one"}]
        assert second.query("SELECT kind FROM events") == [{"kind": "two"}]
    ahead.wait(10)


def test_a_process_started_ahead_and_never_used_ends_and_writes_nothing(tmp_path):
    from engine import writer

    writer.prespawn()
    child = writer._prespawned
    writer._prespawned = None
    child.stdin.close()  # what this process ending does
    assert child.wait(10) == 0
    child.stdout.close()
    child.stderr.close()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_file_stays_byte_identical_though_the_process_starts_first(tmp_path):
    """The process starts before the store checks the file (to be up sooner) but connects only
    at its first write: a file the store refuses is left byte-identical, wal and all."""
    from engine import migrations

    path = tmp_path / "newer.db"
    with Store.open(path) as store:
        store.put(EVENT_ROWS, (1.0, "r", None, "k", "{}"))
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(migrations.MIGRATIONS) + 5}")
    conn.commit()
    conn.close()
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    before = {p.pid for p in _writer_processes()}
    with pytest.raises(DatabaseError, match="newer"):
        Store.open(path)
    assert {p.pid for p in _writer_processes()} <= before  # it ended
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot


@pytest.mark.parametrize("wait", [False, True], ids=["barrier", "call"])
def test_the_process_goes_on_after_a_barrier_but_waits_at_a_call(tmp_path, wait):
    """At a gate the process commits what came before and answers. At a barrier (somebody
    only waits for the commit) it then goes on writing; at a call it writes nothing more until
    the gate is opened, since the writer thread writes meanwhile."""
    from engine import writer

    path = tmp_path / "g.db"
    Store.open(path).close()
    child = writer.spawn([str(path), "NORMAL", "5000"])
    try:
        define = (writer.DEFINE, EVENT_ROWS.name, EVENT_ROWS.definition(), None)

        def event(kind: str) -> tuple:
            return (writer.ROWS, EVENT_ROWS.name, (1.0, "r", None, kind, "{}"), None)

        send = child.stdin.fileno()
        writer.write_all(
            send, writer.encode([define, event("before"), (writer.GATE, 1, wait, None)])
        )
        assert writer.FrameReader(child.stdout.fileno()).read() == [("g", 1, 1)]
        writer.write_all(send, writer.encode([event("after")]))  # the gate is never opened
        child.stdin.close()
        assert child.wait(10) == 0
    finally:
        child.stdout.close()
        child.stderr.close()
    with Store.open(path) as store:
        kinds = [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")]
    assert kinds == (["before"] if wait else ["before", "after"])
