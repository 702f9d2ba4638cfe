"""Review gates in the engine: real python steps, a real SQLite store, decisions in process and
from another store connection (the CLI-as-a-subprocess versions are in test_reviews_cli.py)."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from engine import preferences, reviews
from engine.errors import Conflict, InputError, NotFound
from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.helpers import steps as helper_steps

PY = {"py": {"kind": "python"}}


def wf(steps: dict, **extra) -> WorkflowSpec:
    doc = {"name": "gates", "agents": extra.pop("agents", PY), "steps": steps, **extra}
    return WorkflowSpec.model_validate(doc)


def py(fn: str, needs=(), **kw):
    args = kw.pop("args", {})
    return {"agent": "py", "with": {"call": f"tests.helpers.steps:{fn}", "args": args},
            "needs": list(needs), **kw}  # fmt: skip


def gated(name: str, needs=(), review=None, **kw):
    return py("record", needs, args={"name": name}, review=review or {"when": "always"}, **kw)


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll `predicate` (sync or async) until it is truthy; a generous timeout only to avoid
    hanging, never a timing assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def statuses(store: Store, run_id: str) -> dict[str, str]:
    store.flush_sync()
    rows = store.query("SELECT step_id, status FROM steps WHERE run_id=?", [run_id])
    return {r["step_id"]: r["status"] for r in rows}


def review_rows(store: Store, run_id: str | None = None) -> list[dict]:
    store.flush_sync()
    return store.read(lambda db: reviews.list_reviews(db, run_id=run_id, limit=1000))


async def pending_for(store: Store, run_id: str, n: int) -> dict[str, dict]:
    """Wait until `run_id` has `n` pending reviews; returns them by step id."""

    def ready():
        rows = store.read(lambda db: reviews.pending_reviews(db, run_id=run_id))
        return {r["step_id"]: r for r in rows} if len(rows) >= n else None

    return await until(lambda: asyncio.to_thread(ready), what=f"{n} pending reviews")


@pytest.fixture(autouse=True)
def _clear_calls():
    helper_steps.CALLS.clear()


@pytest.fixture
async def engine(store):
    eng = Engine(store, max_concurrency=16)
    await eng.start()
    yield eng
    await eng.aclose()


# --------------------------------------------------------------------------- gates


async def test_gate_waits_without_a_slot_while_other_branches_run(store):
    spec = wf(
        {
            "triage": py("echo", args={"value": "PR 42 is stale"}),
            "close": {
                **py("record", ["triage"], args={"name": "close",
                                                 "why": "${{ steps.triage.output.value }}"}),
                "destructive": True,
                "description": "close the stale PR",
                "review": {"when": "always", "reason": "closes a PR"},
            },
            "announce": py("record", ["close"], args={"name": "announce"}),
            "other1": py("record", args={"name": "other1"}),
            "other2": py("record", ["other1"], args={"name": "other2"}),
        },
        concurrency=1,  # one slot for the run: the waiting gate must not hold it
    )  # fmt: skip
    async with Engine(store, max_concurrency=1) as eng:
        run = await eng.submit(spec)
        pending = await pending_for(store, run.run_id, 1)
        await until(lambda: "other2" in helper_steps.CALLS, what="the other branch")
        assert statuses(store, run.run_id)["close"] == "waiting_review"
        assert "close" not in helper_steps.CALLS
        row = pending["close"]
        assert row["kind"] == "gate" and row["status"] == "pending"
        assert row["agent"] == "py" and row["operation"] == "tests.helpers.steps:record"
        assert row["pattern"] == "py:tests.helpers.steps:record"
        assert row["params"]["args"] == {"name": "close", "why": "PR 42 is stale"}
        assert row["upstream"] == {"steps.triage.output.value": "PR 42 is stale"}
        assert row["reason"] == "closes a PR" and row["destructive"] is True
        assert row["description"] == "close the stale PR" and row["workflow"] == "gates"

        decided = await eng.decide(row["id"], "approve", "alice", "looks right")
        assert decided["status"] == "approved" and decided["reviewer"] == "alice"
        status = await asyncio.wait_for(run.wait(), 10)
    assert status is RunStatus.SUCCEEDED
    assert helper_steps.CALLS[-2:] == ["close", "announce"]
    kinds = [
        (r["kind"], r["step_id"])
        for r in store.query("SELECT kind, step_id FROM events WHERE run_id=? ORDER BY id",
                             [run.run_id])
    ]  # fmt: skip
    close_events = [k for k, s in kinds if s == "close" and k.startswith(("step.", "review."))]
    assert close_events == [
        "review.opened",
        "step.waiting_review",
        "review.decided",
        "step.running",
        "step.succeeded",
    ]


@pytest.mark.parametrize("optional", [False, True])
async def test_rejection_ends_the_step_rejected_and_skips_dependents(engine, store, optional):
    spec = wf(
        {
            "risky": gated("risky", optional=optional),
            "after": py("record", ["risky"], args={"name": "after"}),
            "free": py("record", args={"name": "free"}),
        }
    )
    run = await engine.submit(spec)
    row = (await pending_for(store, run.run_id, 1))["risky"]
    await engine.decide(row["id"], "reject", "bob", "not today")
    status = await asyncio.wait_for(run.wait(), 10)
    assert status is (RunStatus.SUCCEEDED if optional else RunStatus.FAILED)
    assert statuses(store, run.run_id) == {"risky": "rejected", "after": "skipped",
                                            "free": "succeeded"}  # fmt: skip
    step = store.query("SELECT error, error_class FROM steps WHERE step_id='risky'")[0]
    assert step == {"error": "rejected by bob: not today", "error_class": "rejected"}
    assert "risky" not in helper_steps.CALLS
    if not optional:
        assert "rejected by bob" in run.error


@pytest.mark.parametrize("order", list(itertools.permutations("abc")))
async def test_three_pending_gates_each_decision_resumes_only_its_own_step(engine, store, order):
    spec = wf(
        {
            "a": gated("a"), "b": gated("b"), "c": gated("c"),
            "a2": py("record", ["a"], args={"name": "a2"}),
            "b2": py("record", ["b"], args={"name": "b2"}),
            "c2": py("record", ["c"], args={"name": "c2"}),
        }
    )  # fmt: skip
    run = await engine.submit(spec)
    pending = await pending_for(store, run.run_id, 3)
    decisions = dict(zip(order, ["approve", "reject", "approve"], strict=True))
    for n, step in enumerate(order):
        await engine.decide(pending[step]["id"], decisions[step], "carol")
        want = "succeeded" if decisions[step] == "approve" else "rejected"
        await until(lambda s=step, w=want: statuses(store, run.run_id)[s] == w, what=step)
        now = statuses(store, run.run_id)
        for later in order[n + 1 :]:
            assert now[later] == "waiting_review", (step, later, now)
            assert later not in helper_steps.CALLS
        assert [c for c in helper_steps.CALLS if len(c) == 1] == [
            s for s in order[: n + 1] if decisions[s] == "approve"
        ]
    status = await asyncio.wait_for(run.wait(), 10)
    assert status is RunStatus.FAILED  # one was rejected
    final = statuses(store, run.run_id)
    for step in "abc":
        ok = decisions[step] == "approve"
        assert final[step] == ("succeeded" if ok else "rejected")
        assert final[f"{step}2"] == ("succeeded" if ok else "skipped")
    assert {r["step_id"]: r["status"] for r in review_rows(store, run.run_id)} == {
        s: ("approved" if d == "approve" else "rejected") for s, d in decisions.items()
    }


async def test_decision_written_by_another_connection_is_picked_up(engine, store, db_path):
    spec = wf({"g": gated("g")})
    run = await engine.submit(spec)
    row = (await pending_for(store, run.run_id, 1))["g"]
    other = Store.open(db_path)  # another writer, as another process would have
    try:
        await asyncio.to_thread(reviews.decide, other, row["id"], "approve", "dave")
    finally:
        other.close()
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- when


async def test_when_destructive_and_confidence_conditions(engine, store):
    conf = "${{ steps.score.output.value }}"
    spec = wf(
        {
            "score": py("echo", args={"value": 0.5}),
            "high": py("echo", args={"value": 0.95}),
            "word": py("echo", args={"value": "very sure"}),
            "d": gated("d", destructive=True, review={"when": "destructive"}),
            "nd": gated("nd", review={"when": "destructive"}),
            "low": gated("low", ["score"], review={"when": "confidence < 0.8", "confidence": conf}),
            "ok": gated("ok", ["high"], review={"when": "confidence < 0.8",
                                                "confidence": "${{ steps.high.output.value }}"}),
            "bad": gated("bad", ["word"], review={"when": "confidence <= 0.8",
                                                  "confidence": "${{ steps.word.output.value }}"}),
            "never": gated("never", review={"when": "never"}),
        }
    )  # fmt: skip
    run = await engine.submit(spec)
    pending = await pending_for(store, run.run_id, 3)
    await until(lambda: {"nd", "ok", "never"} <= set(helper_steps.CALLS), what="ungated steps")
    assert set(pending) == {"d", "low", "bad"}
    assert pending["low"]["confidence"] == 0.5
    assert pending["low"]["reason"] == "confidence 0.5 < 0.8"
    assert pending["low"]["upstream"] == {"steps.score.output.value": 0.5}
    assert pending["bad"]["confidence"] is None
    assert pending["bad"]["reason"].startswith("confidence unknown")
    assert pending["d"]["reason"] == "destructive step d: py tests.helpers.steps:record"
    for row in pending.values():
        await engine.decide(row["id"], "approve", "erin")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize(
    ("on_timeout", "step_status", "review_status", "error_class"),
    [
        ("reject", "rejected", "rejected", "rejected"),
        ("approve", "succeeded", "approved", None),
        ("fail", "failed", "expired", "timeout"),
    ],
)
async def test_timeout_applies_on_timeout(store, on_timeout, step_status, review_status,
                                          error_class):  # fmt: skip
    now = [1_000_000.0]
    spec = wf({"g": gated("g", review={"when": "always", "timeout": 3600,
                                       "on_timeout": on_timeout})})  # fmt: skip
    async with Engine(store, clock=lambda: now[0]) as eng:
        run = await eng.submit(spec)
        row = (await pending_for(store, run.run_id, 1))["g"]
        assert row["expires_at"] == now[0] + 3600
        now[0] += 3601  # nobody looks: the engine's deadline fires on its own clock
        status = await asyncio.wait_for(run.wait(), 10)
    assert statuses(store, run.run_id)["g"] == step_status
    assert status is (RunStatus.SUCCEEDED if on_timeout == "approve" else RunStatus.FAILED)
    row = reviews.get_review(store.reader(), row["id"])
    assert row["status"] == review_status and row["reviewer"] == "timeout" and row["auto"]
    assert row["comment"] == f"no decision within 3600 s (on_timeout: {on_timeout})"
    step = store.query("SELECT error, error_class FROM steps WHERE step_id='g'")[0]
    assert step["error_class"] == error_class
    with pytest.raises(Conflict, match=r"expired at .*on_timeout"):
        reviews.decide(store, row["id"], "approve", "late")


async def test_real_short_timeout_fires(engine, store):
    spec = wf({"g": gated("g", review={"when": "always", "timeout": 0.3})})
    run = await engine.run(spec)
    assert run.status is RunStatus.FAILED
    assert statuses(store, run.run_id)["g"] == "rejected"


async def test_late_decision_applies_the_timeout_when_no_engine_is_looking(store, db_path):
    now = [2_000_000.0]
    spec = wf({"g": gated("g", review={"when": "always", "timeout": 60, "on_timeout": "fail"})})
    async with Engine(store, clock=lambda: now[0]) as eng:
        run = await eng.submit(spec)
        row = (await pending_for(store, run.run_id, 1))["g"]
        await eng.shutdown(grace=0)
    assert run.done.result() is RunStatus.INTERRUPTED
    assert reviews.get_review(store.reader(), row["id"])["status"] == "pending"
    with pytest.raises(Conflict, match="expired"):
        reviews.decide(store, row["id"], "approve", "frank", now=now[0] + 61)
    decided = reviews.get_review(store.reader(), row["id"])
    assert decided["status"] == "expired" and decided["reviewer"] == "timeout"


# --------------------------------------------------------------------------- restart


@pytest.mark.parametrize("decide_while_down", [False, True])
async def test_restart_finds_the_pending_review_instead_of_opening_another(
    store, db_path, decide_while_down
):
    spec = wf({"first": py("record", args={"name": "first"}), "g": gated("g", ["first"]),
               "last": py("record", ["g"], args={"name": "last"})})  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.submit(spec)
        row = (await pending_for(store, run.run_id, 1))["g"]
        await eng.shutdown(grace=0)
    assert run.done.result() is RunStatus.INTERRUPTED
    assert statuses(store, run.run_id)["g"] == "pending"
    if decide_while_down:
        reviews.decide(store, row["id"], "approve", "grace", "while the engine was down")
    helper_steps.CALLS.clear()
    other = Store.open(db_path)  # a new process, as after a restart
    try:
        async with Engine(other) as eng2:
            resumed = await eng2.resume(run.run_id)
            if not decide_while_down:
                await until(lambda: eng2.reviews.waiting == [row["id"]], what="waiting again")
                assert statuses(other, run.run_id)["g"] == "waiting_review"
                await eng2.decide(row["id"], "approve", "grace")
            status = await asyncio.wait_for(resumed.wait(), 10)
        assert status is RunStatus.SUCCEEDED
        assert helper_steps.CALLS == ["g", "last"]
        rows = review_rows(other, run.run_id)
        assert [(r["id"], r["status"]) for r in rows] == [(row["id"], "approved")]
    finally:
        other.close()


async def test_cancel_closes_the_pending_review(engine, store):
    spec = wf({"g": gated("g"), "h": gated("h")})
    run = await engine.submit(spec)
    pending = await pending_for(store, run.run_id, 2)
    assert run.cancel_step("h")
    await until(lambda: statuses(store, run.run_id)["h"] == "cancelled", what="h cancelled")
    run.cancel()
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.CANCELLED
    await store.flush()
    rows = {r["step_id"]: r for r in review_rows(store, run.run_id)}
    assert rows["h"]["status"] == rows["g"]["status"] == "cancelled"
    assert rows["h"]["comment"] == "step cancelled" and rows["g"]["comment"] == "run cancelled"
    with pytest.raises(Conflict, match="was cancelled"):
        reviews.decide(store, pending["g"]["id"], "approve", "heidi")


async def test_cancelling_a_waiting_step_skips_its_dependents(engine, store):
    spec = wf({"g": gated("g"), "after": py("record", ["g"], args={"name": "after"}),
               "free": py("record", args={"name": "free"})})  # fmt: skip
    run = await engine.submit(spec)
    await pending_for(store, run.run_id, 1)
    assert run.cancel_step("g")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.FAILED
    assert statuses(store, run.run_id) == {"g": "cancelled", "after": "skipped",
                                            "free": "succeeded"}  # fmt: skip
    assert review_rows(store, run.run_id)[0]["status"] == "cancelled"


# --------------------------------------------------------------------------- decide


async def test_decide_refuses_bad_input_and_reports_the_winner(engine, store):
    spec = wf({"g": gated("g")})
    run = await engine.submit(spec)
    row = (await pending_for(store, run.run_id, 1))["g"]
    with pytest.raises(NotFound, match="no review 999"):
        reviews.decide(store, 999, "approve", "ivan")
    with pytest.raises(InputError, match="not a review id"):
        reviews.decide(store, "x1", "approve", "ivan")
    with pytest.raises(InputError, match="decision"):
        reviews.decide(store, row["id"], "maybe", "ivan")
    with pytest.raises(InputError, match="reserved"):
        reviews.decide(store, row["id"], "approve", "preference")
    with pytest.raises(InputError, match="--choice is for routes"):
        reviews.decide(store, row["id"], "approve", "ivan", choice="x")
    with pytest.raises(InputError, match="comment"):
        reviews.decide(store, row["id"], "approve", "ivan", "x" * 5000)
    assert reviews.get_review(store.reader(), row["id"])["status"] == "pending"
    await engine.decide(row["id"], "approve", "ivan", "fine")
    with pytest.raises(Conflict, match=r"review \d+ already decided by ivan at .* \(approved\)"):
        reviews.decide(store, row["id"], "reject", "judy")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED
    events = store.query("SELECT data FROM events WHERE kind='review.decided'")
    assert [json.loads(e["data"])["reviewer"] for e in events] == ["ivan"]


async def test_many_gates_do_not_use_up_engine_slots(store):
    spec = wf({**{f"g{i}": gated(f"g{i}") for i in range(6)},
               "free": py("record", args={"name": "free"})})  # fmt: skip
    async with Engine(store, max_concurrency=2) as eng:
        run = await eng.submit(spec)
        pending = await pending_for(store, run.run_id, 6)
        await until(lambda: "free" in helper_steps.CALLS, what="free step")
        for row in pending.values():
            await eng.decide(row["id"], "approve", "ken")
        assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


def test_decide_serves_every_kind_with_plain_choices(store):
    # Other engine modules open reviews of their own kinds (e.g. a crash check after resume)
    # with plain-string choices; the one decide function handles them the same way.
    row = store.run_sync(
        lambda db: reviews.insert(
            db,
            {"run_id": "r1", "step_id": "s", "kind": "crash_check", "reason": "did it happen?",
             "candidates": ["rerun", "done"]},
            100.0,
        )
    )  # fmt: skip
    with pytest.raises(InputError, match="'maybe' is not a candidate"):
        reviews.decide(store, row["id"], "approve", "uma", choice="maybe")
    done = reviews.decide(store, row["id"], "approve", "uma", choice="done")
    assert (done["status"], done["choice"], done["kind"]) == ("approved", "done", "crash_check")
    assert store.read(preferences.list_preferences) == []  # only gate decisions are learned


async def test_console_operator_decides_through_the_same_function(engine, store):
    from console.operator import Operator

    spec = wf({"a": gated("a"), "b": gated("b")})
    run = await engine.submit(spec)
    pending = await pending_for(store, run.run_id, 2)
    in_process = Operator(store, engine=engine, reviewer="vic")
    assert await in_process.decide(pending["a"]["id"], "approve") == "approved"
    remote = Operator(store, reviewer="wes")  # no engine here: the owner's watcher picks it up
    assert await remote.decide(pending["b"]["id"], "reject", "no") == "rejected"
    with pytest.raises(Conflict, match="already decided by wes"):
        await in_process.decide(pending["b"]["id"], "approve")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.FAILED
    pref = store.read(lambda db: preferences.get_preference(db, "py:tests.helpers.steps:record"))
    assert (pref["approvals"], pref["rejections"]) == (1, 1)
