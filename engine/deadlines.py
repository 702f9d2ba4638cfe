"""Per-attempt timeouts with one loop timer per engine.

`asyncio.timeout` schedules, and then cancels, one timer handle per use; with thousands of short
steps that was a large share of the runner's own cost. `Deadlines` keeps the deadlines of the
attempts under way in a heap with one loop timer for the earliest; an attempt that ends in time
only marks its entry ended (ended entries are dropped when they reach the top of the heap, or
in one sweep when they are most of it).

On expiry the attempt's task is cancelled, and leaving `async with deadlines.after(s):` turns
that cancellation into `TimeoutError`, with the same rules as `asyncio.timeout`: a cancellation
requested by anyone else stays a `CancelledError`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from types import TracebackType

SWEEP_AT = 512
"""Ended entries tolerated in the heap before a sweep (when they are also most of it)."""


class Deadline:
    """One attempt's deadline; an async context manager (see the module docstring)."""

    __slots__ = ("active", "cancelling", "expired", "owner", "task", "when")

    def __init__(self, owner: Deadlines, when: float, task: asyncio.Task):
        self.owner = owner
        self.when = when
        """Loop time (`loop.time()`) of the deadline."""
        self.task = task
        self.cancelling = task.cancelling()
        self.active = True
        self.expired = False

    async def __aenter__(self) -> Deadline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave(exc)

    def leave(self, exc: BaseException | None = None) -> None:
        """End the deadline as leaving `async with` does (with the exception raised inside, if
        any): raises TimeoutError if it expired and cancelled the task. For callers that avoid
        the two coroutines of `async with` on a hot path."""
        self.active = False
        if self.expired:
            if self.task.uncancel() <= self.cancelling and type(exc) is asyncio.CancelledError:
                raise TimeoutError from exc
        else:
            self.owner._ended()


class Deadlines:
    """The deadlines of one event loop's attempts (one per engine)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf
        self._stale = 0

    def __len__(self) -> int:
        """Entries in the heap (ended ones included until they are dropped)."""
        return len(self._heap)

    def after(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now for the current task: `async with d.after(s): ...`."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.after() must be used inside a task")
        when = loop.time() + seconds
        deadline = Deadline(self, when, task)
        heapq.heappush(self._heap, (when, next(self._seq), deadline))
        if when < self._due:
            self._arm(loop, when)
        return deadline

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._due = math.inf
        now = loop.time()
        heap = self._heap
        while heap:
            when, _, deadline = heap[0]
            if deadline.active:
                if when > now:
                    break
                deadline.expired = True
                deadline.task.cancel()
            else:
                self._stale -= 1
            heapq.heappop(heap)
        if heap:
            self._arm(loop, heap[0][0])

    def _ended(self) -> None:
        self._stale += 1
        heap = self._heap
        if self._stale > SWEEP_AT and self._stale * 2 > len(heap):
            heap[:] = [item for item in heap if item[2].active]
            heapq.heapify(heap)
            self._stale = 0
