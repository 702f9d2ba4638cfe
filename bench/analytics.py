"""Benchmark of `engine.analytics` on 1,000,000 attempts across 20 agents and 30 days.

    python bench/analytics.py [--attempts 1000000] [--agents 20] [--days 30] [--db PATH] [--keep]

Builds the database through the real schema (migrations, rollup triggers included) with
executemany, then times a full snapshot (`--since all`) and the 1-hour window (also 24 h and
7 d), and, in the same run, the naive implementation below that loads every row into Python.
Prints figures, the naive/fast ratio, and whether both gave the same snapshot.

`naive_measure` is also the reference the tests compare the fast path with (it is imported by
tests/test_analytics.py): plain Python over every row, no rollup, no index tricks.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import analytics
from engine.analytics import (
    PERCENTILES,
    Measurements,
    Options,
    breaker_stats,
    rank_of,
    review_stats,
    series_points,
)

# --------------------------------------------------------------------------- reference


def _nearest(values: list[float]) -> tuple[float, ...]:
    values = sorted(values)
    return tuple(values[rank_of(p, len(values)) - 1] for p in PERCENTILES)


def _by(pairs: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for key in pairs:
        counts[str(key)] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def naive_measure(
    conn: sqlite3.Connection, since: float | None, now: float, opts: Options
) -> Measurements:
    """What `analytics.measure` reads, computed by loading every row of every table."""

    def inside(t: float | None) -> bool:
        return t is not None and (since is None or t >= since)

    attempts = conn.execute(
        "SELECT id, coalesce(agent, ''), coalesce(operation, ''), status, "
        "coalesce(error_class, ''), coalesce(error, ''), number, started_at, duration_ms, "
        "prompt_tokens, completion_tokens FROM attempts"
    ).fetchall()
    groups: dict[tuple, list] = {}
    durations: dict[str, list[float]] = defaultdict(list)
    hours: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    failed = []
    for aid, agent, op, status, cls, error, number, started, dur, pt, ct in attempts:
        if status == "running" or not inside(started):
            continue
        g = groups.setdefault((agent, op, status, cls, int(number > 1)), [0, 0, 0.0, 0, 0])
        g[0] += 1
        g[1] += dur is not None
        g[2] += dur or 0.0
        g[3] += pt or 0
        g[4] += ct or 0
        is_call = status in ("succeeded", "failed")
        if is_call and dur is not None:
            durations[agent].append(dur)
        h = hours[int(started / 3600) % 24]
        h[0] += is_call
        h[1] += status == "failed"
        if status == "failed":
            failed.append((started, aid, cls, error, agent))

    failed.sort(reverse=True)
    fgroups: dict[tuple, list] = {}
    for started, _aid, cls, error, agent in failed[: opts.error_sample]:
        fg = fgroups.setdefault((cls, error, agent), [0, started, started])
        fg[0] += 1
        fg[1] = min(fg[1], started)
        fg[2] = max(fg[2], started)

    m_hi = int(now / 60)
    m_lo = m_hi - opts.series_minutes + 1
    if since is not None:
        m_lo = max(m_lo, int(since / 60))
    minutes: dict[int, list] = defaultdict(lambda: [0, 0, []])
    for _aid, _agent, _op, status, _cls, _error, _n, started, dur, _pt, _ct in attempts:
        if status not in ("succeeded", "failed") or not inside(started):
            continue
        m = int(started / 60)
        if m_lo <= m <= m_hi:
            point = minutes[m]
            point[0] += 1
            point[1] += status == "failed"
            if dur is not None:
                point[2].append(dur)

    runs = conn.execute("SELECT status, created_at FROM runs").fetchall()
    steps = conn.execute("SELECT ended_at FROM steps").fetchall()
    reviews = conn.execute(
        "SELECT status, created_at, expires_at, decided_at, auto FROM reviews"
    ).fetchall()
    pending = [r for r in reviews if r[0] == "pending"]
    overdue = [
        r for r in pending if (r[2] is not None and r[2] < now) or r[1] < now - opts.overdue_after
    ]
    decided = [r for r in reviews if r[0] != "pending" and inside(r[3])]
    waits = sorted(r[3] - r[1] for r in decided)
    undo = conn.execute("SELECT status, created_at, expires_at FROM undo_log").fetchall()
    undo_by = _by(s for s, c, _ in undo if inside(c))
    routes = [
        r
        for r in conn.execute("SELECT chosen, best, overridden, created_at FROM routes")
        if inside(r[3])
    ]
    return Measurements(
        since=since,
        now=now,
        first_run_at=min((c for _, c in runs), default=None),
        groups=[(*k, g[0], g[1], g[2], g[3], g[4]) for k, g in groups.items()],
        percentiles={a: _nearest(v) for a, v in durations.items()},
        hours={h: (c, f) for h, (c, f) in hours.items() if c or f},
        runs_by_status=_by(s for s, c in runs if inside(c)),
        steps_ended=sum(1 for (e,) in steps if inside(e)),
        reviews=review_stats(
            len(pending),
            len(overdue),
            _by(r[0] for r in reviews if inside(r[1])),
            len(decided),
            sum(r[0] == "approved" for r in decided),
            sum(r[0] == "rejected" for r in decided),
            sum(r[0] == "approved" and bool(r[4]) for r in decided),
            waits[rank_of(50, len(waits)) - 1] if waits else None,
        ),
        undo=analytics.UndoStats(
            recorded=sum(undo_by.values()),
            by_status=undo_by,
            undone=undo_by.get("undone", 0),
            undoable_now=sum(1 for s, _, e in undo if s == "done" and (e is None or e > now)),
        ),
        routing=analytics.RoutingStats(
            decisions=len(routes),
            overridden=sum(1 for r in routes if r[2]),
            override_rate=sum(1 for r in routes if r[2]) / len(routes) if routes else None,
            best_chosen=sum(1 for r in routes if r[0] == r[1]),
            by_choice=_by(r[0] or "" for r in routes),
        ),
        breakers=breaker_stats(conn.execute("SELECT key, state FROM breakers")),
        failures=[(*k, v[0], v[1], v[2]) for k, v in fgroups.items()],
        series=series_points(
            m_lo,
            m_hi,
            {m: (p[0], p[1]) for m, p in minutes.items()},
            {m: _nearest(p[2]) for m, p in minutes.items() if p[2]},
        ),
    )


def naive_compute(
    conn: sqlite3.Connection, *, since: float | None, now: float, **options: Any
) -> analytics.AnalyticsSnapshot:
    opts = Options(**options)
    return analytics.assemble(naive_measure(conn, since, now, opts), opts)


# --------------------------------------------------------------------------- data

ERRORS = {
    "timeout": "timed out after {n} s",
    "http": "HTTP {code} from /api/v1/items/{id}",
    "connection": "cannot connect to 10.0.{n}.{n}:8080 (request {hex})",
    "exit_code": "exit code {code} from worker {id}",
    "validation": "output is not JSON: Expecting value: line 1 column {n} (char {n})",
}


def build(path: Path, *, attempts: int, agents: int, days: int, now: float, seed: int = 7) -> dict:
    """Fill a fresh database with `attempts` finished attempts; returns what was made."""
    from engine.store import Store

    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    Store.open(path).close()  # the real schema: migrations, indexes, rollup triggers
    rnd = random.Random(seed)
    names = [f"agent-{i:02d}" for i in range(agents)]
    median = {a: 15 * 1.25**i for i, a in enumerate(names)}
    llm = set(names[::5])
    classes = list(ERRORS)
    span = days * 86400.0
    runs, steps, rows = [], [], []
    run_no = 0
    while len(rows) < attempts:
        run_no += 1
        run_id = f"{run_no:012x}"
        # more traffic in working hours, so usage by hour has a shape
        start = now - rnd.random() * span
        shifted = start - start % 86400 + (8 + 10 * rnd.random()) * 3600
        if rnd.random() < 0.5 and shifted < now - 60:
            start = shifted
        t = start
        for s in range(5):
            agent = names[min(agents - 1, int(rnd.paretovariate(1.2)) - 1)]
            op = f"{['GET', 'POST', 'DELETE'][rnd.randrange(3)]} /{agent}/op{rnd.randrange(3)}"
            tries = 1 + (rnd.random() < 0.12) + (rnd.random() < 0.03)
            step_start = t
            for n in range(1, tries + 1):
                d = rnd.lognormvariate(math.log(median[agent]), 0.6)
                fail = n < tries or rnd.random() < 0.03
                cls = rnd.choice(classes) if fail else None
                err = None
                if cls:
                    err = ERRORS[cls].format(
                        n=rnd.randrange(1, 300),
                        code=rnd.choice([500, 502, 503, 404, 1, 2]),
                        id=f"{rnd.getrandbits(40):010x}",
                        hex=f"{rnd.getrandbits(32):08x}",
                    )
                tokens = (
                    (rnd.randrange(50, 900), rnd.randrange(10, 300))
                    if agent in llm
                    else (None, None)
                )
                status = "failed" if fail else "succeeded"
                rows.append((run_id, f"s{s}", n, agent, op, status, t, t + d / 1000, d, cls, err, *tokens))  # fmt: skip
                t += d / 1000 + 0.2 * n
            steps.append((run_id, f"s{s}", agent, "http", status, step_start, t))
        status = "succeeded" if rows[-1][5] == "succeeded" else "failed"
        runs.append((run_id, "bench", "{}", status, start, start, t))
    rows = rows[:attempts]
    rows.sort(key=lambda r: r[6])  # arrive in time order, as the engine writes them
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO runs(id, workflow, spec, status, created_at, started_at, ended_at) "
        "VALUES (?,?,?,?,?,?,?)",
        runs,
    )
    conn.executemany(
        "INSERT INTO steps(run_id, step_id, agent, kind, status, started_at, ended_at) "
        "VALUES (?,?,?,?,?,?,?)",
        steps,
    )
    conn.executemany(
        "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at, "
        "ended_at, duration_ms, error_class, error, prompt_tokens, completion_tokens) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    reviews = []
    for r in runs[::50]:  # a review gate on every 50th run, decided within 10 minutes
        status = rnd.choice(["approved", "approved", "rejected"])
        auto = int(status == "approved" and rnd.random() < 0.3)
        reviews.append((r[0], "s4", status, r[4], r[4] + 3600, r[4] + rnd.random() * 600, auto))
    conn.executemany(
        "INSERT INTO reviews(run_id, step_id, status, created_at, expires_at, decided_at, auto) "
        "VALUES (?,?,?,?,?,?,?)",
        reviews,
    )
    conn.executemany(
        "INSERT INTO breakers(key, agent, state) VALUES (?, ?, ?)",
        [(a, a, "open" if i == agents - 1 else "closed") for i, a in enumerate(names)],
    )
    conn.execute("COMMIT")
    insert_s = time.perf_counter() - t0
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return {"runs": len(runs), "steps": len(steps), "attempts": len(rows), "insert_s": insert_s}


# --------------------------------------------------------------------------- timing


def _time(fn: Any, repeat: int) -> tuple[float, float, Any]:
    """(first call ms, median of the next `repeat` calls ms, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return first, statistics.median(times) if times else first, result


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two dumped snapshots differ (floats compared with a relative tolerance)."""
    if isinstance(a, float) and isinstance(b, float | int):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [path]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [path]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _close(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=1_000_000)
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5, help="timed calls after the first")
    ap.add_argument("--db", help="database file (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the database file")
    ap.add_argument(
        "--reuse", action="store_true", help="time an existing --db built by an earlier --keep run"
    )
    args = ap.parse_args()

    tmp = None
    if args.db:
        path = Path(args.db)
    else:
        tmp = tempfile.mkdtemp(prefix="flowdeck-bench-")
        path = Path(tmp) / "analytics.db"
    if args.reuse:
        if not args.db or not path.exists():
            ap.error("--reuse needs the --db of an earlier --keep run")
        from engine.store import Store

        Store.open(path).close()  # brings an older file up to the current migrations
        conn = sqlite3.connect(path, isolation_level=None)
        now = conn.execute("SELECT max(started_at) FROM attempts").fetchone()[0] + 1
        print(
            f"reusing {path}: {conn.execute('SELECT count(*) FROM attempts').fetchone()[0]:,} attempts"
        )
    else:
        now = time.time()
        t0 = time.perf_counter()
        made = build(path, attempts=args.attempts, agents=args.agents, days=args.days, now=now)
        build_s = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 1e6
        print(
            f"built {made['attempts']:,} attempts, {made['steps']:,} steps, {made['runs']:,} runs, "
            f"{args.agents} agents, {args.days} days in {build_s:.1f} s "
            f"(inserts with rollup triggers {made['insert_s']:.1f} s = "
            f"{made['attempts'] / made['insert_s']:,.0f} attempts/s); file {size_mb:.0f} MB"
        )
        conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    windows = [("all", None), ("1h", 3600.0), ("24h", 86400.0), ("7d", 7 * 86400.0)]
    fast: dict[str, float] = {}
    snaps: dict[str, Any] = {}
    print(f"{'window':<8}{'first call':>12}{'median':>12}  calls in window")
    for label, seconds in windows:
        since = None if seconds is None else now - seconds
        first, med, snap = _time(
            lambda since=since: analytics.compute(conn, since=since, now=now), args.repeat
        )
        fast[label] = med
        snaps[label] = snap
        print(f"{label:<8}{first:>9.1f} ms{med:>9.1f} ms  {snap.totals.calls:,}")

    print("naive (load every row into Python), same run:")
    ratios = []
    for label, seconds in (("all", None), ("1h", 3600.0)):
        since = None if seconds is None else now - seconds
        t0 = time.perf_counter()
        ref = naive_compute(conn, since=since, now=now)
        naive_ms = (time.perf_counter() - t0) * 1000
        diff = _close(snaps[label].model_dump(), ref.model_dump())
        ratio = naive_ms / fast[label]
        ratios.append(ratio)
        same = "same snapshot" if not diff else f"DIFFERENT at {diff[:5]}"
        print(f"{label:<8}{naive_ms:>9.1f} ms  naive/fast = {ratio:,.0f}x  ({same})")

    full = fast["all"]
    verdict = "meets" if full <= 200 else "MISSES"
    print(
        f"full snapshot {full:.1f} ms: {verdict} the 200 ms target; 1 h window {fast['1h']:.1f} ms"
    )
    h = snaps["all"].health
    print(f"health of the bench data: {h.score} ({h.status})")
    conn.close()
    if tmp and not args.keep and not args.reuse:
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        os.rmdir(tmp)
    elif args.keep:
        print(f"kept {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
