"""The SQLite store: one file, WAL, group commit, readers per thread.

Writes never run on the event loop. Callers enqueue statements (`execute`, `put`: fire and
forget) or functions (`call`, with a result). Statements and rows go to the store's writer
process (`engine/writer.py`), which commits whatever has arrived as one transaction beside the
loop; a function is a gate in that stream: the process commits everything before it and waits
while the writer thread runs the function on its own connection and commits. So everything runs
in queue order, as if one statement at a time. Without the process (`bulk_process=False`, or
if it cannot start or dies) the writer thread writes everything itself, in the same order.

Reads use one connection per thread (`reader()`); `aread()` runs a read in a worker thread.

Opening checks the file before anything is written: not SQLite, truncated, locked past the
busy timeout, newer schema or unwritable all raise `DatabaseError` and leave the file as it was.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import select
import sqlite3
import subprocess
import threading
import time
from asyncio import _get_running_loop
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from engine import migrations, writer
from engine.errors import DatabaseError
from engine.writer import BARRIER as _BARRIER
from engine.writer import CALL as _CALL
from engine.writer import CHUNK_SIZES, MAX_BATCH, Rows, values_sql
from engine.writer import DEFINE as _DEFINE
from engine.writer import GATE as _GATE
from engine.writer import OPEN as _OPEN_GATE
from engine.writer import ROWS as _ROWS
from engine.writer import SQL as _SQL
from engine.writer import STOP as _STOP
from engine.writer import describe as _describe

__all__ = ["CHUNK_SIZES", "MAX_BATCH", "Rows", "Store", "values_sql"]

_GATED = (_CALL, _BARRIER, _STOP)
PIPE_BYTES = 1 << 20
"""Size asked for the pipe to the writer process (Linux allows up to 1 MiB unprivileged)."""

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger("flowdeck.store")

T = TypeVar("T")
SQLITE_HEADER = b"SQLite format 3\x00"
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
    if pages and change_counter == valid_for and size < pages * page_size and not _has_wal(path):
        raise DatabaseError(
            f"{path}: truncated SQLite file ({size} bytes, header says {pages * page_size})"
        )


def _has_wal(path: Path) -> bool:
    """Whether a write-ahead log with frames lies beside `path`. Then the file may be shorter
    than its header says and still whole: a checkpoint (a writer closing, perhaps the writer
    process of an engine that was just killed) writes page 1 before the pages that extend the
    file, and a checkpoint cut short leaves the pages in the log, where SQLite reads them."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 32  # more than its header
    except OSError:
        return False


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


def _is_busy(e: sqlite3.Error) -> bool:
    return "locked" in str(e) or "busy" in str(e)


def _dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor]


class Store:
    """A flowdeck SQLite file. Use `Store.open(path)`; call `close()` when done."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        bulk_process: bool = True,
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
        self.bulk_process = bulk_process
        """Whether statements and rows go to a writer process (see `engine/writer.py`); if it
        cannot start, or without it (`FLOWDECK_WRITER=thread`), the writer thread writes them."""
        self._sent = False
        """Anything was written to the process (a store only read needs not wait for it)."""
        self._child: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        """Held while queue items are taken and written to the process, in queue order."""
        self._backlog = bytearray()
        """Bytes for the process that its pipe had no room for (see `_write_child`)."""
        self._feeder: threading.Thread | None = None
        self._feeding = threading.Event()
        """Set while `_backlog` has bytes (wakes the feeder thread)."""
        self._send_loop: asyncio.AbstractEventLoop | None = None
        """The loop that has a send scheduled (producers on a loop send once per iteration)."""
        self._gates: dict[int, tuple] = {}
        """Items the writer thread runs itself, by gate number, until the process reaches them."""
        self._gate_seq = 0
        self._gated = False
        """A call, barrier or stop was queued since the last send."""
        self._rows: dict[str, Rows] = {}
        """The `Rows` queued so far, by name (items carry the name)."""
        self._commits = [0, 0]
        """Transactions committed by the writer thread and by the writer process."""
        self._open_key: str | None = None
        self._db: sqlite_utils.Database | None = None
        """The writer's connection as a `Database`, made for the first `call` that wants one."""

    @property
    def commits(self) -> int:
        """Transactions committed by the writer thread and process (for benchmarks)."""
        return sum(self._commits)

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
            # Processes opening a new file at once: switching it to WAL can answer "locked" at
            # once, without the busy timeout (SQLite does not wait where waiting could deadlock).
            # Each step is safe to repeat, so it is, until the busy timeout is spent.
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    self._prepare(conn, existed)
                    break
                except sqlite3.OperationalError as e:
                    if not _is_busy(e) or time.monotonic() > deadline:
                        raise
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    time.sleep(0.02)
        except sqlite3.Error as e:
            conn.close()
            raise DatabaseError(_describe(e, self.path)) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection, existed: bool) -> None:
        """Check the file, switch it to WAL, migrate it."""
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
        conn.execute(f"PRAGMA wal_autocheckpoint = {writer.CHECKPOINT_PAGES}")

    def close(self) -> None:
        """Commit what is queued, stop the writer and close every connection."""
        if self._closed:
            return
        self._closed = True
        child = self._child
        if child is not None and not self._sent and not self._items:
            child.kill()  # a store only read from: nothing to write, no need to wait for it
            if self._thread is not None:
                self._thread.join()
        elif self._thread is not None and self._thread.is_alive():
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._push((_STOP, None, None, done))
            self._thread.join()
        self._feeding.set()  # a feeder thread, if any, ends (everything was delivered)
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
        self._enqueue((_SQL, sql, params, None))

    def put(self, rows: Rows, values: Sequence[Any]) -> None:
        """Queue one row of a batched statement (see `Rows`); it commits with the next batch."""
        name = rows.name
        if name not in self._rows:
            self._rows[name] = rows
            self._enqueue((_DEFINE, name, rows.definition(), None))
        self._enqueue((_ROWS, name, values, None))

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        for params in rows:
            self.execute(sql, params)

    def _enqueue(self, item: tuple) -> None:
        """Queue data (a statement or a row). With a writer process, a producer on an event loop
        sends once per loop iteration, in bulk; any other producer sends at once."""
        self._items.append(item)
        if self._child is None:
            self._kick()
            return
        loop = _get_running_loop()
        if loop is None:
            self._send()
        elif self._send_loop is not loop:
            self._send_loop = loop
            loop.call_soon(self._send)

    def _push(self, item: tuple) -> None:
        """Queue a call, barrier or stop: sent at once (somebody waits for it)."""
        self._gated = True
        self._items.append(item)
        if self._child is None:
            self._kick()
            return
        self._send()

    def _send(self) -> None:
        """Write everything queued to the writer process, in queue order. A call, barrier or
        stop becomes a GATE the process stops at until the writer thread has run the item (see
        `_gatekeeper`)."""
        with self._send_lock:
            self._send_loop = None
            items = self._items
            if self._child is None:  # the process is gone: the thread writes from now on
                self._kick()
                return
            if not items:
                return
            gated, self._gated = self._gated, False
            popleft = items.popleft
            batch = [popleft() for _ in range(len(items))]
            if gated:
                self._gate(batch)
            try:
                frame = writer.encode(batch)
            except Exception:  # a gate queued by another thread meanwhile
                self._gate(batch)
                frame = writer.encode(batch)
            self._write_child(frame)

    def _gate(self, batch: list[tuple]) -> None:
        """Calls, barriers and stops (callables, futures) travel as numbered gates."""
        for i, item in enumerate(batch):
            if item[0] in _GATED:
                n = self._gate_seq = self._gate_seq + 1
                self._gates[n] = item
                # Only a call makes the process wait for the gate to open (this thread writes
                # meanwhile); at a barrier or a stop it commits, answers and goes on.
                batch[i] = (_GATE, n, item[0] == _CALL, None)

    def _write_child(self, frame: bytes) -> None:
        """Write `frame` to the process without ever waiting (call with `_send_lock` held).
        What the pipe has no room for (the process is behind, e.g. waiting for a lock another
        process holds) goes to `_backlog`, which the feeder thread writes as room appears; a
        producer on the event loop never blocks, and later frames queue behind the backlog."""
        self._sent = True
        if self._backlog:
            self._backlog += frame
            return
        try:
            n = os.write(self._child.stdin.fileno(), frame)  # type: ignore[union-attr]
        except BlockingIOError:
            n = 0
        except (OSError, ValueError, AttributeError) as e:
            self._child_gone(e)
            return
        if n < len(frame):
            self._backlog += memoryview(frame)[n:]
            if self._feeder is None:
                self._feeder = threading.Thread(
                    target=self._feed, name="flowdeck-store-feeder", daemon=True
                )
                self._feeder.start()
            self._feeding.set()

    def _child_gone(self, e: BaseException) -> None:
        # The process is gone: its gatekeeper fails the waiting items.
        self._backlog.clear()
        if self.failure is None:
            self.failure = DatabaseError(f"{self.path}: writer process is gone ({e})")

    def _feed(self) -> None:
        """The feeder thread: writes `_backlog` to the process as the pipe takes it. It runs
        only while the process is behind, so it does not compete with the loop otherwise."""
        while True:
            self._feeding.wait()
            child = self._child
            with self._send_lock:
                if not self._backlog:
                    self._feeding.clear()
                    if self._closed or child is None:
                        self._feeder = None
                        return
                    continue
            try:
                fd = child.stdin.fileno()  # type: ignore[union-attr]
                select.select([], [fd], [], 1.0)  # room in the pipe (or look again)
                with self._send_lock, memoryview(self._backlog) as view:
                    try:
                        n = os.write(fd, view[:PIPE_BYTES])
                    except BlockingIOError:
                        n = 0
                if n:
                    with self._send_lock:
                        del self._backlog[:n]
            except (OSError, ValueError, AttributeError) as e:
                with self._send_lock:
                    self._child_gone(e)

    def _kick(self) -> None:
        """Wake the writer thread if it sleeps (it writes everything without a process)."""
        if not self._idle:
            return
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
        writer.bind_nulls_fast()
        # The process starts first: it is up (its interpreter takes tens of milliseconds) by
        # the time the file is checked and migrated and the first rows come. It opens the file
        # at its first write, so a file refused below is left untouched.
        child = self._spawn() if self.bulk_process else None
        try:
            conn = self._open_writer()
        except BaseException as e:
            if child is not None:  # it ends at the end of its input, never having connected
                for pipe in (child.stdin, child.stdout, child.stderr):
                    pipe.close()  # type: ignore[union-attr]
                child.wait()
            ready.set_exception(e if isinstance(e, DatabaseError) else DatabaseError(str(e)))
            return
        self._child = child
        ready.set_result(None)
        try:
            if self._child is not None and self._gatekeeper(conn, self._child):
                return
            items, wake = self._items, self._wake
            checked = self._commits[0]  # transactions committed at the last checkpoint
            while True:
                if not items:
                    self._idle = True
                    if not items:
                        if checked == self._commits[0]:
                            wake.acquire()  # until a producer releases it
                        elif not wake.acquire(timeout=writer.CHECKPOINT_IDLE):
                            writer.checkpoint(conn)  # a pause in the engine's work
                            checked = self._commits[0]
                            wake.acquire()
                    self._idle = False
                    continue
                batch = [items.popleft() for _ in range(min(len(items), MAX_BATCH))]
                if self._process(conn, batch):
                    break
        finally:
            conn.close()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        """Start the writer process, or take the one started ahead (`writer.prespawn`)."""
        args = [str(self.path), self.synchronous, str(int(self.busy_timeout * 1000))]
        child = writer.take_prespawned(args)
        if child is None:
            try:
                child = writer.spawn(args)
            except OSError as e:
                log.warning("writer process did not start (%s); writing in a thread", e)
                return None
        # A roomy pipe: the loop hands rows over without waiting while the process writes the
        # previous ones (64 KiB by default: the loop would stall behind SQLite).
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(child.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        os.set_blocking(child.stdin.fileno(), False)  # type: ignore[union-attr]  # see _write_child
        return child

    def _gatekeeper(self, conn: sqlite3.Connection, child: subprocess.Popen[bytes]) -> bool:
        """The writer thread beside a writer process: reads its replies; at each gate (the
        process has committed everything before the item and waits) runs the item on this
        thread's connection, commits, then opens the gate. True once stopped; False if the
        process ended on its own (what it had not committed is lost, as in a crash; the items
        waiting on it fail, and the thread writes from then on)."""
        replies = writer.FrameReader(child.stdout.fileno())  # type: ignore[union-attr]
        stopped = False
        while not stopped:
            messages = replies.read()
            if not messages and replies.eof:
                break
            for message in messages:
                if message[0] == "e":
                    self.failure = DatabaseError(message[1])
                    log.error("write failed: %s", message[1])
                    continue
                _, n, child_commits = message
                self._commits[1] = child_commits
                item = self._gates.pop(n)
                stopped = stopped or item[0] == _STOP
                if item[0] == _CALL:
                    results = self._run_items(conn, [item])
                    with self._send_lock:
                        self._write_child(writer.encode([(_OPEN_GATE, n, None, None)]))
                else:
                    results = [(item[3], None, None)] if item[3] is not None else []
                self._resolve(results)
        if stopped:
            child.stdin.close()  # type: ignore[union-attr]
            child.wait()
            return True
        child.wait()
        if self._closed and not self._sent:  # killed by `close()`: it never had work
            return True
        # The process ended on its own (killed, or crashed).
        err = child.stderr.read().decode(errors="replace").strip().splitlines()  # type: ignore[union-attr]
        reason = err[-1] if err else f"exit code {child.returncode}"
        failure = DatabaseError(f"{self.path}: writer process ended ({reason})")
        log.error("%s; writing in the writer thread from now on", failure)
        with self._send_lock:
            self.failure = failure
            self._child = None
            waiting = list(self._gates.values())
            self._gates.clear()
        with contextlib.suppress(OSError):
            child.stdin.close()  # type: ignore[union-attr]
        for item in waiting:
            fut = item[3]
            if fut is not None and not fut.done():
                fut.set_exception(failure)
        return any(item[0] == _STOP for item in waiting)

    def _process(self, conn: sqlite3.Connection, batch: list[tuple]) -> bool:
        """Write a batch in the thread (no writer process); True once a STOP was seen."""
        self._resolve(self._run_items(conn, batch))
        return any(item[0] == _STOP for item in batch)

    def _run_items(
        self, conn: sqlite3.Connection, batch: list[tuple]
    ) -> list[tuple[concurrent.futures.Future, Any, BaseException | None]]:
        done: list[tuple[concurrent.futures.Future, Any, BaseException | None]] = []

        def other(item: tuple) -> Any:
            kind, fn, raw, _ = item
            if kind != _CALL:
                return None
            if raw:
                with _savepoint(conn):
                    return fn(conn)
            if self._db is None:
                self._db = _database(conn)
            with self._db.atomic():
                return fn(self._db)

        def failed(item: tuple, e: sqlite3.Error) -> None:
            self.failure = DatabaseError(_describe(e, self.path))
            log.error("write failed: %s", e)
            fut = item[3]
            if fut is not None:
                done.append((fut, None, self.failure if item[0] == _CALL else None))

        commits, results = writer.process(conn, batch, other, failed, self._rows)
        self._commits[0] += commits
        done += [(item[3], value, exc) for item, value, exc in results if item[3] is not None]
        return done

    @staticmethod
    def _resolve(
        results: list[tuple[concurrent.futures.Future, Any, BaseException | None]],
    ) -> None:
        for fut, value, exc in results:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

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
