"""The SQLite store: one file, WAL, one writer thread with group commit, readers per thread.

Writes never run on the event loop. Callers enqueue statements (`execute`, fire and forget) or
functions (`call`, with a result); the writer thread drains whatever is queued, runs it in one
transaction (`db.atomic()`), commits, then resolves the waiting futures. Everything runs in
queue order (consecutive statements with the same SQL go to one `executemany`), so the result is
the same as running the queue one statement at a time.

The engine's hot writes (events, step rows, attempt rows: several per step) are `Rows`: rows
of one declared statement that commute with the rows of every other `Rows`. Between two other
queue items the writer gathers them per statement, keeps only the last row per key where a
statement has one, and writes each group as a few multi-row statements. That keeps the writer's
Python (and its hold on the GIL, which the event loop needs) to a few calls per batch instead
of one per row, and lets SQLite's own work run beside the loop.

Reads use one connection per thread (`reader()`); `aread()` runs a read in a worker thread.

Opening checks the file before anything is written: not SQLite, truncated, locked past the
busy timeout, newer schema or unwritable all raise `DatabaseError` and leave the file as it was.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine import migrations
from engine.errors import DatabaseError

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("flowdeck.store")

T = TypeVar("T")
SQLITE_HEADER = b"SQLite format 3\x00"
MAX_BATCH = 20_000
CHUNK_SIZES = (64, 8, 1)
"""Rows per multi-row statement of a `Rows`, largest first: a group of n rows is written as
n // 64 statements of 64 rows, then 8s, then singles. Few sizes keep the statements a new
connection must prepare few (preparing one can cost as much as writing a hundred rows)."""

_SQL, _CALL, _BARRIER, _STOP, _ROWS = range(5)

_OPEN: dict[str, int] = {}
"""Files this process has open as stores (resolved path -> count). Reading such a file with
plain `open()` is not allowed: closing that descriptor would drop the POSIX locks SQLite holds
on it for every connection of the process, letting another process write at the same time."""
_OPEN_LOCK = threading.Lock()


def check_file(path: Path) -> None:
    """Cheap checks that need no SQLite connection: header and truncation."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as e:
        raise DatabaseError(f"{path}: cannot read ({e.strerror})") from None
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory, not a database file")
    if size == 0:
        return
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as e:
        raise DatabaseError(f"{path}: cannot read ({e.strerror})") from None
    if not header.startswith(SQLITE_HEADER[: min(len(header), 16)]) or len(header) < 16:
        raise DatabaseError(f"{path}: not a SQLite database")
    if len(header) < 100:
        raise DatabaseError(f"{path}: truncated SQLite file ({size} bytes)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    change_counter = header[24:28]
    valid_for = header[92:96]
    if pages and change_counter == valid_for and size < pages * page_size:
        raise DatabaseError(
            f"{path}: truncated SQLite file ({size} bytes, header says {pages * page_size})"
        )


def _describe(e: sqlite3.Error, path: Path) -> str:
    msg = str(e)
    if "locked" in msg or "busy" in msg:
        return f"{path}: database is locked by another process (gave up after the busy timeout)"
    if "readonly" in msg or "unable to open" in msg or "disk I/O" in msg:
        return f"{path}: cannot write the database ({msg})"
    if "not a database" in msg or "malformed" in msg:
        return f"{path}: corrupt or not a SQLite database ({msg})"
    return f"{path}: {msg}"


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` ... `COMMIT`: the write lock is taken first (waiting up to the busy
    timeout), so a function that reads then writes (a compare-and-set) never has to upgrade a
    read snapshot that another process made stale, which SQLite refuses at once with
    "database is locked" (SQLITE_BUSY_SNAPSHOT) instead of waiting."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class Rows:
    """A statement the writer may batch: rows queued with `Store.put(rows, values)`.

    `sql(n)` is the statement for `n` rows (values flattened in row order). Rows of one `Rows`
    keep their order; rows of different `Rows` must commute (different tables, no trigger of one
    reading another's table), because the writer writes each group at once. With `key` (indexes
    into a row) only the last row per key is written, merged with the earlier ones: a None at a
    `sticky` index keeps the earlier value (the statement's `coalesce(?, column)`), so the
    result is that of writing every row in turn.
    """

    __slots__ = ("_cache", "key", "name", "sql", "sticky", "width")

    def __init__(
        self,
        name: str,
        width: int,
        sql: Callable[[int], str],
        *,
        key: tuple[int, ...] | None = None,
        sticky: tuple[int, ...] = (),
    ):
        self.name = name
        self.width = width
        self.sql = sql
        self.key = key
        self.sticky = sticky
        self._cache: dict[int, str] = {}

    def statement(self, n: int) -> str:
        text = self._cache.get(n)
        if text is None:
            text = self._cache[n] = self.sql(n)
        return text

    def chunks(self, rows: list[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
        """(statement, flat values) covering `rows` in order, in chunks of `CHUNK_SIZES`."""
        i, n = 0, len(rows)
        for size in CHUNK_SIZES:
            while n - i >= size:
                yield self.statement(size), [v for row in rows[i : i + size] for v in row]
                i += size

    def merge(self, rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
        """The last row per key (merged as described above), in order of each key's last row."""
        key = self.key
        if key is None:
            return rows
        last: dict[tuple, Sequence[Any]] = {}
        sticky = self.sticky
        for row in rows:
            k = tuple(row[i] for i in key)
            old = last.pop(k, None)
            if old is not None and sticky:
                row = list(row)
                for i in sticky:
                    if row[i] is None:
                        row[i] = old[i]
            last[k] = row
        return list(last.values())


def values_sql(width: int, n: int) -> str:
    """`(?,?,..),(?,?,..)...`: n rows of `width` placeholders."""
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * n)


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """What `Database.atomic()` does, on a bare connection."""
    conn.execute("SAVEPOINT call")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT call")
        conn.execute("RELEASE SAVEPOINT call")
        raise
    else:
        conn.execute("RELEASE SAVEPOINT call")


def _database(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """`conn` as a sqlite-utils `Database`. sqlite-utils is imported on first use, so that
    `flowdeck run` reaches its first step without it (its import is a sixth of the start-up)."""
    import sqlite_utils

    return sqlite_utils.Database(conn, execute_plugins=False, recursive_triggers=False)


def _dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def _write_groups(conn: sqlite3.Connection, groups: dict[Rows, list[Sequence[Any]]]) -> None:
    for rows, values in groups.items():
        for sql, flat in rows.chunks(rows.merge(values)):
            conn.execute(sql, flat)


class Store:
    """A flowdeck SQLite file. Use `Store.open(path)`; call `close()` when done."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
    ):
        self.path = Path(path)
        """The database file."""
        self.busy_timeout = busy_timeout
        """Seconds a connection waits for a lock held by another process."""
        self.synchronous = synchronous
        """`PRAGMA synchronous` of every connection (NORMAL is durable at commit with WAL
        except on power loss; FULL survives that too)."""
        self._items: collections.deque[tuple] = collections.deque()
        """The queue: (kind, a, b, future) items, appended by any thread, drained by the writer."""
        self._idle = False
        """The writer is about to wait on `_wake` (set before it looks at `_items` a last time,
        so a producer either sees it or its item is seen)."""
        self._wake = threading.Lock()
        """Held while the writer has nothing to do; released by a producer to wake it (a plain
        lock: waking costs a C call, not a `threading.Event`'s condition variable)."""
        self._wake.acquire()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.failure: BaseException | None = None
        """The last error of a fire-and-forget batch, if any (the engine checks it)."""
        self.commits = 0
        """Transactions committed by the writer (for benchmarks)."""
        self._open_key: str | None = None
        self._db: sqlite_utils.Database | None = None
        """The writer's connection as a `Database`, made for the first `call` that wants one."""

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kw: Any) -> Store:
        store = cls(path, **kw)
        store._start()
        return store

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        if readonly:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _start(self) -> None:
        key = str(self.path.resolve())
        with _OPEN_LOCK:
            if not _OPEN.get(key):  # already open here: it was checked, and must not be re-read
                check_file(self.path)
            _OPEN[key] = _OPEN.get(key, 0) + 1
        self._open_key = key
        try:
            self._start_writer()
        except BaseException:
            self._forget_open()
            raise

    def _forget_open(self) -> None:
        key = self._open_key
        if key is None:
            return
        self._open_key = None
        with _OPEN_LOCK:
            n = _OPEN.get(key, 0) - 1
            if n > 0:
                _OPEN[key] = n
            else:
                _OPEN.pop(key, None)

    def _start_writer(self) -> None:
        if not self.path.parent.exists():
            raise DatabaseError(f"{self.path}: directory {self.path.parent} does not exist")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._writer, args=(ready,), name="flowdeck-store-writer", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._closed = True
            raise

    def _open_writer(self) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed and not os.access(self.path, os.W_OK):
            raise DatabaseError(f"{self.path}: cannot write the database (file is read-only)")
        if not os.access(self.path.parent, os.W_OK):
            raise DatabaseError(f"{self.path}: cannot write in directory {self.path.parent}")
        conn = self._connect()
        try:
            # Read before writing: a bad or newer file must be left byte-identical.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if existed and migrations.is_newer(conn):
                raise DatabaseError(
                    f"{self.path}: the database was written by a newer flowdeck "
                    f"(schema {conn.execute('PRAGMA user_version').fetchone()[0]}, "
                    f"this one knows {len(migrations.MIGRATIONS)}); upgrade flowdeck"
                )
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            migrations.migrate(conn)
        except sqlite3.Error as e:
            conn.close()
            raise DatabaseError(_describe(e, self.path)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Commit what is queued, stop the writer and close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._push((_STOP, None, None, done))
            self._thread.join()
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._readers.clear()
        self._forget_open()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer side

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement; it commits with the next batch (within milliseconds)."""
        self._push((_SQL, sql, params, None))

    def put(self, rows: Rows, values: Sequence[Any]) -> None:
        """Queue one row of a batched statement (see `Rows`); it commits with the next batch."""
        self._push((_ROWS, rows, values, None))

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        for params in rows:
            self.execute(sql, params)

    def _push(self, item: tuple) -> None:
        self._items.append(item)
        if self._idle:
            self._kick()

    def _kick(self) -> None:
        self._idle = False
        try:
            self._wake.release()
        except RuntimeError:  # another producer woke it first
            pass

    def call(self, fn: Callable[[Any], T], *, raw: bool = False) -> concurrent.futures.Future[T]:
        """Run `fn(db)` in the writer thread, in its own savepoint; resolved after commit.
        `db` is a sqlite-utils `Database`, or with `raw` the bare `sqlite3.Connection`."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            fut.set_exception(DatabaseError(f"{self.path}: store is closed"))
            return fut
        self._push((_CALL, fn, raw, fut))
        return fut

    async def run(self, fn: Callable[[Any], T], *, raw: bool = False) -> T:
        """`call` and wait for the commit without blocking the loop."""
        return await asyncio.wrap_future(self.call(fn, raw=raw))

    def run_sync(self, fn: Callable[[Any], T], *, raw: bool = False) -> T:
        """`call` and wait (for code outside the event loop, e.g. the CLI)."""
        return self.call(fn, raw=raw).result()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._push((_BARRIER, None, None, fut))
        await asyncio.wrap_future(fut)

    def flush_sync(self) -> None:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._push((_BARRIER, None, None, fut))
        fut.result()

    def _writer(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._open_writer()
        except BaseException as e:
            ready.set_exception(e if isinstance(e, DatabaseError) else DatabaseError(str(e)))
            return
        ready.set_result(None)
        items, wake = self._items, self._wake
        try:
            while True:
                if not items:
                    self._idle = True
                    if not items:
                        wake.acquire()  # until a producer releases it
                    self._idle = False
                    continue
                batch = [items.popleft() for _ in range(min(len(items), MAX_BATCH))]
                if self._process(conn, batch):
                    break
        finally:
            conn.close()

    def _process(self, conn: sqlite3.Connection, batch: list[tuple]) -> bool:
        results: list[tuple[concurrent.futures.Future, Any, BaseException | None]] = []
        stop = False
        try:
            with _write_transaction(conn):
                # Consecutive statements with the same SQL run as one executemany, `Rows` between
                # two other items as one group each; anything else runs in queue order, so the
                # result is that of running the queue in order. (At most one of `run_rows` and
                # `groups` is non-empty at any time.)
                run_sql: str | None = None
                run_rows: list[Sequence[Any]] = []
                groups: dict[Rows, list[Sequence[Any]]] = {}
                for kind, a, b, fut in batch:
                    if kind == _ROWS:
                        if run_rows:
                            conn.executemany(run_sql, run_rows)
                            run_sql, run_rows = None, []
                        group = groups.get(a)
                        if group is None:
                            groups[a] = [b]
                        else:
                            group.append(b)
                        continue
                    if groups:
                        _write_groups(conn, groups)
                        groups = {}
                    if kind == _SQL:
                        if a is run_sql or a == run_sql:
                            run_rows.append(b)
                            continue
                        if run_rows:
                            conn.executemany(run_sql, run_rows)
                        run_sql, run_rows = a, [b]
                        continue
                    if run_rows:
                        conn.executemany(run_sql, run_rows)
                        run_sql, run_rows = None, []
                    if kind == _CALL:
                        try:
                            if b:
                                with _savepoint(conn):
                                    results.append((fut, a(conn), None))
                            else:
                                if self._db is None:
                                    self._db = _database(conn)
                                with self._db.atomic():
                                    results.append((fut, a(self._db), None))
                        except Exception as e:
                            results.append((fut, None, e))
                    else:
                        results.append((fut, None, None))
                        stop = stop or kind == _STOP
                if run_rows:
                    conn.executemany(run_sql, run_rows)
                if groups:
                    _write_groups(conn, groups)
            self.commits += 1
        except sqlite3.Error as e:
            if len(batch) > 1:
                # One bad statement must not lose the rest: replay one at a time.
                log.warning("batch of %d failed (%s); replaying one by one", len(batch), e)
                for item in batch:
                    stop = self._process(conn, [item]) or stop
                return stop
            self.failure = DatabaseError(_describe(e, self.path))
            log.error("write failed: %s", e)
            kind, a, b, fut = batch[0]
            if fut is not None:
                results = [(fut, None, self.failure if kind == _CALL else None)]
            stop = kind == _STOP
        for fut, value, exc in results:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)
        return stop

    # ------------------------------------------------------------------ reader side

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._connect()
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error as e:
                raise DatabaseError(_describe(e, self.path)) from None
            with self._readers_lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def reader(self) -> sqlite_utils.Database:
        """This thread's read connection (opened on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _database(self._reader_conn())
        return db

    def read(self, fn: Callable[[Any], T], *, raw: bool = False) -> T:
        """Run a read in this thread (do not call on the event loop); `fn` gets this thread's
        `reader()`, or with `raw` its bare `sqlite3.Connection`."""
        try:
            return fn(self._reader_conn() if raw else self.reader())
        except sqlite3.OperationalError as e:
            raise DatabaseError(_describe(e, self.path)) from None

    async def aread(self, fn: Callable[[Any], T], *, raw: bool = False) -> T:
        """Run a read in a worker thread."""
        return await asyncio.to_thread(self.read, fn, raw=raw)

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read query as dicts (in this thread)."""
        return self.read(lambda conn: _dict_rows(conn.execute(sql, params)), raw=True)

    async def aquery(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        """`query` in a worker thread."""
        return await asyncio.to_thread(self.query, sql, params)

    def data_version(self) -> int:
        """Changes when another connection commits (PRAGMA data_version)."""
        return self.read(lambda conn: conn.execute("PRAGMA data_version").fetchone()[0], raw=True)


def now() -> float:
    return time.time()
