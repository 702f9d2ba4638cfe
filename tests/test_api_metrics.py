"""`GET /metrics`: Prometheus text from the store, parsed with prometheus-client's parser."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.api import running_api, write_workflows


@pytest.fixture
async def api(tmp_path, db_path):
    async with running_api(db_path, write_workflows(tmp_path / "workflows")) as a:
        yield a


async def scrape(api) -> dict[tuple[str, tuple], float]:
    async with api.session.get(api.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def db_count(api, sql: str, *params) -> int:
    api.store.flush_sync()
    return api.store.query(sql, list(params))[0]["n"]


def seed_other_tables(store) -> None:
    now = time.time()

    def fill(db):
        db.execute(
            "INSERT INTO reviews(run_id, step_id, status, created_at) VALUES ('r', 's', 'pending', ?)",
            [now],
        )
        db.execute(
            "INSERT INTO reviews(run_id, step_id, status, created_at) VALUES ('r', 't', 'approved', ?)",
            [now],
        )
        db.execute("INSERT INTO breakers(key, agent, state) VALUES ('py', 'py', 'open')")
        db.execute("INSERT INTO breakers(key, agent, state) VALUES ('gh', 'gh', 'closed')")
        for status in ("done", "done", "undone"):
            db.execute(
                "INSERT INTO undo_log(run_id, step_id, created_at, status) VALUES ('r', 's', ?, ?)",
                [now, status],
            )

    store.run_sync(fill)


async def test_metrics_from_the_store(api):
    ok = await api.start("hello", who="m")
    bad = await api.start("flaky")
    await api.wait_run(ok)
    await api.wait_run(bad)
    seed_other_tables(api.store)
    m = await scrape(api)

    assert value(m, "flowdeck_runs", status="succeeded") == 1
    assert value(m, "flowdeck_runs", status="failed") == 1
    succeeded = db_count(api, "SELECT count(*) AS n FROM attempts WHERE status='succeeded'")
    failed = db_count(api, "SELECT count(*) AS n FROM attempts WHERE status='failed'")
    assert (succeeded, failed) == (3, 3)
    assert value(m, "flowdeck_step_attempts_total", agent="py", status="succeeded") == succeeded
    assert value(m, "flowdeck_step_attempts_total", agent="py", status="failed") == failed
    error_class = api.store.query("SELECT DISTINCT error_class FROM attempts WHERE status='failed'")
    assert len(error_class) == 1
    assert (
        value(
            m, "flowdeck_step_failures_total", agent="py", error_class=error_class[0]["error_class"]
        )
        == failed
    )
    # latency histogram per agent: cumulative buckets ending at the attempt count
    count = value(m, "flowdeck_step_duration_seconds_count", agent="py")
    assert count == succeeded + failed
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in m.items()
        if name == "flowdeck_step_duration_seconds_bucket" and dict(labels)["agent"] == "py"
    )
    assert buckets[-1] == (float("inf"), count)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert value(m, "flowdeck_step_duration_seconds_sum", agent="py") >= 0

    assert value(m, "flowdeck_reviews_pending") == 1
    assert value(m, "flowdeck_breakers_open") == 1
    assert value(m, "flowdeck_breakers", state="closed") == 1
    assert value(m, "flowdeck_undo_entries", status="done") == 2
    assert value(m, "flowdeck_undo_entries", status="undone") == 1
    # the health score of engine/analytics over the last hour, with its components
    from engine.analytics import compute

    health = api.store.read(lambda db: compute(db, since=time.time() - 3600, now=time.time()))
    assert value(m, "flowdeck_health_score") == pytest.approx(health.health.score, abs=5)
    components = {c.name for c in health.health.components}
    assert components == {"success", "latency", "breakers", "reviews"}
    for name in components:
        assert ("flowdeck_health_component_points", (("component", name),)) in m
    assert (
        value(m, "flowdeck_http_requests_total", method="POST", route="/api/runs", status="201")
        == 2
    )
    # the SSE hub's view of the events table, once it has caught up
    last = db_count(api, "SELECT max(id) AS n FROM events")
    for _ in range(500):
        if api.state.hub.head == last:
            break
        await asyncio.sleep(0.01)
    assert value(await scrape(api), "flowdeck_events_last_id") == last


async def test_scrapes_count_each_attempt_once(api):
    first = await api.start("quick")
    await api.wait_run(first)
    m1 = await scrape(api)
    m2 = await scrape(api)
    key = ("flowdeck_step_attempts_total", (("agent", "py"), ("status", "succeeded")))
    assert m1[key] == m2[key] == 1
    # an attempt seen while in flight is counted when it ends, once
    now = time.time()
    api.store.run_sync(
        lambda db: db.execute(
            "INSERT INTO attempts(run_id, step_id, number, agent, status, started_at) "
            "VALUES ('x', 'y', 1, 'shell', 'running', ?)",
            [now],
        )
    )
    m3 = await scrape(api)
    assert value(m3, "flowdeck_step_attempts_total", agent="shell", status="running") == 0
    api.store.run_sync(
        lambda db: db.execute(
            "UPDATE attempts SET status='succeeded', ended_at=?, duration_ms=1500 WHERE run_id='x'",
            [now + 1.5],
        )
    )
    second = await api.start("quick")
    await api.wait_run(second)
    for _ in range(2):
        m4 = await scrape(api)
        assert value(m4, "flowdeck_step_attempts_total", agent="shell", status="succeeded") == 1
        assert value(m4, "flowdeck_step_attempts_total", agent="py", status="succeeded") == 2
        assert value(m4, "flowdeck_step_duration_seconds_bucket", agent="shell", le="2.5") == 1
        assert value(m4, "flowdeck_step_duration_seconds_bucket", agent="shell", le="1.0") == 0
