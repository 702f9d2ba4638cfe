"""The llm agent against real servers on 127.0.0.1: the demo service's OpenAI-compatible
stand-in, and a small capturing server for the request's shape."""

from __future__ import annotations

import pytest
from aiohttp import web

from console.demo.service import Script, ServiceConfig, start_service
from engine.errors import WorkflowError
from engine.loader import load_workflow_text
from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine


@pytest.fixture
async def demo():
    svc = await start_service(ServiceConfig(latency_scale=0))
    yield svc
    await svc.stop()


def spec_for(base_url: str, with_: dict, retry: dict | None = None, **agent) -> WorkflowSpec:
    step = {"agent": "llm", "with": with_}
    if retry is not None:
        step["retry"] = retry
    return WorkflowSpec.model_validate(
        {
            "name": "llm",
            "agents": {"llm": {"kind": "llm", "base_url": base_url, "model": "demo-small",
                               **agent}},
            "steps": {"ask": step},
        }
    )  # fmt: skip


def attempts(store, run_id: str) -> list[dict]:
    store.flush_sync()
    return store.query(
        "SELECT number, status, operation, error_class, error, prompt_tokens, completion_tokens "
        "FROM attempts WHERE run_id=? ORDER BY number",
        [run_id],
    )


def completion(content: str, finish: str = "stop") -> dict:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }  # fmt: skip


async def test_answer_is_the_parsed_json_and_tokens_are_stored_per_attempt(store, demo):
    spec = spec_for(demo.url + "/v1", {"prompt": "Close the stale release PR and its branch",
                                       "require": ["route", "confidence"]})  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    out = run.outputs["ask"]
    assert out["route"] == "code" and 0 <= out["confidence"] <= 1 and out["summary"]
    [att] = attempts(store, run.run_id)
    assert att["status"] == "succeeded" and att["operation"] == "chat demo-small"
    assert att["prompt_tokens"] > 0 and att["completion_tokens"] > 0
    assert att["prompt_tokens"] + att["completion_tokens"] == demo.service.state.tokens


async def test_malformed_answer_is_a_clear_error_and_not_retried_by_default(store, demo):
    demo.service.update_config({"llm_malformed_rate": 1.0})
    spec = spec_for(demo.url + "/v1", {"prompt": "file a ticket"},
                    retry={"attempts": 3, "backoff": "none"})  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.FAILED
    [att] = attempts(store, run.run_id)  # validation errors are final unless configured
    assert att["error_class"] == "validation"
    assert att["error"].startswith("answer is not JSON")
    assert att["prompt_tokens"] > 0  # the tokens were spent all the same
    assert demo.service.state.completions == 1
    step = store.query("SELECT error, error_class FROM steps WHERE run_id=?", [run.run_id])[0]
    assert step["error_class"] == "validation" and "answer is not JSON" in step["error"]


async def test_malformed_answer_is_retried_when_the_policy_says_so(store, demo):
    demo.service.add_script(Script(path_prefix="/v1/chat", responses=[
        {"status": 200, "body": completion("Sure! Here is the JSON: {\"route\": \"chat\"}")},
        {"status": 200, "body": completion('{"route": "ch', finish="length")},
    ]))  # fmt: skip
    spec = spec_for(
        demo.url + "/v1",
        {"prompt": "tell the team"},
        retry={"attempts": 3, "backoff": "none", "on_error": ["validation"]},
    )
    async with Engine(store) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    first, second, third = attempts(store, run.run_id)
    assert first["status"] == second["status"] == "failed"
    assert "cut off: finish_reason=length" in second["error"]
    assert (first["prompt_tokens"], first["completion_tokens"]) == (11, 7)
    assert third["status"] == "succeeded"
    assert run.outputs["ask"]["route"] == "chat"


async def test_fenced_json_required_keys_and_http_errors(store, demo):
    demo.service.add_script(Script(path_prefix="/v1/chat", responses=[
        {"status": 200, "body": completion('```json\n{"summary": "ok"}\n```')},
        {"status": 200, "body": completion('{"summary": "ok"}')},
        {"status": 429, "retry_after": 0},
        {"status": 400, "body": {"error": {"message": "model 'x' does not exist",
                                           "type": "invalid_request_error"}}},
    ]))  # fmt: skip
    url = demo.url + "/v1"
    async with Engine(store) as eng:
        run = await eng.run(spec_for(url, {"prompt": "a"}))
        assert run.outputs["ask"] == {"summary": "ok"}  # a ```json fence``` is accepted
        run = await eng.run(spec_for(url, {"prompt": "b", "require": ["route", "summary"]}))
        assert run.status is RunStatus.FAILED
        assert attempts(store, run.run_id)[0]["error"] == "answer lacks 'route' (has: summary)"
        run = await eng.run(spec_for(url, {"prompt": "c"}, retry={"attempts": 3, "max": 0.1}))
        assert run.status is RunStatus.FAILED
        att = attempts(store, run.run_id)
        assert [a["error_class"] for a in att] == ["http", "http"]  # 429 retried, 400 final
        assert att[1]["error"].endswith("model 'x' does not exist")


@pytest.fixture
async def capture():
    seen: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "headers": dict(request.headers),
                     "body": await request.json()})  # fmt: skip
        return web.json_response(completion('{"ok": true}'))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1/", seen
    await runner.cleanup()


async def test_request_shape_and_api_key(store, capture, monkeypatch):
    url, seen = capture
    monkeypatch.setenv("FLOWDECK_TEST_LLM_KEY", "sk-test")
    spec = spec_for(
        url,
        {"system": "Answer in JSON.", "messages": [{"role": "user", "content": "earlier"}],
         "prompt": "now", "max_tokens": 50, "model": "demo-large"},
        api_key_env="FLOWDECK_TEST_LLM_KEY", temperature=0.2, headers={"X-Team": "ops"},
    )  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.run(spec)
        assert run.outputs["ask"] == {"ok": True}
        [req] = seen
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == "Bearer sk-test"
        assert req["headers"]["X-Team"] == "ops"
        assert req["headers"]["Idempotency-Key"] == f"{run.run_id}:ask"
        assert req["body"] == {
            "model": "demo-large",
            "messages": [{"role": "system", "content": "Answer in JSON."},
                         {"role": "user", "content": "earlier"},
                         {"role": "user", "content": "now"}],
            "temperature": 0.2, "max_tokens": 50, "response_format": {"type": "json_object"},
        }  # fmt: skip
        plain = spec_for(url, {"prompt": "hi", "json": False})
        run = await eng.run(plain)
        assert run.outputs["ask"] == {"text": '{"ok": true}'}
        assert "response_format" not in seen[-1]["body"]
        monkeypatch.delenv("FLOWDECK_TEST_LLM_KEY")
        run = await eng.run(spec)
    assert run.status is RunStatus.FAILED
    err = attempts(store, run.run_id)[0]
    assert err["error_class"] == "validation"
    assert "FLOWDECK_TEST_LLM_KEY (api_key_env) is not set" in err["error"]
    assert len(seen) == 2


def test_bad_llm_parameters_are_reported_at_load_time():
    text = (
        "name: v\nagents: {llm: {kind: llm, base_url: 'http://x/v1', model: m}}\nsteps:\n"
        "  a: {agent: llm, with: {promt: hi, temperature: 3, messages: [{role: bot}]}}\n"
        "  b: {agent: llm, with: {system: hi, require: route}}\n"
    )
    with pytest.raises(WorkflowError) as err:
        load_workflow_text(text, "wf.yaml")
    lines = err.value.problems
    assert any(p.startswith("wf.yaml:4:26: steps.a.with.promt: unknown parameter") for p in lines)
    assert any("steps.a.with.temperature: must be a number from 0 to 2" in p for p in lines)
    assert any("steps.a.with.messages[0]: must be {role:" in p for p in lines)
    assert any("steps.b.with.prompt: required (or `messages`)" in p for p in lines)
    assert any("steps.b.with.require: must be a list of key names" in p for p in lines)
    assert not any("steps.a.with.prompt" in p for p in lines)  # messages stand in for it
