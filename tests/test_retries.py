"""Retries end to end: the demo service on 127.0.0.1 fails on a script, the engine retries
through tenacity by error class, honours Retry-After, records every attempt, and stops at the
retry budget. Waits go through a fake clock (nothing sleeps for real)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from console.demo.service import Script
from engine.errors import ErrorClass, StepError
from engine.events import row_to_event
from engine.models import RetryBudgetSpec, RetryPolicy, RunStatus, WorkflowSpec
from engine.retries import RetryBudget, SlidingCount, run_with_retries, should_retry
from engine.runner import Engine
from tests.conftest import run_cli


@pytest.fixture
async def engine(store, clock):
    eng = Engine(store, clock=clock, sleep=clock.sleep)
    await eng.start()
    yield eng
    await eng.aclose()


def workflow(url: str, steps: dict, agent: dict | None = None, **extra) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": "retries", "agents": {"svc": {"kind": "http", "base_url": url, **(agent or {})}},
         "steps": steps, **extra}
    )  # fmt: skip


def get(path: str = "/tracker/issues", **kw) -> dict:
    return {"agent": "svc", "with": {"method": "GET", "path": path}, **kw}


def script(service, *responses: dict, path: str = "/tracker/issues") -> None:
    service.service.add_script(Script(path_prefix=path, responses=list(responses)))


def attempts(store, step: str = "s") -> list[dict]:
    store.flush_sync()
    return store.query(
        "SELECT number, status, error_class, error, next_retry_at, started_at FROM attempts "
        "WHERE step_id=? ORDER BY number",
        [step],
    )


def retry_events(store, run_id: str) -> list[dict]:
    store.flush_sync()
    rows = store.query(
        "SELECT * FROM events WHERE run_id=? AND kind='step.retrying' ORDER BY id", [run_id]
    )
    return [row_to_event(r).data for r in rows]


def calls(service, method: str = "GET") -> int:
    return sum(c["count"] for c in service.service.call_report()["calls"] if c["method"] == method)


# --------------------------------------------------------------------------- scripted failures


async def test_500_twice_then_200_succeeds_on_the_third_attempt(service, engine, store, clock):
    script(service, {"status": 500}, {"status": 500})
    retry = {"attempts": 4, "backoff": "exponential", "initial": 0.5, "multiplier": 2,
             "jitter": False}  # fmt: skip
    run = await engine.run(workflow(service.url, {"s": get(retry=retry)}))
    assert run.status is RunStatus.SUCCEEDED
    assert clock.sleeps == [0.5, 1.0]
    rows = attempts(store)
    assert [(a["number"], a["status"], a["error_class"]) for a in rows] == [
        (1, "failed", "http"),
        (2, "failed", "http"),
        (3, "succeeded", None),
    ]
    assert "HTTP 500" in rows[0]["error"]
    # next_retry_at: when the failed attempt's successor was due
    assert rows[0]["next_retry_at"] == pytest.approx(rows[1]["started_at"])
    assert rows[1]["next_retry_at"] == pytest.approx(rows[2]["started_at"])
    ev = retry_events(store, run.run_id)
    assert [(e["attempt"], e["of"], e["wait"], e["error_class"]) for e in ev] == [
        (2, 4, 0.5, "http"),
        (3, 4, 1.0, "http"),
    ]
    assert calls(service) == 3


async def test_429_retry_after_is_honoured(service, engine, store, clock):
    script(service, {"status": 429, "retry_after": 7})
    retry = {"attempts": 3, "backoff": "exponential", "initial": 0.1, "max": 30}
    run = await engine.run(workflow(service.url, {"s": get(retry=retry)}))
    assert run.status is RunStatus.SUCCEEDED
    assert clock.sleeps == [7.0]
    (ev,) = retry_events(store, run.run_id)
    assert ev["retry_after"] == 7.0 and ev["wait"] == 7.0


async def test_retry_after_is_capped_by_max(service, engine, store, clock):
    script(service, {"status": 503, "retry_after": 100})
    retry = {"attempts": 2, "backoff": "fixed", "initial": 0.1, "max": 5}
    run = await engine.run(workflow(service.url, {"s": get(retry=retry)}))
    assert run.status is RunStatus.SUCCEEDED
    assert clock.sleeps == [5.0]


@pytest.mark.parametrize(
    ("status", "retried"),
    [(400, False), (401, False), (404, False), (409, False), (422, False),
     (408, True), (429, True), (500, True), (502, True), (503, True), (504, True)],
)  # fmt: skip
async def test_http_status_decides_retry(service, engine, store, clock, status, retried):
    script(service, {"status": status})
    run = await engine.run(workflow(service.url, {"s": get(retry={"attempts": 5})}))
    rows = attempts(store)
    if retried:
        assert run.status is RunStatus.SUCCEEDED
        assert [a["status"] for a in rows] == ["failed", "succeeded"]
    else:
        assert run.status is RunStatus.FAILED
        assert [(a["status"], a["error_class"]) for a in rows] == [("failed", "http")]
        assert clock.sleeps == []
        assert calls(service) == 1
        step = store.query("SELECT error, error_class FROM steps WHERE step_id='s'")[0]
        assert step["error_class"] == "http" and f"HTTP {status}" in step["error"]


async def test_timeout_is_retried(service, engine, store):
    script(service, {"delay": 5})  # the first answer comes too late
    run = await engine.run(
        workflow(service.url, {"s": get(timeout=0.3, retry={"attempts": 3, "backoff": "none"})})
    )
    assert run.status is RunStatus.SUCCEEDED
    rows = attempts(store)
    assert [(a["status"], a["error_class"]) for a in rows] == [
        ("failed", "timeout"),
        ("succeeded", None),
    ]


async def test_connection_refused_is_retried_until_attempts_run_out(engine, store, clock):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    spec = workflow(
        f"http://127.0.0.1:{port}",
        {"s": get(retry={"attempts": 3, "backoff": "fixed", "initial": 2})},
        agent={"breaker": {"enabled": False}},
    )
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    assert [(a["status"], a["error_class"]) for a in attempts(store)] == [
        ("failed", "connection")
    ] * 3
    assert clock.sleeps == [2.0, 2.0]


async def test_retry_now_command_cuts_a_backoff_short(service, store):
    """Real time here: a 60 s backoff ends as soon as another process writes `retry_now`."""
    import time

    script(service, {"status": 503})
    retry = {"attempts": 2, "backoff": "fixed", "initial": 60, "max": 60}
    async with Engine(store) as eng:
        run = await eng.submit(workflow(service.url, {"s": get(retry=retry)}))
        while run.steps["s"].status.value != "retrying":
            await asyncio.sleep(0.01)
        store.run_sync(
            lambda db: db.execute(
                "INSERT INTO commands(created_at, run_id, step_id, kind) VALUES (?,?,?,?)",
                (time.time(), run.run_id, "s", "retry_now"),
            )
        )
        assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- visible attempts


async def test_show_lists_every_attempt_and_the_progress_says_when(service, engine, store, db_path):
    script(service, {"status": 502}, {"status": 502})
    retry = {"attempts": 4, "backoff": "fixed", "initial": 1.3}
    run = await engine.run(workflow(service.url, {"s": get(retry=retry)}))
    await store.flush()

    shown = run_cli("show", run.run_id, "--json", "--db", str(db_path)).json()
    (step,) = shown["steps"]
    assert step["attempt"] == 3 and step["max_attempts"] == 4
    assert [(a["number"], a["status"], a["error_class"]) for a in step["attempts"]] == [
        (1, "failed", "http"),
        (2, "failed", "http"),
        (3, "succeeded", None),
    ]
    assert all(a["started_at"] and a["ended_at"] and a["duration_ms"] is not None
               for a in step["attempts"])  # fmt: skip
    assert step["attempts"][0]["next_retry_at"] is not None
    text = run_cli("show", run.run_id, "--db", str(db_path)).stdout
    assert "attempts" in text and "HTTP 502" in text

    # what a console shows while the step waits: "attempt 2/4 in 1.3 s"
    from console.progress import RunProgress

    rows = store.query(
        "SELECT * FROM events WHERE run_id=? AND kind='step.retrying' ORDER BY id LIMIT 1",
        [run.run_id],
    )
    progress = RunProgress(run.run_id, "retries", 1, live=False)
    progress.on_event(row_to_event(rows[0]))
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(progress.render())
    assert "attempt 2/4 in 1.3 s" in console.export_text() or "attempt 2/4 in 1.2 s" in (
        console.export_text()
    )


# --------------------------------------------------------------------------- budgets


async def test_run_budget_stops_a_retry_storm(service, engine, store):
    service.service.config.down = ["tracker"]  # every call answers 503
    steps = {f"s{i}": get(retry={"attempts": 3, "backoff": "none"}) for i in range(20)}
    spec = workflow(
        service.url,
        steps,
        agent={"breaker": {"enabled": False}},
        defaults={"retry_budget": {"ratio": 0.2, "min_retries": 2, "window": 60}},
        concurrency=50,
    )
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    store.flush_sync()
    retries = store.query("SELECT count(*) AS n FROM attempts WHERE number > 1")[0]["n"]
    assert retries == 2 + int(0.2 * 20)  # min_retries + 20% of the first attempts
    assert calls(service) == 20 + retries
    budget = store.query("SELECT error FROM steps WHERE error_class='budget'")
    assert len(budget) >= 20 - retries
    assert all("retry budget of run" in r["error"] and "exhausted" in r["error"]
               and "HTTP 503" in r["error"] for r in budget)  # fmt: skip


async def test_agent_budget_is_shared_by_runs_and_slides(service, engine, store, clock):
    service.service.config.down = ["tracker"]
    spec = workflow(
        service.url,
        {"s": get(retry={"attempts": 3, "backoff": "none"})},
        agent={"breaker": {"enabled": False},
               "retry_budget": {"ratio": 0, "min_retries": 1, "window": 60}},
    )  # fmt: skip
    first = await engine.run(spec)
    second = await engine.run(spec)
    clock.advance(61)  # the window slides past the spent retry
    third = await engine.run(spec)
    store.flush_sync()

    def per_run(run):
        return store.query("SELECT count(*) AS n FROM attempts WHERE run_id=?", [run.run_id])[0][
            "n"
        ]

    assert [per_run(r) for r in (first, second, third)] == [2, 1, 2]
    err = store.query("SELECT error, error_class FROM steps WHERE run_id=?", [second.run_id])[0]
    assert err["error_class"] == "budget"
    assert err["error"].startswith("retry budget of agent svc exhausted")


def test_budget_window_slides():
    budget = RetryBudget(RetryBudgetSpec(ratio=0.5, min_retries=1, window=10), "run x")
    for _ in range(4):
        budget.first(100.0)
    assert budget.allowed(100.0) == 3
    for _ in range(3):
        assert budget.has_room(101.0)
        budget.take(101.0)
    assert not budget.has_room(101.0)
    assert "3 retries for 4 first attempts" in budget.refusal(101.0)
    assert budget.has_room(112.0)  # the retries left the window (and the first attempts too)
    assert budget.allowed(112.0) == 1


def test_sliding_count_forgets_old_slices():
    c = SlidingCount(10, buckets=10)
    c.add(0.5)
    c.add(5.5, 2)
    assert c.total(9.9) == 3
    assert c.total(10.7) == 2  # the slice of 0.5 fell out
    assert c.total(100) == 0


# --------------------------------------------------------------------------- classification


def err(cls: ErrorClass, **kw) -> StepError:
    return StepError("x", cls, **kw)


@pytest.mark.parametrize(
    ("error", "policy", "expected"),
    [
        (err(ErrorClass.TIMEOUT), {}, True),
        (err(ErrorClass.CONNECTION), {}, True),
        (err(ErrorClass.CIRCUIT_OPEN), {}, True),
        (err(ErrorClass.HTTP, status=503), {}, True),
        (err(ErrorClass.HTTP, status=408), {}, True),
        (err(ErrorClass.HTTP, status=400), {}, False),
        (err(ErrorClass.HTTP, status=403), {}, False),
        (err(ErrorClass.EXIT_CODE, exit_code=75), {"on_exit_codes": [75]}, True),
        (err(ErrorClass.EXIT_CODE, exit_code=1), {"on_exit_codes": [75]}, False),
        (err(ErrorClass.VALIDATION), {}, False),
        (err(ErrorClass.VALIDATION), {"on_error": ["validation"]}, True),
        (err(ErrorClass.CANCELLED), {}, False),
        (err(ErrorClass.BUDGET), {}, False),
        (err(ErrorClass.REJECTED), {}, False),
        (err(ErrorClass.INTERRUPTED), {}, False),
        (err(ErrorClass.INTERNAL, retryable=True), {}, True),
        (err(ErrorClass.INTERNAL), {}, False),
        (RuntimeError("not a step error"), {}, False),
    ],
)
def test_error_classes_decide(error, policy, expected):
    assert should_retry(RetryPolicy(attempts=3, **policy), error) is expected


async def test_backoff_shapes_and_jitter_bounds():
    async def failing(n):
        raise StepError("down", ErrorClass.CONNECTION)

    async def waits(**policy) -> list[float]:
        seen: list[float] = []

        async def sleep(s):
            seen.append(s)

        with pytest.raises(StepError):
            await run_with_retries(RetryPolicy(**policy), failing, sleep=sleep)
        return seen

    assert await waits(attempts=6, initial=1, multiplier=2, max=5, jitter=False) == [1, 2, 4, 5, 5]
    assert await waits(attempts=4, backoff="fixed", initial=0.25) == [0.25] * 3
    assert await waits(attempts=3, backoff="immediate") == [0, 0]
    for _ in range(20):
        jittered = await waits(attempts=6, initial=1, multiplier=2, max=5, jitter=True)
        assert all(0 <= w <= cap for w, cap in zip(jittered, [1, 2, 4, 5, 5], strict=True))


async def test_first_attempt_needs_no_tenacity():
    """The fast path: nothing fails, so no retry machinery and no budget question."""
    asked = []

    async def ok(n):
        return {"n": n}

    out = await run_with_retries(
        RetryPolicy(attempts=4), ok, allow=lambda e: asked.append(e) or None
    )
    assert out == {"n": 1} and asked == []


def test_bad_retry_settings_are_reported_with_their_place(tmp_path):
    wf = tmp_path / "bad.yaml"
    wf.write_text(
        "name: bad\nagents: {sh: {kind: shell}}\n"
        "defaults: {retry_budget: {ratio: -1}}\n"
        "steps:\n  s: {agent: sh, with: {run: 'true'}, retry: {attempts: 0, backoff: slow}}\n"
    )
    res = run_cli("validate", str(wf))
    assert res.code == 2
    lines = res.stderr.strip().splitlines()
    assert any("defaults.retry_budget.ratio" in line for line in lines), lines
    assert any("steps.s.retry.attempts" in line for line in lines), lines
    assert any("steps.s.retry.backoff" in line for line in lines), lines
    assert "Traceback" not in res.stderr
    assert json.loads(run_cli("validate", str(wf), "--json").stdout)["ok"] is False
