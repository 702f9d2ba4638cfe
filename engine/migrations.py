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
        """,
    )


# Analytics rollup (0002): sums of finished attempts per hour ('h'), per day ('d') and in total
# ('t', bucket 0), plus calls per hour, kept exact by triggers so that `engine/analytics.py`
# never scans every attempt. Key columns use '' for NULL (a NULL in a primary key would never
# conflict). Attempts still `running` are not counted.
_ROLLUP_CHANGED = " OR ".join(
    f"OLD.{c} IS NOT NEW.{c}"
    for c in (
        "status", "started_at", "agent", "operation", "error_class", "duration_ms",
        "prompt_tokens", "completion_tokens",
    )
) + " OR (OLD.number > 1) IS NOT (NEW.number > 1)"  # fmt: skip


_ROLLUP_UPSERT = (
    "ON CONFLICT DO UPDATE SET n = n + excluded.n, timed = timed + excluded.timed, "
    "sum_ms = sum_ms + excluded.sum_ms, prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = completion_tokens + excluded.completion_tokens"
)
"""Adds a row of sums to `attempt_rollup` (the triggers' and the bulk statements')."""


def _rollup_apply(row: str, sign: str) -> str:
    """Trigger body adding (`+`) or removing (`-`) one attempt row's share of the rollups."""
    return "BEGIN " + "; ".join(_rollup_statements(row, sign)) + "; END"


def _rollup_statements(row: str, sign: str) -> list[str]:
    """The statements of `_rollup_apply`."""
    hour = f"CAST({row}.started_at / 3600 AS INTEGER)"
    key = (
        f"coalesce({row}.agent, ''), coalesce({row}.operation, ''), {row}.status, "
        f"coalesce({row}.error_class, ''), {row}.number > 1"
    )
    values = (
        f"{sign}1, {sign}({row}.duration_ms IS NOT NULL), {sign}coalesce({row}.duration_ms, 0), "
        f"{sign}coalesce({row}.prompt_tokens, 0), {sign}coalesce({row}.completion_tokens, 0)"
    )
    upsert = _ROLLUP_UPSERT
    calls = f"({row}.status IN ('succeeded', 'failed'))"
    failed = f"({row}.status = 'failed')"
    body = [
        f"INSERT INTO attempt_rollup VALUES ('h', {hour}, {key}, {values}) {upsert}",
        f"INSERT INTO attempt_rollup VALUES ('d', {hour} / 24, {key}, {values}) {upsert}",
        f"INSERT INTO attempt_rollup VALUES ('t', 0, {key}, {values}) {upsert}",
        f"INSERT INTO attempt_hours VALUES ({hour}, {sign}{calls}, {sign}{failed}) "
        "ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, failed = failed + excluded.failed",
    ]
    if sign == "-":
        match = (
            f"agent = coalesce({row}.agent, '') AND operation = coalesce({row}.operation, '') "
            f"AND status = {row}.status AND error_class = coalesce({row}.error_class, '') "
            f"AND retry = ({row}.number > 1) AND n = 0"
        )
        body += [
            f"DELETE FROM attempt_rollup WHERE grain = 'h' AND bucket = {hour} AND {match}",
            f"DELETE FROM attempt_rollup WHERE grain = 'd' AND bucket = {hour} / 24 AND {match}",
            f"DELETE FROM attempt_rollup WHERE grain = 't' AND bucket = 0 AND {match}",
            f"DELETE FROM attempt_hours WHERE hour = {hour} AND calls = 0 AND failed = 0",
        ]
    return body


def _analytics(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
        CREATE TABLE attempt_rollup (
            grain TEXT NOT NULL,
            bucket INTEGER NOT NULL,
            agent TEXT NOT NULL,
            operation TEXT NOT NULL,
            status TEXT NOT NULL,
            error_class TEXT NOT NULL,
            retry INTEGER NOT NULL,
            n INTEGER NOT NULL,
            timed INTEGER NOT NULL,
            sum_ms REAL NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            PRIMARY KEY (grain, bucket, agent, operation, status, error_class, retry)
        ) WITHOUT ROWID;
        CREATE TABLE attempt_hours (
            hour INTEGER PRIMARY KEY,
            calls INTEGER NOT NULL,
            failed INTEGER NOT NULL
        );
        CREATE INDEX attempts_latency ON attempts(agent, duration_ms, started_at)
            WHERE status IN ('succeeded', 'failed') AND duration_ms IS NOT NULL;
        CREATE INDEX attempts_failed ON attempts(started_at, id, error_class, error, agent)
            WHERE status = 'failed';
        CREATE INDEX steps_ended ON steps(ended_at);
        CREATE INDEX runs_created_status ON runs(created_at, status);
        CREATE INDEX routes_run ON routes(run_id);
        CREATE INDEX commands_run ON commands(run_id);

        INSERT INTO attempt_rollup
        SELECT 'h', CAST(started_at / 3600 AS INTEGER), coalesce(agent, ''),
               coalesce(operation, ''), status, coalesce(error_class, ''), number > 1,
               count(*), count(duration_ms), total(duration_ms),
               total(prompt_tokens), total(completion_tokens)
        FROM attempts WHERE status <> 'running' GROUP BY 2, 3, 4, 5, 6, 7;
        INSERT INTO attempt_rollup
        SELECT 'd', bucket / 24, agent, operation, status, error_class, retry,
               sum(n), sum(timed), sum(sum_ms), sum(prompt_tokens), sum(completion_tokens)
        FROM attempt_rollup WHERE grain = 'h' GROUP BY 2, 3, 4, 5, 6, 7;
        INSERT INTO attempt_rollup
        SELECT 't', 0, agent, operation, status, error_class, retry,
               sum(n), sum(timed), sum(sum_ms), sum(prompt_tokens), sum(completion_tokens)
        FROM attempt_rollup WHERE grain = 'd' GROUP BY 3, 4, 5, 6, 7;
        INSERT INTO attempt_hours
        SELECT bucket, sum(n * (status IN ('succeeded', 'failed'))), sum(n * (status = 'failed'))
        FROM attempt_rollup WHERE grain = 'h' GROUP BY 1
        """,
    )
    for sql in _rollup_triggers():
        conn.execute(sql)


def _rollup_triggers(bulk: bool = False) -> list[str]:
    """The rollup's triggers; with `bulk`, rows written by a bulk write skip them (see 0008)."""
    when = {
        "insert": "NEW.status <> 'running'",
        "delete": "OLD.status <> 'running'",
        "update_old": f"OLD.status <> 'running' AND ({_ROLLUP_CHANGED})",
        "update_new": f"NEW.status <> 'running' AND ({_ROLLUP_CHANGED})",
    }
    return [
        f"CREATE TRIGGER attempts_rollup_{name} AFTER {_EVENT[name]} ON attempts "
        f"WHEN {cond}{_not_bulk(_ROW[name]) if bulk else ''} "
        f"{_rollup_apply(_ROW[name], _SIGN[name])}"
        for name, cond in when.items()
    ]


_EVENT = {"insert": "INSERT", "delete": "DELETE", "update_old": "UPDATE", "update_new": "UPDATE"}
_ROW = {"insert": "NEW", "delete": "OLD", "update_old": "OLD", "update_new": "NEW"}
_SIGN = {"insert": "+", "delete": "-", "update_old": "-", "update_new": "+"}


def _undo_entries(conn: sqlite3.Connection) -> None:
    """What the undo log needs beyond 0001: the action's parameters, the window length, who
    holds an entry while it is being undone (and until when), and the undo's attempt count."""
    _script(
        conn,
        """
        ALTER TABLE undo_log ADD COLUMN params TEXT;
        ALTER TABLE undo_log ADD COLUMN ttl REAL;
        ALTER TABLE undo_log ADD COLUMN updated_at REAL;
        ALTER TABLE undo_log ADD COLUMN holder TEXT;
        ALTER TABLE undo_log ADD COLUMN lease_until REAL;
        ALTER TABLE undo_log ADD COLUMN undo_attempts INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX undo_step ON undo_log(run_id, step_id, status);
        CREATE INDEX undo_expires ON undo_log(expires_at)
        """,
    )


def _latency_bucket(ms: str) -> str:
    """Histogram bucket of a duration in ms: -1 below 0, the whole ms below 100, else number of
    digits x 100 + the first two digits (310 = 100-109 ms, 425 = 2500-2599 ms). It grows with
    the duration, and bucket >= b exactly when ms >= `engine.analytics.bucket_floor(b)`."""
    whole = f"CAST({ms} AS INTEGER)"
    text = f"CAST({whole} AS TEXT)"
    return (
        f"(CASE WHEN {ms} < 0 THEN -1 WHEN {ms} < 100 THEN {whole} "
        f"ELSE length({text}) * 100 + CAST(substr({text}, 1, 2) AS INTEGER) END)"
    )


def _latency_hist(conn: sqlite3.Connection) -> None:
    """All-time count of timed calls (succeeded or failed, with a duration) per agent and
    duration bucket, kept exact by triggers. `engine/analytics.py` reads it to seek straight to
    the bucket holding a percentile's rank instead of stepping through the latency index."""
    conn.execute(
        "CREATE TABLE latency_hist (agent TEXT NOT NULL, bucket INTEGER NOT NULL, "
        "n INTEGER NOT NULL, PRIMARY KEY (agent, bucket)) WITHOUT ROWID"
    )
    conn.execute(
        f"INSERT INTO latency_hist SELECT coalesce(agent, ''), {_latency_bucket('duration_ms')}, "
        "count(*) FROM attempts WHERE status IN ('succeeded', 'failed') "
        "AND duration_ms IS NOT NULL GROUP BY 1, 2"
    )

    for sql in _latency_triggers():
        conn.execute(sql)


def _latency_key(row: str) -> str:
    return f"coalesce({row}.agent, ''), {_latency_bucket(f'{row}.duration_ms')}"


def _latency_triggers(bulk: bool = False) -> list[str]:
    """The latency histogram's triggers; with `bulk`, see 0008."""

    def timed(row: str) -> str:
        return f"{row}.status IN ('succeeded', 'failed') AND {row}.duration_ms IS NOT NULL"

    def apply(row: str, sign: str) -> str:
        key = _latency_key(row)
        body = (
            f"INSERT INTO latency_hist VALUES ({key}, {sign}1) "
            "ON CONFLICT DO UPDATE SET n = n + excluded.n;"
        )
        if sign == "-":
            body += f" DELETE FROM latency_hist WHERE (agent, bucket) = ({key}) AND n = 0;"
        return f"BEGIN {body} END"

    changed = (
        "(OLD.agent IS NOT NEW.agent OR OLD.status IS NOT NEW.status "
        "OR OLD.duration_ms IS NOT NEW.duration_ms)"
    )
    when = {
        "insert": timed("NEW"),
        "delete": timed("OLD"),
        "update_old": f"{timed('OLD')} AND {changed}",
        "update_new": f"{timed('NEW')} AND {changed}",
    }
    return [
        f"CREATE TRIGGER attempts_latency_{name} AFTER {_EVENT[name]} ON attempts "
        f"WHEN {cond}{_not_bulk(_ROW[name]) if bulk else ''} "
        f"{apply(_ROW[name], _SIGN[name])}"
        for name, cond in when.items()
    ]


def _reviews(conn: sqlite3.Connection) -> None:
    """Review gates, learned approvals and routing: what `engine/reviews.py`,
    `engine/preferences.py` and `engine/routing.py` need beyond the core columns."""
    _script(
        conn,
        """
        ALTER TABLE reviews ADD COLUMN workflow TEXT;
        ALTER TABLE reviews ADD COLUMN description TEXT;
        ALTER TABLE reviews ADD COLUMN destructive INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE reviews ADD COLUMN learn INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE reviews ADD COLUMN timeout REAL;
        CREATE INDEX reviews_pattern ON reviews(pattern, decided_at);

        ALTER TABLE preferences ADD COLUMN window_approvals INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE preferences ADD COLUMN window_rejections INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE preferences ADD COLUMN created_at REAL;
        ALTER TABLE preferences ADD COLUMN auto_since REAL;
        ALTER TABLE preferences ADD COLUMN revoked_at REAL;

        ALTER TABLE routes ADD COLUMN workflow TEXT;
        ALTER TABLE routes ADD COLUMN confidence REAL;
        ALTER TABLE routes ADD COLUMN best_confidence REAL;
        ALTER TABLE routes ADD COLUMN review_id INTEGER;
        CREATE INDEX routes_step ON routes(run_id, step_id);
        CREATE INDEX routes_workflow ON routes(workflow, step_id, chosen)
        """,
    )


def _breakers_retry_at(conn: sqlite3.Connection) -> None:
    """When an open circuit lets its next trial call through (the cool-down's end); `detail`
    holds the reason in words."""
    conn.execute("ALTER TABLE breakers ADD COLUMN retry_at REAL")


def _list_indexes(conn: sqlite3.Connection) -> None:
    """Indexes the console and API lists read: the runs list (`engine.views.runs_page`,
    `engine.queries.list_runs`) newest first from a covering index, without walking each row's
    `spec` overflow pages; recent decisions newest first by `decided_at` (pending reviews have
    none, so they are outside the range scanned)."""
    _script(
        conn,
        """
        CREATE INDEX runs_list ON runs(
            created_at, id, workflow, status, started_at, ended_at, error, steps_total
        );
        CREATE INDEX reviews_decided ON reviews(decided_at)
        """,
    )


# Bulk attempts (0008). The runner's attempt rows reach the writer in batches (`ATTEMPT_ROWS` in
# engine/runner.py). Five upserts per row by the triggers cost twice the rows' own writing, so a
# batch is written as a bulk: BULK_BEFORE records the highest attempt id in `attempt_bulk`, the
# triggers skip rows above it, and BULK_AFTER adds those rows' final values to the rollups with
# one aggregated upsert per table, then clears the mark. All in the batch's transaction: no other
# connection ever sees the mark (readers see commits; writers wait for the lock), and a rolled
# back batch takes it back. Rows inserted and updated within one batch count once, as they end;
# rows older than the batch keep their triggers. Same sums as the triggers, fewer statements.
_BULK_FLOOR = "(SELECT floor FROM attempt_bulk)"


def _not_bulk(row: str) -> str:
    return f" AND NOT EXISTS (SELECT 1 FROM attempt_bulk WHERE {row}.id > floor)"


BULK_BEFORE = (
    "INSERT OR REPLACE INTO attempt_bulk VALUES (1, (SELECT coalesce(max(id), 0) FROM attempts))",
)
"""Statements run before a batch of attempt rows (in its transaction)."""
BULK_AFTER = (
    *(
        f"INSERT INTO attempt_rollup SELECT '{grain}', {bucket}, coalesce(agent, ''), "
        "coalesce(operation, ''), status, coalesce(error_class, ''), number > 1, count(*), "
        "count(duration_ms), total(duration_ms), coalesce(sum(prompt_tokens), 0), "
        "coalesce(sum(completion_tokens), 0) "
        f"FROM attempts WHERE id > {_BULK_FLOOR} AND status <> 'running' "
        f"GROUP BY 2, 3, 4, 5, 6, 7 {_ROLLUP_UPSERT}"
        for grain, bucket in (
            ("h", "CAST(started_at / 3600 AS INTEGER)"),
            ("d", "CAST(started_at / 3600 AS INTEGER) / 24"),
            ("t", "0"),
        )
    ),
    "INSERT INTO attempt_hours SELECT CAST(started_at / 3600 AS INTEGER), "
    "sum(status IN ('succeeded', 'failed')), sum(status = 'failed') "
    f"FROM attempts WHERE id > {_BULK_FLOOR} AND status <> 'running' GROUP BY 1 "
    "ON CONFLICT DO UPDATE SET calls = calls + excluded.calls, failed = failed + excluded.failed",
    f"INSERT INTO latency_hist SELECT coalesce(agent, ''), {_latency_bucket('duration_ms')}, "
    f"count(*) FROM attempts WHERE id > {_BULK_FLOOR} AND status IN ('succeeded', 'failed') "
    "AND duration_ms IS NOT NULL GROUP BY 1, 2 ON CONFLICT DO UPDATE SET n = n + excluded.n",
    "DELETE FROM attempt_bulk",
)
"""Statements run after a batch of attempt rows: the rollups of the rows it wrote."""


def _bulk_attempts(conn: sqlite3.Connection) -> None:
    """`attempt_bulk` and the rollup and latency triggers skipping rows of a bulk write."""
    conn.execute(
        "CREATE TABLE attempt_bulk (one INTEGER PRIMARY KEY CHECK (one = 1), "
        "floor INTEGER NOT NULL)"
    )
    for name in _EVENT:
        conn.execute(f"DROP TRIGGER attempts_rollup_{name}")
        conn.execute(f"DROP TRIGGER attempts_latency_{name}")
    for sql in (*_rollup_triggers(bulk=True), *_latency_triggers(bulk=True)):
        conn.execute(sql)


def _steps_ended_partial(conn: sqlite3.Connection) -> None:
    """`steps_ended` holds ended steps only. The steps of a run are created pending and all
    updated twice or more before they end: with NULLs in the index, each of those writes also
    moved an index entry (1 ms of a 50x20 run's creation, 1.5 ms of its updates); the counts
    of ended steps read the index as before (`engine.analytics.measure`)."""
    _script(
        conn,
        """
        DROP INDEX steps_ended;
        CREATE INDEX steps_ended ON steps(ended_at) WHERE ended_at IS NOT NULL
        """,
    )


def _one_insert_trigger(conn: sqlite3.Connection) -> None:
    """One trigger on inserts into `attempts` instead of two (the rollups' and the latency
    histogram's, same sums). SQLite runs each trigger's program and its bulk check for every
    row inserted, whatever the check says: the engine's rows, which skip both (0008), paid
    twice (about 1 ms per 1,000 attempts written)."""
    conn.execute("DROP TRIGGER attempts_rollup_insert")
    conn.execute("DROP TRIGGER attempts_latency_insert")
    latency = (
        f"INSERT INTO latency_hist SELECT {_latency_key('NEW')}, 1 "
        "WHERE NEW.status IN ('succeeded', 'failed') AND NEW.duration_ms IS NOT NULL "
        "ON CONFLICT DO UPDATE SET n = n + excluded.n"
    )
    body = [*_rollup_statements("NEW", "+"), latency]
    conn.execute(
        "CREATE TRIGGER attempts_insert AFTER INSERT ON attempts "
        f"WHEN NEW.status <> 'running'{_not_bulk('NEW')} BEGIN {'; '.join(body)}; END"
    )


MIGRATIONS: list[Migration] = [
    ("0001_core", _core),
    ("0002_analytics", _analytics),
    ("0003_undo_entries", _undo_entries),
    ("0004_latency_hist", _latency_hist),
    ("0005_reviews", _reviews),
    ("0006_breakers_retry_at", _breakers_retry_at),
    ("0007_list_indexes", _list_indexes),
    ("0008_bulk_attempts", _bulk_attempts),
    ("0009_steps_ended_partial", _steps_ended_partial),
    ("0010_one_insert_trigger", _one_insert_trigger),
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
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("COMMIT")  # another process applied it since we looked
                continue
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
