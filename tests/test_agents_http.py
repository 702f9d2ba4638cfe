"""The http agent against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import socket
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from engine.agents import http as httpagent
from engine.agents.base import AgentResources, StepCall, create
from engine.errors import ErrorClass, StepError
from engine.models import AgentSpec

# --------------------------------------------------------------------------- the server

RELEASE = web.AppKey("release", asyncio.Event)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": [[k, v] for k, v in request.query.items()],
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode(),
        },
        status=201 if request.method == "POST" else 200,
    )


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {}
    if "retry_after" in request.query:
        headers["Retry-After"] = request.query["retry_after"]
    return web.Response(
        status=code, text=request.query.get("body", f"status {code}"), headers=headers
    )


async def text(request: web.Request) -> web.Response:
    body = "é" * int(request.query["repeat"]) if "repeat" in request.query else "plain words"
    return web.Response(text=body, content_type="text/plain")


async def empty(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def slow(request: web.Request) -> web.Response:
    await request.app[RELEASE].wait()
    return web.json_response({"late": True})


@pytest.fixture
async def server():
    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app.router.add_route("*", "/api/echo/{tail:.*}", echo)
    app.router.add_get("/api/status/{code}", status)
    app.router.add_get("/api/text", text)
    app.router.add_get("/api/empty", empty)
    app.router.add_get("/api/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/api/"  # trailing slash: the agent strips it
    app[RELEASE].set()
    await runner.cleanup()


@pytest.fixture
async def resources():
    res = AgentResources()
    yield res
    await res.aclose()


def make_agent(resources: AgentResources, base_url: str | None, **spec) -> httpagent.HttpAgent:
    agent = create("gh", AgentSpec(kind="http", base_url=base_url, **spec), resources)
    assert isinstance(agent, httpagent.HttpAgent)
    return agent


def step(timeout: float = 10, **params) -> StepCall:
    return StepCall(
        run_id="r1",
        step_id="ticket",
        attempt=1,
        params=params,
        timeout=timeout,
        idempotency_key="r1:ticket",
    )


# --------------------------------------------------------------------------- success


async def test_post_json_body_and_json_output(server, resources):
    agent = make_agent(resources, server)
    call = step(method="post", path="/echo/issues", json={"title": "Fix it", "n": 1})
    out = await agent.call(call)
    assert out["method"] == "POST"
    assert out["path"] == "/api/echo/issues"
    assert out["body"] == '{"title": "Fix it", "n": 1}'
    assert out["headers"]["content-type"] == "application/json"
    assert call.operation == "POST /echo/issues"


async def test_headers_idempotency_key_bearer_and_query(server, resources, monkeypatch):
    monkeypatch.setenv("FLOWDECK_TEST_TOKEN", "s3cret")
    agent = make_agent(
        resources,
        server,
        headers={"X-Spec": "spec", "X-Both": "spec"},
        api_key_env="FLOWDECK_TEST_TOKEN",
    )
    out = await agent.call(
        step(
            method="GET",
            path="/echo/items",
            headers={"X-Step": "step", "x-both": "step"},
            query={"q": "a b", "n": 3, "flag": True, "tag": ["x", "y"]},
        )
    )
    headers = out["headers"]
    assert headers["idempotency-key"] == "r1:ticket"
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-spec"] == "spec"
    assert headers["x-step"] == "step"
    assert headers["x-both"] == "step"
    assert headers["user-agent"].startswith("flowdeck/")
    assert out["query"] == [["q", "a b"], ["n", "3"], ["flag", "true"], ["tag", "x"], ["tag", "y"]]


async def test_no_bearer_when_the_variable_is_unset(server, resources, monkeypatch):
    monkeypatch.delenv("FLOWDECK_TEST_TOKEN", raising=False)
    agent = make_agent(resources, server, api_key_env="FLOWDECK_TEST_TOKEN")
    out = await agent.call(step(path="/echo/x"))
    assert "authorization" not in out["headers"]
    assert out["headers"]["idempotency-key"] == "r1:ticket"


async def test_every_request_sends_the_idempotency_key(server, resources):
    agent = make_agent(resources, server)
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        out = await agent.call(
            step(method=method, path="/echo/x", headers={"Idempotency-Key": "mine"})
        )
        assert out["headers"]["idempotency-key"] == "r1:ticket"


async def test_empty_body_is_empty_object(server, resources):
    agent = make_agent(resources, server)
    assert await agent.call(step(path="/empty")) == {}
    assert await agent.call(step(method="HEAD", path="/echo/x")) == {}


async def test_text_body_is_wrapped_and_capped(server, resources):
    agent = make_agent(resources, server, max_output=1024)
    assert await agent.call(step(path="/text")) == {"text": "plain words"}
    out = await agent.call(step(path="/text", query={"repeat": 2000}))
    assert out["text"] == "é" * 512 + f"\n[... {4000 - 1024} bytes cut]"


async def test_agents_share_one_session(server, resources):
    a, b = make_agent(resources, server), make_agent(resources, server)
    await a.call(step(path="/echo/a"))
    session = await resources.http()
    await b.call(step(path="/echo/b"))
    assert await resources.http() is session


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (422, False),
        (408, True),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
    ],
)
async def test_error_status_classification(server, resources, code, retryable):
    agent = make_agent(resources, server)
    with pytest.raises(StepError) as info:
        await agent.call(step(path=f"/status/{code}", query={"body": "  went\n  wrong  "}))
    err = info.value
    assert err.error_class is ErrorClass.HTTP
    assert err.status == code
    assert err.retryable is retryable
    assert err.message == f"HTTP {code} from GET /status/{code}: went wrong"
    assert err.output == {"text": "  went\n  wrong  "}
    assert err.retry_after is None


async def test_retry_after_seconds(server, resources):
    agent = make_agent(resources, server)
    with pytest.raises(StepError) as info:
        await agent.call(step(path="/status/503", query={"retry_after": "7"}))
    assert info.value.retry_after == 7.0
    assert info.value.retryable is True


async def test_retry_after_http_date(server, resources):
    when = datetime.now(UTC) + timedelta(seconds=120)
    agent = make_agent(resources, server)
    with pytest.raises(StepError) as info:
        await agent.call(
            step(
                path="/status/429",
                query={"retry_after": email.utils.format_datetime(when, usegmt=True)},
            )
        )
    assert info.value.retry_after is not None
    assert 60 < info.value.retry_after <= 121


async def test_connection_refused_is_retryable_connection_error(resources):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = make_agent(resources, f"http://127.0.0.1:{port}")
    with pytest.raises(StepError) as info:
        await agent.call(step(method="POST", path="/issues", json={}))
    assert info.value.error_class is ErrorClass.CONNECTION
    assert info.value.retryable is True


async def test_no_answer_within_timeout_is_retryable_timeout(server, resources):
    agent = make_agent(resources, server)
    with pytest.raises(StepError) as info:
        await agent.call(step(timeout=0.3, path="/slow"))
    assert info.value.error_class is ErrorClass.TIMEOUT
    assert info.value.retryable is True


async def test_missing_base_url_is_validation(resources):
    with pytest.raises(StepError) as info:
        await make_agent(resources, None).call(step(path="/x"))
    assert info.value.error_class is ErrorClass.VALIDATION


async def test_unserialisable_json_is_validation(server, resources):
    with pytest.raises(StepError) as info:
        await make_agent(resources, server).call(step(method="POST", path="/echo/x", json={1, 2}))
    assert info.value.error_class is ErrorClass.VALIDATION


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"method": "POST", "path": "/pulls/42/close"}, "POST /pulls/*/close"),
        ({"method": "post", "path": "/pulls/${{ inputs.pr }}/close"}, "POST /pulls/*/close"),
        ({"path": "/runs/3f2a9c1e77b0/logs?page=2"}, "GET /runs/*/logs"),
        (
            {"method": "DELETE", "path": "/items/123e4567-e89b-12d3-a456-426614174000"},
            "DELETE /items/*",
        ),
        ({"method": "GET", "path": "/v1/releases/2024-01-31"}, "GET /v1/releases/*"),
        ({"method": "GET", "path": "/v1/feedback/"}, "GET /v1/feedback/"),
        ({"method": "GET", "path": "/deadbeefcafe/x"}, "GET /deadbeefcafe/x"),
        ({"method": "PUT", "path": "/issues"}, "PUT /issues"),
    ],
)
def test_operation_replaces_ids(params, expected, resources):
    assert make_agent(resources, "http://x").operation(params) == expected


@pytest.mark.parametrize(
    ("method", "idempotent"),
    [
        ("GET", True),
        ("head", True),
        ("PUT", True),
        ("DELETE", True),
        ("OPTIONS", True),
        ("POST", False),
        ("PATCH", False),
        (None, True),
    ],
)
def test_is_idempotent_by_method(method, idempotent, resources):
    params = {"path": "/x"} if method is None else {"method": method, "path": "/x"}
    assert make_agent(resources, "http://x").is_idempotent(params) is idempotent


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "path:"),
        ({"path": "issues"}, "path:"),
        ({"path": 5}, "path:"),
        ({"method": "FETCH", "path": "/x"}, "method:"),
        ({"method": 1, "path": "/x"}, "method:"),
        ({"path": "/x", "headers": ["a"]}, "headers:"),
        ({"path": "/x", "headers": {"A": {"b": 1}}}, "headers.A:"),
        ({"path": "/x", "query": {"a": {"b": 1}}}, "query.a:"),
        ({"path": "/x", "body": "raw"}, "body:"),
    ],
)
def test_validate_params_problems(params, problem):
    problems = httpagent.HttpAgent.validate_params(params)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "params",
    [
        {"method": "GET", "path": "/x"},
        {"method": "patch", "path": "/x", "json": [1], "headers": {"A": "b"}, "query": {"a": [1]}},
        {"method": "${{ inputs.method }}", "path": "${{ steps.find.output.url }}"},
    ],
)
def test_validate_params_accepts(params):
    assert httpagent.HttpAgent.validate_params(params) == []


def test_parse_retry_after():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert httpagent.parse_retry_after("3") == 3.0
    assert httpagent.parse_retry_after("-3") == 0.0
    assert httpagent.parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert httpagent.parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert httpagent.parse_retry_after("soon") is None
    assert httpagent.parse_retry_after("") is None
    assert httpagent.parse_retry_after(None) is None
