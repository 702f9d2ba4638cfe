"""No-op step functions used by the benchmarks."""

import time


async def noop(**kwargs):
    return {}


async def mark(path: str):
    """Write the wall-clock time the first step started (for start-up latency). Async, so it
    runs on the event loop the moment the step starts (a sync function waits for a thread)."""
    with open(path, "w") as f:
        f.write(repr(time.time()))
    return {}
