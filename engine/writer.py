"""How the store writes: batches of queued items, each batch one transaction.

Used in two places: the store's writer thread (`engine/store.py`), and the bulk writer process
the store starts for the engine's hot writes (`main` below, run as `python -I -S writer.py`).
The process has its own interpreter and so its own GIL: SQLite's work on the engine's rows runs
on another core while the event loop goes on. (A writer thread shares the loop's GIL; while the
loop is busy, its `epoll` calls release and retake the GIL so often that a waiting thread never
gets it, so in-process writes run after the loop, not beside it.)

This module imports nothing but the standard library: the process starts in milliseconds.
"""

from __future__ import annotations

import _signal  # the C module: `signal` builds enums at import (a third of the start-up)
import gc
import marshal
import os
import struct
import sys
import time
from _operator import itemgetter  # the C module (`operator` is a Python wrapper over it)
from itertools import chain

try:  # the C module itself: the package adds only deprecated date adapters (and ~5 ms of imports)
    import _sqlite3 as sqlite3
except ImportError:  # pragma: no cover - an interpreter without it
    import sqlite3  # type: ignore[no-redef]

TYPE_CHECKING = False
if TYPE_CHECKING:  # the process imports no more than it needs: it starts with every run
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

    Other = Callable[[tuple], Any]
    """Handles a queue item that is neither SQL nor ROWS, inside the batch's transaction."""
    Result = tuple[tuple, Any, BaseException | None]

MAX_BATCH = 20_000
CHUNK_SIZES = (64, 8, 1)
"""Rows per multi-row statement of a `Rows`, largest first: a group of n rows is written as
n // 64 statements of 64 rows, then 8s, then singles. Few sizes keep the statements a new
connection must prepare few (preparing one can cost as much as writing a hundred rows)."""

SQL, CALL, BARRIER, STOP, ROWS, DEFINE, GATE, OPEN = range(8)
"""Kinds of queue items, (kind, a, b, token): SQL (sql, params), ROWS (statement name, row),
DEFINE (statement name, `Rows.definition()`: before its first row), and CALL, BARRIER and STOP,
which the writer thread runs. Between the store and its writer process those three travel as
GATE (number, wait): the process commits what came before and answers; for a call (`wait`) it
then writes nothing until the gate comes back opened as OPEN (number)."""

VALUES = "{values}"
COALESCE = 0.02
"""Seconds at most that the writer process keeps a transaction open while rows keep coming."""
CHECKPOINT_IDLE = 0.1
"""Seconds without input after which a writer copies the WAL into the database file."""
CHECKPOINT_PAGES = 2000
"""`PRAGMA wal_autocheckpoint` of the writer connections: SQLite checkpoints at a commit only
once the WAL has this many pages, a cap for loads that never pause. At SQLite's default (1,000
pages, about one 50x20 run here) the commit that crossed it copied the pages then, 20-30 ms in
the middle of a run; the writers checkpoint when idle instead (`checkpoint`). Under a load
that never pauses, the checkpoints at the cap are what leaves the write lock free for a while
to other processes: a higher cap makes their writes wait longer (see README)."""


class Rows:
    """A statement the writer may batch: rows queued with `Store.put(rows, values)`.

    `sql` is the statement; `{values}` in it stands for n rows of `width` placeholders, written
    as multi-row statements (`CHUNK_SIZES`); a statement without it is run once per row
    (`executemany`, cheaper where SQLite would materialise the rows first, as for an UPDATE
    ... FROM). Rows of one `Rows` keep their order; rows of different `Rows` must commute
    (different tables, no trigger of one reading another's table), because the writer writes
    each group at once. With `key` (indexes into a row) only the last row per key is written,
    merged with the earlier ones: a None at a `sticky` index keeps the earlier value (the
    statement's `coalesce(?, column)`), so the result is that of writing every row in turn.
    `before` and `after` are statements run around each group of rows, in its transaction (the
    attempts' rollups: one aggregated statement per group instead of triggers per row).
    Rows are queued by name; the statement travels once (`definition`).
    """

    __slots__ = ("_cache", "_key_of", "after", "before", "key", "name", "sql", "sticky", "width")

    def __init__(
        self,
        name: str,
        width: int,
        sql: str,
        *,
        key: tuple[int, ...] | None = None,
        sticky: tuple[int, ...] = (),
        before: tuple[str, ...] = (),
        after: tuple[str, ...] = (),
    ):
        self.name = name
        self.width = width
        self.sql = sql
        self.key = key
        self.sticky = sticky
        self.before = before
        self.after = after
        self._cache: dict[int, str] = {}
        self._key_of = itemgetter(*key) if key else None

    def definition(self) -> tuple:
        """What `Rows(name, *definition)` needs (plain data, for the writer process)."""
        return (self.width, self.sql, self.key, self.sticky, self.before, self.after)

    @property
    def multi(self) -> bool:
        return VALUES in self.sql

    def statement(self, n: int) -> str:
        text = self._cache.get(n)
        if text is None:
            text = self._cache[n] = self.sql.replace(VALUES, values_sql(self.width, n))
        return text

    def chunks(self, rows: list[Sequence[Any]]) -> Iterator[tuple[str, list[Any]]]:
        """(statement, flat values) covering `rows` in order, in chunks of `CHUNK_SIZES`."""
        i, n = 0, len(rows)
        for size in CHUNK_SIZES:
            while n - i >= size:
                yield self.statement(size), list(chain.from_iterable(rows[i : i + size]))
                i += size

    def merge(self, rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
        """The last row per key (merged as described above), in order of each key's last row."""
        key_of = self._key_of
        if key_of is None:
            return rows
        last: dict[Any, Sequence[Any]] = {}
        sticky = self.sticky
        for row in rows:
            k = key_of(row)
            old = last.pop(k, None)
            if old is not None and sticky:
                row = list(row)
                for i in sticky:
                    if row[i] is None:
                        row[i] = old[i]
            last[k] = row
        return list(last.values())

    def write(
        self, conn: sqlite3.Connection, rows: list[Sequence[Any]], after: dict[Rows, None]
    ) -> None:
        """Write `rows`. `before` runs unless this `Rows` is already in `after`, where it is
        then added: its `after` statements wait for `finish`, which runs them once for every
        group written since (before an item of another kind, and at the commit), not once per
        group."""
        rows = self.merge(rows)
        if self not in after:
            for sql in self.before:
                conn.execute(sql)
            after[self] = None
        if not self.multi:
            conn.executemany(self.sql, rows)
        else:
            for sql, flat in self.chunks(rows):
                conn.execute(sql, flat)


def finish(conn: sqlite3.Connection, after: dict[Rows, None]) -> None:
    """Run the `after` statements of the `Rows` written since the last `finish`."""
    for rows in after:
        for sql in rows.after:
            conn.execute(sql)
    after.clear()


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, without waiting for anybody: frames a
    reader still uses are left for next time (SQLite's PASSIVE mode). Writers call this once
    idle for `CHECKPOINT_IDLE` seconds after a commit; the next write then starts the WAL anew."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error:  # e.g. another connection checkpointing: its work serves as well
        pass


def values_sql(width: int, n: int) -> str:
    """`(?,?,..),(?,?,..)...`: n rows of `width` placeholders."""
    one = "(" + ",".join("?" * width) + ")"
    return ",".join([one] * n)


def bind_nulls_fast() -> None:
    """Bind None without the sqlite3 module's adapter search. Python's sqlite3 binds int,
    float, str and bytes directly but looks None up as an object to adapt: a failed registry
    lookup and two failed attribute lookups, whose AttributeError message is formatted and
    thrown away, about 3,000 instructions per NULL (a tenth of the writer's work on the
    engine's rows, which are mostly NULLs). A registered adapter is found at the first lookup;
    `{}.get` returns None for None without running any Python. Process-wide; None stays NULL."""
    sqlite3.register_adapter(type(None), {}.get)


def describe(e: sqlite3.Error, path: object) -> str:
    msg = str(e)
    if "locked" in msg or "busy" in msg:
        return f"{path}: database is locked by another process (gave up after the busy timeout)"
    if "readonly" in msg or "unable to open" in msg or "disk I/O" in msg:
        return f"{path}: cannot write the database ({msg})"
    if "not a database" in msg or "malformed" in msg:
        return f"{path}: corrupt or not a SQLite database ({msg})"
    return f"{path}: {msg}"


def _write(
    conn: sqlite3.Connection,
    batch: list[tuple],
    other: Other | None,
    named: dict[str, Rows],
    after: dict[Rows, None],
) -> list[Result]:
    # Consecutive statements with the same SQL run as one executemany, `Rows` between two other
    # items as one group each; anything else runs in queue order, so the result is that of
    # running the queue in order. (At most one of `run_rows` and `groups` is non-empty.) The
    # `after` statements of the groups written run before any other item (which may read what
    # they maintain); those of the last groups are left in `after` for the caller (`finish`).
    results: list[Result] = []
    run_sql: str | None = None
    run_rows: list[Sequence[Any]] = []
    groups: dict[Rows, list[Sequence[Any]]] = {}
    for item in batch:
        kind, a, b, _ = item
        if kind == ROWS:
            if run_rows:
                conn.executemany(run_sql, run_rows)
                run_sql, run_rows = None, []
            rows = named[a]
            group = groups.get(rows)
            if group is None:
                groups[rows] = [b]
            else:
                group.append(b)
            continue
        if kind == DEFINE:
            if a not in named:
                width, sql, key, sticky, before, after_ = b
                named[a] = Rows(a, width, sql, key=key, sticky=sticky, before=before, after=after_)
            continue
        if groups:
            for rows, values in groups.items():
                rows.write(conn, values, after)
            groups = {}
        if after:
            finish(conn, after)
        if kind == SQL:
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
        if other is None:
            raise ValueError(f"unexpected queue item kind {kind}")
        try:
            results.append((item, other(item), None))
        except Exception as e:
            results.append((item, None, e))
    if run_rows:
        conn.executemany(run_sql, run_rows)
    for rows, values in groups.items():
        rows.write(conn, values, after)
    return results


def process(
    conn: sqlite3.Connection,
    batch: list[tuple],
    other: Other | None,
    failed: Callable[[tuple, sqlite3.Error], None],
    named: dict[str, Rows],
) -> tuple[int, list[Result]]:
    """Write `batch` in one transaction: (transactions committed, results of `other`). If
    SQLite fails, the batch is rolled back and replayed an item at a time (one bad statement
    must not lose the rest); each item that still fails is reported to `failed`."""
    # BEGIN IMMEDIATE: the write lock is taken first (waiting up to the busy timeout), so a
    # function that reads then writes (a compare-and-set) never has to upgrade a read snapshot
    # that another process made stale, which SQLite refuses at once (SQLITE_BUSY_SNAPSHOT).
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            after: dict[Rows, None] = {}
            results = _write(conn, batch, other, named, after)
            finish(conn, after)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return 1, results
    except sqlite3.Error as e:
        return _recover(conn, batch, e, other, failed, named)


def _recover(
    conn: sqlite3.Connection,
    batch: list[tuple],
    e: sqlite3.Error,
    other: Other | None,
    failed: Callable[[tuple, sqlite3.Error], None],
    named: dict[str, Rows],
) -> tuple[int, list[Result]]:
    """After `batch` failed with `e` (its transaction rolled back here if still open): report a
    lone item to `failed`, or `process` each item in a transaction of its own."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    if len(batch) == 1:
        failed(batch[0], e)
        return 0, []
    import logging

    logging.getLogger("flowdeck.store").warning(
        "batch of %d failed (%s); replaying one by one", len(batch), e
    )
    commits, results = 0, []
    for item in batch:
        n, r = process(conn, [item], other, failed, named)
        commits += n
        results += r
    return commits, results


class Transaction:
    """The writer process's open transaction, written into as items arrive.

    Rows are written when they come, while the loop is still producing the next ones, so when
    the process catches up or somebody waits at a gate only the commit is left (had they waited
    for the commit, all of their SQLite work would come after the loop's). If SQLite fails, the
    transaction is rolled back and its items replayed one at a time, as `process` does.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        named: dict[str, Rows],
        failed: Callable[[tuple, sqlite3.Error], None],
    ):
        self.connect = connect
        self.named = named
        self.failed = failed
        self.items: list[tuple] = []
        self.after: dict[Rows, None] = {}
        self.began = 0.0

    def write(self, items: list[tuple]) -> int:
        """Write `items` (SQL, ROWS, DEFINE) into the transaction, beginning it if none is
        open. Returns the transactions committed: 0, or more when a failure made it replay."""
        if not items:
            return 0
        conn = self.connect()
        try:
            if not self.items:
                conn.execute("BEGIN IMMEDIATE")
                self.began = time.monotonic()
            self.items += items
            _write(conn, items, None, self.named, self.after)
        except sqlite3.Error as e:
            return self._replay(conn, e)
        return 0

    def commit(self) -> int:
        """Commit what was written (transactions committed: 0 if nothing was open)."""
        if not self.items:
            return 0
        conn = self.connect()
        try:
            finish(conn, self.after)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            return self._replay(conn, e)
        self.items = []
        return 1

    def _replay(self, conn: sqlite3.Connection, e: sqlite3.Error) -> int:
        self.after.clear()
        items, self.items = self.items, []
        return _recover(conn, items, e, None, self.failed, self.named)[0]


# --------------------------------------------------------------------------- the process

HEADER = struct.Struct("<Ic")


def encode(message: Any) -> bytes:
    """A length-prefixed frame: marshal (twice as fast for the plain tuples of rows), or
    pickle for values marshal does not know."""
    try:
        data, how = marshal.dumps(message), b"M"
    except ValueError:
        import pickle

        data, how = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), b"P"
    return HEADER.pack(len(data), how) + data


def _decode(how: bytes, data: bytes) -> Any:
    if how == b"M":
        return marshal.loads(data)
    import pickle

    return pickle.loads(data)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Length-prefixed pickles from a pipe."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def read(self) -> list[Any]:
        """The messages complete after one blocking read (empty at end of file)."""
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.eof = True
                return []
            self.buf += chunk
            out = self._complete()
            if out:
                return out

    def _complete(self) -> list[Any]:
        out, buf, pos, size = [], self.buf, 0, HEADER.size
        while len(buf) - pos >= size:
            n, how = HEADER.unpack_from(buf, pos)
            if len(buf) - pos - size < n:
                break
            out.append(_decode(how, bytes(buf[pos + size : pos + size + n])))
            pos += size + n
        del buf[:pos]
        return out

    def ready(self, timeout: float = 0) -> bool:
        """Whether a read would not block (waiting up to `timeout` seconds for it)."""
        import select

        return bool(select.select([self.fd], [], [], timeout)[0])


def spawn(args: Sequence[str]) -> Any:
    """Start the writer process (this module, with only the standard library) and return its
    `subprocess.Popen`; `args` are `main`'s (none: it waits for them, see `prespawn`)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from engine.writer import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Its own process group: a Ctrl-C at the terminal goes to the engine, which still has
        # rows to write; the process ends when its input does.
        start_new_session=True,
    )


_prespawned: Any = None


def prespawn() -> None:
    """Start a writer process now for the first store this process opens (`take_prespawned`).
    A command that will run workflows calls this before its heavy imports: the process's own
    start (an interpreter, tens of milliseconds) then happens meanwhile on another core, and
    its first step does not wait for it. Unused, it ends with this process (end of input)."""
    global _prespawned
    if _prespawned is None:
        try:
            _prespawned = spawn([])
        except OSError:
            pass


def take_prespawned(args: Sequence[str]) -> Any:
    """The process `prespawn` started, told `args` (once; None if there is none or it died)."""
    global _prespawned
    child, _prespawned = _prespawned, None
    if child is None:
        return None
    try:
        if child.poll() is None:
            write_all(child.stdin.fileno(), encode(("open", *args)))
            return child
    except OSError:
        pass
    for pipe in (child.stdin, child.stdout, child.stderr):  # dead or deaf: let it go
        pipe.close()
    child.wait()
    return None


def main(argv: list[str]) -> int:
    """The bulk writer process: queue items from stdin, replies on stdout.

    In: lists of items, SQL / ROWS / DEFINE to write, (GATE, n, wait) for a call, barrier or
    stop, (OPEN, n) when the writer thread has run a call. Out: ("g", n, commits) once everything
    before gate n is committed (with `wait`, a call, the process then writes nothing until OPEN n
    arrives: the writer thread writes meanwhile), ("e", message) for a
    statement that failed. Ends at end of input, after writing what it read. It has a process
    group of its own (a Ctrl-C at the terminal is for the engine, which may still have rows to
    write) and ignores SIGINT and SIGTERM sent to it directly.
    """
    inp, out = FrameReader(0), 1
    early: list[Any] = []
    if not argv:  # started ahead of its store (`prespawn`): the store says which file
        early = inp.read()
        if not early:
            return 0
        argv = list(early.pop(0)[1:])
    path, synchronous, busy_ms = argv
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    gc.disable()  # it keeps no cycles; collections would only walk the rows passing through
    bind_nulls_fast()
    # Connected at its first batch, not at start: the store starts the process before it has
    # checked and migrated the file (so the process is up by the first write), and a file it
    # refuses must be left as it was.
    conn: sqlite3.Connection | None = None

    def connection() -> sqlite3.Connection:
        nonlocal conn
        if conn is None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        return conn

    commits = 0
    pending: list[tuple] = []  # read, not yet written
    opened: set[int] = set()

    def failed(item: tuple, e: sqlite3.Error) -> None:
        write_all(out, encode(("e", describe(e, path))))

    txn = Transaction(connection, {}, failed)

    def take(messages: list[Any]) -> None:
        for items in messages:
            for item in items:
                if item[0] == OPEN:
                    opened.add(item[1])
                else:
                    pending.append(item)

    take(early)
    written = False  # since the last checkpoint
    while True:
        if not pending:
            if written and conn is not None and not inp.ready(CHECKPOINT_IDLE):
                checkpoint(conn)  # nothing came for a while: a pause in the engine's work
                written = False
            take(inp.read())
            if inp.eof and not pending:
                break
        # Group commit: rows are written as they come, into one transaction while more is
        # already waiting in the pipe (a busy loop sends every iteration), for up to COALESCE
        # seconds. Once it has caught up, or at a gate (somebody waits) or the end of input, it
        # commits: the write lock is never held while the process waits for input, so other
        # processes' writes (an approval, a command) get in between.
        while True:
            gate: int | None = None
            end = min(len(pending), MAX_BATCH - len(txn.items))
            for i in range(end):
                if pending[i][0] == GATE:
                    gate, wait, end = pending[i][1], pending[i][2], i
                    break
            commits += txn.write(pending[:end])
            del pending[:end]
            if gate is not None or inp.eof or len(txn.items) >= MAX_BATCH or not txn.items:
                break
            if txn.began + COALESCE <= time.monotonic() or not inp.ready():
                break
            take(inp.read())
        commits += txn.commit()
        written = True  # rows, or a gate (the writer thread may have written)
        if gate is not None:
            del pending[0]
            write_all(out, encode(("g", gate, commits)))
            while wait and gate not in opened:
                take(inp.read())
                if inp.eof:
                    return 0
            opened.discard(gate)
    if conn is not None:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
