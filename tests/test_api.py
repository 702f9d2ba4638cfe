"""The HTTP API over a real server on 127.0.0.1: routes, auth, every error status, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from engine import api as api_module
from engine.api_models import ErrorBody, RunDetail, StartRun
from engine.models import WorkflowSpec
from engine.runner import Engine
from tests.helpers.api import AUTH, TOKEN, fan_workflow, running_api, write_workflows


@pytest.fixture
async def api(tmp_path, db_path):
    async with running_api(db_path, write_workflows(tmp_path / "workflows"), cancel_wait=10) as a:
        yield a


def assert_error(status: int, body: dict, expected: int, *words: str) -> None:
    assert status == expected, body
    ErrorBody.model_validate(body)
    assert set(body) <= {"error", "detail", "problems"}
    assert "Traceback" not in body["detail"]
    for word in words:
        assert word in body["detail"], body


# --------------------------------------------------------------------------- runs


async def test_start_run_then_read_it_back(api):
    status, body = await api.post("/api/runs", json={"workflow": "hello", "inputs": {"who": "ada"}})
    assert status == 201, body
    assert body["workflow"] == "hello" and body["url"] == f"/api/runs/{body['id']}"
    run = await api.wait_run(body["id"])
    RunDetail.model_validate(run)
    assert run["status"] == "succeeded"
    assert run["inputs"] == {"who": "ada", "times": 1}
    steps = {s["step_id"]: s for s in run["steps"]}
    assert steps["shout"]["output"]["value"] == "hello ada!"
    assert steps["greet"]["attempts"][0]["status"] == "succeeded"
    assert run["source"].endswith("hello.yaml")

    status, listing = await api.get("/api/runs")
    assert status == 200
    assert [r["id"] for r in listing["runs"]] == [body["id"]]
    assert listing["runs"][0]["steps_done"] == 2
    status, listing = await api.get("/api/runs", params={"status": "failed"})
    assert status == 200 and listing["runs"] == []


async def test_list_runs_limit_and_order(api):
    ids = [await api.start("quick") for _ in range(3)]
    for run_id in ids:
        await api.wait_run(run_id)
    status, body = await api.get("/api/runs", params={"limit": "2"})
    assert status == 200
    assert [r["id"] for r in body["runs"]] == ids[::-1][:2]


async def test_start_run_errors(api):
    status, body = await api.post("/api/runs", json={"workflow": "nope"})
    assert_error(status, body, 404, "no workflow 'nope'")
    status, body = await api.post("/api/runs", json={"workflow": "hello"})
    assert_error(status, body, 422, "body.inputs", "'who'", "required")
    status, body = await api.post(
        "/api/runs", json={"workflow": "hello", "inputs": {"who": 5, "tims": 2}}
    )
    assert_error(status, body, 422, "'who'", "expected string")
    assert any("tims" in p and "times" in p for p in body["problems"]), body  # did-you-mean
    status, body = await api.post("/api/runs", json={"workflow": "broken"})
    assert_error(status, body, 409, "broken.yaml", "cannot be started")
    status, body = await api.post("/api/runs", json={"inputs": {}})
    assert_error(status, body, 422, "body.workflow", "Field required")
    status, body = await api.post("/api/runs", json={"workflow": "quick", "extra": 1})
    assert_error(status, body, 422, "body.extra: unknown field")
    status, body = await api.post("/api/runs", json={"workflow": "quick", "inputs": [1]})
    assert_error(status, body, 422, "body.inputs")
    status, body = await api.post("/api/runs", json=[1, 2])
    assert_error(status, body, 422, "body")
    rows = api.store.query("SELECT count(*) AS n FROM runs")
    assert rows[0]["n"] == 0, "a refused request stored nothing"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{", "not valid JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"workflow": NaN}', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"workflow": "quick", "inputs": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}", "nested"),
    ],
)
async def test_bad_json_is_400(api, raw, words):
    status, body = await api.post(
        "/api/runs", data=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(status, body, 400, words)


async def test_body_over_one_mib_is_413(api):
    big = json.dumps({"workflow": "quick", "inputs": {"x": "a" * (1024 * 1024)}}).encode()
    status, body = await api.post("/api/runs", data=big)
    assert_error(status, body, 413, "1 MiB")

    async def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 65536

    status, body = await api.post("/api/runs", data=chunks())
    assert_error(status, body, 413, "1 MiB")
    just_under = json.dumps({"workflow": "nope", "inputs": {"x": "a" * 1_000_000}}).encode()
    status, body = await api.post("/api/runs", data=just_under)
    assert status == 404, body


async def test_get_run_and_cancel_unknown_ids_are_404(api):
    for path in ("/api/runs/abc123", "/api/runs/not-hex!", "/api/runs/%25_"):
        status, body = await api.get(path)
        assert_error(status, body, 404, "no run")
    status, body = await api.post("/api/runs/abc123/cancel")
    assert_error(status, body, 404, "no run")


async def test_cancel_a_running_run_then_409(api):
    run_id = await api.start("slow", seconds=30)
    await _wait_status(api, run_id, "running")
    status, body = await api.post(f"/api/runs/{run_id}/cancel")
    assert status == 200, body
    assert body == {"id": run_id, "status": "cancelled"}
    run = await api.wait_run(run_id)
    assert {s["step_id"]: s["status"] for s in run["steps"]} == {
        "wait": "cancelled",
        "after": "cancelled",
    }
    status, body = await api.post(f"/api/runs/{run_id}/cancel")
    assert_error(status, body, 409, "already ended (cancelled)")


async def test_cancel_a_run_no_engine_holds(api):
    """A run whose engine died (lease expired) is cancelled in the database."""
    spec = WorkflowSpec.model_validate(fan_workflow(2))
    other = Engine(api.store, poll_commands=False)
    await other.start()
    run = await other.submit(spec)
    await run.wait()
    api.store.run_sync(
        lambda db: db.execute(
            "UPDATE runs SET status='interrupted', owner='dead:1', lease_until=? WHERE id=?",
            (time.time() - 60, run.run_id),
        )
    )
    api.store.run_sync(
        lambda db: db.execute("UPDATE steps SET status='pending' WHERE run_id=?", [run.run_id])
    )
    await other.aclose()
    status, body = await api.post(f"/api/runs/{run.run_id}/cancel")
    assert status == 200 and body["status"] == "cancelled", body
    rows = api.store.query("SELECT status FROM steps WHERE run_id=?", [run.run_id])
    assert {r["status"] for r in rows} == {"cancelled"}


async def test_cancel_a_run_another_live_engine_owns(api):
    """The command goes through the `commands` table to the engine holding the run."""
    spec = WorkflowSpec.model_validate(
        {
            "name": "other",
            "agents": {"py": {"kind": "python"}},
            "steps": {"w": {"agent": "py", "with": {"call": "tests.helpers.steps:sleep"}}},
        }
    )
    other = Engine(api.store)
    await other.start()
    try:
        run = await other.submit(spec)
        assert run.run_id not in api.engine.runs
        status, body = await api.post(f"/api/runs/{run.run_id}/cancel")
        assert status == 200 and body["status"] == "cancelled", body
        assert (await run.wait()).value == "cancelled"
    finally:
        await other.aclose()


async def _wait_status(api, run_id: str, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, run = await api.get(f"/api/runs/{run_id}")
        if run["status"] == wanted and any(s["status"] == "running" for s in run["steps"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never {wanted}")


# --------------------------------------------------------------------------- query, routes


async def test_query_schema_errors_are_422_naming_the_field(api):
    for params, words in [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "abc"}, "query.limit"),
        ({"limit": "5000"}, "query.limit"),
        ({"stauts": "x"}, "query.stauts: unknown field"),
        ({"status": "x" * 100}, "query.status"),
    ]:
        status, body = await api.get("/api/runs", params=params)
        assert_error(status, body, 422, words)


async def test_unknown_routes_and_methods_are_json(api):
    status, body = await api.get("/api/nothing")
    assert_error(status, body, 404, "no route")
    async with api.session.delete(api.url + "/api/runs", headers=AUTH) as r:
        assert r.status == 405
        assert "GET" in r.headers["Allow"]
        assert_error(r.status, await r.json(), 405, "DELETE")


async def test_workflows_listing(api):
    status, body = await api.get("/api/workflows")
    assert status == 200
    by_name = {w["name"]: w for w in body["workflows"]}
    assert set(by_name) == {"hello", "quick", "slow", "flaky", "broken", "rmfile", "gated"}
    assert by_name["hello"]["inputs"]["who"] == {
        "type": "string",
        "required": True,
        "default": None,
        "description": "",
    }
    assert by_name["broken"]["problems"] and "unknown agent" in by_name["broken"]["problems"][0]
    (api.workflows / "later.json").write_text(json.dumps({**fan_workflow(1), "name": "later"}))
    assert await api.start("later")  # a file added while serving is startable


async def test_health(api):
    status, body = await api.get("/api/health")
    assert status == 200 and body["ok"] is True


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer tökén"},
    ],
)
async def test_mutations_need_the_token(api, headers):
    for path, payload in [
        ("/api/runs", {"workflow": "quick"}),
        ("/api/runs/abc/cancel", None),
    ]:
        status, body = await api.post(path, auth=False, headers=headers, json=payload)
        assert_error(status, body, 401)
        assert body["error"] == "unauthorized"
    assert api.store.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


async def test_unauthorized_before_parsing(api):
    """A request without the token learns nothing about its body."""
    status, body = await api.post("/api/runs", auth=False, data=b"{")
    assert_error(status, body, 401)
    async with api.session.post(api.url + "/api/runs", data=b"{") as r:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_reads_are_open_on_loopback_and_closed_when_asked(tmp_path, db_path):
    async with running_api(db_path, write_workflows(tmp_path / "w"), reads_need_auth=True) as a:
        for path in ("/api/runs", "/api/workflows", "/api/events", "/metrics", "/api/health"):
            status, body = await a.get(path)
            assert_error(status, body, 401)
        status, _ = await a.get("/api/runs", headers=AUTH)
        assert status == 200
        doc = (await a.get("/api/openapi.json", headers=AUTH))[1]
        assert doc["paths"]["/api/runs"]["get"]["security"] == [{"bearerAuth": []}]


# --------------------------------------------------------------------------- errors in general


async def test_a_bug_is_a_500_without_traceback(store, tmp_path, db_path, caplog):
    engine = Engine(store)
    app = api_module.create_app(engine, api_module.Settings(db=db_path), token=TOKEN)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    server = await api_module.ApiServer(app, port=0).start()
    try:
        async with aiohttp.ClientSession() as s, s.get(server.url + "/boom") as r:
            body = await r.json()
        assert r.status == 500
        assert body == {"error": "internal", "detail": "internal error (see the server log)"}
        assert "secret internals" in caplog.text  # in the log, not in the response
    finally:
        await server.stop()
        await engine.aclose()


async def test_garbage_never_gets_a_500(api):
    """A sweep of malformed requests on every route: none is a 5xx, all are JSON errors."""
    bodies = [b"", b"null", b"1", b'"s"', b"[]", b"{}", b'{"workflow": null}', b"\x00", b"{" * 10]
    bodies += [json.dumps({"workflow": "quick", "inputs": {"k": "v" * 10}}).encode()]
    paths = ["/api/runs", "/api/runs/x/cancel", "/api/runs/ffff/cancel", "/api/runs/..%2f"]
    for path in paths:
        for raw in bodies:
            for headers in ({}, AUTH):
                async with api.session.post(api.url + path, data=raw, headers=headers) as r:
                    assert r.status < 500, (path, raw, r.status, await r.text())
                    if r.status >= 400:
                        assert_error(r.status, await r.json(), r.status)
    for query in ("limit=-1", "limit=1e9", "status=", "limit=%00", "after=x"):
        async with api.session.get(f"{api.url}/api/runs?{query}") as r:
            assert r.status in (200, 422), (query, r.status)


# --------------------------------------------------------------------------- openapi


async def test_openapi_document_is_generated_from_the_models(api):
    status, doc = await api.get("/api/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    design = {
        ("GET", "/api/runs"),
        ("GET", "/api/runs/{id}"),
        ("POST", "/api/runs"),
        ("POST", "/api/runs/{id}/cancel"),
        ("GET", "/api/events"),
        ("GET", "/metrics"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/undo"),
        ("POST", "/api/undo/{id}"),
        ("GET", "/api/analytics"),
        ("GET", "/api/reviews"),
        ("POST", "/api/reviews/{id}/decision"),
    }
    assert design <= routes
    served = {(r.method, r.path) for r in api_module.ROUTES}
    assert routes == served  # every served route is documented, and only those
    schemas = doc["components"]["schemas"]
    assert schemas["StartRun"]["properties"].keys() == StartRun.model_fields.keys()
    assert schemas["StartRun"]["additionalProperties"] is False
    post = doc["paths"]["/api/runs"]["post"]
    assert {"201", "400", "401", "404", "409", "413", "422"} <= set(post["responses"])
    assert post["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/api/runs"]["get"]
    assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    # the document is valid OpenAPI (schemathesis refuses invalid documents)
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    assert len(list(schema.get_all_operations())) == len(served)


# --------------------------------------------------------------------------- undo


async def test_undo_over_http(api, tmp_path):
    f = tmp_path / "report.txt"
    f.write_text("quarterly numbers")
    run_id = await api.start("rmfile", path=str(f))
    assert (await api.wait_run(run_id))["status"] == "succeeded"
    assert not f.exists()
    status, body = await api.get("/api/undo")
    assert status == 200
    [entry] = body["entries"]
    assert entry["run_id"] == run_id and entry["state"] == "done"
    assert entry["description"] == f"put {f} back" and entry["seconds_left"] > 0

    status, body = await api.post(f"/api/undo/{entry['id']}", auth=False)
    assert_error(status, body, 401)
    assert not f.exists()
    status, body = await api.post(f"/api/undo/{entry['id']}", json={"actor": "x\u0007"})
    assert_error(status, body, 422, "body.actor")
    status, body = await api.post(f"/api/undo/{entry['id']}")  # no body: the defaults
    assert status == 200, body
    assert body["outcome"] == "undone" and body["entry"]["undone_by"] == "api"
    assert f.read_text() == "quarterly numbers"

    status, body = await api.post(f"/api/undo/{entry['id']}", json={"actor": "ops"})
    assert_error(status, body, 409, "already undone")
    for missing in ("999", "0", "abc", "1" * 30):
        status, body = await api.post(f"/api/undo/{missing}")
        assert_error(status, body, 404, "no undo entry")
    status, body = await api.get("/api/undo", params={"status": "undone", "run_id": run_id})
    assert [e["id"] for e in body["entries"]] == [entry["id"]]
    status, body = await api.get("/api/undo", params={"status": "bogus"})
    assert_error(status, body, 422, "query.status", "not a status")


# --------------------------------------------------------------------------- analytics


async def test_analytics_over_http(api):
    from engine.analytics import AnalyticsSnapshot

    await api.wait_run(await api.start("hello", who="a"))
    await api.wait_run(await api.start("flaky"))
    status, body = await api.get("/api/analytics")
    assert status == 200, body
    snap = AnalyticsSnapshot.model_validate(body)
    calls = api.store.query(
        "SELECT count(*) AS n FROM attempts WHERE status IN ('succeeded', 'failed')"
    )[0]["n"]
    assert snap.totals.calls == calls == 6
    assert 0 <= snap.health.score <= 100 and snap.health.components
    status, body = await api.get(
        "/api/analytics", params={"since": "all", "slo_ms": "5", "min_calls": "1", "top": "3"}
    )
    assert status == 200 and body["since"] is None
    assert [a["agent"] for a in body["rankings"]] == ["py"]
    for params, words in [
        ({"since": "yesterday"}, "query.since"),
        ({"since": "0h"}, "query.since"),
        ({"slo_ms": "0"}, "query.slo_ms"),
        ({"top": "0"}, "query.top"),
    ]:
        status, body = await api.get("/api/analytics", params=params)
        assert_error(status, body, 422, words)
