"""The store against a second writer on the same file (another flowdeck process)."""

from __future__ import annotations

import sqlite3
import threading

from engine.store import Store


def test_read_then_write_in_a_call_survives_a_commit_by_another_connection(store, db_path):
    """A compare-and-set reads, then writes. If another process commits in between, a deferred
    transaction could not upgrade its stale snapshot and SQLite would fail at once with
    "database is locked"; the writer takes the write lock first, so the other process waits."""
    store.run_sync(lambda db: db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    store.run_sync(lambda db: db.execute("INSERT INTO t VALUES (1, 'a')"))
    outcome: dict[str, object] = {}

    def other_process_write() -> None:
        conn = sqlite3.connect(db_path, timeout=0.2, isolation_level=None)
        try:
            conn.execute("UPDATE t SET v = 'other' WHERE id = 1")
            outcome["other"] = "committed"
        except sqlite3.OperationalError as e:
            outcome["other"] = str(e)
        finally:
            conn.close()

    def cas(db) -> int:
        assert db.execute("SELECT v FROM t WHERE id = 1").fetchone()[0] == "a"
        writer = threading.Thread(target=other_process_write)
        writer.start()
        writer.join()
        return db.execute("UPDATE t SET v = 'mine' WHERE id = 1 AND v = 'a'").rowcount

    assert store.run_sync(cas) == 1
    assert outcome["other"] == "database is locked"  # it waited for us, then gave up
    other = Store.open(db_path)
    try:
        assert other.query("SELECT v FROM t") == [{"v": "mine"}]
    finally:
        other.close()
