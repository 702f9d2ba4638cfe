"""The live feed: one thread that follows the database and posts coalesced snapshots.

`LiveFeed.run()` is the body of one long-lived thread worker, so two polls never overlap. Each
turn costs one `PRAGMA data_version` when nothing changed; when something did (another process
committed, or the UI asked for other data through `request`), it reads one consistent
`Snapshot` (engine/views.py) and posts `SnapshotReady`. Posts are spaced at least
`1 / max_rate` seconds apart and a newer `SnapshotReady` replaces an older one still queued
(`can_replace`), so the UI draws at most `max_rate` times a second and always the newest state.
An operator action calls `wake()` so its effect shows without waiting for the next turn; that
poll is quick (opening a run reads only that run, analytics due wait for the next turn), and its
snapshot says it `answer`s (the app draws it at once; live ones may wait behind a keystroke,
whose polls also leave analytics out, `hold_analytics`). With nothing new, the last snapshot is
re-posted with a fresh clock once a second (countdowns).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from textual.message import Message

from engine.errors import DatabaseError
from engine.store import Store
from engine.views import Snapshot, SnapshotReader, SnapshotRequest, default_analytics


class SnapshotReady(Message):
    """A new snapshot of the database; a newer one queued behind it replaces it."""

    def __init__(self, snapshot: Snapshot, *, answer: bool = False):
        super().__init__()
        self.snapshot = snapshot
        """What to show."""
        self.answer = answer
        """Read at once for an operator's action or a move to another screen (drawn at
        once); else live data, which may wait while a keystroke is being answered."""

    def can_replace(self, message: Message) -> bool:
        if isinstance(message, SnapshotReady):
            message.answer = self.answer = message.answer or self.answer  # either answers
            return True
        return False


class FeedFailed(Message):
    """Reading the database failed (the feed keeps trying)."""

    def __init__(self, error: str):
        super().__init__()
        self.error = error
        """One line saying what went wrong."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FeedFailed)


class LiveFeed:
    """Follows a store and hands snapshots to `post`."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 0.25,
        max_rate: float = 10.0,
        tick: float = 1.0,
        analytics: Any = "default",
    ):
        self.store = store
        self.clock = clock
        self.interval = interval
        """Seconds between two looks at the database."""
        self.min_gap = 1.0 / max_rate
        """Least seconds between two posted snapshots."""
        self.tick = tick
        """Seconds after which an unchanged snapshot is re-posted with a fresh clock."""
        self.analytics_fn = default_analytics() if analytics == "default" else analytics
        """Computes the analytics of a snapshot (None: none)."""
        self.analytics_every = 3.0
        """Seconds between two analytics computations."""
        # The first snapshot is read with its analytics; later ones are computed in a thread
        # of their own (`_follow_analytics`), so that a poll answering an operator never
        # waits behind tens of milliseconds of analytics.
        self.reader = SnapshotReader(store.read, analytics=self.analytics_fn)
        self._analytics: Any = None
        self._analytics_new = False
        self.polls = 0
        """Looks at the database so far."""
        self.posted = 0
        """Snapshots posted so far."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._urgent = False
        self._calm_until = 0.0
        self.started = threading.Event()
        """Set when `run()` has begun."""
        self.finished = threading.Event()
        """Set when `run()` has returned (no read of the store is under way any more)."""

    @property
    def request(self) -> SnapshotRequest:
        return self.reader.request

    def update(self, *, urgent: bool = True, **changes: Any) -> None:
        """Change what the snapshots hold; read at once (`urgent`) or at the next turn."""
        request = dataclasses.replace(self.reader.request, **changes)
        if request == self.reader.request:
            return
        self.reader.request = request
        if urgent:
            self.wake()

    def wake(self, *, urgent: bool = True) -> None:
        """Poll now instead of at the next turn. `urgent` (an operator action or a move to
        another screen) also skips the spacing of posts once, so the answer shows at once."""
        self._urgent = self._urgent or urgent
        self._wake.set()

    def hold_analytics(self, seconds: float) -> None:
        """Leave analytics (the costliest read, tens of milliseconds of this process's time)
        out of the polls of the next `seconds`: a keystroke is being answered."""
        self._calm_until = max(self._calm_until, time.monotonic() + seconds)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self, post: Callable[[Message], Any], cancelled: Callable[[], bool]) -> None:
        """Poll until `stop()` or `cancelled()`; call from one dedicated thread (analytics are
        computed in a second one, started and joined here)."""
        self.started.set()
        done = threading.Event()
        helper: threading.Thread | None = None
        try:
            if self.analytics_fn is not None:
                helper = threading.Thread(
                    target=self._follow_analytics,
                    args=(lambda: done.is_set() or cancelled(),),
                    name="flowdeck analytics",
                    daemon=True,
                )
                helper.start()
            self._poll_loop(post, cancelled)
        finally:
            done.set()
            if helper is not None:
                helper.join(10)
            self.finished.set()

    def _follow_analytics(self, finished: Callable[[], bool]) -> None:
        fn = self.analytics_fn
        assert fn is not None
        while self.reader.last is None and not finished():  # the first poll computes them
            self._stop.wait(0.05)
        self._analytics = self.reader.last.analytics if self.reader.last else None
        self.reader.analytics_fn = None
        due = time.monotonic() + self.analytics_every
        while not finished():
            now = time.monotonic()
            wait = max(due - now, self._calm_until - now)  # not while a key is being answered
            if wait > 0:
                self._stop.wait(min(wait, 0.25))
                continue
            try:
                self._analytics = self.store.read(lambda db: fn(db, self.clock()))
            except Exception:  # the feed reports a database it cannot read
                pass
            else:
                self._analytics_new = True
                self.wake(urgent=False)
            due = time.monotonic() + self.analytics_every

    def _poll_loop(self, post: Callable[[Message], Any], cancelled: Callable[[], bool]) -> None:
        last_post = float("-inf")
        while not (self._stop.is_set() or cancelled()):
            self._wake.clear()
            urgent, self._urgent = self._urgent, False
            if not urgent:
                left = self.min_gap - (time.monotonic() - last_post)
                if left > 0 and self._stop.wait(left):
                    break
            snapshot: Snapshot | None = None
            before = self.reader.last
            try:
                quick = urgent or time.monotonic() < self._calm_until
                snapshot = self.reader.poll(self.clock(), quick=quick)
                self.polls += 1
            except DatabaseError as e:
                post(FeedFailed(str(e)))
            except Exception as e:  # never let the feed die silently
                post(FeedFailed(f"{type(e).__name__}: {e}"))
            # A quick poll may read only the run the request moved to and keep the rest; the
            # action an urgent poll answers may have changed the rest: then read it too.
            partial = (
                urgent
                and snapshot is not None
                and before is not None
                and snapshot is not before
                and snapshot.run_counts is before.run_counts  # kept, not read again
            )
            last = self.reader.last
            fresh, self._analytics_new = self._analytics_new, False
            if snapshot is None and last is not None:
                if urgent or fresh:  # nothing newer than the last snapshot: that one answers
                    snapshot = last
                elif time.monotonic() - last_post >= self.tick:
                    snapshot = dataclasses.replace(last, now=self.clock())
            if snapshot is not None and self.reader.analytics_fn is None and self.analytics_fn:
                snapshot = dataclasses.replace(snapshot, analytics=self._analytics)
            if snapshot is not None:
                post(SnapshotReady(snapshot, answer=urgent))
                self.posted += 1
                last_post = time.monotonic()
                if partial:
                    self._urgent = True
                    continue
            self._wake.wait(self.interval)
