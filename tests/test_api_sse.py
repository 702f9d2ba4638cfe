"""`GET /api/events`: SSE from the events table, Last-Event-ID resume, heartbeats, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from engine.sse import SseConfig
from tests.conftest import run_cli
from tests.helpers.api import fan_workflow, running_api, write_workflows


@pytest.fixture
def workflows(tmp_path):
    d = write_workflows(tmp_path / "workflows")
    (d / "fan.json").write_text(json.dumps(fan_workflow(30)))
    return d


async def read_messages(resp: aiohttp.ClientResponse, stop, timeout: float = 30) -> list[dict]:
    """SSE messages of `resp` until `stop(message)` is true (or the stream ends)."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"stream did not reach the expected message; got {messages[-3:]}"
        line = await asyncio.wait_for(resp.content.readline(), left)
        if not line:
            return messages
        text = line.decode().rstrip("\n")
        if text == "":
            if current:
                messages.append(current)
                if stop(current):
                    return messages
            current = {}
        elif text.startswith(":"):
            current.setdefault("comments", []).append(text[1:].strip())
        else:
            name, _, value = text.partition(":")
            current[name] = value[1:] if value.startswith(" ") else value
            if name == "data" and "event" not in current:
                try:
                    current["json"] = json.loads(current["data"])
                except ValueError:
                    pass


def ids_of(messages: list[dict]) -> list[int]:
    return [int(m["id"]) for m in messages if "id" in m]


def ended(run_id: str):
    return lambda m: (
        m.get("json", {}).get("run_id") == run_id
        and m["json"]["kind"]
        in (
            "run.succeeded",
            "run.failed",
        )
    )


def table_ids(store, first: int, last: int) -> list[int]:
    store.flush_sync()
    rows = store.query("SELECT id FROM events WHERE id BETWEEN ? AND ? ORDER BY id", [first, last])
    return [r["id"] for r in rows]


async def test_events_stream_as_committed(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows) as api:
        async with api.session.get(api.url + "/api/events") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            first = await read_messages(resp, lambda m: "retry" in m)
            assert first[0]["retry"] == "1000"
            run_id = await api.start("hello", who="sse")
            got = await read_messages(resp, ended(run_id))
        rows = api.store.query(
            "SELECT id, kind, step_id FROM events WHERE run_id=? ORDER BY id", [run_id]
        )
        assert [(int(m["id"]), m["json"]["kind"]) for m in got] == [
            (r["id"], r["kind"]) for r in rows
        ]
        assert all(m["json"]["id"] == int(m["id"]) for m in got)
        kinds = [m["json"]["kind"] for m in got]
        assert kinds[0] == "run.created" and kinds[-1] == "run.succeeded"
        assert "step.succeeded" in kinds


async def test_resume_after_disconnect_has_no_gap_and_no_duplicate(tmp_path, db_path, workflows):
    # a small ring: the resume reads partly from the table, partly from memory
    sse = SseConfig(poll_interval=0.02, buffer=16, page=7)
    async with running_api(db_path, workflows, sse=sse) as api:
        async with api.session.get(api.url + "/api/events") as resp:
            await read_messages(resp, lambda m: "retry" in m)
            run_id = await api.start("fan")
            seen = 0

            def some(m: dict) -> bool:
                nonlocal seen
                seen += "id" in m
                return seen >= 10

            part1 = await read_messages(resp, some)
        # disconnected: the run goes on without us
        await api.wait_run(run_id)
        last = ids_of(part1)[-1]
        headers = {"Last-Event-ID": str(last)}
        async with api.session.get(api.url + "/api/events", headers=headers) as resp:
            part2 = await read_messages(resp, ended(run_id))
        got = ids_of(part1) + ids_of(part2)
        assert len(got) == len(set(got)), "duplicates"
        assert got == sorted(got)
        assert got == table_ids(api.store, got[0], got[-1]), "gap"
        assert ids_of(part2)[0] == last + 1
        assert len(ids_of(part2)) > sse.buffer  # the catch-up really went past the ring


async def test_after_zero_replays_the_whole_table(tmp_path, db_path, workflows):
    sse = SseConfig(poll_interval=0.02, buffer=8, page=5)
    async with running_api(db_path, workflows, sse=sse) as api:
        run_id = await api.start("fan")
        await api.wait_run(run_id)
        async with api.session.get(api.url + "/api/events", params={"after": "0"}) as resp:
            got = await read_messages(resp, ended(run_id))
        assert ids_of(got) == table_ids(api.store, 1, ids_of(got)[-1])
        assert ids_of(got)[0] == 1


async def test_run_filter(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows, sse=SseConfig(buffer=8, page=3)) as api:
        first = await api.start("quick")
        second = await api.start("hello", who="x")
        await api.wait_run(first)
        await api.wait_run(second)
        params = {"after": "0", "run_id": second}
        async with api.session.get(api.url + "/api/events", params=params) as resp:
            got = await read_messages(resp, ended(second))
        assert {m["json"]["run_id"] for m in got if "json" in m} == {second}
        rows = api.store.query("SELECT id FROM events WHERE run_id=? ORDER BY id", [second])
        assert ids_of(got) == [r["id"] for r in rows]
        status, body = await api.get("/api/events", params={"run_id": "NOT HEX"})
        assert status == 422 and "query.run_id" in body["detail"]


async def test_events_written_by_another_process_appear(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows) as api:
        async with api.session.get(api.url + "/api/events") as resp:
            await read_messages(resp, lambda m: "retry" in m)
            result = await asyncio.to_thread(
                run_cli, "run", str(workflows / "quick.yaml"), "--db", str(db_path), "--json"
            )
            assert result.code == 0, result.stderr
            run_id = result.json()["id"]
            got = await read_messages(resp, ended(run_id))
        assert run_id not in api.engine.runs
        kinds = [m["json"]["kind"] for m in got if m.get("json", {}).get("run_id") == run_id]
        assert kinds[0] == "run.created" and kinds[-1] == "run.succeeded"


async def test_heartbeat_comment_when_idle(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows, sse=SseConfig(heartbeat=0.2)) as api:
        async with api.session.get(api.url + "/api/events") as resp:
            got = await read_messages(resp, lambda m: "keepalive" in m.get("comments", []))
        assert "keepalive" in got[-1]["comments"]


async def test_default_heartbeat_is_15_seconds():
    assert SseConfig().heartbeat == 15.0


async def test_bad_last_event_id_is_422(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows) as api:
        for value in ("abc", "-1", "1.5", "9" * 30):
            status, body = await api.get("/api/events", headers={"Last-Event-ID": value})
            assert status == 422 and "Last-Event-ID" in body["detail"], body
        status, body = await api.get("/api/events", params={"after": "-3"})
        assert status == 422 and "query.after" in body["detail"]


async def test_shutdown_tells_clients_to_reconnect(tmp_path, db_path, workflows):
    async with running_api(db_path, workflows) as api:
        async with api.session.get(api.url + "/api/events") as resp:
            await read_messages(resp, lambda m: "retry" in m)
            stopping = asyncio.create_task(api.server.stop())
            got = await read_messages(resp, lambda m: m.get("event") == "reconnect")
            await stopping
        assert json.loads(got[-1]["data"])["reason"] == "server shutting down"


async def _flood(store, count: int, size: int) -> int:
    """Commit `count` events of about `size` bytes each; returns the last id."""
    blob = json.dumps({"pad": "x" * size})
    for start in range(0, count, 500):
        n = min(500, count - start)
        await store.run(
            lambda db, n=n: db.conn.executemany(
                "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?,?,?,?,?)",
                [(time.time(), None, None, "test.flood", blob)] * n,
            )
        )
        await asyncio.sleep(0.01)
    return store.query("SELECT max(id) AS m FROM events")[0]["m"]


async def follow_with_reconnects(session, url: str, after: int, last: int) -> tuple[list, int]:
    """A well-behaved client: on `reconnect` or EOF it resumes with Last-Event-ID."""
    ids: list[int] = []
    reconnects = 0
    cursor = after
    while cursor < last:
        async with session.get(url, headers={"Last-Event-ID": str(cursor)}) as resp:
            got = await read_messages(
                resp, lambda m: m.get("event") == "reconnect" or int(m.get("id", 0)) >= last, 60
            )
        ids += ids_of(got)
        cursor = ids[-1] if ids else cursor
        reconnects += any(m.get("event") == "reconnect" for m in got)
    return ids, reconnects


async def test_slow_client_is_dropped_memory_stays_bounded(tmp_path, db_path, workflows):
    sse = SseConfig(poll_interval=0.02, buffer=200, page=100, write_timeout=0.5, drop_grace=20)
    async with running_api(db_path, workflows, sse=sse) as api:
        hub = api.state.hub
        start = hub.head
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        port = int(api.url.rsplit(":", 1)[1])
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        await loop.sock_sendall(sock, request)
        while not hub.clients:
            await asyncio.sleep(0.01)
        # a fast client follows the same flood, reconnecting when told to
        fast = asyncio.create_task(
            follow_with_reconnects(api.session, api.url + "/api/events", start, start + 4000)
        )
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max([peak, *(c.buffered() for c in hub.clients)])
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        last = await _flood(api.store, 4000, 2000)  # ~8 MB of events
        assert last == start + 4000
        deadline = time.monotonic() + 30
        while hub.dropped < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        watcher.cancel()
        assert hub.dropped >= 1, "the stalled client was not dropped"
        assert peak < 1024 * 1024, f"server held {peak} bytes for one client"
        assert len(hub._ring) <= sse.buffer
        # the stalled client finally reads: its stream ends with the reconnect event
        data = bytearray()
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 30)
            if not chunk:
                break
            data += chunk
        sock.close()
        tail = bytes(data[-400:]).decode(errors="replace")
        assert "event: reconnect" in tail and "slow client" in tail, tail
        ids, _ = await asyncio.wait_for(fast, 60)
        assert ids == list(range(start + 1, last + 1)), "the reconnecting client saw a gap"
