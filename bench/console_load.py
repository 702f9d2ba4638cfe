"""The console under load: redraws/s, keystroke-to-update latency, CPU share, first paint.

Part 1, live load. A child process runs a real Engine pushing at least `--events` events/s
into a fresh database (runs of a 20-step fan-out/fan-in workflow of no-op python steps,
submitted at a steady pace). This process runs the console under Pilot, attached to the same
file, for `--seconds`, and meanwhile measures:

- redraws/s: snapshots drawn per second (target <= 10);
- keystroke-to-update latency (target p99 <= 100 ms), two kinds, each `--keys` times:
  * open: `enter` on the runs table until the run screen holds that run's data (a new read),
    and "open drawn": until the screen has been painted with it (layout and compositor);
    the cursor is put on a random row of the first ten first, and that move's own repaint is
    let happen before `enter` is pressed (it is not part of `enter`'s answer);
  * approve: `a` on the oldest pending review until it is gone from the screen (a
    compare-and-set write, then a read); pending reviews are added by the benchmark; the
    focus is moved to the review queue first and that move's repaint let happen, as for
    the cursor move before `enter`;
- CPU share of this process (console + harness) and of the engine process, per core.

Part 2, first paint: a database with `--runs` runs (default 100,000; 4 steps each, 10 events
each) is built directly with SQL; the time from starting the app to its first drawn snapshot
(runs table, counts, reviews, undo, events and analytics read) is measured `--repeat` times.

    python bench/console_load.py [--seconds 20] [--events 1000] [--runs 100000] [--think 300]

`--think MS` waits between moving the cursor and pressing `enter`, as a person reading the
row does (the run under the cursor is read meanwhile); 0, the default, presses at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import psutil  # noqa: E402

from engine.store import Store  # noqa: E402

STEPS = 20


# --------------------------------------------------------------------------- engine child


def spec_doc() -> dict:
    steps: dict = {"start": {"agent": "py", "with": {"call": "_noop:noop"}}}
    for i in range(STEPS - 2):
        steps[f"work{i:02d}"] = {"agent": "py", "needs": ["start"], "with": {"call": "_noop:noop"}}
    steps["end"] = {
        "agent": "py",
        "needs": [f"work{i:02d}" for i in range(STEPS - 2)],
        "with": {"call": "_noop:noop"},
    }
    return {"name": "load", "agents": {"py": {"kind": "python"}}, "steps": steps}


async def engine_child(db: str, seconds: float, events_per_s: float) -> None:
    from engine.models import WorkflowSpec
    from engine.runner import Engine

    spec = WorkflowSpec.model_validate(spec_doc())
    per_run = 2 * STEPS + 3  # running + succeeded per step, created/running/succeeded per run
    runs_per_s = events_per_s / per_run
    store = Store.open(db)
    engine = Engine(store, max_concurrency=256)
    await engine.start()
    start = time.monotonic()
    submitted = 0
    pending: set = set()
    try:
        while time.monotonic() - start < seconds:
            due = int((time.monotonic() - start) * runs_per_s) + 1
            while submitted < due:
                run = await engine.submit(spec)
                pending.add(asyncio.ensure_future(run.wait()))
                submitted += 1
            pending = {t for t in pending if not t.done()}
            await asyncio.sleep(0.01)
        if pending:
            await asyncio.wait(pending, timeout=10)
    finally:
        await engine.aclose()
        store.close()
    print(json.dumps({"runs": submitted}), flush=True)


# --------------------------------------------------------------------------- helpers


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def add_pending_reviews(store: Store, n: int) -> None:
    now = time.time()
    store.run_sync(
        lambda db: db.conn.executemany(
            "INSERT INTO reviews(run_id, step_id, status, created_at, params, reason) "
            "VALUES (?, ?, 'pending', ?, '{}', 'bench')",
            [(f"bench{i:04d}", "gate", now - 1000 + i) for i in range(n)],
        )
    )


async def wait_until(predicate, timeout: float = 10.0) -> float:
    """Seconds until `predicate()` holds, checked every 2 ms on the event loop."""
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("no update within the timeout")
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- part 1


async def live_load(args: argparse.Namespace, tmp: Path) -> dict:
    from textual.screen import Screen

    from console.app import FlowdeckApp
    from console.screens.run import RunScreen
    from widgets.review_panel import ReviewPanel
    from widgets.runs_table import RunsTable

    paint = Screen._compositor_refresh

    paints = [0]

    def painted(screen: Screen) -> None:
        paint(screen)
        paints[0] += 1
        screen._bench_painted_view = getattr(screen, "view", None)  # type: ignore[attr-defined]

    Screen._compositor_refresh = painted  # type: ignore[method-assign]

    db = tmp / "load.db"
    Store.open(db).close()
    child = subprocess.Popen(
        [sys.executable, __file__, "--engine-child", str(db), str(args.seconds + 4), str(args.events)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    engine_proc = psutil.Process(child.pid)
    store = Store.open(db)
    add_pending_reviews(store, args.keys + 5)
    app = FlowdeckApp(store, analytics=None if args.no_analytics else "default")
    me = psutil.Process()
    open_lat: list[float] = []
    drawn_lat: list[float] = []
    approve_lat: list[float] = []
    try:
        async with app.run_test(size=(160, 48)):
            await wait_until(lambda: app.snapshot is not None and len(app.snapshot.runs) > 3, 30)
            await asyncio.sleep(1.0)
            first_event = (
                store.read(lambda d: d.execute("SELECT max(id) FROM events").fetchone()[0]) or 0
            )
            redraws0, cpu0, eng0 = app.redraws, me.cpu_times(), engine_proc.cpu_times()
            t0 = time.perf_counter()
            deadline = t0 + args.seconds
            rng = random.Random(1)
            while time.perf_counter() < deadline:
                # open a run: enter -> the run screen shows that run
                table = app.screen.query_one(RunsTable)
                before = paints[0]
                table.move_cursor(row=rng.randrange(min(10, table.row_count)))
                run_id = table.current_key
                # The harness moved the cursor (a keystroke of its own): let its repaint
                # happen before `enter`, as it has when a person presses the next key.
                try:
                    await wait_until(lambda before=before: paints[0] > before, 0.2)
                except TimeoutError:  # the cursor stayed on its row: nothing to paint
                    pass
                if args.think:  # a person reads the highlighted row before pressing enter
                    await asyncio.sleep(args.think / 1000)

                def opened(run_id=run_id) -> bool:
                    s = app.screen
                    return (
                        isinstance(s, RunScreen) and s.view is not None and s.view.run.id == run_id
                    )

                def drawn(run_id=run_id) -> bool:
                    view = getattr(app.screen, "_bench_painted_view", None)
                    return view is not None and view.run.id == run_id

                t_key = time.perf_counter()
                app.simulate_key("enter")
                open_lat.append(await wait_until(opened))
                await wait_until(drawn)
                drawn_lat.append(time.perf_counter() - t_key)
                app.simulate_key("escape")
                await wait_until(lambda: not isinstance(app.screen, RunScreen))
                await asyncio.sleep(0.1)
                # approve the oldest pending review from the overview panel
                if len(approve_lat) < args.keys:
                    panel = app.screen.query_one(ReviewPanel)
                    before = paints[0]
                    panel.table.focus()
                    await wait_until(lambda panel=panel: app.focused is panel.table)
                    # The harness moved the focus (a keystroke of its own, `tab` for a
                    # person): its repaint happens before `a`, as for the cursor move.
                    try:
                        await wait_until(lambda before=before: paints[0] > before, 0.2)
                    except TimeoutError:
                        pass
                    oldest = panel.selected
                    if oldest is not None:

                        def gone(rid=oldest.id, panel=panel) -> bool:
                            return all(r.id != rid for r in panel._reviews)

                        app.simulate_key("a")
                        try:
                            approve_lat.append(await wait_until(gone))
                        except TimeoutError:
                            row = store.query("SELECT status FROM reviews WHERE id=?", [oldest.id])
                            workers = [(w.name, w.state.name) for w in app.workers]
                            raise TimeoutError(
                                f"review {oldest.id} still shown ({row}); focus {app.focused}, "
                                f"polls {app.feed.polls} posted {app.feed.posted} drawn "
                                f"{app.redraws}, workers {workers}"
                            ) from None
                    app.screen.query_one(RunsTable).focus()
                await asyncio.sleep(0.2)
            wall = time.perf_counter() - t0
            redraws = app.redraws - redraws0
            cpu1, eng1 = me.cpu_times(), engine_proc.cpu_times()
            last_event = (
                store.read(lambda d: d.execute("SELECT max(id) FROM events").fetchone()[0]) or 0
            )
    finally:
        child.wait(timeout=60)
        store.close()
    return {
        "seconds": wall,
        "events_per_s": (last_event - first_event) / wall,
        "redraws_per_s": redraws / wall,
        "open_ms": [x * 1000 for x in open_lat],
        "open drawn_ms": [x * 1000 for x in drawn_lat],
        "approve_ms": [x * 1000 for x in approve_lat],
        "console_cpu": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall,
        "engine_cpu": ((eng1.user + eng1.system) - (eng0.user + eng0.system)) / wall,
    }


# --------------------------------------------------------------------------- part 2


def build_big_db(path: Path, runs: int) -> None:
    Store.open(path).close()  # schema
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    spec = json.dumps({"name": "big", "steps": {f"s{i}": {} for i in range(4)}})
    t0 = 1_700_000_000.0
    statuses = ["succeeded"] * 17 + ["failed", "cancelled"]
    with conn:
        for start in range(0, runs, 10_000):
            batch = range(start, min(runs, start + 10_000))
            conn.executemany(
                "INSERT INTO runs(id, workflow, spec, status, created_at, started_at, ended_at, "
                "steps_total) VALUES (?, ?, ?, ?, ?, ?, ?, 4)",
                [
                    (f"r{i:08x}", f"wf{i % 7}", spec, statuses[i % len(statuses)],
                     t0 + i * 30, t0 + i * 30 + 1, t0 + i * 30 + 9)
                    for i in batch
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO steps(run_id, step_id, status, depth, needs, attempt, max_attempts, "
                "started_at, ended_at, duration_ms) VALUES (?, ?, 'succeeded', ?, '[]', 1, 1, ?, ?, 2000)",
                [
                    (f"r{i:08x}", f"s{k}", k, t0 + i * 30 + k * 2, t0 + i * 30 + k * 2 + 2)
                    for i in batch
                    for k in range(4)
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO attempts(run_id, step_id, number, agent, status, started_at, ended_at, "
                "duration_ms) VALUES (?, ?, 1, ?, 'succeeded', ?, ?, ?)",
                [
                    (f"r{i:08x}", f"s{k}", f"agent{k}", t0 + i * 30 + k * 2, t0 + i * 30 + k * 2 + 2,
                     100 + (i * 7 + k) % 900)
                    for i in batch
                    for k in range(4)
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?, ?, ?, ?, '{}')",
                [
                    (t0 + i * 30 + e, f"r{i:08x}", None if e in (0, 9) else f"s{e % 4}", kind)
                    for i in batch
                    for e, kind in enumerate(
                        ["run.created"] + ["step.running", "step.succeeded"] * 4 + ["run.succeeded"]
                    )
                ],
            )  # fmt: skip
    conn.close()


async def first_paint(path: Path) -> float:
    from console.app import FlowdeckApp

    store = Store.open(path)
    try:
        t0 = time.perf_counter()
        app = FlowdeckApp(store)
        async with app.run_test(size=(160, 48)):
            await wait_until(lambda: app.redraws >= 1, 60)
            elapsed = time.perf_counter() - t0
        return elapsed
    finally:
        store.close()


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--engine-child":
        asyncio.run(engine_child(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="length of the live load")
    p.add_argument("--events", type=float, default=1000.0, help="engine events per second")
    p.add_argument("--keys", type=int, default=40, help="approvals to time")
    p.add_argument("--runs", type=int, default=100_000, help="runs in the first-paint database")
    p.add_argument("--repeat", type=int, default=3, help="first-paint measurements")
    p.add_argument("--no-analytics", action="store_true", help="console without analytics")
    p.add_argument(
        "--think", type=float, default=0.0,
        help="ms between moving the cursor and pressing enter (0: at once)",
    )  # fmt: skip
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-paint", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_load:
            r = asyncio.run(live_load(args, tmp))
            print(f"live load over {r['seconds']:.1f} s")
            print(
                f"  engine events/s into the DB   {r['events_per_s']:8.0f}   (target >= {args.events:.0f})"
            )
            print(f"  console redraws/s             {r['redraws_per_s']:8.1f}   (target <= 10)")
            for name in ("open", "open drawn", "approve"):
                ms = r[f"{name}_ms"]
                if ms:
                    print(
                        f"  keystroke->update {name:<10} p50 {percentile(ms, 50):6.1f} ms   "
                        f"p99 {percentile(ms, 99):6.1f} ms   max {max(ms):6.1f} ms   (n={len(ms)}, target p99 <= 100)"
                    )
            print(
                f"  console process CPU           {r['console_cpu'] * 100:8.1f} % of one core (Pilot harness included)"
            )
            print(f"  engine process CPU            {r['engine_cpu'] * 100:8.1f} % of one core")
        if not args.skip_paint:
            path = tmp / "big.db"
            t = time.perf_counter()
            build_big_db(path, args.runs)
            size = os.path.getsize(path) / 1e6
            print(
                f"first paint on {args.runs} runs ({size:.0f} MB, built in {time.perf_counter() - t:.0f} s)"
            )
            times = [asyncio.run(first_paint(path)) for _ in range(args.repeat)]
            print(
                f"  app start -> first drawn snapshot  median {statistics.median(times) * 1000:6.0f} ms"
                f"   max {max(times) * 1000:6.0f} ms   (target <= 1000)"
            )


if __name__ == "__main__":
    main()
