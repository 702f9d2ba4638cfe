"""The undo log in process: write-ahead entries, undo, refusals, sagas, pruning, validation.

Every test runs real workflows through the engine against the demo service on 127.0.0.1
(tracker issues, chat messages and branches that really disappear and come back).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from engine.dag import validate
from engine.errors import Conflict, NotFound
from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from engine.undo import UndoHook, list_entries, undo_run
from tests.helpers.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)  # an epoch time: undo windows are compared with it


@pytest.fixture
async def engine(store, clock):
    eng = Engine(store, clock=clock)
    await eng.start()
    yield eng
    await eng.aclose()


async def api(service, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, service.url + path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def new_issue(service, title: str) -> int:
    status, body = await api(service, "POST", "/tracker/issues", {"title": title, "labels": ["x"]})
    assert status == 201
    return body["number"]


def agents(service) -> dict:
    return {
        "tracker": {"kind": "http", "base_url": service.url + "/tracker"},
        "chat": {"kind": "http", "base_url": service.url + "/chat"},
        "code": {"kind": "http", "base_url": service.url + "/code"},
        "py": {"kind": "python"},
    }


def delete_issue_step(**extra: Any) -> dict:
    return {
        "agent": "tracker",
        "destructive": True,
        "with": {"method": "DELETE", "path": "/issues/${{ inputs.issue }}"},
        "undo": {
            "with": {
                "method": "POST",
                "path": "/issues/${{ inputs.issue }}/restore",
                "json": {"issue": "${{ before }}"},
            },
            "capture": {"with": {"method": "GET", "path": "/issues/${{ inputs.issue }}"}},
            "description": "restore ${{ before.id }} '${{ before.title }}'",
        },
        **extra,
    }


def wf(service, steps: dict, **extra: Any) -> WorkflowSpec:
    doc = {
        "name": "cleanup",
        "inputs": {"issue": {"type": "integer"}},
        "agents": agents(service),
        "steps": steps,
        **extra,
    }
    spec = WorkflowSpec.model_validate(doc)
    assert validate(spec) == []
    return spec


def rows(store: Store, sql: str, params: Any = ()) -> list[dict]:
    store.flush_sync()
    return store.query(sql, params)


def undo_events(store: Store) -> list[tuple[str, str | None, int | None]]:
    return [
        (r["kind"], r["step_id"], json.loads(r["data"]).get("id"))
        for r in rows(store, "SELECT * FROM events WHERE kind LIKE 'undo.%' ORDER BY id")
    ]


# --------------------------------------------------------------------------- the basic loop


async def test_delete_then_undo_brings_the_issue_back(engine, store, service):
    n = await new_issue(service, "Login broken")
    _, original = await api(service, "GET", f"/tracker/issues/{n}")
    run = await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": n})
    assert run.status is RunStatus.SUCCEEDED
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 404

    [entry] = await engine.undo.history()
    assert entry.status == "done" and entry.state == "done"
    assert entry.before == original  # the capture, taken before the action
    assert entry.output["number"] == n  # what the action returned
    assert entry.operation == "DELETE /issues/*"
    assert entry.params == {"method": "DELETE", "path": f"/issues/{n}"}
    assert entry.description == f"restore DEMO-{n} 'Login broken'"
    assert entry.undo["with"] == {
        "method": "POST",
        "path": f"/issues/{n}/restore",
        "json": {"issue": original},
    }
    assert entry.expires_at == engine.clock() + 3600 and entry.seconds_left == 3600

    result = await engine.undo.undo(entry.id, actor="ana")
    assert result.outcome == "undone", result.message
    status, back = await api(service, "GET", f"/tracker/issues/{n}")
    assert status == 200 and back["title"] == "Login broken" and back["labels"] == ["x"]
    assert result.entry.status == "undone" and result.entry.undone_by == "ana"
    assert result.entry.result["number"] == n and result.entry.undo_attempts == 1

    attempts = rows(
        store,
        "SELECT step_id, number, status, operation FROM attempts WHERE run_id = ? ORDER BY id",
        [run.run_id],
    )
    assert [(a["step_id"], a["status"], a["operation"]) for a in attempts] == [
        ("delete.capture", "succeeded", "GET /issues/*"),
        ("delete", "succeeded", "DELETE /issues/*"),
        ("delete.undo", "succeeded", "POST /issues/*/restore"),
    ]
    assert [k for k, _, _ in undo_events(store)] == [
        "undo.prepared",
        "undo.done",
        "undo.undoing",
        "undo.undone",
    ]


async def test_entry_is_committed_prepared_before_the_action_starts(
    engine, store, db_path, tmp_path
):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    spec = WorkflowSpec.model_validate(
        {
            "name": "wal",
            "agents": {"py": {"kind": "python"}},
            "steps": {
                # The action itself looks at the DB from another connection.
                "peek": {
                    "agent": "py",
                    "destructive": True,
                    "with": {
                        "call": "tests.helpers.undo_steps:peek_undo_log",
                        "args": {"db": str(db_path), "step": "peek"},
                    },
                    "undo": {"handler": "restore_file"},
                }
            },
        }
    )
    run = await engine.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    seen = run.outputs["peek"]
    assert seen["status"] == "prepared" and seen["id"] is not None
    assert (
        rows(store, "SELECT status FROM undo_log WHERE id = ?", [seen["id"]])[0]["status"] == "done"
    )


async def test_double_undo_is_refused(engine, service):
    n = await new_issue(service, "twice")
    await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": n})
    [entry] = await engine.undo.history()
    assert (await engine.undo.undo(entry.id, actor="a")).outcome == "undone"
    with pytest.raises(Conflict, match=r"already undone .* by a"):
        await engine.undo.undo(entry.id, actor="b")
    with pytest.raises(Conflict, match="already undone"):
        await engine.undo.undo_last(actor="b")
    with pytest.raises(NotFound, match="no undo entry 999"):
        await engine.undo.undo(999, actor="b")
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 200


async def test_expired_entry_is_refused(engine, service, store, clock):
    n = await new_issue(service, "old news")
    step = delete_issue_step()
    step["undo"]["ttl"] = 60
    await engine.run(wf(service, {"delete": step}), {"issue": n})
    [entry] = await engine.undo.history()
    assert entry.expires_at == clock.now + 60

    clock.now += 61
    [entry] = await engine.undo.history()
    assert entry.state == "expired" and entry.status == "done" and entry.seconds_left is None
    with pytest.raises(Conflict, match=r"expired at .* \(undo window 60 s\)"):
        await engine.undo.undo(entry.id, actor="a")
    with pytest.raises(Conflict, match="expired"):
        await engine.undo.undo_run(entry.run_id, actor="a")
    assert rows(store, "SELECT status FROM undo_log")[0]["status"] == "done"  # nothing changed
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 404

    clock.now -= 2  # one second before the end of the window it still works
    assert (await engine.undo.undo(entry.id, actor="a")).outcome == "undone"


async def test_failed_action_voids_its_entry(engine, service):
    run = await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": 4242})
    assert run.status is RunStatus.FAILED
    # the capture (GET) already failed: the action never started, nothing was logged
    assert "undo capture failed, so the action was not started" in run.error
    assert await engine.undo.history() == []
    assert (await api(service, "GET", "/admin/calls"))[1]["calls"][-1]["method"] == "GET"

    n = await new_issue(service, "stays")
    no_capture = delete_issue_step()
    del no_capture["undo"]["capture"]
    no_capture["undo"]["with"]["json"] = {"title": "x"}
    no_capture["undo"]["description"] = "restore"
    await api(
        service,
        "POST",
        "/admin/script",
        {
            "path_prefix": f"/tracker/issues/{n}",
            "method": "DELETE",
            "responses": [{"status": 409, "body": {"error": "locked"}}],
        },
    )
    run = await engine.run(wf(service, {"delete": no_capture}), {"issue": n})
    assert run.status is RunStatus.FAILED
    [entry] = await engine.undo.history()
    assert entry.status == "void" and "HTTP 409" in entry.error
    with pytest.raises(Conflict, match="has nothing to undo: the action did not happen"):
        await engine.undo.undo(entry.id, actor="a")


async def test_destructive_step_without_undo_is_recorded_not_undoable(engine, service):
    n = await new_issue(service, "gone for good")
    step = delete_issue_step()
    del step["undo"]
    run = await engine.run(wf(service, {"purge": step}), {"issue": n})
    assert run.status is RunStatus.SUCCEEDED
    [entry] = await engine.undo.history()
    assert entry.status == "not_undoable" and entry.operation == "DELETE /issues/*"
    assert "declares no `undo:`" in entry.error
    with pytest.raises(Conflict, match="cannot be undone: the step is destructive but declares"):
        await engine.undo.undo(entry.id, actor="a")


async def test_undo_params_missing_before_the_action_fail_the_step_without_acting(engine, service):
    n = await new_issue(service, "safe")
    step = delete_issue_step()
    step["undo"]["with"]["path"] = "/issues/${{ before.nope }}/restore"
    run = await engine.run(wf(service, {"delete": step}), {"issue": n})
    assert run.status is RunStatus.FAILED
    assert "undo.with" in run.error and "the action was not started" in run.error
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 200
    assert await engine.undo.history() == []


async def test_undo_params_that_need_a_missing_output_make_the_entry_not_undoable(engine, service):
    n = await new_issue(service, "odd output")
    step = delete_issue_step()
    step["undo"]["with"]["path"] = "/issues/${{ output.nope }}/restore"
    run = await engine.run(wf(service, {"delete": step}), {"issue": n})
    assert run.status is RunStatus.SUCCEEDED  # the action happened; that is not undone
    [entry] = await engine.undo.history()
    assert entry.status == "not_undoable"
    assert "output has no 'nope'" in entry.error and "cannot be undone automatically" in entry.error


# --------------------------------------------------------------------------- retries, failures


async def test_compensation_retries_with_the_step_policy_and_records_attempts(
    engine, service, store
):
    n = await new_issue(service, "flaky restore")
    step = delete_issue_step(retry={"attempts": 3, "backoff": "immediate"})
    run = await engine.run(wf(service, {"delete": step}), {"issue": n})
    await api(
        service,
        "POST",
        "/admin/script",
        {
            "path_prefix": f"/tracker/issues/{n}/restore",
            "responses": [{"status": 503}, {"status": 500}],
        },
    )
    [entry] = await engine.undo.history()
    result = await engine.undo.undo(entry.id, actor="a")
    assert result.outcome == "undone" and result.entry.undo_attempts == 3
    attempts = rows(
        store,
        "SELECT number, status, error_class FROM attempts WHERE run_id = ? "
        "AND step_id = 'delete.undo' ORDER BY number",
        [run.run_id],
    )
    assert [(a["number"], a["status"], a["error_class"]) for a in attempts] == [
        (1, "failed", "http"),
        (2, "failed", "http"),
        (3, "succeeded", None),
    ]


async def test_failed_undo_is_reported_and_can_be_retried_explicitly(engine, service, store):
    n = await new_issue(service, "stubborn")
    run = await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": n})
    await api(service, "POST", "/admin/config", {"down": ["tracker"]})
    [entry] = await engine.undo.history()
    result = await engine.undo.undo(entry.id, actor="a")
    assert result.outcome == "failed" and "HTTP 503" in result.message
    assert result.entry.status == "failed" and "--retry" in result.message
    with pytest.raises(Conflict, match=r"its undo failed .* --retry"):
        await engine.undo.undo(entry.id, actor="a")

    await api(service, "POST", "/admin/config", {"down": []})
    result = await engine.undo.undo(entry.id, actor="b", retry=True)
    assert result.outcome == "undone" and result.entry.undo_attempts == 2
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 200
    kinds = [k for k, _, _ in undo_events(store)]
    assert kinds[-4:] == ["undo.undoing", "undo.failed", "undo.undoing", "undo.undone"]
    # a retry is a new request (its own Idempotency-Key), automatic retries are not
    keys = {
        c["idempotency_key"]
        for c in (await api(service, "GET", "/admin/calls"))[1]["calls"]
        if c["route"].endswith("/restore")
    }
    assert keys == {
        f"{run.run_id}:delete:undo:{entry.id}:1",
        f"{run.run_id}:delete:undo:{entry.id}:2",
    }


# --------------------------------------------------------------------------- a whole run


def three_deletions(service) -> WorkflowSpec:
    return wf(
        service,
        {
            "issue": delete_issue_step(),
            "message": {
                "agent": "chat",
                "needs": ["issue"],
                "destructive": True,
                "with": {"method": "DELETE", "path": "/messages/${{ inputs.message }}"},
                "undo": {"with": {"method": "POST", "path": "/messages/${{ output.id }}/restore"}},
            },
            "branch": {
                "agent": "code",
                "needs": ["message"],
                "destructive": True,
                "with": {"method": "DELETE", "path": "/branches/${{ inputs.branch }}"},
                "undo": {
                    "with": {
                        "method": "POST",
                        "path": "/branches/${{ inputs.branch }}/restore",
                        "json": {"sha": "${{ before.sha }}"},
                    },
                    "capture": {
                        "with": {"method": "GET", "path": "/branches/${{ inputs.branch }}"}
                    },
                },
            },
        },
        inputs={"issue": {"type": "integer"}, "message": {}, "branch": {}},
    )


async def setup_three(service) -> dict:
    n = await new_issue(service, "saga")
    _, msg = await api(service, "POST", "/chat/channels/general/messages", {"text": "hello"})
    _, br = await api(service, "POST", "/code/branches", {"name": "feature/saga"})
    return {"issue": n, "message": msg["id"], "branch": br["name"]}


async def test_undo_of_a_whole_run_goes_newest_first(engine, service, store):
    inputs = await setup_three(service)
    run = await engine.run(three_deletions(service), inputs)
    assert run.status is RunStatus.SUCCEEDED
    state = (await api(service, "GET", "/admin/state"))[1]
    assert (
        state["tracker"]["deleted"],
        state["chat"]["deleted"],
        state["code"]["deleted_branches"],
    ) == (1, 1, 1)

    results = await engine.undo.undo_run(run.run_id[:6], actor="ops")
    assert [(r.step_id, r.outcome) for r in results] == [
        ("branch", "undone"),
        ("message", "undone"),
        ("issue", "undone"),
    ]
    undone = [s for k, s, _ in undo_events(store) if k == "undo.undone"]
    assert undone == ["branch", "message", "issue"]
    starts = rows(
        store, "SELECT step_id FROM attempts WHERE step_id LIKE '%.undo' ORDER BY started_at, id"
    )
    assert [r["step_id"] for r in starts] == ["branch.undo", "message.undo", "issue.undo"]
    state = (await api(service, "GET", "/admin/state"))[1]
    assert (
        state["tracker"]["deleted"],
        state["chat"]["deleted"],
        state["code"]["deleted_branches"],
    ) == (0, 0, 0)
    assert (await api(service, "GET", f"/code/branches/{inputs['branch']}"))[0] == 200

    with pytest.raises(Conflict, match="nothing left to undo in run"):
        await engine.undo.undo_run(run.run_id, actor="ops")


async def test_run_undo_stops_at_a_failed_compensation_then_retry_finishes(engine, service):
    inputs = await setup_three(service)
    run = await engine.run(three_deletions(service), inputs)
    await api(
        service,
        "POST",
        "/admin/script",
        {
            "path_prefix": f"/chat/messages/{inputs['message']}/restore",
            "responses": [{"status": 500}],
        },
    )
    results = await undo_run(engine.store, run.run_id, actor="ops")
    assert [(r.step_id, r.outcome) for r in results] == [
        ("branch", "undone"),
        ("message", "failed"),
        ("issue", "refused"),
    ]
    assert "a newer undo failed first" in results[2].message
    assert (await api(service, "GET", f"/tracker/issues/{inputs['issue']}"))[0] == 404

    with pytest.raises(Conflict, match=r"its undo failed .*--retry"):
        await undo_run(engine.store, run.run_id, actor="ops")
    results = await undo_run(engine.store, run.run_id, actor="ops", retry=True)
    assert [(r.step_id, r.outcome) for r in results] == [
        ("branch", "skipped"),
        ("message", "undone"),
        ("issue", "undone"),
    ]
    assert (await api(service, "GET", f"/tracker/issues/{inputs['issue']}"))[0] == 200


async def test_run_undo_refuses_up_front_unless_keep_going(engine, service):
    n = await new_issue(service, "mixed")
    await api(service, "POST", "/code/branches", {"name": "tmp"})
    steps = {
        "issue": delete_issue_step(),
        "branch": {
            "agent": "code",
            "needs": ["issue"],
            "destructive": True,
            "with": {"method": "DELETE", "path": "/branches/tmp"},
        },
    }
    run = await engine.run(wf(service, steps), {"issue": n})
    with pytest.raises(
        Conflict, match=r"cannot be undone completely: entry \d+ \(branch\): not undoable"
    ):
        await engine.undo.undo_run(run.run_id, actor="ops")
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 404  # nothing changed
    results = await engine.undo.undo_run(run.run_id, actor="ops", keep_going=True)
    assert [(r.step_id, r.outcome) for r in results] == [("branch", "refused"), ("issue", "undone")]
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 200


# --------------------------------------------------------------------------- uncertain outcomes


async def test_timeout_leaves_the_entry_prepared_and_undo_rechecks_it(engine, service):
    """A request that timed out may still have acted: the entry is not voided; undo re-reads
    the captured thing and compensates only if it changed."""
    happened = await new_issue(service, "slow delete that happened")
    never = await new_issue(service, "slow delete that never happened")
    step = delete_issue_step(timeout=0.3)
    await api(
        service,
        "POST",
        "/admin/script",  # reaches the handler after the client gave up
        {
            "path_prefix": f"/tracker/issues/{happened}",
            "method": "DELETE",
            "responses": [{"delay": 0.6}],
        },
    )
    await api(
        service,
        "POST",
        "/admin/script",  # never reaches the handler
        {
            "path_prefix": f"/tracker/issues/{never}",
            "method": "DELETE",
            "responses": [{"delay": 0.6, "status": 504}],
        },
    )
    r1 = await engine.run(wf(service, {"delete": step}), {"issue": happened})
    r2 = await engine.run(wf(service, {"delete": step}), {"issue": never})
    assert r1.status is r2.status is RunStatus.FAILED
    e2, e1 = await engine.undo.history()
    for e in (e1, e2):
        assert e.status == "prepared" and e.error.startswith("outcome unknown (timeout")
    for _ in range(100):  # the delayed delete lands a moment later
        if (await api(service, "GET", f"/tracker/issues/{happened}"))[0] == 404:
            break
        await asyncio.sleep(0.05)

    res = await engine.undo.undo(e1.id, actor="a")
    assert res.outcome == "undone"
    assert (await api(service, "GET", f"/tracker/issues/{happened}"))[0] == 200
    res = await engine.undo.undo(e2.id, actor="a")
    assert res.outcome == "void" and "the action never happened" in res.message
    assert res.entry.status == "void"
    with pytest.raises(Conflict, match="nothing to undo"):
        await engine.undo.undo(e2.id, actor="a")


# --------------------------------------------------------------------------- python handlers


async def test_python_step_undone_by_a_registered_handler(engine, tmp_path, store):
    f = tmp_path / "report.txt"
    f.write_text("quarterly numbers")
    spec = WorkflowSpec.model_validate(
        {
            "name": "files",
            "agents": {"py": {"kind": "python"}},
            "steps": {
                "rm": {
                    "agent": "py",
                    "destructive": True,
                    "with": {
                        "call": "tests.helpers.undo_steps:remove_file",
                        "args": {"path": str(f)},
                    },
                    "undo": {
                        "handler": "restore_file",
                        "description": "put ${{ output.path }} back",
                    },
                }
            },
        }
    )
    await engine.run(spec)
    assert not f.exists()
    [entry] = await engine.undo.history()
    assert entry.description == f"put {f} back"
    res = await engine.undo.undo(entry.id, actor="a")
    assert res.outcome == "undone" and res.entry.result == {"restored": str(f)}
    assert f.read_text() == "quarterly numbers"
    [a] = rows(store, "SELECT operation, status FROM attempts WHERE step_id = 'rm.undo'")
    assert a == {"operation": "undo:restore_file", "status": "succeeded"}


# --------------------------------------------------------------------------- history


async def test_history_cap_prunes_only_expired_entries(engine, service, store, clock):
    engine.undo.history_cap = 2
    step = delete_issue_step()
    step["undo"]["ttl"] = 100
    spec = wf(service, {"delete": step})
    for i in range(3):
        await engine.run(spec, {"issue": await new_issue(service, f"i{i}")})
        clock.now += 10
    assert len(await engine.undo.history()) == 3  # over the cap, but nothing expired yet

    clock.now += 75  # the first entry (created at t0) expires at t0+100; now t0+105
    await engine.run(spec, {"issue": await new_issue(service, "i3")})
    ids = [e.id for e in await engine.undo.history()]
    assert ids == [4, 3, 2]  # only the expired one went; still above the cap
    assert ("undo.pruned", None, None) in undo_events(store)

    clock.now += 1000  # all old ones expired
    await engine.run(spec, {"issue": await new_issue(service, "i4")})
    assert [e.id for e in await engine.undo.history()] == [5, 4]
    store.flush_sync()
    assert [
        e.id for e in store.read(lambda db: list_entries(db, now=clock.now, status="expired"))
    ] == [4]


async def test_history_filters(engine, service, store, clock):
    n = await new_issue(service, "f")
    run = await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": n})
    store.flush_sync()
    assert [
        e.run_id for e in store.read(lambda db: list_entries(db, now=clock.now, run_id=run.run_id))
    ] == [run.run_id]
    assert store.read(lambda db: list_entries(db, now=clock.now, status="undone")) == []
    from engine.errors import InputError

    with pytest.raises(InputError, match="not a status"):
        store.read(lambda db: list_entries(db, now=clock.now, status="bogus"))


# --------------------------------------------------------------------------- wiring and validation


def test_undo_hook_is_registered_last(store):
    eng = Engine(store)
    assert isinstance(eng.undo, UndoHook) and eng.hooks[-1] is eng.undo


def test_undo_transitions_are_explicit():
    from engine.models import IllegalTransition, UndoStatus, check_undo_transition

    check_undo_transition(UndoStatus.DONE, UndoStatus.UNDOING)
    check_undo_transition(UndoStatus.FAILED, UndoStatus.UNDOING)
    for old, new in [
        ("undone", "undoing"),
        ("void", "undoing"),
        ("done", "undone"),
        ("not_undoable", "undoing"),
    ]:
        with pytest.raises(IllegalTransition):
            check_undo_transition(UndoStatus(old), UndoStatus(new))


def spec_problems(doc: dict) -> list[str]:
    spec = WorkflowSpec.model_validate({"name": "v", **doc})
    return [".".join(map(str, p)) + ": " + m for p, m in validate(spec)]


def test_validation_of_undo_fields():
    agents_ = {"h": {"kind": "http", "base_url": "http://x"}, "py": {"kind": "python"}}
    assert spec_problems(
        {
            "agents": agents_,
            "steps": {
                "a": {"agent": "h", "with": {"path": "/a"}},
                "b": {
                    "agent": "h",
                    "needs": ["a"],
                    "destructive": True,
                    "with": {"method": "DELETE", "path": "/x/${{ output.id }}"},
                    "undo": {
                        "handler": "nope",
                        "with": {
                            "method": "POST",
                            "bogus": 1,
                            "path": "/x/${{ output.id }}/${{ before.v }}/${{ steps.b.output.id }}/${{ steps.a.output }}",
                        },
                        "description": "${{ before.title }} ${{ steps.zz.output }}",
                        "capture": {"with": {"path": "/x/${{ before.v }}"}},
                    },
                },
            },
        }
    ) == [
        "steps.b.with.path: ${{ output.id }}: 'output' is only available in `undo.with` and `undo.description`",
        "steps.b.undo.handler: give either `with` (a compensating action) or `handler`",
        "steps.b.undo.handler: undo handlers are for python agents; agent 'h' is http: use `with`",
        "steps.b.undo.with.bogus: unknown parameter for an http step (use method, path, json, headers, query)",
        "steps.b.undo.description: ${{ steps.zz.output }}: unknown step 'zz' (known: a, b)",
        "steps.b.undo.capture.with.path: ${{ before.v }}: 'before' is only available in `undo.with` and `undo.description`",
    ]
    assert (
        spec_problems(
            {
                "agents": agents_,
                "steps": {
                    "rm": {
                        "agent": "py",
                        "destructive": True,
                        "with": {"call": "m:f"},
                        "undo": {
                            "handler": "restore_file",
                            "capture": {"agent": "h", "with": {"path": "/s"}},
                        },
                    }
                },
            }
        )
        == []
    )


async def test_console_operator_undoes_through_the_engine_api(engine, service, store):
    from console.operator import Operator

    n = await new_issue(service, "from the console")
    await engine.run(wf(service, {"delete": delete_issue_step()}), {"issue": n})
    [entry] = await engine.undo.history()
    for op in (Operator(store, engine=engine, reviewer="con"), Operator(store, reviewer="con")):
        if entry.status == "done":
            assert "undone" in await op.undo(entry.id)
            entry = (await engine.undo.history())[0]
            assert entry.undone_by == "con"
        else:
            with pytest.raises(Conflict, match="already undone"):
                await op.undo(entry.id)
    assert (await api(service, "GET", f"/tracker/issues/{n}"))[0] == 200
