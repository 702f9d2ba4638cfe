"""Server-sent events from the store's `events` table (`GET /api/events`).

One `EventHub` per server tails the table (an `EventFollower` in one dedicated thread, so
events committed by any process appear) and keeps the newest `buffer` events, already encoded,
in a ring. Each client is only a cursor (the last id it was sent): it reads from the ring, or
pages from the table while it is further behind than the ring reaches (resuming from an old
`Last-Event-ID`). Ids only grow, so a cursor gives no gap and no duplicate.

Memory does not depend on the clients: the ring is bounded, a client never gets a queue of its
own, and a write is at most `WRITE_CHUNK` bytes. A client whose write does not complete within
`write_timeout` (its socket stopped taking data) is dropped with a final `event: reconnect`
and resumes from its last id when it comes back. An idle stream gets a `: keepalive` comment
every `heartbeat` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.events import Event, EventFollower, row_to_event
from engine.store import Store

log = logging.getLogger("flowdeck.sse")

WRITE_CHUNK = 64 * 1024
"""Bytes per write: what a stalled client can make the server hold beyond the transport's
high-water mark."""


@dataclass(slots=True)
class SseConfig:
    """Tuning of the event stream (tests shrink these)."""

    poll_interval: float = 0.1
    """Seconds between two looks at the events table when nothing new came."""
    heartbeat: float = 15.0
    """Seconds of silence after which a `: keepalive` comment is sent."""
    buffer: int = 4096
    """Newest events kept in memory for live clients."""
    page: int = 1000
    """Events per read when catching up from the table."""
    write_timeout: float = 10.0
    """A write to a client taking longer than this marks it slow (it is dropped)."""
    drop_grace: float = 5.0
    """Seconds the final `reconnect` event gets to reach a dropped client before the
    connection is cut."""
    retry_ms: int = 1000
    """`retry:` sent to clients: how long EventSource waits before reconnecting."""


@dataclass(slots=True)
class _Item:
    id: int
    run_id: str | None
    frame: bytes


def encode(ev: Event) -> bytes:
    """One SSE message: `id:` the event id, `data:` the event as one JSON line."""
    payload = json.dumps(ev.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {ev.id}\ndata: {payload}\n\n".encode()


def _item(ev: Event) -> _Item:
    return _Item(ev.id or 0, ev.run_id, encode(ev))


def _chunks(items: list[_Item], limit: int = WRITE_CHUNK) -> Iterator[list[_Item]]:
    chunk: list[_Item] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item.frame)
        if size >= limit:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _Slow(Exception):
    """The client cannot keep up."""


@dataclass(slots=True, eq=False)
class Client:
    """One connected stream (for metrics and tests)."""

    cursor: int
    """Id of the last event sent."""
    run_id: str | None
    peer: str = ""
    transport: Any = None

    def buffered(self) -> int:
        """Bytes written to this client that the network has not taken yet."""
        t = self.transport
        return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0


class EventHub:
    """Tails the events table and serves it to any number of SSE clients."""

    def __init__(self, store: Store, config: SseConfig | None = None):
        self.store = store
        self.config = config or SseConfig()
        self.head = 0
        """Newest event id read from the table."""
        self.floor = 0
        """The ring holds every event with an id above this."""
        self.clients: set[Client] = set()
        self.dropped = 0
        """Clients dropped for being slow."""
        self.sent = 0
        """Events written to clients."""
        self._ring: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flowdeck-sse")
        self._follower: EventFollower | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the tail

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._follower = await loop.run_in_executor(
            self._executor, EventFollower.from_end, self.store
        )
        self.head = self.floor = self._follower.last_id
        self._task = asyncio.create_task(self._pump(), name="flowdeck-sse-pump")

    async def close(self) -> None:
        """Tell every client to reconnect elsewhere and stop tailing."""
        if self._closed:
            return
        try:
            await self._poll()  # the last events still reach the clients
        except Exception:
            pass
        self._closed = True
        self._notify()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=False)

    async def _pump(self) -> None:
        while not self._closed:
            try:
                full = await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("reading events failed: %s", e)
                full = False
                await asyncio.sleep(1.0)
            if not full:
                await asyncio.sleep(self.config.poll_interval)

    async def _poll(self) -> bool:
        follower = self._follower
        if follower is None:
            return False
        page = self.config.page
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(
            self._executor, lambda: [_item(ev) for ev in follower.poll(page)]
        )
        if items:
            self._append(items)
        return len(items) == page

    def _append(self, items: list[_Item]) -> None:
        ring = self._ring
        ring.extend(items)
        excess = len(ring) - self.config.buffer
        for _ in range(excess):
            self.floor = ring.popleft().id
        self.head = items[-1].id
        self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def since(self, cursor: int) -> list[_Item]:
        """Ring items with an id above `cursor` (the caller checked `cursor >= floor`)."""
        out: list[_Item] = []
        for item in reversed(self._ring):
            if item.id <= cursor:
                break
            out.append(item)
        out.reverse()
        return out

    def _page(self, db: Any, cursor: int, run_id: str | None) -> list[_Item]:
        if run_id is None:
            rows = db.execute(
                "SELECT id, ts, run_id, step_id, kind, data FROM events WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (cursor, self.config.page),
            )
        else:
            rows = db.execute(
                "SELECT id, ts, run_id, step_id, kind, data FROM events "
                "WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
                (run_id, cursor, self.config.page),
            )
        names = [c[0] for c in rows.description]
        return [_item(row_to_event(dict(zip(names, r, strict=True)))) for r in rows.fetchall()]

    # ------------------------------------------------------------------ one client

    async def stream(
        self, request: web.Request, after: int | None, run_id: str | None = None
    ) -> web.StreamResponse:
        """Serve one SSE client from event `after` on (None: from the newest)."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        client = Client(
            self.head if after is None else after,
            run_id,
            peer=str(request.remote),
            transport=request.transport,
        )
        self.clients.add(client)
        try:
            await self._serve(request, resp, client)
        except _Slow as e:
            self.dropped += 1
            log.info("dropping slow SSE client %s at event %d: %s", client.peer, client.cursor, e)
            await self._final(request, resp, client, f"slow client: {e}")
        except ConnectionError:
            pass
        except Exception:  # headers are sent: an error response is no longer possible
            log.exception("SSE stream to %s failed", client.peer)
            if request.transport is not None:
                request.transport.abort()
        finally:
            self.clients.discard(client)
        return resp

    async def _serve(self, request: web.Request, resp: web.StreamResponse, client: Client) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        await self._write(resp, f"retry: {cfg.retry_ms}\n\n".encode())
        last_write = loop.time()
        while True:
            if self._closed:
                await self._final(request, resp, client, "server shutting down")
                return
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            wake = self._wake
            if client.cursor < self.floor:  # resuming, or a burst passed it: read the table
                items = await self.store.aread(
                    functools.partial(self._page, cursor=client.cursor, run_id=client.run_id)
                )
                if not items:  # nothing between the cursor and the ring (pruned or filtered)
                    client.cursor = max(client.cursor, self.floor)
                    continue
            else:
                items = self.since(client.cursor)
                if client.run_id is not None:
                    client.cursor = items[-1].id if items else client.cursor
                    items = [i for i in items if i.run_id == client.run_id]
            if items:
                for chunk in _chunks(items):
                    await self._write(resp, b"".join(i.frame for i in chunk))
                    client.cursor = max(client.cursor, chunk[-1].id)
                    self.sent += len(chunk)
                last_write = loop.time()
                continue
            idle = cfg.heartbeat - (loop.time() - last_write)
            if idle <= 0:
                await self._write(resp, b": keepalive\n\n")
                last_write = loop.time()
                continue
            try:
                await asyncio.wait_for(wake.wait(), idle)
            except TimeoutError:
                pass

    async def _write(self, resp: web.StreamResponse, data: bytes) -> None:
        try:
            await asyncio.wait_for(resp.write(data), self.config.write_timeout)
        except TimeoutError:
            raise _Slow(f"a write took more than {self.config.write_timeout:g} s") from None

    async def _final(
        self, request: web.Request, resp: web.StreamResponse, client: Client, reason: str
    ) -> None:
        """Send `event: reconnect` (no id: the client resumes from its last event) and close."""
        data = json.dumps({"reason": reason, "last_event_id": client.cursor})
        try:
            await asyncio.wait_for(
                resp.write(f"event: reconnect\ndata: {data}\n\n".encode()), self.config.drop_grace
            )
            await asyncio.wait_for(resp.write_eof(), self.config.drop_grace)
        except (TimeoutError, ConnectionError):
            transport = request.transport
            if transport is not None:
                transport.abort()
