"""The live feed: polls never overlap, snapshots are spaced and replace each other, and the
console keeps up with a database another writer changes all the time."""

from __future__ import annotations

import itertools
import threading
import time

from console.live import LiveFeed, SnapshotReady
from engine.store import Store
from engine.views import Snapshot


def test_a_newer_snapshot_replaces_a_queued_one():
    a, b = SnapshotReady(Snapshot(now=1, version=1)), SnapshotReady(Snapshot(now=2, version=2))
    assert a.can_replace(b)


def test_feed_polls_one_at_a_time_and_posts_at_most_max_rate(store, db_path):
    stop = threading.Event()

    def writer() -> None:  # another process's engine: commits all the time
        other = Store.open(db_path)
        try:
            while not stop.is_set():
                other.run_sync(
                    lambda db: db.execute(
                        "INSERT INTO events(ts, kind, data) VALUES (?, 'tick', '{}')", [time.time()]
                    )
                )
        finally:
            other.close()

    feed = LiveFeed(Store.open(db_path), interval=0.01, max_rate=10, analytics=None)
    inside = 0
    most = 0
    lock = threading.Lock()
    poll = feed.reader.poll

    def counted(now: float, **kw):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            return poll(now, **kw)
        finally:
            with lock:
                inside -= 1

    feed.reader.poll = counted  # type: ignore[method-assign]
    posted: list[float] = []
    w = threading.Thread(target=writer)
    w.start()
    runner = threading.Thread(
        target=feed.run,
        args=(
            lambda m: posted.append(time.monotonic()) if isinstance(m, SnapshotReady) else None,
            lambda: False,
        ),
    )
    start = time.monotonic()
    runner.start()
    time.sleep(1.5)
    feed.stop()
    runner.join(10)
    elapsed = time.monotonic() - start
    stop.set()
    w.join(10)
    feed.store.close()
    assert most == 1
    assert len(posted) >= 2
    assert len(posted) <= elapsed * 10 + 1
    gaps = [b - a for a, b in itertools.pairwise(posted)]
    assert (
        min(gaps) >= 0.099
    )  # spaced by 1 / max_rate (a lower bound: a slow machine only widens it)


def test_an_urgent_wake_skips_the_spacing_once(store, db_path):
    feed = LiveFeed(Store.open(db_path), interval=5, max_rate=0.2, analytics=None)
    posted: list[SnapshotReady] = []
    runner = threading.Thread(target=feed.run, args=(posted.append, lambda: False))
    runner.start()
    try:
        for _ in range(200):
            if posted:
                break
            time.sleep(0.01)
        feed.update(runs_filter="x")  # an operator typed in the filter: read and post now
        for _ in range(500):
            if len(posted) >= 2:
                break
            time.sleep(0.01)
        assert len(posted) == 2 and posted[1].snapshot is not posted[0].snapshot
    finally:
        feed.stop()
        runner.join(10)
        feed.store.close()
