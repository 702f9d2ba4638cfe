"""Python step callables used by tests (imported by dotted name from workflow specs)."""

from __future__ import annotations

import asyncio
import time

CALLS: list[str] = []


async def noop(**kwargs):
    return {"ok": True, **kwargs}


async def record(name: str, delay: float = 0.0, **kwargs):
    CALLS.append(name)
    if delay:
        await asyncio.sleep(delay)
    return {"name": name}


def blocking(seconds: float = 0.2):
    time.sleep(seconds)
    return {"slept": seconds}


async def boom(message: str = "boom"):
    raise RuntimeError(message)


async def echo(value=None, **kwargs):
    return {"value": value, **kwargs}


async def sleep(seconds: float = 30.0):
    await asyncio.sleep(seconds)
    return {"slept": seconds}


async def append_line(path: str, text: str = "x", delay: float = 0.0):
    """A side effect that dies with its process: wait, then append one line to `path`."""
    if delay:
        await asyncio.sleep(delay)
    with open(path, "a") as f:
        f.write(text + "\n")
    return {"appended": text}


async def until_file(path: str, poll: float = 0.02):
    """Wait until `path` exists (a step a test releases by creating the file)."""
    import os

    while not os.path.exists(path):
        await asyncio.sleep(poll)
    return {"released": path}
