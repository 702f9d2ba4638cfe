"""Keeps the demo alive: starts a new run of one of the examples at a steady pace.

The first runs take the examples in catalog order (so every one runs early), later ones are
drawn by weight. At most `max_active` runs are in flight (runs waiting for a review count), so
an operator who looks away does not come back to a thousand runs; with `limit` the pacer stops
after that many runs and `finished` is set once they have all ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.loader import parse_inputs
from engine.models import RunStatus

if TYPE_CHECKING:
    from console.demo.catalog import Example
    from console.demo.service import RunningService
    from engine.runner import Engine, RunExecution

log = logging.getLogger("flowdeck.demo")

RunEnded = Callable[["Example", "RunExecution", RunStatus], None]


class Pacer:
    """Starts runs of `examples` on `engine` every `interval` seconds (±50 %)."""

    def __init__(
        self,
        engine: Engine,
        examples: list[Example],
        running: RunningService,
        rng: random.Random,
        *,
        interval: float,
        max_active: int,
        limit: int | None = None,
        on_end: RunEnded | None = None,
    ):
        self.engine = engine
        self.examples = examples
        self.running = running
        self.rng = rng
        self.interval = interval
        """Mean seconds between two new runs."""
        self.max_active = max_active
        """Runs in flight at most."""
        self.limit = limit
        """Runs to start in all; None keeps going until stopped."""
        self.on_end = on_end
        """Called on the event loop when a run ends (after its last write is committed)."""
        self.started = 0
        self.ended = 0
        self.statuses: dict[str, int] = {}
        """Ended runs by final status."""
        self.finished = asyncio.Event()
        """Set when `limit` runs have started and all of them have ended."""
        self._room = asyncio.Event()
        self._room.set()
        self._active: dict[str, asyncio.Task[None]] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    def choose(self) -> Example:
        """The example of the next run."""
        n = self.started
        if n < len(self.examples):
            return self.examples[n]
        weights = [e.weight for e in self.examples]
        return self.rng.choices(self.examples, weights=weights)[0]

    async def run(self) -> None:
        """Start runs until `limit` is reached (or forever); cancel the task to stop."""
        while self.limit is None or self.started < self.limit:
            while self.active >= self.max_active:
                self._room.clear()
                await self._room.wait()
            await self.start_one()
            await asyncio.sleep(self.interval * self.rng.uniform(0.5, 1.5))
        if not self._active:
            self.finished.set()

    async def start_one(self) -> RunExecution:
        example = self.choose()
        inputs = parse_inputs(
            example.spec, example.next_inputs(self.rng, self.running), from_cli=False
        )
        run = await self.engine.submit(example.spec, inputs, source=f"demo:{example.path.name}")
        self.started += 1
        self._active[run.run_id] = asyncio.create_task(
            self._watch(example, run), name=f"demo-watch-{run.run_id}"
        )
        return run

    async def _watch(self, example: Example, run: RunExecution) -> None:
        try:
            status = await run.wait()
        finally:
            self._active.pop(run.run_id, None)
            self._room.set()
        self.ended += 1
        self.statuses[status.value] = self.statuses.get(status.value, 0) + 1
        if self.on_end is not None:
            try:
                self.on_end(example, run, status)
            except Exception:  # a reporting problem must not stop the demo
                log.exception("demo: run-end callback failed")
        if self.limit is not None and self.started >= self.limit and not self._active:
            self.finished.set()

    async def stop(self, reason: str = "demo stopped") -> None:
        """Cancel the runs still in flight and wait until they have ended."""
        for run_id in list(self._active):
            self.engine.cancel(run_id, reason)
        watchers = list(self._active.values())
        if watchers:
            await asyncio.wait(watchers, timeout=10)
