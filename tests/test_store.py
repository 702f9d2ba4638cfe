"""The SQLite store: migrations, group commit, ordering, readers, bad database files."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import migrations
from engine.errors import DatabaseError
from engine.events import EventFollower, EventLog
from engine.store import Store
from tests.conftest import ROOT, cli_env


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_file_is_migrated_to_wal(store, db_path):
    names = [r["name"] for r in store.query("SELECT name FROM _migrations")]
    assert names == [name for name, _ in migrations.MIGRATIONS]
    assert store.query("PRAGMA user_version")[0]["user_version"] == len(migrations.MIGRATIONS)
    assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    tables = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "steps", "attempts", "events", "commands", "reviews", "undo_log"} <= tables


def test_reopen_applies_nothing_twice(db_path):
    Store.open(db_path).close()
    with Store.open(db_path) as s:
        assert len(s.query("SELECT * FROM _migrations")) == len(migrations.MIGRATIONS)


def test_group_commit_batches_and_keeps_order(store):
    sql_a = "INSERT INTO events(ts, kind, data) VALUES (?, ?, '{}')"
    sql_b = "UPDATE events SET kind = ? WHERE ts = ?"
    for i in range(5000):
        store.execute(sql_a, (i, "created"))
        store.execute(sql_b, ("updated", i))
    store.flush_sync()
    rows = store.query("SELECT ts, kind FROM events ORDER BY id")
    assert len(rows) == 5000
    assert {r["kind"] for r in rows} == {"updated"}  # each update ran after its insert
    assert [r["ts"] for r in rows] == list(range(5000))
    assert store.commits < 5000  # grouped, not one transaction per statement


def test_call_returns_result_after_commit_and_isolates_errors(store):
    def insert(db):
        return db.execute("INSERT INTO events(ts, kind) VALUES (1, 'x')").lastrowid

    def bad(db):
        db.execute("INSERT INTO events(ts, kind) VALUES (2, 'y')")
        db.execute("INSERT INTO no_such_table VALUES (1)")

    f1 = store.call(insert)
    f2 = store.call(bad)
    f3 = store.call(insert)
    assert f1.result() >= 1
    with pytest.raises(sqlite3.OperationalError):
        f2.result()
    assert f3.result() > f1.result()
    kinds = [r["kind"] for r in store.query("SELECT kind FROM events")]
    assert kinds == ["x", "x"]  # the failed call's own write was rolled back, nothing else


def test_bad_statement_does_not_lose_the_batch(store):
    store.execute("INSERT INTO events(ts, kind) VALUES (1, 'a')")
    store.execute("INSERT INTO events(ts, kind) VALUES (NULL, NULL)")  # NOT NULL violation
    store.execute("INSERT INTO events(ts, kind) VALUES (3, 'c')")
    store.flush_sync()
    assert [r["kind"] for r in store.query("SELECT kind FROM events ORDER BY id")] == ["a", "c"]
    assert store.failure is not None


def test_reader_in_other_thread_sees_commits(store):
    store.execute("INSERT INTO events(ts, kind) VALUES (1, 'a')")
    store.flush_sync()
    seen = []
    t = threading.Thread(target=lambda: seen.append(store.query("SELECT count(*) n FROM events")))
    t.start()
    t.join()
    assert seen[0][0]["n"] == 1


def test_follower_on_a_second_connection_reads_events_in_order(db_path):
    writer = Store.open(db_path)
    other = Store.open(db_path)  # stands for another process: its own connections
    try:
        log = EventLog(writer)
        follower = EventFollower(other)
        assert follower.poll() == []
        for i in range(3):
            log.emit("step.started", "r1", f"s{i}", attempt=1)
        writer.flush_sync()
        got = follower.poll()
        assert [e.step_id for e in got] == ["s0", "s1", "s2"]
        assert [e.id for e in got] == sorted(e.id for e in got)
        assert follower.poll() == []  # nothing new: data_version unchanged
        log.emit("run.succeeded", "r1")
        writer.flush_sync()
        assert [e.kind for e in follower.poll()] == ["run.succeeded"]
    finally:
        other.close()
        writer.close()


def test_not_sqlite_is_refused_byte_identical(tmp_path):
    path = tmp_path / "flowdeck.db"
    path.write_bytes(b"this is a text file, not a database\n" * 10)
    before = digest(path)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        Store.open(path)
    assert digest(path) == before
    assert not (tmp_path / "flowdeck.db-wal").exists()


def test_truncated_file_is_refused_byte_identical(tmp_path, db_path):
    with Store.open(db_path) as s:
        s.execute_many(
            "INSERT INTO events(ts, kind, data) VALUES (?, 'x', ?)",
            [(i, "y" * 500) for i in range(2000)],
        )
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = db_path.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    before = digest(cut)
    with pytest.raises(DatabaseError, match="truncated"):
        Store.open(cut)
    assert digest(cut) == before


def test_a_file_caught_mid_checkpoint_opens(tmp_path):
    """A checkpoint writes page 1 (the header with the new size) before the pages that extend
    the file; the log keeps every page until it is done. A file seen in that state (an engine
    killed while its writer process checkpoints at exit, then a command run at once) is whole
    and opens; it used to be refused as truncated."""
    path = tmp_path / "mid.db"
    Store.open(path).close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.executemany(
        "INSERT INTO events(ts, kind, data) VALUES (?, 'x', ?)",
        [(i, "y" * 500) for i in range(500)],
    )
    wal = tmp_path / "mid.db-wal"
    log, old = wal.read_bytes(), path.read_bytes()  # the log: every page changed, committed
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    new = path.read_bytes()
    assert len(new) > len(old) + 4096 * 10
    path.write_bytes(new[:4096] + old[4096:])  # page 1 written, the file not yet extended
    wal.write_bytes(log)
    with Store.open(path) as s:
        assert s.query("SELECT count(*) AS n FROM events WHERE kind = 'x'") == [{"n": 500}]


def test_newer_schema_is_refused_byte_identical(db_path):
    Store.open(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute(f"PRAGMA user_version = {len(migrations.MIGRATIONS) + 5}")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = digest(db_path)
    with pytest.raises(DatabaseError, match="newer flowdeck"):
        Store.open(db_path)
    assert digest(db_path) == before


def test_locked_past_busy_timeout(db_path):
    Store.open(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseError, match="locked"):
            Store.open(db_path, busy_timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_directory_as_db_is_refused(tmp_path):
    with pytest.raises(DatabaseError, match="directory"):
        Store.open(tmp_path)


def test_one_batch_runs_in_queue_order_across_different_sql(store):
    gate = threading.Event()
    blocker = store.call(lambda db: gate.wait(5))  # holds the writer so the rest is one batch
    update = "UPDATE events SET kind='updated' WHERE ts = ?"
    insert = "INSERT INTO events(ts, kind) VALUES (?, 'created')"
    store.execute(update, (0,))  # touches nothing, but its SQL comes first in the batch
    store.execute(insert, (1,))
    store.execute(update, (1,))
    store.execute(insert, (2,))
    gate.set()
    blocker.result()
    store.flush_sync()
    assert [
        (r["ts"], r["kind"]) for r in store.query("SELECT ts, kind FROM events ORDER BY id")
    ] == [
        (1, "updated"),
        (2, "created"),
    ]


def test_processes_opening_a_new_file_at_once_migrate_it_once(db_path):
    # Each process reads which migrations are applied, then takes the write lock; one that
    # waited for the lock must not apply them a second time ("duplicate column").
    code = (
        "import sys, time\n"
        "from engine.store import Store\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "Store.open(sys.argv[1]).close()\n"
    )
    start = time.time() + 1.5  # every process is past its imports by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(db_path), str(start)],
            cwd=ROOT,
            env=cli_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    with Store.open(db_path) as s:
        names = [r["name"] for r in s.query("SELECT name FROM _migrations")]
    assert names == [name for name, _ in migrations.MIGRATIONS]


def test_a_file_open_in_this_process_is_not_read_again(db_path, monkeypatch):
    """Reading the header with open()/close() while this process holds SQLite connections to
    the file would drop their POSIX locks (and let another process corrupt the file)."""
    import engine.store as store_module

    first = Store.open(db_path)
    seen = []
    monkeypatch.setattr(store_module, "check_file", lambda path: seen.append(path))
    try:
        second = Store.open(db_path)
        second.close()
        assert seen == []  # the file is open here: no plain read of it
    finally:
        first.close()
    third = Store.open(db_path)
    third.close()
    assert seen == [db_path]  # nothing had it open any more: checked as usual


# --------------------------------------------------------------------------- batched rows

STEP_IDS = ["a", "b", "c"]


def _seed(conn_or_db) -> None:
    conn_or_db.execute(
        "INSERT INTO runs(id, workflow, spec, status, created_at) VALUES ('r', 'w', '{}', 'running', 0)"
    )
    for sid in STEP_IDS:
        conn_or_db.execute(
            "INSERT INTO steps(run_id, step_id, status) VALUES ('r', ?, 'pending')", (sid,)
        )


def _state(read) -> tuple:
    return (
        read(
            "SELECT step_id, status, attempt, started_at, output, operation FROM steps ORDER BY 1"
        ),
        read("SELECT run_id, step_id, number, status, duration_ms FROM attempts ORDER BY 1, 2, 3"),
        read("SELECT id, step_id, kind FROM events ORDER BY id"),
        read("SELECT grain, agent, status, n FROM attempt_rollup ORDER BY 1, 2, 3"),
    )


_step_row = st.tuples(
    st.sampled_from(["running", "retrying", "succeeded"]),
    st.integers(1, 3),
    st.one_of(st.none(), st.floats(1, 2)),
    st.none(),
    st.none(),
    st.one_of(st.none(), st.sampled_from(['{"x":1}', "{}"])),
    st.none(),
    st.none(),
    st.none(),
    st.one_of(st.none(), st.sampled_from(["op1", "op2"])),
    st.just("r"),
    st.sampled_from(STEP_IDS),
)
_attempt_row = st.tuples(
    st.just("r"), st.sampled_from(STEP_IDS), st.integers(1, 2), st.just("agent"),
    st.sampled_from(["op1", None]), st.sampled_from(["running", "failed", "succeeded"]),
    st.just(1.0), st.just(2.0), st.floats(0, 500), st.none(), st.none(), st.none(),
    st.none(), st.none(),
)  # fmt: skip
_event_row = st.tuples(
    st.just(1.0), st.just("r"), st.sampled_from(STEP_IDS), st.sampled_from(["k1", "k2"]),
    st.just("{}"),
)  # fmt: skip
_plain_sql = st.sampled_from(
    [
        ("UPDATE steps SET status = 'pending', output = NULL WHERE step_id = 'a'", ()),
        ("INSERT INTO events(ts, run_id, step_id, kind) VALUES (9, 'r', 'b', 'plain')", ()),
        ("DELETE FROM attempts WHERE step_id = 'c'", ()),
    ]
)


_ROW_OPS = [
    st.tuples(st.just("step"), _step_row),
    st.tuples(st.just("attempt"), _attempt_row),
    st.tuples(st.just("event"), _event_row),
    st.tuples(st.just("sql"), _plain_sql),
]
"""Queue items for the store's batched statements: (what, row or (sql, params))."""


def _rows_of() -> dict:
    from engine.events import EVENT_ROWS
    from engine.runner import ATTEMPT_ROWS, STEP_ROWS

    return {"step": STEP_ROWS, "attempt": ATTEMPT_ROWS, "event": EVENT_ROWS}


def _one_row_at_a_time(path: Path, ops: list[tuple]) -> tuple:
    """The state after writing `ops` one statement per row, in order ("bad" ops left out)."""
    kinds = _rows_of()
    plain = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(plain)
    _seed(plain)
    for kind, row in ops:
        if kind == "sql":
            plain.execute(*row)
        elif kind != "bad":
            plain.execute(kinds[kind].statement(1), row)
    expected = _state(lambda q: plain.execute(q).fetchall())
    plain.close()
    return expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(st.one_of(*_ROW_OPS), max_size=60))
def test_batched_rows_give_the_result_of_writing_every_row_in_turn(tmp_path_factory, ops):
    """Rows gathered per statement, merged per key and written as multi-row statements leave
    the database exactly as one statement per row in queue order would (triggers included)."""
    kinds = _rows_of()
    d = tmp_path_factory.mktemp("rows")
    expected = _one_row_at_a_time(d / "plain.db", ops)

    with Store.open(d / "batched.db") as s:
        s.run_sync(_seed)
        gate = threading.Event()
        blocker = s.call(lambda db: gate.wait(5))  # everything below becomes one batch
        for kind, row in ops:
            if kind == "sql":
                s.execute(*row)
            else:
                s.put(kinds[kind], row)
        gate.set()
        blocker.result()
        s.flush_sync()
        got = _state(lambda q: [tuple(r.values()) for r in s.query(q)])
    assert got == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            *_ROW_OPS, st.tuples(st.just("bad"), st.just(("INSERT INTO nowhere VALUES (1)", ())))
        ),
        max_size=60,
    ),
    cuts=st.lists(st.tuples(st.integers(0, 60), st.booleans())),
)
def test_a_transaction_written_as_items_arrive_gives_the_result_of_every_row_in_turn(
    tmp_path_factory, ops, cuts
):
    """The writer process writes items into its open transaction as they arrive, in pieces,
    and commits now and then:
    the database ends exactly as one statement per row in queue order would leave it. A
    statement that fails rolls the transaction back and replays it an item at a time: only
    that statement is lost, and it is reported once."""
    from engine import writer

    kinds = _rows_of()
    d = tmp_path_factory.mktemp("txn")
    expected = _one_row_at_a_time(d / "plain.db", ops)

    conn = sqlite3.connect(d / "pieces.db", isolation_level=None)
    migrations.migrate(conn)
    _seed(conn)
    items: list[tuple] = []
    for kind, row in ops:
        if kind in ("sql", "bad"):
            items.append((writer.SQL, row[0], row[1], None))
        else:
            rows = kinds[kind]
            items.append((writer.DEFINE, rows.name, rows.definition(), None))
            items.append((writer.ROWS, rows.name, row, None))
    failed: list[tuple] = []
    txn = writer.Transaction(lambda: conn, {}, lambda item, e: failed.append(item))
    at = 0
    for cut, commit in sorted(cuts):
        cut = min(cut * 2, len(items))
        if cut > at:
            txn.write(items[at:cut])
            at = cut
        if commit:
            txn.commit()
    txn.write(items[at:])
    txn.commit()
    assert not conn.in_transaction
    got = _state(lambda q: conn.execute(q).fetchall())
    assert conn.execute("SELECT count(*) FROM attempt_bulk").fetchone()[0] == 0
    conn.close()
    assert got == expected
    assert [item[1] for item in failed] == [row[0] for kind, row in ops if kind == "bad"]


def test_rows_chunks_cover_every_row_in_order():
    from engine.store import CHUNK_SIZES, Rows

    rows = Rows("t", 2, "INSERT INTO t VALUES {values}")
    for n in (0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 64 * 3 + 8 * 5 + 7):
        data = [(i, -i) for i in range(n)]
        chunks = list(rows.chunks(data))
        flat = [v for _, values in chunks for v in values]
        assert flat == [v for row in data for v in row]
        for sql, values in chunks:
            assert sql.count("?") == len(values)
        assert {sql for sql, _ in chunks} <= {rows.statement(k) for k in CHUNK_SIZES}


def test_producers_in_many_threads_lose_nothing_and_never_stall(store):
    """The queue is appended to by any thread and wakes the writer only when it sleeps: with
    producers racing each other and the writer going idle between bursts, every row lands and
    every flush returns."""
    from engine.events import EVENT_ROWS

    n_threads, per_thread = 6, 3000
    errors: list[BaseException] = []

    def produce(t: int) -> None:
        try:
            for i in range(per_thread):
                if i % 3:
                    store.put(EVENT_ROWS, (float(i), f"r{t}", None, "k", "{}"))
                else:
                    store.execute(
                        "INSERT INTO events(ts, run_id, kind) VALUES (?, ?, 'plain')", (i, f"r{t}")
                    )
                if i % 500 == 0:
                    store.flush_sync()
                    time.sleep(0.001)  # let the writer go idle now and then
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and not any(th.is_alive() for th in threads)
    store.flush_sync()
    per_run = store.query("SELECT run_id, count(*) AS n, max(ts) AS last FROM events GROUP BY 1")
    assert {r["run_id"]: r["n"] for r in per_run} == {f"r{t}": per_thread for t in range(n_threads)}
    for t in range(n_threads):  # each thread's rows in its own order
        ts = [
            r["ts"]
            for r in store.query("SELECT ts FROM events WHERE run_id = ? ORDER BY id", (f"r{t}",))
        ]
        assert ts == sorted(ts)


def _rows_in_file_alone(path: Path, tmp_path: Path) -> int | None:
    """Events in the database file itself, read from a copy without its WAL (what checkpoints
    have copied there); None while the file does not have the table yet, or the copy caught a
    checkpoint half way."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def _wait_for_rows_in_file(path: Path, tmp_path: Path, n: int) -> int | None:
    deadline = time.monotonic() + 10
    while (got := _rows_in_file_alone(path, tmp_path)) != n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("bulk_process", [True, False], ids=["process", "thread"])
def test_the_wal_is_copied_into_the_file_in_a_pause_not_at_a_busy_commit(tmp_path, bulk_process):
    """Checkpoints wait for a pause in the writes: a commit that brings the WAL past SQLite's
    default 1,000 pages does not copy it then (that cost 20-30 ms in the middle of a run), and
    once nothing comes for a moment the writer copies everything into the file."""
    from engine import writer

    path = tmp_path / "f.db"
    page = "x" * 4000
    rows = 1500  # about 1,500 pages: past SQLite's default, below the writers' cap
    assert 1000 < rows < writer.CHECKPOINT_PAGES
    with Store.open(path, bulk_process=bulk_process) as s:
        s.execute("INSERT INTO events(ts, kind) VALUES (0, 'small')")
        s.flush_sync()
        assert _wait_for_rows_in_file(path, tmp_path, 1) == 1  # the pause after it
        s.run_sync(
            lambda db: db.executemany(
                "INSERT INTO events(ts, kind, data) VALUES (?, 'big', ?)",
                [(float(i), page) for i in range(rows)],
            ),
            raw=True,
        )
        hold = threading.Event()
        held = s.call(lambda db: hold.wait(10))  # the writers are busy meanwhile
        try:
            assert _rows_in_file_alone(path, tmp_path) == 1  # the big ones still in the WAL
        finally:
            hold.set()
            held.result()
        assert _wait_for_rows_in_file(path, tmp_path, rows + 1) == rows + 1
