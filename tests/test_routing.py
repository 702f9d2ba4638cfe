"""Routing by confidence: real steps, a real store; above and below the threshold, the
operator's pick, agent targets scored by learned success rates, stats, validation."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.errors import WorkflowError
from engine.loader import load_workflow_text
from engine.models import RunStatus
from engine.routing import list_routes, route_stats
from engine.runner import Engine
from tests.helpers import steps as helper_steps
from tests.test_reviews import pending_for, py, statuses, wf

CANDIDATES = [
    {"name": "tracker", "target": "ticket"},
    {"name": "chat", "target": "note", "confidence": 0.3},
    {"name": "code", "target": "pr"},
]


def routed(route: str = "tracker", confidence=0.9, threshold: float = 0.8, **extra):
    return wf(
        {
            "triage": py("echo", args={"route": route, "confidence": confidence}),
            "dispatch": {
                "needs": ["triage"],
                "route": {
                    "pick": "${{ steps.triage.output.route }}",
                    "confidence": "${{ steps.triage.output.confidence }}",
                    "threshold": threshold,
                    "candidates": CANDIDATES,
                },
                **extra,
            },
            "ticket": py("record", ["dispatch"], args={"name": "ticket"}),
            "note": py("record", ["dispatch"], args={"name": "note"}),
            "pr": py("record", ["dispatch"], args={"name": "pr"}),
            "after_ticket": py("record", ["ticket"], args={"name": "after_ticket"}),
        }
    )


@pytest.fixture(autouse=True)
def _clear_calls():
    helper_steps.CALLS.clear()


@pytest.fixture
async def engine(store):
    async with Engine(store) as eng:
        yield eng


async def test_above_threshold_the_best_route_runs_and_the_others_are_skipped(engine, store):
    run = await engine.run(routed(confidence=0.9))
    assert run.status is RunStatus.SUCCEEDED
    assert statuses(store, run.run_id) == {
        "triage": "succeeded", "dispatch": "succeeded", "ticket": "succeeded",
        "after_ticket": "succeeded", "note": "skipped", "pr": "skipped",
    }  # fmt: skip
    assert sorted(helper_steps.CALLS) == ["after_ticket", "ticket"]
    out = run.outputs["dispatch"]
    assert (out["route"], out["target"], out["confidence"], out["overridden"]) == (
        "tracker", "ticket", 0.9, False)  # fmt: skip
    [row] = list_routes(store.reader(), run_id=run.run_id)
    assert row["chosen"] == row["best"] == "tracker" and row["reviewer"] is None
    assert [(c["name"], c["confidence"], c["source"]) for c in row["candidates"]] == [
        ("tracker", 0.9, "pick"), ("chat", 0.3, "fixed"), ("code", 0.0, "none")]  # fmt: skip
    assert store.query("SELECT count(*) AS n FROM reviews")[0]["n"] == 0


@pytest.mark.parametrize(
    ("decision", "choice", "ran"),
    [("approve", "chat", "note"), ("approve", None, "ticket"), ("reject", None, None)],
)
async def test_below_threshold_the_operator_picks(engine, store, decision, choice, ran):
    run = await engine.submit(routed(confidence=0.62))
    review = (await pending_for(store, run.run_id, 1))["dispatch"]
    assert review["kind"] == "route"
    assert review["reason"] == "best candidate tracker scored 0.62 < threshold 0.8"
    assert review["confidence"] == 0.62
    assert [(c["name"], c["target"], c["confidence"]) for c in review["candidates"]] == [
        ("tracker", "ticket", 0.62), ("chat", "note", 0.3), ("code", "pr", 0.0)]  # fmt: skip
    assert review["upstream"]["steps.triage.output.confidence"] == 0.62
    assert "ticket" not in helper_steps.CALLS
    await engine.decide(review["id"], decision, "nora", choice=choice)
    status = await asyncio.wait_for(run.wait(), 10)
    final = statuses(store, run.run_id)
    if ran is None:
        assert status is RunStatus.FAILED and final["dispatch"] == "rejected"
        assert {final[s] for s in ("ticket", "note", "pr", "after_ticket")} == {"skipped"}
        assert list_routes(store.reader(), run_id=run.run_id) == []
        return
    assert status is RunStatus.SUCCEEDED
    assert ran in helper_steps.CALLS
    for target in {"ticket", "note", "pr"} - {ran}:
        assert final[target] == "skipped"
    [row] = list_routes(store.reader(), run_id=run.run_id)
    assert row["reviewer"] == "nora" and row["review_id"] == review["id"]
    assert row["overridden"] is (choice == "chat")
    assert row["best"] == "tracker" and row["chosen"] == (choice or "tracker")


async def test_choice_must_be_a_candidate(engine, store):
    from engine import reviews
    from engine.errors import InputError

    run = await engine.submit(routed(confidence=0.1))
    review = (await pending_for(store, run.run_id, 1))["dispatch"]
    with pytest.raises(InputError, match="'billing' is not a candidate"):
        reviews.decide(store, review["id"], "approve", "olga", choice="billing")
    with pytest.raises(InputError, match="--choice goes with approve"):
        reviews.decide(store, review["id"], "reject", "olga", choice="chat")
    await engine.decide(review["id"], "approve", "olga", choice="code")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED
    assert helper_steps.CALLS == ["pr"]


async def test_an_unusable_upstream_answer_asks_a_human(engine, store):
    run = await engine.submit(routed(route="billing", confidence="very", threshold=0.0))
    review = (await pending_for(store, run.run_id, 1))["dispatch"]
    assert 'upstream picked "billing", not a candidate (tracker, chat, code)' in review["reason"]
    assert 'upstream confidence "very" is not 0..1' in review["reason"]
    await engine.decide(review["id"], "approve", "pat")  # the best: chat at 0.3
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED
    assert helper_steps.CALLS == ["note"]


async def test_review_always_confirms_even_above_threshold(engine, store):
    run = await engine.submit(routed(confidence=0.99, review={"when": "always", "timeout": 60,
                                                              "on_timeout": "approve"}))  # fmt: skip
    review = (await pending_for(store, run.run_id, 1))["dispatch"]
    assert review["reason"] == "every routing decision of this step is confirmed"
    assert review["on_timeout"] == "approve" and review["expires_at"] is not None
    await engine.decide(review["id"], "approve", "quinn")
    assert await asyncio.wait_for(run.wait(), 10) is RunStatus.SUCCEEDED


async def test_agent_targets_scored_by_learned_success_rate(engine, store):
    now = time.time()
    op = "tests.helpers.steps:echo"
    rows = [(f"seed-{a}", f"s{i}", 1, a, op, "succeeded" if i < ok else "failed", now - 10)
            for a, ok in (("small", 5), ("large", 10)) for i in range(10)]  # fmt: skip
    store.run_sync(lambda db: db.conn.executemany(
        "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at) "
        "VALUES (?,?,?,?,?,?,?)", rows))  # fmt: skip
    spec = wf(
        {
            "answer": {
                "with": {"call": "tests.helpers.steps:echo", "args": {"value": "hi"}},
                "route": {"threshold": 0.7, "candidates": [
                    {"target": "small", "confidence": "learned"},
                    {"target": "large", "confidence": "learned"}]},
            },
            "after": py("echo", ["answer"], args={"value": "${{ steps.answer.output.value }}"}),
        },
        agents={"py": {"kind": "python"}, "small": {"kind": "python"},
                "large": {"kind": "python"}},
    )  # fmt: skip
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert run.outputs["after"]["value"] == "hi"
    store.flush_sync()
    att = store.query("SELECT agent, operation FROM attempts WHERE run_id=?", [run.run_id])
    assert {"agent": "large", "operation": op} in att
    [row] = list_routes(store.reader(), run_id=run.run_id)
    assert [(c["name"], c["confidence"], c["source"]) for c in row["candidates"]] == [
        ("small", 0.5, "learned"), ("large", 1.0, "learned")]  # fmt: skip


async def test_route_stats(engine, store):
    for conf in (0.9, 0.95, 0.85):
        await engine.run(routed(confidence=conf))
    run = await engine.submit(routed(confidence=0.5))
    review = (await pending_for(store, run.run_id, 1))["dispatch"]
    await engine.decide(review["id"], "approve", "rob", choice="chat")
    await run.wait()
    stats = {r["route"]: r for r in route_stats(store.reader())}
    tracker, chat = stats["tracker"], stats["chat"]
    assert (tracker["count"], tracker["min_confidence"], tracker["max_confidence"]) == (
        3,
        0.85,
        0.95,
    )
    assert tracker["avg_confidence"] == pytest.approx(0.9)
    assert (tracker["overridden"], tracker["overridden_away"], tracker["reviewed"]) == (0, 1, 0)
    assert (chat["count"], chat["avg_confidence"], chat["overridden"], chat["reviewed"]) == (
        1, 0.3, 1, 1)  # fmt: skip
    assert route_stats(store.reader(), workflow="other") == []


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            "  r: {route: {candidates: [{target: a}]}}\n  a: {agent: py, with: {call: 'm:f'}}\n",
            "steps.r.route.candidates[0].target: step 'a' must list 'r' in its needs",
        ),
        (
            "  r: {agent: py, route: {candidates: [{target: a}]}}\n"
            "  a: {agent: py, needs: [r], with: {call: 'm:f'}}\n",
            "steps.r.agent: a route step has no `agent`",
        ),
        (
            "  a: {agent: py, with: {call: 'm:f'}, review: {when: 'confidence < 0.8'}}\n",
            "steps.a.review.when: 'confidence < 0.8' needs `review.confidence`",
        ),
        (
            "  r: {route: {pick: '${{ steps.x.output.route }}', candidates: [{target: py}]},"
            " with: {call: 'm:f'}}\n  x: {agent: py, with: {call: 'm:f'}}\n",
            "steps.r.route.pick: ${{ steps.x.output.route }}: step 'x' is not in the needs of 'r'",
        ),
        (
            "  r: {route: {candidates: [{target: py, confidence: 1.5}]}, with: {call: 'm:f'}}\n",
            "steps.r.route.candidates[0].confidence: must be from 0 to 1",
        ),
        (
            "  r: {route: {candidates: [{target: py, confidence: high}]}, with: {call: 'm:f'}}\n",
            "confidence: must be a number from 0 to 1, an expression or 'learned'",
        ),
        (
            "  r: {route: {candidates: [{target: py}, {target: py}]}, with: {call: 'm:f'}}\n",
            "candidate 'py' is listed twice",
        ),
    ],
)
def test_validation_of_routes_and_review_conditions(steps, expected):
    text = "name: v\nagents: {py: {kind: python}}\nsteps:\n" + steps
    with pytest.raises(WorkflowError) as err:
        load_workflow_text(text, "wf.yaml")
    assert any(expected in p for p in err.value.problems), err.value.problems
    assert all(p.startswith("wf.yaml:") for p in err.value.problems)
