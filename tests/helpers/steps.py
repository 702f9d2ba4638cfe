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
