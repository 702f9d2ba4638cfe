"""Undo from the console: `u`, a confirmation, and the item is back on a real aiohttp server."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from console.app import FlowdeckApp
from console.screens.dialogs import ConfirmScreen
from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.helpers.console import screen_text, wait_for
from widgets.undo_panel import UndoHistory

SIZE = (140, 40)


@pytest.fixture
async def engine(store):
    eng = Engine(store)
    await eng.start()
    yield eng
    await eng.aclose()


async def api(service, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, service.url + path, json=body) as r:
        return r.status, await r.json()


def cleanup(service, ttl: float = 3600) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": "cleanup",
            "inputs": {"issue": {"type": "integer"}},
            "agents": {"tracker": {"kind": "http", "base_url": service.url + "/tracker"}},
            "steps": {
                "delete": {
                    "agent": "tracker",
                    "destructive": True,
                    "with": {"method": "DELETE", "path": "/issues/${{ inputs.issue }}"},
                    "undo": {
                        "with": {
                            "method": "POST",
                            "path": "/issues/${{ inputs.issue }}/restore",
                            "json": {"issue": "${{ before }}"},
                        },
                        "capture": {
                            "with": {"method": "GET", "path": "/issues/${{ inputs.issue }}"}
                        },
                        "description": "restore '${{ before.title }}'",
                        "ttl": ttl,
                    },
                }
            },
        }
    )


async def deleted_issue(engine, service, title: str) -> int:
    status, body = await api(service, "POST", "/tracker/issues", {"title": title})
    assert status == 201
    n = body["number"]
    run = await engine.run(cleanup(service), {"issue": n})
    assert run.status is RunStatus.SUCCEEDED
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 404
    return n


def entry_status(store: Store) -> str:
    return store.query("SELECT status FROM undo_log ORDER BY id DESC LIMIT 1")[0]["status"]


@pytest.mark.parametrize("in_process", [False, True], ids=["attached", "in-process engine"])
async def test_undo_with_u_and_confirm_restores_the_item(
    engine, store, console_store, service, in_process
):
    n = await deleted_issue(engine, service, "[red]Login[/red] broken")
    app = FlowdeckApp(
        store if in_process else console_store,
        engine=engine if in_process else None,
        analytics=None,
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "history", what="history")
        panel = app.screen.query_one(UndoHistory)
        await wait_for(pilot, lambda: panel.selected is not None, what="an entry")
        assert "restore '[red]Login[/red] broken'" in screen_text(app)  # literal
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await wait_for(pilot, lambda: entry_status(store) == "undone", what="undone in the DB")
        await wait_for(pilot, lambda: "✓ #" in screen_text(app), what="result shown")
        await wait_for(pilot, lambda: panel.selected.status == "undone", what="row updated")
    status, back = await api(service, "GET", f"/tracker/issues/{n}")
    assert status == 200 and back["title"] == "[red]Login[/red] broken"


async def test_declined_confirmation_changes_nothing(engine, store, console_store, service):
    n = await deleted_issue(engine, service, "keep deleted")
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        panel = app.screen.query_one(UndoHistory)
        await wait_for(pilot, lambda: panel.selected is not None, what="an entry")
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="closed")
    assert entry_status(store) == "done"
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 404


async def test_an_undone_entry_says_why_and_asks_nothing(engine, store, console_store, service):
    await deleted_issue(engine, service, "twice")
    [entry] = await engine.undo.history()
    assert (await engine.undo.undo(entry.id, actor="ana")).outcome == "undone"
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        panel = app.screen.query_one(UndoHistory)
        await wait_for(pilot, lambda: panel.selected is not None, what="an entry")
        await pilot.press("u")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("already undone" in n.message for n in app._notifications)
