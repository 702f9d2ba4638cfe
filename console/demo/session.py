"""One demo session: the demo service, the engine on a demo DB, the pacer and the simulated
operator, started together on one event loop and stopped together.

```python
async with DemoSession(DemoOptions(runs=5, fast=True), Path("demo.db")) as demo:
    await demo.pacer.finished.wait()
```

Stopping (leaving the `async with`, or `await stop()`) stops starting runs, stops the operator,
cancels the runs still in flight (their shell steps' process groups are killed), closes the
engine, the service and the store; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from console.demo.autopilot import Autopilot, Habits
from console.demo.catalog import Example, load_examples
from console.demo.pacing import Pacer
from console.demo.service import (
    OutageConfig,
    RunningService,
    Script,
    ScriptedResponse,
    ServiceConfig,
    start_service,
)
from engine.models import RunStatus
from engine.runner import Engine
from engine.store import Store

if TYPE_CHECKING:
    from engine.runner import RunExecution


@dataclass
class DemoOptions:
    """How a demo session behaves. `fast` shortens every wait (latency, pace, outage, the
    operator's thinking time) for tests and CI; `seed` makes the choices repeatable."""

    seed: int = 7
    """Seeds the service's faults, the choice of workflows and inputs, and the operator."""
    fast: bool = False
    """Short latencies, a quick pace and an early, short outage."""
    runs: int | None = None
    """Runs to start in all (headless); None keeps starting runs until stopped."""
    interval: float | None = None
    """Mean seconds between two new runs (default: 2.5, or 0.3 when fast)."""
    max_active: int | None = None
    """Runs in flight at most (default: 10, or 6 when fast)."""
    autopilot: bool = True
    """Run the simulated operator."""
    habits: Habits | None = None
    """The simulated operator's habits (default: quick in headless mode, leisurely in the
    console, so a person sees the pending reviews and can decide them first)."""
    max_concurrency: int = 64
    """Steps at once across the engine."""
    outage: bool = True
    """Schedule the outage of the chat service."""

    def pace(self) -> tuple[float, int]:
        interval = self.interval if self.interval is not None else (0.3 if self.fast else 2.5)
        max_active = self.max_active if self.max_active is not None else (6 if self.fast else 10)
        return interval, max_active

    def service_config(self) -> ServiceConfig:
        """The demo service: a long latency tail, a few faults, chat going down now and then."""
        if self.fast:
            outage = OutageConfig(service="chat", every=40.0, duration=2.0, offset=1.5)
        else:
            outage = OutageConfig(service="chat", every=90.0, duration=20.0, offset=30.0)
        return ServiceConfig(
            seed=self.seed,
            latency_scale=0.15 if self.fast else 1.0,
            error_rate=0.02,
            rate_limit_rate=0.03,
            retry_after=0.3 if self.fast else 1.0,
            llm_malformed_rate=0.02,
            outage=outage if self.outage else None,
            pull_requests=300,
        )


OPENING_HICCUPS = [
    Script(
        path_prefix="/v1/chat/completions",
        responses=[ScriptedResponse(status=429, retry_after=0.3)],
    ),
    Script(path_prefix="/tracker/issues", method="POST", responses=[ScriptedResponse(status=500)]),
]
"""Faults the service answers first, so retries show in the very first runs (then the random
error and rate-limit rates take over)."""

FAST_HABITS = Habits(delay=(0.1, 0.8), undo_delay=(0.1, 0.5), poll=0.1)
"""The simulated operator in a hurry (`--fast`)."""

RunEnded = Callable[[Example, "RunExecution", RunStatus], None]


@dataclass
class DemoSession:
    """Everything `flowdeck demo` runs, in the current event loop."""

    options: DemoOptions
    db_path: Path
    running: RunningService | None = None
    store: Store | None = None
    engine: Engine | None = None
    examples: list[Example] = field(default_factory=list)
    pacer: Pacer | None = None
    autopilot: Autopilot | None = None
    on_end: list[RunEnded] = field(default_factory=list)
    """Called when a run ends (the operator's undo habit, headless progress lines)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: bool = False

    async def start(self) -> None:
        opts = self.options
        try:
            self.running = await start_service(opts.service_config(), separate_ports=True)
            for script in OPENING_HICCUPS:
                self.running.service.add_script(script)
            self.examples = load_examples(self.running)
            self.store = await asyncio.to_thread(Store.open, self.db_path)
            self.engine = Engine(self.store, max_concurrency=opts.max_concurrency)
            await self.engine.start()
        except BaseException:
            await self.stop()
            raise
        rng = random.Random(opts.seed)
        if opts.autopilot:
            habits = opts.habits or (FAST_HABITS if opts.fast else Habits())
            self.autopilot = Autopilot(self.engine, random.Random(opts.seed + 1), habits)
            self.on_end.insert(0, self.autopilot.on_run_end)
            self._tasks.append(asyncio.create_task(self.autopilot.run(), name="demo-operator"))
        interval, max_active = opts.pace()
        self.pacer = Pacer(
            self.engine,
            self.examples,
            self.running,
            rng,
            interval=interval,
            max_active=max_active,
            limit=opts.runs,
            on_end=self._ended,
        )
        self._tasks.append(asyncio.create_task(self.pacer.run(), name="demo-pacer"))

    def _ended(self, example: Example, run: RunExecution, status: RunStatus) -> None:
        for callback in self.on_end:
            callback(example, run, status)

    async def wait(self) -> None:
        """Until the pacer's `runs` have all ended; a failure of the pacer or of the operator
        is raised here."""
        assert self.pacer is not None
        finished = asyncio.create_task(self.pacer.finished.wait())
        watched = {finished, *self._tasks}
        try:
            while not finished.done():
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {finished}:
                    watched.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
        finally:
            finished.cancel()

    async def stop(self) -> None:
        """Stop everything; safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pacer is not None:
            await self.pacer.stop()
        if self.engine is not None:
            await self.engine.aclose()
        if self.running is not None:
            await self.running.stop()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def __aenter__(self) -> DemoSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
