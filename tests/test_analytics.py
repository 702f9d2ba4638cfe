"""engine/analytics.py: hand-computed figures on fixed data, the fast path against the naive
reference on random data, the rollup triggers, query plans, and `flowdeck stats`."""

from __future__ import annotations

import math
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.analytics import naive_compute
from engine import analytics, migrations
from engine.analytics import compute, normalize_error, parse_window, rank_of
from engine.errors import InputError
from engine.runner import ATTEMPT_ROWS
from engine.store import Store

ATTEMPT_UPSERT = ATTEMPT_ROWS.statement(1)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOUR = 3600.0
DAY_S = 86400
DAY = 86400.0

ATTEMPT_SQL = (
    "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at, "
    "ended_at, duration_ms, error_class, error, prompt_tokens, completion_tokens) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def add_attempts(store: Store, rows: list[dict[str, Any]]) -> None:
    """Insert attempts given as dicts (keys: agent, op, status, t, ms, cls, err, n, pt, ct)."""
    params = []
    for i, r in enumerate(rows):
        ms = r.get("ms")
        params.append(
            (
                r.get("run", "run1"),
                r.get("step", f"s{i}"),
                r.get("n", 1),
                r.get("agent"),
                r.get("op"),
                r["status"],
                r["t"],
                None if ms is None else r["t"] + ms / 1000,
                ms,
                r.get("cls"),
                r.get("err"),
                r.get("pt"),
                r.get("ct"),
            )
        )
    store.run_sync(lambda db: db.conn.executemany(ATTEMPT_SQL, params))


def fixture_rows() -> list[dict[str, Any]]:
    gh, pulls = "github", "POST /pulls/close"
    rows = [
        dict(agent=gh, op="POST /issues", status="succeeded", t=NOW - 100, ms=100.0),
        dict(agent=gh, op="POST /issues", status="succeeded", t=NOW - 200, ms=300.0),
        dict(agent=gh, op=pulls, status="failed", t=NOW - 300, ms=200.0, cls="http",
             err="HTTP 503 from /pulls/12/close"),
        dict(agent=gh, op=pulls, status="failed", t=NOW - 250, ms=250.0, cls="http",
             err="HTTP 503 from /pulls/13/close"),
        dict(agent=gh, op=pulls, status="succeeded", t=NOW - 290, ms=400.0, n=2),
        dict(agent=gh, op=pulls, status="failed", t=NOW - 2 * HOUR, ms=5000.0, cls="timeout",
             err="timed out after 5 s"),
        dict(agent=gh, op=pulls, status="cancelled", t=NOW - 50, ms=10.0, cls="cancelled"),
        dict(agent=gh, op=pulls, status="running", t=NOW - 10),
        dict(agent="llm", op="chat", status="succeeded", t=NOW - 120, ms=1000.0, pt=100, ct=20),
        dict(agent="llm", op="chat", status="succeeded", t=NOW - 3 * DAY, ms=3000.0, pt=50, ct=10),
        dict(agent="llm", op="chat", status="failed", t=NOW - 400, ms=2000.0, cls="validation",
             err="output is not JSON: line 1 column 7", pt=30, ct=0),
        dict(agent=None, status="succeeded", t=NOW - 30),
        dict(agent="py", status="succeeded", t=NOW - 700, ms=40.0),
        dict(agent="py", status="succeeded", t=NOW - 700, ms=50.0),
    ]  # fmt: skip
    rows += [
        dict(agent="sh", op="run", status="succeeded", t=NOW - 600 + i, ms=10.0 * (i + 1))
        for i in range(13)
    ]
    return rows


def add_the_rest(store: Store) -> None:
    """Runs, steps, reviews, undo entries, routes and breakers of the fixed data set."""

    def write(db: Any) -> None:
        c = db.conn
        c.executemany(
            "INSERT INTO runs(id, workflow, spec, status, created_at, ended_at) "
            "VALUES (?, 'wf', '{}', ?, ?, ?)",
            [
                ("r-old", "succeeded", NOW - 3 * DAY, NOW - 3 * DAY + 5),
                ("r1", "succeeded", NOW - 1000, NOW - 900),
                ("r2", "failed", NOW - 500, NOW - 400),
                ("r3", "running", NOW - 100, None),
            ],
        )
        c.executemany(
            "INSERT INTO steps(run_id, step_id, status, ended_at) VALUES (?, ?, ?, ?)",
            [
                ("r1", "a", "succeeded", NOW - 900),
                ("r2", "a", "failed", NOW - 400),
                ("r-old", "a", "succeeded", NOW - 3 * DAY),
                ("r3", "a", "running", None),
            ],
        )
        c.executemany(
            "INSERT INTO reviews(run_id, step_id, status, created_at, expires_at, decided_at, "
            "auto) VALUES ('r1', 'a', ?, ?, ?, ?, ?)",
            [
                ("pending", NOW - 100, NOW + 100, None, 0),
                ("pending", NOW - 7200, None, None, 0),  # overdue: older than an hour
                ("pending", NOW - 60, NOW - 1, None, 0),  # overdue: expired
                ("approved", NOW - 1000, None, NOW - 900, 1),  # 100 s
                ("approved", NOW - 500, None, NOW - 200, 0),  # 300 s
                ("rejected", NOW - 2000, None, NOW - 1950, 0),  # 50 s
                ("approved", NOW - 5 * DAY, None, NOW - 5 * DAY + 10, 0),  # 10 s, old
            ],
        )
        c.executemany(
            "INSERT INTO undo_log(run_id, step_id, created_at, expires_at, status) "
            "VALUES ('r1', 'a', ?, ?, ?)",
            [
                (NOW - 100, NOW + 3500, "done"),
                (NOW - 5000, NOW - 1400, "done"),
                (NOW - 200, NOW + 3400, "undone"),
                (NOW - 300, NOW + 3300, "void"),
            ],
        )
        c.executemany(
            "INSERT INTO routes(run_id, step_id, created_at, chosen, best, overridden) "
            "VALUES ('r1', 'a', ?, ?, ?, ?)",
            [(NOW - 100, "a", "a", 0), (NOW - 200, "b", "a", 1), (NOW - 7200, "a", "a", 0)],
        )
        c.executemany(
            "INSERT INTO breakers(key, agent, state) VALUES (?, ?, ?)",
            [("github", "github", "closed"), ("llm", "llm", "open"), ("sh", "sh", "half_open"),
             ("x", "x", "closed")],
        )  # fmt: skip

    store.run_sync(write)


@pytest.fixture
def fixed(store: Store) -> Store:
    add_attempts(store, fixture_rows())
    add_the_rest(store)
    return store


def snap(store: Store, since: float | None, **kw: Any) -> analytics.AnalyticsSnapshot:
    return store.read(lambda db: compute(db, since=since, now=NOW, **kw))


def agent(s: analytics.AnalyticsSnapshot, name: str) -> analytics.AgentStats:
    return next(a for a in s.agents if a.agent == name)


# --------------------------------------------------------------------------- small pieces


def test_parse_window() -> None:
    assert parse_window("15m") == 900
    assert parse_window("1h") == 3600
    assert parse_window("24h") == 86400
    assert parse_window("7d") == 7 * 86400
    assert parse_window("2w") == 14 * 86400
    assert parse_window(" 90S ") == 90
    assert parse_window("1.5h") == 5400
    assert parse_window("all") is None
    for bad in ("", "h", "1y", "-1h", "0m", "1 hour", "1h30m"):
        with pytest.raises(InputError, match="not a time window"):
            parse_window(bad)
    with pytest.raises(InputError):
        parse_window("all", allow_all=False)


def test_latency_buckets(store: Store) -> None:
    """bucket(x) >= b exactly when x >= bucket_floor(b), around every kind of edge."""
    values = [-5.0, -0.0, 0.0, 0.4, 1.0, 9.99, 10.0, 99.0, 99.999, 100.0, 100.5, 109.99, 110.0,
              999.9, 1000.0, 1099.0, 2599.99, 2600.0, 99999.0, 1e7, 123456789.5]  # fmt: skip
    add_attempts(store, [dict(agent="a", status="succeeded", t=NOW, ms=v) for v in values])
    rows = store.query("SELECT duration_ms AS x, " + migrations._latency_bucket("duration_ms") +
                       " AS b FROM attempts")  # fmt: skip
    buckets = sorted({r["b"] for r in rows})
    assert buckets[:3] == [-1, 0, 1] and 310 in buckets and 425 in buckets
    for b in buckets:
        floor = analytics.bucket_floor(b)
        for r in rows:
            assert (r["b"] >= b) == (floor is None or r["x"] >= floor), (r, b)
    # and the histogram seek gives the same percentiles as stepping through the index
    snap_all = snap(store, None)
    values.sort()
    a = agent(snap_all, "a")
    assert (a.p50_ms, a.p95_ms, a.p99_ms) == tuple(values[rank_of(p, 21) - 1] for p in (50, 95, 99))


def test_nearest_rank() -> None:
    # rank = ceil(p * n / 100), 1-based
    assert [rank_of(p, 4) for p in (50, 95, 99)] == [2, 4, 4]
    assert [rank_of(p, 1) for p in (50, 95, 99)] == [1, 1, 1]
    assert [rank_of(p, 100) for p in (50, 95, 99)] == [50, 95, 99]
    assert [rank_of(p, 101) for p in (50, 95, 99)] == [51, 96, 100]
    assert [rank_of(p, 13) for p in (50, 95, 99)] == [7, 13, 13]
    assert [rank_of(p, 20) for p in (50, 95, 99)] == [10, 19, 20]


def test_percentiles_of_1_to_100(store: Store) -> None:
    add_attempts(
        store,
        [dict(agent="a", status="succeeded", t=NOW - i, ms=float(i)) for i in range(100, 0, -1)],
    )
    for share in (0.0, 1.0):  # index walk and window sort
        for since in (None, NOW - 1000):
            a = agent(snap(store, since, percentile_sort_share=share), "a")
            assert (a.p50_ms, a.p95_ms, a.p99_ms) == (50.0, 95.0, 99.0)
            assert a.mean_ms == 50.5


def test_normalize_error() -> None:
    cases = {
        "HTTP 503 from /pulls/1234/close": "HTTP <n> from /pulls/<n>/close",
        "timed out after 2.5 s": "timed out after <n> s",
        "cannot connect to 10.0.3.4:8080 (request 3fa9c2d1)": "cannot connect to <n>:<n> (request <id>)",
        "request cabacccf failed": "request <id> failed",
        "request 12345678 failed": "request <id> failed",
        "item 550e8400-e29b-41d4-a716-446655440000 missing": "item <id> missing",
        "bad value 0x1F at offset 12": "bad value <hex> at offset <n>",
        "worker req_8f2k1x died": "worker <id> died",
        "agent-07 unreachable": "<id> unreachable",
        "exit code 1\n  stderr:\tboom  ": "exit code <n> stderr: boom",
        "v2 api, 3 retries": "v<n> api, <n> retries",
        "deadbeef is a word": "<id> is a word",
        "decided is a word": "decided is a word",
        "": "",
    }
    for message, pattern in cases.items():
        assert normalize_error(message) == pattern, message
    assert normalize_error(None) == ""
    assert len(normalize_error("x" * 500)) == 200
    # the same shape groups together
    assert normalize_error("HTTP 404 from /a/77") == normalize_error("HTTP 500 from /a/9")


# --------------------------------------------------------------------------- fixed data


def test_agents_all_window(fixed: Store) -> None:
    s = snap(fixed, None)
    gh = agent(s, "github")
    assert (gh.calls, gh.successes, gh.failures, gh.cancelled, gh.retries) == (6, 3, 3, 1, 1)
    assert gh.success_rate == 0.5
    # durations 100 200 250 300 400 5000: ranks 3, 6, 6
    assert (gh.p50_ms, gh.p95_ms, gh.p99_ms) == (250.0, 5000.0, 5000.0)
    assert gh.mean_ms == pytest.approx(6250 / 6)
    assert gh.errors == {"http": 2, "timeout": 1}
    llm = agent(s, "llm")
    assert (llm.calls, llm.successes, llm.failures) == (3, 2, 1)
    assert (llm.p50_ms, llm.p95_ms, llm.p99_ms) == (2000.0, 3000.0, 3000.0)
    assert (llm.prompt_tokens, llm.completion_tokens) == (180, 30)
    none = agent(s, analytics.NO_AGENT)
    assert (none.calls, none.successes, none.mean_ms, none.p95_ms, none.within_slo) == (
        1, 1, None, None, None,
    )  # fmt: skip
    t = s.totals
    assert (t.calls, t.successes, t.failures, t.cancelled, t.retries) == (25, 21, 4, 1, 1)
    assert (t.prompt_tokens, t.completion_tokens, t.total_tokens) == (180, 30, 210)
    assert t.errors == {"http": 2, "timeout": 1, "validation": 1}
    assert [a.agent for a in s.agents] == ["sh", "github", "llm", "py", analytics.NO_AGENT]
    # usage by UTC hour: everything at 22h except the 2-hour-old timeout (20h)
    usage = {u.hour: (u.calls, u.failures) for u in s.usage_by_hour if u.calls}
    assert usage == {22: (24, 3), 20: (1, 1)}
    assert len(s.usage_by_hour) == 24
    r = s.runs
    assert r.by_status == {"succeeded": 2, "failed": 1, "running": 1}
    assert r.steps_ended == 3
    assert s.window_seconds == 3 * DAY
    assert r.steps_per_second == pytest.approx(3 / (3 * DAY))
    v = s.reviews
    assert (v.pending, v.overdue, v.decided, v.approved, v.rejected, v.auto_approved) == (
        3, 2, 4, 3, 1, 1,
    )  # fmt: skip
    assert v.median_decision_s == 50.0  # waits 10 50 100 300: rank 2
    assert v.auto_approved_share == pytest.approx(1 / 3)


def test_one_hour_window(fixed: Store) -> None:
    s = snap(fixed, NOW - HOUR, slo_ms={"llm": 500.0}, min_calls=2)
    gh = agent(s, "github")
    assert (gh.calls, gh.successes, gh.failures, gh.retries) == (5, 3, 2, 1)
    assert gh.success_rate == 0.6
    assert (gh.p50_ms, gh.p95_ms, gh.p99_ms) == (250.0, 400.0, 400.0)
    assert gh.mean_ms == 250.0
    assert gh.errors == {"http": 2}
    llm = agent(s, "llm")
    assert (llm.calls, llm.p50_ms, llm.p95_ms, llm.mean_ms) == (2, 1000.0, 2000.0, 1500.0)
    assert (llm.slo_ms, llm.within_slo) == (500.0, False)
    sh = agent(s, "sh")
    assert (sh.calls, sh.p50_ms, sh.p95_ms, sh.p99_ms, sh.mean_ms) == (13, 70.0, 130.0, 130.0, 70.0)
    assert (s.totals.calls, s.totals.successes, s.totals.failures) == (23, 20, 3)
    assert s.runs.by_status == {"succeeded": 1, "failed": 1, "running": 1}
    assert s.runs.steps_ended == 2
    assert s.runs.steps_per_second == pytest.approx(2 / 3600)

    # rankings: success rate, ties by lower P95 (py and sh are both 100%)
    assert [(x.rank, x.agent) for x in s.rankings] == [
        (1, "py"), (2, "sh"), (3, "github"), (4, "llm"),
    ]  # fmt: skip
    assert [x.agent for x in s.slowest] == ["llm", "github", "sh", "py"]
    ops = [(o.agent, o.operation, o.calls, o.failures) for o in s.operations]
    assert ops == [
        ("sh", "run", 13, 0),
        ("github", "POST /pulls/close", 3, 2),
        ("github", "POST /issues", 2, 0),
        ("llm", "chat", 2, 1),
        ("py", None, 2, 0),
        (analytics.NO_AGENT, None, 1, 0),
    ]

    v = s.reviews
    assert v.by_status == {"approved": 2, "pending": 2, "rejected": 1}
    assert (v.created, v.decided, v.approved, v.rejected) == (5, 3, 2, 1)
    assert v.approval_rate == pytest.approx(2 / 3)
    assert v.median_decision_s == 100.0  # waits 50 100 300
    assert v.auto_approved_share == 0.5
    u = s.undo
    assert (u.recorded, u.undone, u.undoable_now) == (3, 1, 1)
    assert u.by_status == {"done": 1, "undone": 1, "void": 1}
    g = s.routing
    assert (g.decisions, g.overridden, g.override_rate, g.best_chosen) == (2, 1, 0.5, 1)
    assert g.by_choice == {"a": 1, "b": 1}
    b = s.breakers
    assert (b.total, b.open, b.half_open, b.open_keys) == (4, 1, 1, ["llm"])

    p = s.error_patterns
    assert [(e.error_class, e.pattern, e.count, e.agents) for e in p] == [
        ("http", "HTTP <n> from /pulls/<n>/close", 2, ["github"]),
        ("validation", "output is not JSON: line <n> column <n>", 1, ["llm"]),
    ]
    assert (p[0].first_seen, p[0].last_seen) == (NOW - 300, NOW - 250)
    assert p[0].example == "HTTP 503 from /pulls/13/close"
    assert s.errors_sampled == 3


def test_health_components(fixed: Store) -> None:
    s = snap(fixed, NOW - HOUR, slo_ms={"llm": 500.0})
    c = {x.name: x for x in s.health.components}
    # success: 3 of 23 failed -> 1 - (3/23) / 0.25
    assert c["success"].value == pytest.approx(1 - (3 / 23) / 0.25)
    assert c["success"].detail == "3 of 23 calls failed (13.0%)"
    # latency: github 5 calls in SLO, llm 2 calls at 500/2000, sh 13, py 2 -> 20.5 / 22
    assert c["latency"].value == pytest.approx(20.5 / 22)
    assert "llm P95 2000 ms > 500 ms" in c["latency"].detail
    # breakers: 1 open and 1 half-open of 4
    assert c["breakers"].value == pytest.approx(1 - 1.5 / 4)
    # reviews: 2 of 3 pending reviews overdue (one expired, one older than an hour)
    assert c["reviews"].value == pytest.approx(1 / 3)
    assert c["reviews"].detail.startswith("2 of 3 pending reviews overdue")
    assert [x.weight for x in s.health.components] == [40, 30, 20, 10]
    expected = 40 * (1 - (3 / 23) / 0.25) + 30 * 20.5 / 22 + 20 * 0.625 + 10 / 3
    assert s.health.score == round(expected, 1) == 62.9
    assert s.health.status == "unhealthy"
    for x in s.health.components:
        assert x.points == round(x.weight * x.value, 2)

    # a bigger default SLO and no overdue review: latency full, reviews full
    s = snap(fixed, NOW - HOUR, default_slo_ms=10_000, overdue_after=3 * HOUR)
    c = {x.name: x for x in s.health.components}
    assert c["latency"].value == 1.0
    assert c["latency"].detail == "all 4 agents within their P95 SLO"
    assert c["reviews"].value == pytest.approx(2 / 3)  # the expired one is still overdue


def test_health_of_an_empty_database(store: Store) -> None:
    s = snap(store, None)
    assert s.health.score == 100.0
    assert s.health.status == "healthy"
    assert [c.detail for c in s.health.components] == [
        "no calls in the window",
        "no timed calls in the window",
        "no circuit breakers",
        "no pending reviews",
    ]
    assert s.agents == [] and s.totals.success_rate is None and s.window_seconds is None
    assert len(s.series) == 60 and all(p.calls == 0 for p in s.series)


def test_success_component_is_clamped(store: Store) -> None:
    add_attempts(store, [dict(agent="a", status="failed", t=NOW - 1, ms=1.0)])
    c = snap(store, None).health.components[0]
    assert (c.name, c.value, c.points) == ("success", 0.0, 0.0)


def test_time_series(fixed: Store) -> None:
    s = snap(fixed, NOW - HOUR)
    assert len(s.series) == 60
    assert s.series[-1].t == 28333333 * 60  # the minute of NOW
    by_t = {p.t: p for p in s.series}
    p = by_t[28333331 * 60]  # NOW-100 (100 ms) and NOW-120 (1000 ms)
    assert (p.calls, p.errors, p.p50_ms, p.p95_ms, p.p99_ms) == (2, 0, 100.0, 1000.0, 1000.0)
    p = by_t[28333328 * 60]  # NOW-300 failed 200 ms, NOW-290 400 ms
    assert (p.calls, p.errors, p.error_rate, p.p50_ms, p.p95_ms) == (2, 1, 0.5, 200.0, 400.0)
    p = by_t[28333332 * 60]  # NOW-30: a call without duration
    assert (p.calls, p.p50_ms) == (1, None)
    assert sum(p.calls for p in s.series) == 23
    # the window cuts the series: 5 minutes back gives the minutes since then only
    s = snap(fixed, NOW - 300, series_minutes=60)
    assert [p.t for p in s.series] == [m * 60 for m in range(28333328, 28333334)]


def test_window_edges(store: Store) -> None:
    """Attempts at `since` count, a microsecond before does not, across hours and days."""
    since = NOW - 2 * DAY - 1234.5
    rows = [dict(agent="a", status="succeeded", t=since, ms=1.0)]
    rows.append(dict(agent="a", status="succeeded", t=since - 1e-6, ms=2.0))
    rows += [dict(agent="a", status="succeeded", t=NOW - i * 977.0, ms=3.0) for i in range(200)]
    add_attempts(store, rows)
    inside = 1 + sum(1 for i in range(200) if NOW - i * 977.0 >= since)
    assert snap(store, since).totals.calls == inside
    assert snap(store, since + 1e-6).totals.calls == inside - 1
    assert snap(store, None).totals.calls == 202
    for window in ("15m", "1h", "24h", "7d"):
        cut = NOW - parse_window(window)
        expected = sum(1 for r in rows if r["t"] >= cut)
        assert snap(store, cut).totals.calls == expected, window


# --------------------------------------------------------------------------- rollup


def rollup_from_scratch(conn: sqlite3.Connection) -> tuple[list, list]:
    hour = "CAST(started_at / 3600 AS INTEGER)"
    cols = (
        "coalesce(agent, ''), coalesce(operation, ''), status, coalesce(error_class, ''), "
        "number > 1, count(*), count(duration_ms), total(duration_ms), total(prompt_tokens), "
        "total(completion_tokens)"
    )
    rows = []
    for grain, bucket in (("h", hour), ("d", f"{hour} / 24"), ("t", "0")):
        rows += conn.execute(
            f"SELECT '{grain}', {bucket}, {cols} FROM attempts WHERE status <> 'running' "
            "GROUP BY 2, 3, 4, 5, 6, 7"
        ).fetchall()
    hours = conn.execute(
        f"SELECT {hour}, total(status IN ('succeeded', 'failed')), total(status = 'failed') "
        "FROM attempts WHERE status <> 'running' GROUP BY 1"
    ).fetchall()
    return rows, hours


def assert_rollup_exact(store: Store) -> None:
    def norm(rows: list) -> list:
        return sorted(tuple(round(x, 6) if isinstance(x, float) else x for x in r) for r in rows)

    expected, hours = store.read(lambda db: rollup_from_scratch(db.conn))
    got = store.query("SELECT * FROM attempt_rollup")
    assert norm([tuple(r.values()) for r in got]) == norm(expected)
    got_hours = store.query("SELECT * FROM attempt_hours WHERE calls <> 0 OR failed <> 0")
    assert norm([tuple(r.values()) for r in got_hours]) == norm([h for h in hours if h[1] or h[2]])
    bucket = migrations._latency_bucket("duration_ms")
    hist = store.query(
        f"SELECT coalesce(agent, '') AS agent, {bucket} AS bucket, count(*) AS n FROM attempts "
        "WHERE status IN ('succeeded', 'failed') AND duration_ms IS NOT NULL GROUP BY 1, 2"
    )
    assert sorted(tuple(r.values()) for r in store.query("SELECT * FROM latency_hist")) == sorted(
        tuple(r.values()) for r in hist
    )


def test_rollup_follows_the_runner_upsert_and_deletes(store: Store) -> None:
    def lifecycle(db: Any) -> None:
        c = db.conn
        c.execute(ATTEMPT_UPSERT, ("r", "s", 1, "a", "op", "running", NOW, *[None] * 7))
        c.execute(ATTEMPT_UPSERT, ("r", "s", 1, "a", "op", "failed", NOW, NOW + 1, 1000.0,
                                   "timeout", "timed out", None, None, None))  # fmt: skip
        # the retry schedule rewrites the failed row with next_retry_at
        c.execute(ATTEMPT_UPSERT, ("r", "s", 1, "a", "op", "failed", NOW, NOW + 1, 1000.0,
                                   "timeout", "timed out", NOW + 5, None, None))  # fmt: skip
        c.execute(ATTEMPT_UPSERT, ("r", "s", 2, "a", "op2", "running", NOW + 5, *[None] * 7))
        c.execute(ATTEMPT_UPSERT, ("r", "s", 2, "a", "op2", "succeeded", NOW + 5, NOW + 6,
                                   500.0, None, None, None, 7, 3))  # fmt: skip

    store.run_sync(lifecycle)
    assert_rollup_exact(store)
    s = snap(store, None)
    a = agent(s, "a")
    assert (a.calls, a.failures, a.retries, a.prompt_tokens) == (2, 1, 1, 7)
    store.run_sync(lambda db: db.execute("UPDATE attempts SET started_at = started_at - 7200"))
    assert_rollup_exact(store)
    store.run_sync(lambda db: db.execute("DELETE FROM attempts WHERE number = 1"))
    assert_rollup_exact(store)
    store.run_sync(lambda db: db.execute("DELETE FROM attempts"))
    assert store.query("SELECT count(*) AS n FROM attempt_rollup")[0]["n"] == 0
    assert store.query("SELECT count(*) AS n FROM attempt_hours")[0]["n"] == 0


@pytest.mark.parametrize("bulk_process", [True, False], ids=["writer-process", "writer-thread"])
def test_rollup_exact_for_batched_attempt_rows(db_path: Path, bulk_process: bool) -> None:
    """Attempt rows written in batches (the runner's path: one aggregated upsert per batch,
    triggers skipped for the batch's own rows) keep the rollups exactly what the triggers would:
    rows inserted and updated in one batch, rows from earlier batches updated, durable starts
    (`running`) finished later, and changes by plain SQL between batches (the triggers' path)."""
    import random

    rnd = random.Random(8)
    store = Store.open(db_path, bulk_process=bulk_process)
    try:
        written: dict[tuple, tuple] = {}
        for round_ in range(40):
            for _ in range(rnd.randrange(0, 30)):
                key = (f"r{rnd.randrange(3)}", f"s{rnd.randrange(8)}", rnd.randrange(1, 4))
                t = written.get(key, (None,) * 7)[6] or NOW - rnd.randrange(0, 4 * DAY_S)
                ms = rnd.choice([None, 0.4, 12.5, 150.0, 2600.0])
                status = rnd.choice(["running", "succeeded", "failed", "cancelled"])
                row = (
                    *key, rnd.choice(["a", "b", None]), rnd.choice(["op", "op2", None]), status,
                    t, None if ms is None else t + ms / 1000, ms,
                    "timeout" if status == "failed" else None,
                    "timed out" if status == "failed" else None,
                    rnd.choice([None, t + 5]), rnd.choice([None, 7]), rnd.choice([None, 3]),
                )  # fmt: skip
                written[key] = row
                store.put(ATTEMPT_ROWS, row)
            if round_ % 7 == 3:
                store.execute("UPDATE attempts SET started_at = started_at - 3600 WHERE number = 2")
            if round_ % 11 == 5:
                store.execute("DELETE FROM attempts WHERE step_id = ?", (f"s{rnd.randrange(8)}",))
            store.flush_sync()
            assert_rollup_exact(store)
        assert store.query("SELECT count(*) AS n FROM attempt_bulk")[0]["n"] == 0
        assert store.query("SELECT count(*) AS n FROM attempts")[0]["n"] > 20
    finally:
        store.close()


def test_bulk_mark_never_outlives_its_batch(store: Store) -> None:
    """Rows written by plain SQL after a batch go through the triggers again (the batch's mark
    is gone), and a batch that fails takes its mark back with it."""
    store.put(ATTEMPT_ROWS, ("r", "s", 1, "a", "op", "succeeded", NOW, NOW + 1, 1000.0,
                             None, None, None, None, None))  # fmt: skip
    store.flush_sync()
    store.run_sync(
        lambda db: db.execute(ATTEMPT_UPSERT, ("r", "s", 2, "a", "op", "failed", NOW, NOW + 1,
                                               5.0, "http", "x", None, None, None))
    )  # fmt: skip
    assert_rollup_exact(store)
    assert store.query("SELECT count(*) AS n FROM attempt_bulk")[0]["n"] == 0
    total = "SELECT sum(n) AS n FROM attempt_rollup WHERE grain = 't'"
    assert store.query(total)[0]["n"] == 2


def test_migration_backfills_the_rollup(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        with Store.open(db_path) as old:
            add_attempts(old, fixture_rows())
    with Store.open(db_path) as store:  # applies 0002_analytics
        assert_rollup_exact(store)
        same(snap(store, None).model_dump(), naive(store, None).model_dump())


# --------------------------------------------------------------------------- fast == naive


def naive(store: Store, since: float | None, **kw: Any) -> analytics.AnalyticsSnapshot:
    return store.read(lambda db: naive_compute(db.conn, since=since, now=NOW, **kw))


def same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, float) and isinstance(b, float | int):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


ERR = ["timed out after {} s", "HTTP {} from /x/{}", "worker {} died", "boom"]
EDGES = [-1e-6, 0.0, 1e-6, 1.0, 1799.0, 3599.5, 3600.0, 7200.1, 86399.0, 86400.0, 90000.0]


def attempt_rows(since: float | None) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Random attempts, many of them right at the edges of the window and of its hours."""
    times = [
        st.floats(-4 * DAY, 120, allow_nan=False).map(lambda x: NOW + x),
        st.integers(-96, 1).map(lambda h: (int(NOW // HOUR) + h) * HOUR),
        st.sampled_from([NOW - HOUR, NOW - DAY, NOW - 60, NOW]),
    ]
    if since is not None:
        times.append(st.sampled_from(EDGES).map(lambda d: since + d))
        times.append(st.sampled_from(EDGES).map(lambda d: (int(since // HOUR) + 1) * HOUR - d))
    return st.lists(
        st.fixed_dictionaries(
            {
                "agent": st.sampled_from(["a", "b", "c", None]),
                "op": st.sampled_from(["x", "y", None]),
                "status": st.sampled_from(
                    ["succeeded", "succeeded", "failed", "cancelled", "running"]
                ),
                "t": st.one_of(*times),
                "ms": st.one_of(
                    st.none(), st.floats(0, 5000, allow_nan=False), st.sampled_from([5.0])
                ),
                "cls": st.sampled_from([None, "timeout", "http"]),
                "err": st.tuples(st.sampled_from(ERR), st.integers(0, 999)).map(
                    lambda e: e[0].format(e[1], e[1] * 7)
                ),
                "n": st.integers(1, 3),
                "pt": st.one_of(st.none(), st.integers(0, 500)),
                "ct": st.one_of(st.none(), st.integers(0, 500)),
                "upsert": st.booleans(),
            }
        ),
        max_size=60,
    )


windows = st.one_of(
    st.none(),
    st.sampled_from([60.0, HOUR, DAY, 7 * DAY, 1.5 * HOUR]).map(lambda w: NOW - w),
    st.floats(-HOUR, 5 * DAY, allow_nan=False).map(lambda w: NOW - w),
    st.integers(1, 100).map(lambda h: (int(NOW // HOUR) - h) * HOUR),
)
other_rows = st.lists(
    st.tuples(
        st.sampled_from(["pending", "approved", "rejected", "succeeded", "failed"]),
        st.floats(-3 * DAY, 0, allow_nan=False),
        st.one_of(st.none(), st.floats(0, 2 * HOUR, allow_nan=False)),
        st.booleans(),
    ),
    max_size=8,
)


def write_random(store: Store, rows: list[dict], others: list[tuple], deleted: set[int]) -> None:
    def write(db: Any) -> None:
        c = db.conn
        for i, r in enumerate(rows):
            ms = r["ms"] if r["status"] != "running" else None
            final = (
                f"run{i % 3}", f"s{i}", r["n"], r["agent"], r["op"], r["status"], r["t"],
                None if ms is None else r["t"] + ms / 1000, ms,
                r["cls"] if r["status"] == "failed" else None,
                r["err"] if r["status"] == "failed" else None, None, r["pt"], r["ct"],
            )  # fmt: skip
            if r["upsert"]:  # as the runner writes it: running first, then the outcome
                c.execute(ATTEMPT_UPSERT, (*final[:5], "running", r["t"], *[None] * 7))
            c.execute(ATTEMPT_UPSERT, final)
        c.executemany(
            "DELETE FROM attempts WHERE run_id = ? AND step_id = ?",
            [(f"run{i % 3}", f"s{i}") for i in deleted],
        )
        for j, (status, t, wait, auto) in enumerate(others):
            run_status = "succeeded" if status in ("pending", "approved") else "failed"
            c.execute(
                "INSERT INTO runs(id, workflow, spec, status, created_at) VALUES (?, 'w', '{}', ?, ?)",
                (f"R{j}", run_status, NOW + t),
            )
            c.execute(
                "INSERT INTO steps(run_id, step_id, status, ended_at) VALUES (?, 'a', 'failed', ?)",
                (f"R{j}", None if wait is None else NOW + t + wait),
            )
            review = status if status in ("pending", "approved", "rejected") else "rejected"
            decided = None if review == "pending" or wait is None else NOW + t + wait
            c.execute(
                "INSERT INTO reviews(run_id, step_id, status, created_at, expires_at, decided_at, "
                "auto) VALUES (?, 'a', ?, ?, ?, ?, ?)",
                (f"R{j}", review, NOW + t, None if wait is None else NOW + t + wait, decided, auto),
            )

    store.run_sync(write)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    others=other_rows,
    since=windows,
    deleted=st.sets(st.integers(0, 59), max_size=6),
    share=st.sampled_from([0.0, 1.0]),
    sample=st.sampled_from([3, 2000]),
    minutes=st.sampled_from([5, 60]),
)
def test_fast_path_equals_naive(data, others, since, deleted, share, sample, minutes) -> None:
    rows = data.draw(attempt_rows(since), label="rows")
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "f.db") as store:
        write_random(store, rows, others, deleted)
        kw = dict(error_sample=sample, series_minutes=minutes, min_calls=1, top=5)
        fast = snap(store, since, percentile_sort_share=share, **kw)
        same(fast.model_dump(), naive(store, since, **kw).model_dump())
        assert_rollup_exact(store)


# --------------------------------------------------------------------------- query plans


def plans(store: Store, since: float | None, **kw: Any) -> list[str]:
    """EXPLAIN QUERY PLAN of every statement `compute` runs."""
    statements: list[str] = []

    def run(db: Any) -> None:
        db.conn.set_trace_callback(statements.append)
        try:
            compute(db, since=since, now=NOW, **kw)
        finally:
            db.conn.set_trace_callback(None)

    store.read(run)
    details = []
    for sql in statements:
        if sql.strip().upper() in ("BEGIN", "COMMIT"):
            continue
        rows = store.read(
            lambda db, sql=sql: db.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        )
        details += [r[-1] for r in rows]
    return details


@pytest.mark.parametrize("share", [0.0, 1.0])
@pytest.mark.parametrize("since", [None, NOW - HOUR, NOW - 7 * DAY])
def test_attempts_are_never_scanned(fixed: Store, since: float | None, share: float) -> None:
    details = plans(fixed, since, percentile_sort_share=share)
    scans = [d for d in details if d.startswith("SCAN attempts")]
    # the error sample reads the newest failures from its index and stops at its LIMIT
    assert all("attempts_failed" in d for d in scans), scans
    used = " ".join(details)
    if since is None or share == 0.0:
        assert "attempts_latency" in used
    if since is None:
        assert "attempt_rollup" in used and "attempts_started" in used  # series only


# --------------------------------------------------------------------------- CLI


def test_stats_cli_json(db_path: Path, cli: Any) -> None:
    now = time.time()
    with Store.open(db_path) as store:
        add_attempts(
            store,
            [
                dict(agent="github", op="GET /x", status="succeeded", t=now - 60, ms=120.0),
                dict(agent="github", op="GET /x", status="failed", t=now - 30, ms=80.0,
                     cls="http", err="HTTP 502 from /x/1"),
                dict(agent="llm", status="succeeded", t=now - 2 * DAY, ms=900.0, pt=10, ct=5),
            ],
        )  # fmt: skip
    r = cli("stats", "--db", str(db_path), "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["window"] == "1h"
    assert doc["totals"]["calls"] == 2
    assert [a["agent"] for a in doc["agents"]] == ["github"]
    assert doc["agents"][0]["p50_ms"] == 80.0
    assert doc["error_patterns"][0]["pattern"] == "HTTP <n> from /x/<n>"
    assert {c["name"] for c in doc["health"]["components"]} == {
        "success", "latency", "breakers", "reviews",
    }  # fmt: skip

    r = cli("stats", "--db", str(db_path), "--json", "--since", "all", "--slo", "llm=100")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert doc["totals"]["calls"] == 3 and doc["totals"]["total_tokens"] == 15
    llm = next(a for a in doc["agents"] if a["agent"] == "llm")
    assert (llm["slo_ms"], llm["within_slo"]) == (100.0, False)

    r = cli("stats", "--db", str(db_path), "--since", "all")
    assert r.code == 0, r.stderr
    assert "health" in r.stdout and "github" in r.stdout and "HTTP <n> from /x/<n>" in r.stdout


def test_stats_cli_errors(db_path: Path, tmp_path: Path, cli: Any) -> None:
    Store.open(db_path).close()
    r = cli("stats", "--db", str(db_path), "--since", "yesterday")
    assert r.code == 2 and "not a time window" in r.stderr and r.stdout == ""
    r = cli("stats", "--db", str(db_path), "--slo", "github")
    assert r.code == 2 and "AGENT=MS" in r.stderr
    r = cli("stats", "--db", str(tmp_path / "missing.db"), "--json")
    assert r.code == 3 and r.stdout == ""


def test_an_older_file_gets_steps_ended_for_ended_steps_only(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009: the index of ended steps leaves out the steps not ended (created pending, each
    updated more than once before it ends); the counts read from it stay exact."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:8])
        with Store.open(db_path) as old:
            for sid, ended in (("a", NOW - 10), ("b", NOW - DAY), ("c", None), ("d", None)):
                old.execute(
                    "INSERT INTO steps(run_id, step_id, status, ended_at) VALUES ('r', ?, ?, ?)",
                    (sid, "pending" if ended is None else "succeeded", ended),
                )
    with Store.open(db_path) as store:  # applies 0009
        sql = store.query("SELECT sql FROM sqlite_master WHERE name = 'steps_ended'")[0]["sql"]
        assert sql.split()[-5:] == ["WHERE", "ended_at", "IS", "NOT", "NULL"]
        assert snap(store, None).runs.steps_ended == 2
        assert snap(store, NOW - HOUR).runs.steps_ended == 1
        same(snap(store, None).model_dump(), naive(store, None).model_dump())


def test_an_older_file_gets_one_insert_trigger_and_the_sums_stay_exact(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0010: inserts into `attempts` run one trigger (rollups and latency histogram together)
    instead of two; rows inserted before and after the migration, then updated and deleted,
    leave every sum as counting the rows from scratch gives."""
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:9])
        with Store.open(db_path) as old:
            add_attempts(old, fixture_rows()[:6])
    with Store.open(db_path) as store:  # applies 0010
        triggers = {
            r["name"]
            for r in store.query(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%INSERT ON%'"
            )
        }
        assert triggers == {"attempts_insert"}
        add_attempts(store, [dict(r, run="run2") for r in fixture_rows()[6:]])
        assert_rollup_exact(store)
        store.execute("UPDATE attempts SET duration_ms = duration_ms * 3 WHERE id % 2 = 0")
        store.execute("DELETE FROM attempts WHERE id % 3 = 0")
        store.flush_sync()
        assert_rollup_exact(store)
        same(snap(store, None).model_dump(), naive(store, None).model_dump())
