"""The DAG runner with real python and shell steps on a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from engine.models import (
    IllegalTransition,
    RunStatus,
    StepStatus,
    WorkflowSpec,
    check_run_transition,
    check_step_transition,
)
from engine.runner import Engine
from engine.store import Store
from tests.helpers import steps as helper_steps

PY = {"py": {"kind": "python"}, "sh": {"kind": "shell"}}


def wf(steps: dict, **extra) -> WorkflowSpec:
    doc = {"name": "t", "agents": extra.pop("agents", PY), "steps": steps, **extra}
    return WorkflowSpec.model_validate(doc)


def py(fn: str, needs=(), **kw):
    args = kw.pop("args", {})
    return {"agent": "py", "with": {"call": f"tests.helpers.steps:{fn}", "args": args},
            "needs": list(needs), **kw}  # fmt: skip


def sh(cmd: str, needs=(), **kw):
    return {"agent": "sh", "with": {"run": cmd}, "needs": list(needs), **kw}


@pytest.fixture
async def engine(store):
    eng = Engine(store, max_concurrency=16)
    await eng.start()
    yield eng
    await eng.aclose()


def statuses(store: Store, run_id: str) -> dict[str, str]:
    store.flush_sync()
    return {
        r["step_id"]: r["status"]
        for r in store.query("SELECT step_id, status FROM steps WHERE run_id=?", [run_id])
    }


def events(store: Store, run_id: str) -> list[tuple[str, str | None]]:
    store.flush_sync()
    return [
        (r["kind"], r["step_id"])
        for r in store.query(
            "SELECT kind, step_id FROM events WHERE run_id=? ORDER BY id", [run_id]
        )
    ]


async def test_fan_out_fan_in_order_and_outputs(engine, store):
    spec = wf(
        {
            "a": py("echo", args={"value": "A"}),
            "b": py("echo", ["a"], args={"value": "${{ steps.a.output.value }}-b"}),
            "c": sh("printf '%s' '${{ steps.a.output.value }}-c'", ["a"]),
            "d": py("echo", ["b", "c"],
                    args={"value": "${{ steps.b.output.value }}+${{ steps.c.output.stdout }}"}),
        }
    )  # fmt: skip
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs["d"]["value"] == "A-b+A-c"
    ev = events(store, run.run_id)
    pos = {e: i for i, e in enumerate(ev)}
    for parent, child in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]:
        assert pos[("step.succeeded", parent)] < pos[("step.running", child)]
    assert ev[0] == ("run.created", None)
    assert ev[-1] == ("run.succeeded", None)
    row = store.query("SELECT output FROM steps WHERE run_id=? AND step_id='d'", [run.run_id])[0]
    assert json.loads(row["output"])["value"] == "A-b+A-c"


async def test_failure_skips_dependents_while_independent_branch_runs(engine, store):
    spec = wf(
        {
            "bad": sh("echo oops >&2; exit 3"),
            "after_bad": py("noop", ["bad"]),
            "after_after": py("noop", ["after_bad"]),
            "good": py("record", args={"name": "good", "delay": 0.2}),
            "after_good": py("noop", ["good"]),
        }
    )
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    assert statuses(store, run.run_id) == {
        "bad": "failed",
        "after_bad": "skipped",
        "after_after": "skipped",
        "good": "succeeded",
        "after_good": "succeeded",
    }
    bad = store.query("SELECT error, error_class FROM steps WHERE step_id='bad'")[0]
    assert bad["error_class"] == "exit_code"
    assert "oops" in bad["error"]
    assert "bad" in run.error


async def test_optional_failure_does_not_fail_the_run(engine, store):
    spec = wf({"opt": {**sh("exit 1"), "optional": True}, "other": py("noop")})
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED


async def test_cancel_kills_running_steps_and_ends_cleanly(engine, store, tmp_path):
    pidfile = tmp_path / "pid"
    spec = wf(
        {
            "slow": sh(f"echo $$ > {pidfile}; sleep 30"),
            "slow_py": py("sleep", args={"seconds": 30}),
            "later": py("noop", ["slow"]),
        }
    )
    run = await engine.submit(spec)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    run.cancel()
    status = await asyncio.wait_for(run.wait(), 10)
    assert status is RunStatus.CANCELLED
    assert statuses(store, run.run_id) == {
        "slow": "cancelled",
        "slow_py": "cancelled",
        "later": "cancelled",
    }
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    row = store.query("SELECT status, ended_at FROM runs WHERE id=?", [run.run_id])[0]
    assert row["status"] == "cancelled" and row["ended_at"]


async def test_priority_decides_when_slots_are_scarce(store):
    helper_steps.CALLS.clear()
    spec = wf(
        {
            "low": py("record", args={"name": "low"}, priority=-5),
            "mid": py("record", args={"name": "mid"}),
            "high": py("record", args={"name": "high"}, priority=10),
            "high2": py("record", args={"name": "high2"}, priority=10),
        }
    )
    async with Engine(store, max_concurrency=1) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert helper_steps.CALLS == ["high", "high2", "mid", "low"]  # then by age


async def test_agent_concurrency_limit(store):
    running = 0
    peak = 0

    class Counting:
        async def execute(self, agent, call):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            return {}

    spec = wf(
        {f"s{i}": py("noop") for i in range(8)},
        agents={"py": {"kind": "python", "concurrency": 2}},
    )
    async with Engine(store, executor=Counting()) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert peak == 2


async def test_run_concurrency_limit(store):
    running = 0
    peak = 0

    class Counting:
        async def execute(self, agent, call):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            return {}

    spec = wf({f"s{i}": py("noop") for i in range(8)}, concurrency=3)
    async with Engine(store, executor=Counting()) as eng:
        await eng.run(spec)
    assert peak == 3


async def test_attempt_timeout_is_a_timeout_error(engine, store):
    spec = wf({"slow": {**sh("sleep 5"), "timeout": 0.3}})
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    att = store.query("SELECT status, error_class FROM attempts WHERE step_id='slow'")
    assert att == [{"status": "failed", "error_class": "timeout"}]


async def test_sync_python_runs_in_a_thread(engine):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    spec = wf({"block": py("blocking", args={"seconds": 0.5})})
    run = await engine.run(spec)
    t.cancel()
    assert run.status is RunStatus.SUCCEEDED
    assert ticks >= 10  # the loop kept running while the function slept


async def test_retries_record_every_attempt(engine, store, tmp_path):
    counter = tmp_path / "n"
    script = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        '[ "$n" -ge 3 ] || exit 75'
    )
    spec = wf(
        {"flaky": {**sh(script), "retry": {"attempts": 4, "backoff": "fixed", "initial": 0.05,
                                           "on_exit_codes": [75]}}}
    )  # fmt: skip
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    rows = store.query(
        "SELECT number, status, error_class, next_retry_at FROM attempts ORDER BY number"
    )
    assert [(r["number"], r["status"]) for r in rows] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert rows[0]["error_class"] == "exit_code" and rows[0]["next_retry_at"] is not None
    assert ("step.retrying", "flaky") in events(store, run.run_id)


async def test_exit_code_not_listed_is_not_retried(engine, store):
    spec = wf({"s": {**sh("exit 2"), "retry": {"attempts": 3, "on_exit_codes": [75]}}})
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    assert len(store.query("SELECT * FROM attempts")) == 1


async def test_bad_expression_at_run_time_fails_the_step(engine, store):
    spec = wf(
        {
            "a": py("echo", args={"value": 1}),
            "b": py("echo", ["a"], args={"value": "${{ steps.a.output.missing }}"}),
        }
    )
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    row = store.query("SELECT error, error_class FROM steps WHERE step_id='b'")[0]
    assert row["error_class"] == "validation" and "missing" in row["error"]


async def test_interrupt_then_resume_keeps_succeeded_steps(store, db_path):
    helper_steps.CALLS.clear()
    spec = wf(
        {
            "first": py("record", args={"name": "first"}),
            "long": py("record", ["first"], args={"name": "long", "delay": 30}),
            "last": py("record", ["long"], args={"name": "last"}),
        }
    )
    async with Engine(store) as eng:
        run = await eng.submit(spec)
        while "long" not in helper_steps.CALLS:
            await asyncio.sleep(0.01)
        await eng.shutdown(grace=0)
        assert run.done.result() is RunStatus.INTERRUPTED
    assert statuses(store, run.run_id) == {
        "first": "succeeded",
        "long": "pending",
        "last": "pending",
    }

    helper_steps.CALLS.clear()
    spec2 = {"long": 0.0}
    # A new engine (as after a restart) continues it; make the long step quick this time.
    other = Store.open(db_path)
    try:
        async with Engine(other) as eng2:
            resumed = await eng2.resume(run.run_id)
            resumed.steps["long"].spec.with_["args"]["delay"] = spec2["long"]
            status = await resumed.wait()
        assert status is RunStatus.SUCCEEDED
        assert helper_steps.CALLS == ["long", "last"]  # "first" was not run again
        assert resumed.outputs["first"] == {"name": "first"}
        att = other.query("SELECT number FROM attempts WHERE step_id='long' ORDER BY number")
        assert [a["number"] for a in att] == [1, 2]
    finally:
        other.close()


async def test_resume_refuses_a_run_owned_by_a_live_engine(store):
    from engine.errors import Conflict

    spec = wf({"long": py("sleep", args={"seconds": 30})})
    async with Engine(store) as a, Engine(store) as b:
        run = await a.submit(spec)
        with pytest.raises(Conflict, match="alive"):
            await b.resume(run.run_id)
        run.cancel()
        await run.wait()


async def test_command_from_another_process_cancels(engine, store):
    spec = wf({"long": py("sleep", args={"seconds": 30})})
    run = await engine.submit(spec)
    store.run_sync(
        lambda db: db.execute(
            "INSERT INTO commands(created_at, run_id, kind) VALUES (?, ?, 'cancel_run')",
            (time.time(), run.run_id),
        )
    )
    status = await asyncio.wait_for(run.wait(), 5)
    assert status is RunStatus.CANCELLED
    assert store.query("SELECT status FROM commands")[0]["status"] == "done"


def test_state_machine_rejects_impossible_transitions():
    check_step_transition(StepStatus.PENDING, StepStatus.READY)
    with pytest.raises(IllegalTransition):
        check_step_transition(StepStatus.SUCCEEDED, StepStatus.RUNNING)
    with pytest.raises(IllegalTransition):
        check_step_transition(StepStatus.PENDING, StepStatus.SUCCEEDED)
    with pytest.raises(IllegalTransition):
        check_run_transition(RunStatus.FAILED, RunStatus.RUNNING)


async def test_every_state_change_is_one_event(engine, store):
    spec = wf({"a": py("noop"), "b": py("noop", ["a"])})
    run = await engine.run(spec)
    kinds = [k for k, _ in events(store, run.run_id)]
    assert kinds == [
        "run.created",
        "run.running",
        "step.running",
        "step.succeeded",
        "step.running",
        "step.succeeded",
        "run.succeeded",
    ]


async def test_step_hooks_wrap_the_action_in_order(store):
    from engine.errors import ErrorClass, StepError
    from engine.runner import StepHook

    calls = []

    class Tag(StepHook):
        def __init__(self, name):
            self.name = name

        def applies(self, run, st):
            return st.id != "plain"

        async def before(self, run, st, agent, params):
            calls.append(f"{self.name}.before:{st.id}")
            if st.id == "vetoed" and self.name == "outer":
                raise StepError("no", ErrorClass.REJECTED)
            return {**params, "args": {"value": self.name}} if self.name == "inner" else params

        async def after(self, run, st, output):
            calls.append(f"{self.name}.after:{st.id}")
            return {**output, "seen_by": [*output.get("seen_by", []), self.name]}

        async def failed(self, run, st, error):
            calls.append(f"{self.name}.failed:{st.id}")

    spec = wf({"a": py("echo", args={"value": 1}), "plain": py("echo", args={"value": 2}),
               "vetoed": py("echo"), "child": py("noop", ["vetoed"])})  # fmt: skip
    async with Engine(store, max_concurrency=1) as eng:
        eng.hooks += [Tag("outer"), Tag("inner")]
        run = await eng.run(spec)
    assert run.outputs["a"] == {"value": "inner", "seen_by": ["inner", "outer"]}
    assert run.outputs["plain"] == {"value": 2}
    assert calls[:4] == ["outer.before:a", "inner.before:a", "inner.after:a", "outer.after:a"]
    assert "outer.failed:vetoed" not in calls  # its own before raised: nothing to undo
    assert statuses(store, run.run_id)["vetoed"] == "rejected"
    assert statuses(store, run.run_id)["child"] == "skipped"
    assert run.status is RunStatus.FAILED


async def test_cancel_step_of_a_running_step_skips_its_dependents_and_ends_the_run(engine, store):
    spec = wf({"slow": py("sleep", args={"seconds": 30}), "after": py("echo", ["slow"])})
    run = await engine.submit(spec)
    while run.steps["slow"].status is not StepStatus.RUNNING:
        await asyncio.sleep(0.01)
    assert run.cancel_step("slow")
    status = await asyncio.wait_for(run.wait(), 10)
    assert status is RunStatus.FAILED
    assert statuses(store, run.run_id) == {"slow": "cancelled", "after": "skipped"}
    assert "slow cancelled" in run.error


async def test_cancel_right_after_submit_never_runs_the_step(engine, store, caplog):
    """A step launched but not started when the run is cancelled ends `cancelled` cleanly
    (its task returns at once; no illegal transition, no slot left taken)."""
    helper_steps.CALLS.clear()
    run = await engine.submit(wf({"a": py("record", args={"name": "a"}), "b": py("noop", ["a"])}))
    assert run.steps["a"].task is not None and not run.steps["a"].started
    run.cancel()
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.CANCELLED
    assert statuses(store, run.run_id) == {"a": "cancelled", "b": "cancelled"}
    assert helper_steps.CALLS == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert engine._active == 0


async def test_cancel_while_a_review_gate_opens(engine, store, caplog):
    """The step's task has started (its gate is writing the review, status still `ready`): the
    cancel goes through the task, so the gate never moves a cancelled step."""
    run = await engine.submit(
        wf({"a": py("noop", review={"when": "always"}), "b": py("noop", ["a"])})
    )
    st = run.steps["a"]
    while not st.started:
        await asyncio.sleep(0)
    assert st.status is StepStatus.READY
    run.cancel()
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.CANCELLED
    assert statuses(store, run.run_id) == {"a": "cancelled", "b": "cancelled"}
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_the_breakers_read_beside_the_first_runs_rows_and_a_failed_read_ends_it(store):
    """`start` begins reading the breakers' states and the first `submit` waits for that read
    while its rows are written. If the read fails, `submit` raises it, and the run whose rows
    were queued is ended `cancelled`, not left pending."""
    from engine.breaker import Breakers
    from engine.errors import DatabaseError

    real = store.aquery

    async def aquery(sql, params=()):
        if sql == Breakers.READ_ROWS:
            await asyncio.sleep(0.05)
            raise DatabaseError("breakers: unreadable")
        return await real(sql, params)

    store.aquery = aquery
    async with Engine(store, poll_commands=False) as eng:
        assert not eng._loading.done()  # start did not wait for it
        with pytest.raises(DatabaseError, match="unreadable"):
            await eng.submit(wf({"a": py("noop")}))
        await store.flush()
    runs = store.query("SELECT status, error FROM runs")
    assert runs == [{"status": "cancelled", "error": "cancelled before it started"}]
    assert store.query("SELECT status FROM steps") == [{"status": "cancelled"}]


async def test_a_submit_cancelled_while_its_rows_are_written_leaves_no_pending_run(store):
    """Cancelling `submit` (a demo quitting, a request dropped) while the run's rows are being
    written: the rows land all the same, so the run is ended as cancelled, never left pending
    with nobody to run it."""
    import threading

    gate = threading.Event()
    async with Engine(store, poll_commands=False) as eng:
        blocker = store.call(lambda db: gate.wait(10))  # the writer is busy: the rows wait
        task = asyncio.create_task(eng.submit(wf({"a": py("noop")})))
        await asyncio.sleep(0.05)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker.result()
        await store.flush()
    runs = store.query("SELECT id, status, error FROM runs")
    assert [(r["status"], r["error"]) for r in runs] == [
        ("cancelled", "cancelled before it started")
    ]
    assert store.query("SELECT status FROM steps") == [{"status": "cancelled"}]
    kinds = [
        r["kind"] for r in store.query("SELECT kind FROM events WHERE run_id = ?", (runs[0]["id"],))
    ]
    assert kinds == ["run.cancelled"]
