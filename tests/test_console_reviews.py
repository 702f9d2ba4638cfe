"""Reviews from the console against a real engine on a real SQLite file: approve with `a`,
reject with `r` and a comment, pick a route candidate, and decisions made elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from console.app import FlowdeckApp
from console.screens.dialogs import ChoiceScreen, CommentScreen
from engine import reviews as engine_reviews
from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.helpers.console import screen_text, wait_for
from widgets.review_panel import ReviewPanel

H = "tests.helpers.console"
SIZE = (140, 40)


def py(fn: str, needs=(), **kw):
    args = kw.pop("args", {})
    return {"agent": "py", "with": {"call": f"{H}:{fn}", "args": args}, "needs": list(needs), **kw}


def wf(name: str, steps: dict) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "agents": {"py": {"kind": "python"}}, "steps": steps}
    )


def gated(name: str) -> WorkflowSpec:
    return wf(
        name,
        {
            "plan": py("echo", args={"value": "[b]close[/b] PR 7"}),
            "close": py(
                "echo",
                ["plan"],
                args={"value": "${{ steps.plan.output.value }}"},
                review={"when": "always", "reason": "closes a PR"},
            ),
            "after": py("echo", ["close"]),
        },
    )


@pytest.fixture
async def engine(store):
    eng = Engine(store)
    await eng.start()
    yield eng
    await eng.aclose()


def review_rows(store: Store) -> list[dict]:
    return store.query("SELECT id, status, reviewer, comment, choice FROM reviews ORDER BY id")


async def pending(store: Store, n: int) -> None:
    for _ in range(400):
        if len(store.query("SELECT id FROM reviews WHERE status = 'pending'")) >= n:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("no pending review")


@pytest.mark.parametrize("in_process", [False, True], ids=["attached", "in-process engine"])
async def test_approve_with_a_is_stored_and_the_run_continues(
    engine, store, console_store, in_process
):
    run = await engine.submit(gated("approve-me"))
    await pending(store, 1)
    app = FlowdeckApp(
        store if in_process else console_store,
        engine=engine if in_process else None,
        analytics=None,
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "reviews", what="reviews")
        panel = app.screen.query_one(ReviewPanel)
        await wait_for(pilot, lambda: panel.selected is not None, what="the pending review")
        assert '"value": "[b]close[/b] PR 7"' in screen_text(app)  # rendered inputs, literal
        await pilot.press("a")
        assert await asyncio.wait_for(run.wait(), 20) is RunStatus.SUCCEEDED
        await wait_for(pilot, lambda: panel.selected is None, what="the review gone")
    [row] = review_rows(store)
    assert row["status"] == "approved" and row["reviewer"] == app.operator.reviewer
    steps = store.query(
        "SELECT step_id, status FROM steps WHERE run_id=? ORDER BY step_id", [run.run_id]
    )
    assert {s["step_id"]: s["status"] for s in steps} == {
        "after": "succeeded", "close": "succeeded", "plan": "succeeded",
    }  # fmt: skip


async def test_reject_with_r_asks_for_a_comment(engine, store, console_store):
    run = await engine.submit(gated("reject-me"))
    await pending(store, 1)
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        panel = app.screen.query_one(ReviewPanel)
        await wait_for(pilot, lambda: panel.selected is not None, what="the pending review")
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, CommentScreen), what="comment")
        await pilot.press("escape")  # changed my mind: nothing is decided
        await wait_for(pilot, lambda: not isinstance(app.screen, CommentScreen), what="closed")
        assert review_rows(store)[0]["status"] == "pending"
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, CommentScreen), what="comment")
        for ch in "wrong PR [x]":
            await pilot.press(
                {" ": "space", "[": "left_square_bracket", "]": "right_square_bracket"}.get(ch, ch)
            )
        await pilot.press("enter")
        assert await asyncio.wait_for(run.wait(), 20) is RunStatus.FAILED
    [row] = review_rows(store)
    assert (row["status"], row["comment"]) == ("rejected", "wrong PR [x]")
    steps = {s["step_id"]: s["status"] for s in store.query("SELECT step_id, status FROM steps")}
    assert steps == {"plan": "succeeded", "close": "rejected", "after": "skipped"}


async def test_overview_shows_the_oldest_pending_first_and_a_decision_elsewhere_disappears(
    engine, store, console_store
):
    first = await engine.submit(gated("first"))
    await pending(store, 1)
    await asyncio.sleep(0.05)
    await engine.submit(gated("second"))
    await pending(store, 2)
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=SIZE) as pilot:
        panel = app.screen.query_one(ReviewPanel)  # the compact panel on the overview
        await wait_for(pilot, lambda: len(panel._reviews) == 2, what="two pending")
        assert [r.workflow for r in panel._reviews] == ["first", "second"]
        oldest = panel._reviews[0]
        await engine_reviews.adecide(store, oldest.id, "approve", "someone-else")
        await asyncio.wait_for(first.wait(), 20)
        await wait_for(
            pilot, lambda: [r.workflow for r in panel._reviews] == ["second"], what="gone"
        )
        text = screen_text(app)
        assert "1 pending" in text and "◇ 1 review" in text


async def test_route_review_lets_the_operator_pick_a_candidate(engine, store, console_store):
    spec = wf(
        "route-me",
        {
            "triage": py("echo", args={"route": "tracker", "confidence": 0.4}),
            "dispatch": {
                "needs": ["triage"],
                "route": {
                    "pick": "${{ steps.triage.output.route }}",
                    "confidence": "${{ steps.triage.output.confidence }}",
                    "threshold": 0.8,
                    "candidates": [
                        {"name": "tracker", "target": "ticket"},
                        {"name": "chat", "target": "note", "confidence": 0.3},
                    ],
                },
            },
            "ticket": py("echo", ["dispatch"]),
            "note": py("echo", ["dispatch"]),
        },
    )
    run = await engine.submit(spec)
    await pending(store, 1)
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        panel = app.screen.query_one(ReviewPanel)
        await wait_for(pilot, lambda: panel.selected is not None, what="the route review")
        assert "tracker → ticket" in screen_text(app)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), what="choices")
        await pilot.press("down", "enter")  # not the best one: chat
        assert await asyncio.wait_for(run.wait(), 20) is RunStatus.SUCCEEDED
    [row] = review_rows(store)
    assert (row["status"], row["choice"]) == ("approved", "chat")
    steps = {s["step_id"]: s["status"] for s in store.query("SELECT step_id, status FROM steps")}
    assert (steps["note"], steps["ticket"]) == ("succeeded", "skipped")
