"""Named schema migrations of the flowdeck SQLite file.

Each migration has a name and runs once, in order, inside one transaction. Applied names are
kept in `_migrations`; `PRAGMA user_version` holds how many have been applied so that a quick
read tells whether the file is newer than this code. Add a migration by appending to
`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def _script(conn: sqlite3.Connection, sql: str) -> None:
    """Run `;`-separated DDL inside the caller's transaction (executescript would commit)."""
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _core(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            source TEXT,
            spec TEXT NOT NULL,
            inputs TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            error TEXT,
            steps_total INTEGER NOT NULL DEFAULT 0,
            owner TEXT,
            lease_until REAL
        );
        CREATE INDEX runs_status ON runs(status);
        CREATE INDEX runs_created ON runs(created_at);

        CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs(id),
            step_id TEXT NOT NULL,
            agent TEXT,
            kind TEXT,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            depth INTEGER NOT NULL DEFAULT 0,
            needs TEXT NOT NULL DEFAULT '[]',
            destructive INTEGER NOT NULL DEFAULT 0,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL DEFAULT 1,
            started_at REAL,
            ended_at REAL,
            duration_ms REAL,
            output TEXT,
            error TEXT,
            error_class TEXT,
            next_retry_at REAL,
            operation TEXT,
            PRIMARY KEY (run_id, step_id)
        ) WITHOUT ROWID;

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            agent TEXT,
            operation TEXT,
            status TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            duration_ms REAL,
            error_class TEXT,
            error TEXT,
            next_retry_at REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            UNIQUE (run_id, step_id, number)
        );
        CREATE INDEX attempts_started ON attempts(started_at);
        CREATE INDEX attempts_agent ON attempts(agent, started_at);

        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            run_id TEXT,
            step_id TEXT,
            kind TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_run ON events(run_id);

        CREATE TABLE commands (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            run_id TEXT,
            step_id TEXT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'pending',
            handled_at REAL,
            handled_by TEXT,
            result TEXT
        );
        CREATE INDEX commands_pending ON commands(status, run_id);

        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'gate',
            status TEXT NOT NULL DEFAULT 'pending',
            created_at REAL NOT NULL,
            expires_at REAL,
            on_timeout TEXT,
            agent TEXT,
            operation TEXT,
            pattern TEXT,
            params TEXT NOT NULL DEFAULT '{}',
            upstream TEXT NOT NULL DEFAULT '{}',
            reason TEXT,
            confidence REAL,
            candidates TEXT,
            choice TEXT,
            decided_at REAL,
            reviewer TEXT,
            comment TEXT,
            auto INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX reviews_status ON reviews(status, created_at);
        CREATE INDEX reviews_run ON reviews(run_id, step_id);

        CREATE TABLE undo_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            agent TEXT,
            operation TEXT,
            description TEXT,
            before TEXT,
            undo TEXT,
            output TEXT,
            created_at REAL NOT NULL,
            expires_at REAL,
            status TEXT NOT NULL,
            undone_at REAL,
            undone_by TEXT,
            result TEXT,
            error TEXT
        );
        CREATE INDEX undo_status ON undo_log(status, created_at);
        CREATE INDEX undo_run ON undo_log(run_id);

        CREATE TABLE breakers (
            key TEXT PRIMARY KEY,
            agent TEXT,
            state TEXT NOT NULL DEFAULT 'closed',
            failures INTEGER NOT NULL DEFAULT 0,
            successes INTEGER NOT NULL DEFAULT 0,
            opened_at REAL,
            updated_at REAL,
            detail TEXT
        );

        CREATE TABLE preferences (
            pattern TEXT PRIMARY KEY,
            approvals INTEGER NOT NULL DEFAULT 0,
            rejections INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'learning',
            updated_at REAL
        );

        CREATE TABLE routes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            chosen TEXT,
            best TEXT,
            threshold REAL,
            candidates TEXT NOT NULL DEFAULT '[]',
            overridden INTEGER NOT NULL DEFAULT 0,
            reviewer TEXT
        );
        """
    )


MIGRATIONS: list[Migration] = [
    ("0001_core", _core),
]
"""Every migration in order. Append only."""


def applied(conn: sqlite3.Connection) -> list[str]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'"
    ).fetchone()
    if not exists:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def is_newer(conn: sqlite3.Connection) -> bool:
    """True when the file was migrated by a newer flowdeck than this one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        return True
    known = {name for name, _ in MIGRATIONS}
    return any(name not in known for name in applied(conn))


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction. Returns the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = set(applied(conn))
    ran = []
    for index, (name, fn) in enumerate(MIGRATIONS, start=1):
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            fn(conn)
            conn.execute(
                "INSERT INTO _migrations(name, applied_at) VALUES (?, ?)", (name, time.time())
            )
            conn.execute(f"PRAGMA user_version = {index}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        ran.append(name)
    return ran
