"""No-op step functions used by the benchmarks."""

import time


async def noop(**kwargs):
    return {}


def mark(path: str):
    """Write the wall-clock time the first step started (for start-up latency)."""
    with open(path, "w") as f:
        f.write(repr(time.time()))
    return {}
