"""Learned approvals (Wilson rule, auto-approval with real steps, revocation) and preferred
agents."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import preferences, reviews
from engine.models import RunStatus
from engine.runner import Engine
from tests.test_reviews import gated, pending_for, statuses, wf

PATTERN = "py:tests.helpers.steps:record"


def test_wilson_lower_bound_figures():
    assert preferences.wilson_lower_bound(0, 0) == 0.0
    # all approvals: n / (n + z^2)
    for n in (10, 12, 34, 35, 100):
        assert preferences.wilson_lower_bound(n, n) == pytest.approx(n / (n + 1.96**2))
    assert preferences.wilson_lower_bound(8, 10) == pytest.approx(0.4902, abs=1e-4)
    assert not preferences.qualifies(34, 0)  # 34 / 37.84 = 0.8985
    assert preferences.qualifies(35, 0)  # 35 / 38.84 = 0.9011
    assert not preferences.qualifies(9, 0)  # fewer than MIN_DECISIONS
    assert not preferences.qualifies(35, 1)
    assert preferences.qualifies(60, 1)
    assert preferences.explain(35, 0) == (
        "auto-approved: 35 of 35 approvals (Wilson 95% lower bound 0.901 >= 0.9)"
    )


def test_record_state_machine(store):
    def rec(approved: bool, t: float = 1.0):
        return store.run_sync(lambda db: preferences.record(db, "a:op", approved, t))

    for _ in range(34):
        row = rec(True)
    assert row["state"] == "learning" and row["approvals"] == 34
    row = rec(True)
    assert row["state"] == "auto" and row["auto_since"] == 1.0
    row = rec(False, 2.0)  # one rejection drops it back and restarts the evidence window
    assert row["state"] == "manual" and row["revoked_at"] == 2.0
    assert (row["approvals"], row["rejections"]) == (35, 1)
    assert (row["window_approvals"], row["window_rejections"]) == (0, 1)
    assert store.read(lambda db: preferences.auto_approval(db, "a:op")) is None
    listed = store.read(preferences.list_preferences)[0]
    assert (
        listed["detail"] == "0 of 1 approved since revoked; auto after 52 more approvals in a row"
    )
    for _ in range(52):
        row = rec(True)
    assert row["state"] == "auto"
    reason = store.read(lambda db: preferences.auto_approval(db, "a:op"))
    assert reason.startswith("auto-approved: 52 of 53 approvals")
    assert store.run_sync(lambda db: preferences.reset(db, "a:op"))
    assert store.read(preferences.list_preferences) == []
    assert not store.run_sync(lambda db: preferences.reset(db, "a:op"))


async def approve_all(eng: Engine, store, spec, n: int, reviewer: str = "lee"):
    run = await eng.submit(spec)
    pending = await pending_for(store, run.run_id, n)
    for row in pending.values():
        await eng.decide(row["id"], "approve", reviewer)
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED
    return run


async def test_auto_approval_reached_explained_and_revoked_by_a_rejection(store):
    n = 35  # with the 95% Wilson rule and >= 0.9, 35 approvals in a row are needed
    async with Engine(store) as eng:
        await approve_all(eng, store, wf({f"g{i}": gated(f"g{i}") for i in range(n - 1)}), n - 1)
        pref = store.read(lambda db: preferences.get_preference(db, PATTERN))
        assert pref["state"] == "learning" and pref["approvals"] == n - 1
        await approve_all(eng, store, wf({"g": gated("g")}), 1)
        pref = store.read(lambda db: preferences.get_preference(db, PATTERN))
        assert pref["state"] == "auto"

        # Reached: the next review of the pattern is approved at once, explained.
        run = await eng.submit(wf({"g": gated("g")}))
        assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED
        auto = reviews.list_reviews(store.reader(), run_id=run.run_id)[0]
        assert auto["status"] == "approved" and auto["reviewer"] == "preference" and auto["auto"]
        assert auto["comment"] == (
            "auto-approved: 35 of 35 approvals (Wilson 95% lower bound 0.901 >= 0.9)"
        )
        kinds = [
            r["kind"]
            for r in store.query(
                "SELECT kind FROM events WHERE run_id=? AND step_id='g' ORDER BY id", [run.run_id]
            )
        ]
        assert "step.waiting_review" not in kinds and "review.decided" in kinds
        pref = store.read(lambda db: preferences.get_preference(db, PATTERN))
        assert pref["approvals"] == n  # auto-approvals are not evidence

        # `learn: false` is never auto-approved; rejecting it revokes the pattern.
        spec = wf({"g": gated("g", review={"when": "always", "learn": False})})
        run = await eng.submit(spec)
        row = (await pending_for(store, run.run_id, 1))["g"]
        assert row["learn"] is False
        await eng.decide(row["id"], "reject", "lee", "that one was wrong")
        assert await asyncio.wait_for(run.wait(), 10) is RunStatus.FAILED
        pref = store.read(lambda db: preferences.get_preference(db, PATTERN))
        assert pref["state"] == "manual" and pref["rejections"] == 1

        # Back to manual: a learnable step of the pattern waits for a person again.
        run = await eng.submit(wf({"g": gated("g")}))
        row = (await pending_for(store, run.run_id, 1))["g"]
        assert row["reviewer"] is None and statuses(store, run.run_id)["g"] == "waiting_review"
        await eng.decide(row["id"], "approve", "lee")
        assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


async def test_a_rejection_of_a_review_opened_before_auto_revokes(store):
    # Decisions of other reviews make the pattern auto while this one is still pending.
    async with Engine(store) as eng:
        early = await eng.submit(wf({"slow": gated("slow")}))
        waiting = (await pending_for(store, early.run_id, 1))["slow"]
        await approve_all(eng, store, wf({f"g{i}": gated(f"g{i}") for i in range(35)}), 35)
        assert store.read(lambda db: preferences.get_preference(db, PATTERN))["state"] == "auto"
        await eng.decide(waiting["id"], "reject", "mia")
        assert await asyncio.wait_for(early.wait(), 10) is RunStatus.FAILED
    assert store.read(lambda db: preferences.get_preference(db, PATTERN))["state"] == "manual"


def test_preferred_agent_per_operation(store):
    now = time.time()
    rows = []
    for agent, ok, bad in (("small", 18, 2), ("large", 10, 0), ("tiny", 3, 0)):
        for i in range(ok + bad):
            rows.append((f"r-{agent}", f"s{i}", 1, agent, "chat demo", "succeeded" if i < ok
                         else "failed", now - 60))  # fmt: skip
    store.run_sync(
        lambda db: db.conn.executemany(
            "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at) "
            "VALUES (?,?,?,?,?,?,?)",
            rows,
        )
    )
    best = store.read(lambda db: preferences.preferred_agents(db, now))
    assert best == [
        {
            "operation": "chat demo",
            "agent": "large",
            "calls": 10,
            "succeeded": 10,
            "rate": 1.0,
            "agents": 2,
        }
    ]  # fmt: skip  ("tiny" has too few calls)
    small = store.read(lambda db: preferences.agent_score(db, "small", "chat demo", now))
    assert small["score"] == 0.9 and small["calls"] == 20
    tiny = store.read(lambda db: preferences.agent_score(db, "tiny", "chat demo", now))
    assert tiny["score"] == preferences.AGENT_PRIOR and tiny["rate"] == 1.0
