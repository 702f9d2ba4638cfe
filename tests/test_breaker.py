"""Circuit breakers per agent and per host, against the demo service on 127.0.0.1, with a fake
clock for cool-downs. State lives in the `breakers` table: another process (the CLI) sees it and
can reset it, and a restarted engine keeps an open circuit open."""

from __future__ import annotations

import pytest

from console.demo.service import Script
from engine.agents.base import AgentResources, create
from engine.breaker import Breakers
from engine.events import row_to_event
from engine.models import AgentSpec, RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.conftest import run_cli

QUICK = {"attempts": 6, "backoff": "fixed", "initial": 0.1, "max": 0.1}
"""Retries that wait 0.1 s (fake) even when an open circuit says how long it stays open."""


@pytest.fixture
async def engine(store, clock):
    eng = Engine(store, clock=clock, sleep=clock.sleep)
    await eng.start()
    yield eng
    await eng.aclose()


def workflow(url: str, steps: dict, breaker: dict | None = None, **extra) -> WorkflowSpec:
    agent = {"kind": "http", "base_url": url}
    if breaker is not None:
        agent["breaker"] = breaker
    doc = {"name": "breakers", "agents": {"svc": agent, **extra.pop("agents", {})},
           "steps": steps, **extra}  # fmt: skip
    return WorkflowSpec.model_validate(doc)


def get(agent: str = "svc", retry: dict | None = None, **kw) -> dict:
    return {"agent": agent, "with": {"method": "GET", "path": "/tracker/issues"},
            "retry": retry or {"attempts": 1}, **kw}  # fmt: skip


def calls(service) -> int:
    return service.service.call_report()["total"]


def rows(store) -> dict[str, dict]:
    store.flush_sync()
    return {r["key"]: r for r in store.query("SELECT * FROM breakers")}


def breaker_events(store) -> list[tuple[str, dict]]:
    store.flush_sync()
    evs = store.query("SELECT * FROM events WHERE kind LIKE 'breaker.%' ORDER BY id")
    return [(r["kind"], row_to_event(r).data) for r in evs]


def host_key(service) -> str:
    return f"host:127.0.0.1:{service.port}"


async def trip(service, engine, store, *, failures: int = 2):
    """Take the tracker down and run one step until its breakers open."""
    service.service.config.down = ["tracker"]
    spec = workflow(
        service.url,
        {"s": get(retry=QUICK)},
        breaker={"failures": failures, "cooldown": 30},
        defaults={"retry_budget": {"ratio": 0, "min_retries": failures}},
    )
    return await engine.run(spec)


# --------------------------------------------------------------------------- closed -> open


async def test_opens_after_n_failures_then_fails_fast_without_calling(service, engine, store):
    run = await trip(service, engine, store, failures=2)
    assert run.status is RunStatus.FAILED
    assert calls(service) == 2  # attempts 3..6 never reached the service
    store.flush_sync()
    att = store.query("SELECT number, error_class, error FROM attempts ORDER BY number")
    assert [a["error_class"] for a in att] == ["http", "http", *["circuit_open"] * 4]
    assert att[2]["error"].startswith("circuit open: agent svc (2 failures in a row")
    assert "next trial in 29.9 s" in att[2]["error"]  # after one 0.1 s wait
    # fast failures count against the policy's attempts but not against the retry budget
    # (min_retries is 2 and 5 retries happened)
    step = store.query("SELECT error_class, error FROM steps")[0]
    assert step["error_class"] == "circuit_open"

    state = rows(store)
    assert set(state) == {"agent:svc", host_key(service)}
    for row in state.values():
        assert row["state"] == "open" and row["failures"] == 2 and row["opened_at"]
    opened = [d for kind, d in breaker_events(store) if kind == "breaker.opened"]
    assert {d["key"] for d in opened} == {"agent:svc", host_key(service)}
    assert all(d["retry_at"] == pytest.approx(d_row["opened_at"] + 30)
               for d in opened for d_row in [state[d["key"]]])  # fmt: skip
    ev_runs = store.query("SELECT DISTINCT run_id FROM events WHERE kind='breaker.opened'")
    assert ev_runs == [{"run_id": run.run_id}]


async def test_half_open_trial_success_closes(service, engine, store, clock):
    await trip(service, engine, store)
    service.service.config.down = []
    before = calls(service)
    spec = workflow(service.url, {"s": get()}, breaker={"failures": 2, "cooldown": 30})
    clock.advance(29)
    early = await engine.run(spec)
    assert early.status is RunStatus.FAILED and calls(service) == before  # still open
    clock.advance(1)
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert calls(service) == before + 1  # the one trial call
    assert {r["state"] for r in rows(store).values()} == {"closed"}
    kinds = [(k, d["key"]) for k, d in breaker_events(store)]
    assert kinds[-4:] == [
        ("breaker.half_open", "agent:svc"),
        ("breaker.half_open", host_key(service)),
        ("breaker.closed", "agent:svc"),
        ("breaker.closed", host_key(service)),
    ]


async def test_half_open_trial_failure_opens_again(service, engine, store, clock):
    await trip(service, engine, store)
    first_open = rows(store)["agent:svc"]["opened_at"]
    clock.advance(30)
    spec = workflow(service.url, {"s": get()}, breaker={"failures": 2, "cooldown": 30})
    before = calls(service)
    assert (await engine.run(spec)).status is RunStatus.FAILED
    assert calls(service) == before + 1  # one trial, failed
    row = rows(store)["agent:svc"]
    assert row["state"] == "open" and row["opened_at"] > first_open
    assert (
        "trial call failed"
        in [d for k, d in breaker_events(store) if k == "breaker.opened"][-1]["reason"]
    )
    assert (await engine.run(spec)).status is RunStatus.FAILED
    assert calls(service) == before + 1  # open again: nothing reached the service


async def test_half_open_lets_only_trial_calls_through(service, engine, store, clock):
    await trip(service, engine, store)
    clock.advance(30)
    service.service.config.down = []
    service.service.add_script(Script(path_prefix="/tracker/issues", responses=[{"delay": 0.3}]))
    spec = workflow(
        service.url,
        {f"s{i}": get(optional=True) for i in range(3)},
        breaker={"failures": 2, "cooldown": 30, "trial_calls": 1},
    )
    before = calls(service)
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED  # optional steps
    store.flush_sync()
    classes = sorted(
        r["error_class"] or "ok" for r in store.query("SELECT error_class FROM steps WHERE run_id=?",
                                                      [run.run_id])
    )  # fmt: skip
    assert classes == ["circuit_open", "circuit_open", "ok"]
    assert calls(service) == before + 1
    msgs = store.query(
        "SELECT error FROM steps WHERE error_class='circuit_open' AND run_id=?", [run.run_id]
    )
    assert all("trial call in progress" in m["error"] for m in msgs)


async def test_failure_ratio_over_the_window_opens(service, store, clock):
    service.service.add_script(
        Script(path_prefix="/tracker/issues",
               responses=[{}, {"status": 500}, {}, {"status": 500}])
    )  # fmt: skip
    spec = workflow(
        service.url,
        {f"s{i}": get(optional=True) for i in range(6)},
        breaker={"failures": 100, "failure_ratio": 0.5, "min_calls": 4, "window": 60},
    )
    async with Engine(store, clock=clock, sleep=clock.sleep, max_concurrency=1) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert calls(service) == 4  # s4 and s5 failed fast
    store.flush_sync()
    got = store.query("SELECT step_id, error_class FROM steps ORDER BY step_id")
    assert [g["error_class"] for g in got] == [None, "http", None, "http", "circuit_open",
                                               "circuit_open"]  # fmt: skip
    reason = next(d for k, d in breaker_events(store) if k == "breaker.opened")["reason"]
    assert reason.startswith("2 of 4 calls failed in 60 s")


async def test_client_errors_do_not_open_it(service, engine, store):
    service.service.add_script(
        Script(path_prefix="/tracker/issues", responses=[{"status": 404}] * 5)
    )
    spec = workflow(
        service.url, {f"s{i}": get(optional=True) for i in range(5)}, breaker={"failures": 2}
    )
    await engine.run(spec)
    assert calls(service) == 5
    assert {b.state.value for b in engine.breakers.by_key.values()} == {"closed"}
    assert rows(store) == {}


async def test_host_breaker_guards_every_agent_of_that_host(service, engine, store):
    await trip(service, engine, store)
    spec = workflow(
        service.url,
        {"s": get(agent="other")},
        agents={"other": {"kind": "http", "base_url": service.url + "/tracker",
                          "breaker": {"failures": 2}}},
    )  # fmt: skip
    before = calls(service)
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    assert calls(service) == before
    err = store.query("SELECT error FROM steps WHERE run_id=?", [run.run_id])[0]["error"]
    assert err.startswith(f"circuit open: host 127.0.0.1:{service.port}")
    assert engine.breakers.by_key["agent:other"].state.value == "closed"
    assert "agent:other" not in rows(store)  # a breaker that never failed writes nothing


# --------------------------------------------------------------------------- persistence


async def test_a_restarted_engine_keeps_the_circuit_open(service, engine, store, db_path, clock):
    await trip(service, engine, store)
    await engine.aclose()
    before = calls(service)
    other = Store.open(db_path)
    try:
        async with Engine(other, clock=clock, sleep=clock.sleep) as again:
            spec = workflow(service.url, {"s": get()}, breaker={"failures": 2, "cooldown": 30})
            run = await again.run(spec)
        assert run.status is RunStatus.FAILED
        assert calls(service) == before
        other.flush_sync()
        err = other.query("SELECT error_class FROM steps WHERE run_id=?", [run.run_id])[0]
        assert err["error_class"] == "circuit_open"
    finally:
        other.close()


async def test_another_process_sees_and_resets_it(service, engine, store, db_path):
    await trip(service, engine, store)
    listed = run_cli("breakers", "--json", "--db", str(db_path)).json()["breakers"]
    assert [(b["key"], b["state"]) for b in listed] == [
        ("agent:svc", "open"),
        (host_key(service), "open"),
    ]
    assert listed[0]["detail"].startswith("2 failures in a row")
    assert listed[0]["retry_at"] == pytest.approx(listed[0]["opened_at"] + 30)
    text = run_cli("breakers", "--db", str(db_path)).stdout
    assert "agent:svc" in text and "open" in text

    for key in ("agent:svc", host_key(service)):
        res = run_cli("breakers", "reset", key, "--as", "ana", "--db", str(db_path))
        assert res.code == 0, res.stderr
    missing = run_cli("breakers", "reset", "agent:nope", "--db", str(db_path))
    assert missing.code == 2 and "no circuit breaker 'agent:nope'" in missing.stderr

    # the live engine takes the reset into account: the service is called again
    service.service.config.down = []
    before = calls(service)
    spec = workflow(service.url, {"s": get()}, breaker={"failures": 2, "cooldown": 30})
    assert (await engine.run(spec)).status is RunStatus.SUCCEEDED
    assert calls(service) == before + 1
    reset = [d for k, d in breaker_events(store) if k == "breaker.closed"]
    assert {d["reason"] for d in reset} == {"reset by ana"}


# --------------------------------------------------------------------------- settings


def test_which_agents_get_a_breaker(store):
    from engine.events import EventLog

    breakers = Breakers(store, EventLog(store))
    res = AgentResources()

    def guards(agent_id, **spec):
        return [
            b.key for b in breakers.for_agent(agent_id, create(agent_id, AgentSpec(**spec), res))
        ]

    assert guards("py", kind="python") == []
    assert guards("sh", kind="shell", breaker={"failures": 3}) == ["agent:sh"]
    assert guards("gh", kind="http", base_url="https://api.example.com/v3") == [
        "agent:gh",
        "host:api.example.com:443",
    ]
    assert guards("off", kind="http", base_url="http://x:81", breaker={"enabled": False}) == []
    assert guards("llm", kind="llm", base_url="http://127.0.0.1:9/v1", model="m") == [
        "agent:llm",
        "host:127.0.0.1:9",
    ]


def test_bad_breaker_settings_are_reported_with_their_place(tmp_path):
    wf = tmp_path / "bad.yaml"
    wf.write_text(
        "name: bad\n"
        "agents:\n  svc: {kind: http, base_url: 'http://127.0.0.1:1',\n"
        "        breaker: {failures: 0, cooldown: -1, failure_ratio: 2, colldown: 3}}\n"
        "steps:\n  s: {agent: svc, with: {path: /x}}\n"
    )
    res = run_cli("validate", str(wf))
    assert res.code == 2
    out = res.stderr
    for field in ("failures", "cooldown", "failure_ratio"):
        assert f"agents.svc.breaker.{field}" in out, out
    assert "did you mean 'cooldown'" in out
    assert "Traceback" not in out
