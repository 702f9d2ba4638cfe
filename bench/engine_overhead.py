"""Engine overhead per step, against bare asyncio, measured in one process.

Shapes: layered DAGs LxW (L layers of W no-op python steps, each step needing every step of the
layer before) and a chain of 200. For each shape:

- bare:     asyncio.gather layer by layer (no engine, no store)
- bare+db:  the same plus one batched sqlite3 insert per state change, committed per layer
- engine:   the real Engine with the real Store (every state change persisted, WAL): rows
            written by the store's writer process beside the loop (the default)
- thread-w: the same with the writer thread writing them (`FLOWDECK_WRITER=thread`)

Prints wall time, µs/step overhead over bare asyncio, steps/s, the ratio engine/bare+db,
peak RSS, and the time from process start to the first step of `flowdeck run` (a subprocess).
For 50x20 it splits the engine's time into creating the run (its rows committed), running the
steps, and the wait from the last step to everything committed. Also SQLite's own share: the
rows a real 50x20 run queued, written again in this process by the writer's code (no loop, no
pipe, no second process); the writer process does that work beside the loop.

Other writers: another process writes a small row every 20 ms while the engine runs 20-step
no-op runs back to back, against the same with the engine idle (the writer process must not
keep the write lock from an operator's approval).

Retry scheduling: the 50x20 shape with `retry: {attempts: 1}` against `retry: {attempts: 4,
backoff: exponential, jitter: true}` when no step fails, runs interleaved (three times --repeat
each); the second must cost at most 5% more (`--retry-only` runs just this comparison).

    python bench/engine_overhead.py [--repeat 5] [--retry-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from engine import writer  # noqa: E402
from engine.models import WorkflowSpec  # noqa: E402
from engine.runner import Engine  # noqa: E402
from engine.store import Store  # noqa: E402

SHAPES = {"10x10": (10, 10), "50x20": (50, 20), "chain200": (200, 1)}


def layered(layers: int, width: int, retry: dict | None = None) -> WorkflowSpec:
    steps = {}
    for layer in range(layers):
        for w in range(width):
            needs = [f"s{layer - 1}_{x}" for x in range(width)] if layer else []
            steps[f"s{layer}_{w}"] = {"agent": "py", "with": {"call": "_noop:noop"}, "needs": needs}
    return WorkflowSpec.model_validate(
        {"name": "bench", "agents": {"py": {"kind": "python"}}, "steps": steps,
         "concurrency": 100_000, "defaults": {"retry": retry or {"attempts": 1}}}
    )  # fmt: skip


RETRY_VARIANTS = {
    "attempts=1": {"attempts": 1},
    "attempts=4": {"attempts": 4, "backoff": "exponential", "initial": 0.5, "jitter": True},
}


def retry_comparison(tmp: Path, repeat: int) -> float:
    """Median engine time of 50x20 per retry variant (interleaved, the order alternating:
    which one runs first in a pair is not favoured); returns the ratio."""
    times: dict[str, list[float]] = {name: [] for name in RETRY_VARIANTS}
    specs = {name: layered(50, 20, retry) for name, retry in RETRY_VARIANTS.items()}
    for i in range(repeat):
        for name, spec in list(specs.items())[:: 1 if i % 2 else -1]:
            times[name].append(asyncio.run(engine_run(spec, tmp / f"retry-{name}-{i}.db")))
    one, four = (statistics.median(times[name]) for name in RETRY_VARIANTS)
    print(f"retry scheduling, 50x20, no failures ({repeat} runs each, median):")
    for name in RETRY_VARIANTS:
        m = statistics.median(times[name])
        print(f"  {name:<11} {m * 1e3:8.2f} ms  {m / 1000 * 1e6:6.1f} µs/step")
    ratio = four / one
    print(f"  attempts=4 / attempts=1: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%, target ≤ +5%)")
    return ratio


async def noop() -> dict:
    return {}


async def bare(layers: int, width: int) -> float:
    t = time.perf_counter()
    for _ in range(layers):
        await asyncio.gather(*(noop() for _ in range(width)))
    return time.perf_counter() - t


async def bare_db(layers: int, width: int, path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS ev (ts REAL, step TEXT, kind TEXT)")
    t = time.perf_counter()
    for layer in range(layers):
        ids = [f"s{layer}_{w}" for w in range(width)]
        await asyncio.gather(*(noop() for _ in ids))
        now = time.time()
        rows = [(now, i, k) for i in ids for k in ("running", "attempt", "succeeded")]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO ev VALUES (?,?,?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return elapsed


async def engine_run(
    spec: WorkflowSpec,
    path: Path,
    *,
    bulk_process: bool = True,
    phases: list[tuple[float, float, float]] | None = None,
) -> float:
    """Seconds from submitting `spec` to everything committed (what `Engine.run` waits for).
    `phases` gets (run created, steps, last step -> everything committed) in seconds."""
    store = Store.open(path, bulk_process=bulk_process)
    try:
        async with Engine(store, max_concurrency=100_000, poll_commands=False) as eng:
            await store.flush()  # the store is up (its writer process answers)
            t = time.perf_counter()
            run = await eng.submit(spec)
            created = time.perf_counter()
            await asyncio.shield(run.done)
            ended = time.perf_counter()
            await run.wait()  # and everything committed
            elapsed = time.perf_counter() - t
            assert run.status.value == "succeeded", run.status
            if phases is not None:
                phases.append((created - t, ended - created, t + elapsed - ended))
    finally:
        store.close()
    return elapsed


async def capture_rows(spec: WorkflowSpec, path: Path) -> list[tuple]:
    """Run `spec` through the engine and return what it queued for the writer, in order:
    (Rows or SQL text, values)."""
    store = Store.open(path)
    queued: list[tuple] = []
    put, execute = store.put, store.execute

    def recording_put(rows, values):  # type: ignore[no-untyped-def]
        queued.append((rows, tuple(values)))
        put(rows, values)

    def recording_execute(sql, params=()):  # type: ignore[no-untyped-def]
        queued.append((sql, tuple(params)))
        execute(sql, params)

    store.put, store.execute = recording_put, recording_execute  # type: ignore[method-assign]
    try:
        async with Engine(store, max_concurrency=100_000, poll_commands=False) as eng:
            await eng.run(spec)
    finally:
        store.close()
    return queued


def sqlite_floor(spec: WorkflowSpec, tmp: Path, repeat: int) -> float:
    """SQLite's own work for a 50x20 run's rows: the rows the engine queued in a real run,
    written again in this process (no loop, no pipe) by the writer's own code in ten
    transactions, onto the run's freshly created rows. Median seconds."""

    src = tmp / "floor-src.db"
    queued = asyncio.run(capture_rows(spec, src))
    conn = sqlite3.connect(src, isolation_level=None)
    run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
    conn.close()
    times = []
    for _ in range(repeat):
        path = Path(tempfile.mkdtemp(dir=tmp)) / "floor.db"
        Store.open(path).close()  # the schema
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {writer.CHECKPOINT_PAGES}")  # as the writers
        conn.execute(f"ATTACH '{src}' AS src")
        conn.execute("INSERT INTO runs SELECT * FROM src.runs")
        conn.execute(
            "INSERT INTO steps(run_id, step_id, agent, kind, status, priority, depth, needs, "
            "destructive, max_attempts) SELECT run_id, step_id, agent, kind, 'pending', "
            "priority, depth, needs, destructive, max_attempts FROM src.steps WHERE run_id = ?",
            (run_id,),
        )
        conn.execute("DETACH src")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the run's rows in the file, log empty
        items: list[tuple] = []
        defined: set[str] = set()
        for what, values in queued:
            if isinstance(what, str):
                items.append((writer.SQL, what, values, None))
                continue
            if what.name not in defined:
                defined.add(what.name)
                items.append((writer.DEFINE, what.name, what.definition(), None))
            items.append((writer.ROWS, what.name, values, None))
        size = -(-len(items) // 10)

        def _failed(item: tuple, e: sqlite3.Error) -> None:
            raise SystemExit(f"replaying {item[:2]} failed: {e}")

        named: dict = {}
        writer.bind_nulls_fast()
        t = time.perf_counter()
        for start in range(0, len(items), size):
            writer.process(conn, items[start : start + size], None, _failed, named)
        times.append(time.perf_counter() - t)
        conn.close()
    return statistics.median(times)


OTHER_WRITER = r"""
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
conn.execute("PRAGMA synchronous = NORMAL")
conn.execute(f"PRAGMA wal_autocheckpoint = {int(sys.argv[3])}")  # as a flowdeck store's writer
times, end = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO commands(created_at, kind, status) VALUES (?, 'probe', 'done')",
                 (time.time(),))
    conn.execute("COMMIT")
    times.append((time.perf_counter() - t) * 1e3)
    time.sleep(0.02)
print(json.dumps(times))
"""
"""Another process writing a small row every 20 ms (an approval, a command) as a flowdeck store
does (the writers' checkpoint cap: with SQLite's default, a commit while an engine that never
pauses has the WAL past 1,000 pages would copy it): its latencies."""


async def other_writer_under_load(path: Path, seconds: float, *, load: bool) -> list[float]:
    """Latencies of `OTHER_WRITER` on `path` while an engine runs 20-step no-op runs back to
    back (`load`), or with the engine idle."""
    store = Store.open(path)
    spec = layered(5, 4)
    try:
        async with Engine(store, max_concurrency=100_000, poll_commands=False) as eng:
            await eng.run(spec)  # the file and the writer process are up
            probe = await asyncio.create_subprocess_exec(
                sys.executable, "-c", OTHER_WRITER, str(path), str(seconds),
                str(writer.CHECKPOINT_PAGES), stdout=subprocess.PIPE,
            )  # fmt: skip
            waiting = asyncio.ensure_future(probe.communicate())
            while load and not waiting.done():
                await eng.submit(spec)
                await asyncio.sleep(0.001)
            out, _ = await waiting
    finally:
        store.close()
    return sorted(json.loads(out))


def other_writer(tmp: Path, seconds: float = 4.0) -> None:
    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(len(xs) * q))]

    idle = asyncio.run(other_writer_under_load(tmp / "other-idle.db", seconds, load=False))
    busy = asyncio.run(other_writer_under_load(tmp / "other-busy.db", seconds, load=True))
    print("another process's small write (BEGIN IMMEDIATE .. COMMIT), p50 / p90 / max:")
    for name, xs in (("engine idle", idle), ("engine busy", busy)):
        print(f"  {name:<12} {pct(xs, 0.5):6.1f} / {pct(xs, 0.9):6.1f} / {xs[-1]:6.1f} ms")
    print(f"  p90 busy / idle: {pct(busy, 0.9) / max(pct(idle, 0.9), 1e-3):.1f}")


def first_step_latency(tmp: Path, repeat: int = 5) -> float:
    """Median time from starting `flowdeck run` to its first step, over `repeat` runs after one
    warm-up run. Python may write bytecode caches (as an installed package has them: pip
    compiles at install), whatever PYTHONDONTWRITEBYTECODE this shell has."""
    mark = tmp / "mark"
    wf = tmp / "one.yaml"
    wf.write_text(
        "name: one\nagents: {py: {kind: python}}\n"
        f"steps:\n  first: {{agent: py, with: {{call: '_noop:mark', args: {{path: '{mark}'}}}}}}\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'bench'}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    for _ in range(repeat + 1):
        t0 = time.time()
        subprocess.run(
            [sys.executable, "-m", "console", "run", str(wf), "--db", str(tmp / "first.db")],
            env=env, check=True, capture_output=True, cwd=tmp,
        )  # fmt: skip
        times.append(float(mark.read_text()) - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--retry-only", action="store_true", help="only the retry comparison")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flowdeck-bench-"))
    if args.retry_only:
        retry_comparison(tmp, 3 * args.repeat)
        return
    print(f"{'shape':>9} {'steps':>6} {'bare ms':>8} {'bare+db':>8} {'engine':>8} "
          f"{'µs/step':>8} {'steps/s':>8} {'×bare+db':>8} {'thread-w':>9} {'µs/step':>8}")  # fmt: skip
    results: dict[str, float] = {}
    split: dict[str, list[float]] = {}
    for name, (layers, width) in SHAPES.items():
        spec = layered(layers, width)
        n = layers * width
        b, bd, e, et = [], [], [], []
        phases: list[tuple[float, float, float]] = []
        for i in range(args.repeat):
            b.append(asyncio.run(bare(layers, width)))
            bd.append(asyncio.run(bare_db(layers, width, tmp / f"bare-{name}-{i}.db")))
            e.append(asyncio.run(engine_run(spec, tmp / f"engine-{name}-{i}.db", phases=phases)))
            et.append(
                asyncio.run(engine_run(spec, tmp / f"thread-{name}-{i}.db", bulk_process=False))
            )
        bm, bdm, em, etm = (statistics.median(x) for x in (b, bd, e, et))
        overhead_us = (em - bm) / n * 1e6
        results[name] = overhead_us
        split[name] = [statistics.median(p[k] for p in phases) * 1e3 for k in range(3)]
        print(
            f"{name:>9} {n:>6} {bm * 1e3:>8.2f} {bdm * 1e3:>8.2f} {em * 1e3:>8.2f} "
            f"{overhead_us:>8.1f} {n / em:>8.0f} {em / bdm:>8.2f} {etm * 1e3:>9.2f} "
            f"{(etm - bm) / n * 1e6:>8.1f}"
        )
    created, steps, committed = split["50x20"]
    print(
        f"50x20 engine, where the time goes (medians): run created {created:.1f} ms, steps "
        f"{steps:.1f} ms, last step -> everything committed {committed:.1f} ms"
    )
    floor = sqlite_floor(layered(50, 20), tmp, args.repeat)
    print(
        f"SQLite's own work for 50x20's rows (replayed in-process, 10 transactions): "
        f"{floor * 1e3:.1f} ms = {floor / 1000 * 1e6:.1f} µs/step"
    )
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    first = first_step_latency(tmp)
    print(f"peak RSS: {rss_mb:.1f} MB")
    print(f"process start -> first step (flowdeck run): {first * 1000:.0f} ms (target ≤ 300 ms)")
    print(f"50x20 overhead: {results['50x20']:.1f} µs/step (target ≤ 40 µs/step)")
    other_writer(tmp)
    retry_comparison(tmp, 3 * args.repeat)  # a difference of a few %: more runs than above


if __name__ == "__main__":
    main()
