"""A fake clock for engine tests: `Engine(clock=fake, sleep=fake.sleep)`."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Seconds that only move when told to: `advance(s)`, or a backoff `sleep(s)`.

    `sleeps` records every wait the engine asked for, so tests can check backoff and
    Retry-After without waiting for real.
    """

    def __init__(self, start: float = 1_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
