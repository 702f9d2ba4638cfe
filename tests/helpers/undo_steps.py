"""Python steps and undo handlers used by the undo tests (imported by dotted name)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from engine.agents.python import register_undo_handler


def remove_file(path: str) -> dict:
    """A destructive python step: delete a file, returning what it held."""
    p = Path(path)
    content = p.read_text()
    p.unlink()
    return {"path": path, "content": content}


@register_undo_handler("restore_file")
def restore_file(params: dict, output: dict, before: object) -> dict:
    """Undo of `remove_file`: write the file back from the step's output."""
    Path(params["args"]["path"]).write_text(output["content"])
    return {"restored": params["args"]["path"]}


def peek_undo_log(db: str, step: str) -> dict:
    """Read, from another connection, the undo entry of `step` while the action runs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT id, status FROM undo_log WHERE step_id = ? ORDER BY id DESC LIMIT 1", [step]
        ).fetchone()
    finally:
        conn.close()
    return {"id": row[0], "status": row[1]} if row else {"id": None, "status": None}


def delete_then_hang(url: str, marker: str, hang: float = 60.0) -> dict:
    """DELETE `url` (a 404 means an earlier attempt already did), then, the first time only,
    write `marker` and hang: the test kills the process while the step looks unfinished."""
    req = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        body = {"already": "deleted"}
    m = Path(marker)
    if not m.exists():
        m.write_text(str(os.getpid()))
        time.sleep(hang)
    return body


async def wait_for_file(path: str, timeout: float = 60.0) -> dict:
    """Wait until `path` exists (a step the test keeps running while it does other things)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.02)
    return {"seen": path}


async def delete_then_wait(url: str, gate: str, timeout: float = 60.0) -> dict:
    """DELETE `url`, then wait for `gate` to exist: a destructive action still in flight."""
    import aiohttp

    async with aiohttp.ClientSession() as s, s.delete(url) as resp:
        body = await resp.json()
        if resp.status >= 400:
            raise RuntimeError(f"DELETE {url}: {resp.status}")
    await wait_for_file(gate, timeout)
    return body
