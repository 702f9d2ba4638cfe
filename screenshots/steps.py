"""Python steps used by the screenshot workflows (imported as `steps:NAME` by make.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

HELD: dict[str, asyncio.Event] = {}
"""Steps named here keep running until their event is set (the run in progress)."""


async def work(name: str, ms: float = 40.0, **kwargs: Any) -> dict[str, Any]:
    """Stands in for a data job: takes a little while, returns a small report."""
    await asyncio.sleep(random.uniform(0.5, 1.5) * ms / 1000)
    event = HELD.get(name)
    if event is not None:
        await event.wait()
    return {"job": name, "rows": random.randint(100, 5000), **kwargs}


async def summary(**parts: Any) -> dict[str, Any]:
    """Fan-in of the jobs above."""
    return {"parts": len(parts), "ok": True}
