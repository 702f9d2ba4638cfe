"""The demo service, against the real server on 127.0.0.1 (port 0) with an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from console.demo.service import (
    DemoService,
    OutageConfig,
    RunningService,
    ServiceConfig,
    llm_answer,
    start_service,
)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Demo:
    running: RunningService
    http: aiohttp.ClientSession
    clock: FakeClock

    @property
    def service(self) -> DemoService:
        return self.running.service

    async def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any, dict[str, str]]:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        async with self.http.request(method, path, json=body, headers=hdrs) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None, dict(resp.headers)

    async def ok(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        status, data, _ = await self.call(method, path, body, **headers)
        assert 200 <= status < 300, (status, data)
        return data

    async def configure(self, **patch: Any) -> dict[str, Any]:
        return await self.ok("POST", "/admin/config", patch)

    async def state(self) -> dict[str, Any]:
        return await self.ok("GET", "/admin/state")


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    clock = FakeClock()
    running = await start_service(ServiceConfig(latency_scale=0, clock=clock))
    try:
        async with aiohttp.ClientSession(running.url) as http:
            yield Demo(running, http, clock)
    finally:
        await running.stop()


# ---- services -------------------------------------------------------------------------------


async def test_start_service_binds_a_free_local_port(demo: Demo) -> None:
    assert demo.running.port > 0
    assert demo.running.url == f"http://127.0.0.1:{demo.running.port}"
    assert await demo.ok("GET", "/admin/health") == {"ok": True}


async def test_issue_lifecycle_close_reopen_delete_restore(demo: Demo) -> None:
    status, issue, _ = await demo.call(
        "POST", "/tracker/issues", {"title": "Flaky CI", "body": "b"}
    )
    assert status == 201
    assert issue["id"] == "DEMO-1" and issue["number"] == 1
    assert issue["title"] == "Flaky CI" and issue["state"] == "open"
    assert await demo.ok("GET", "/tracker/issues/DEMO-1") == issue
    assert await demo.ok("GET", "/tracker/issues/1") == issue  # by number too

    closed = await demo.ok("POST", "/tracker/issues/DEMO-1/close")
    assert closed["state"] == "closed" and closed["closed_at"]
    reopened = await demo.ok("POST", "/tracker/issues/DEMO-1/reopen")
    assert reopened["state"] == "open" and reopened["closed_at"] is None

    deleted = await demo.ok("DELETE", "/tracker/issues/DEMO-1")
    assert deleted["id"] == "DEMO-1"
    status, err, _ = await demo.call("GET", "/tracker/issues/DEMO-1")
    assert status == 404 and err["error"] == "not found" and "deleted" in err["detail"]
    assert (await demo.state())["tracker"] == {"issues": 0, "open": 0, "closed": 0, "deleted": 1}

    restored = await demo.ok("POST", "/tracker/issues/DEMO-1/restore")  # from the tombstone
    assert restored == deleted
    assert await demo.ok("GET", "/tracker/issues/DEMO-1") == deleted
    status, _, _ = await demo.call("POST", "/tracker/issues/DEMO-1/restore")
    assert status == 409

    # Restore from a captured before-state (no tombstone needed), e.g. after a reset.
    await demo.ok("POST", "/admin/reset")
    restored = await demo.ok("POST", "/tracker/issues/DEMO-1/restore", {**deleted, "body": "again"})
    assert restored["title"] == "Flaky CI" and restored["body"] == "again"
    nxt = await demo.ok("POST", "/tracker/issues", {"title": "next"})
    assert nxt["number"] == 2
    listing = await demo.ok("GET", "/tracker/issues?state=open")
    assert [i["id"] for i in listing["issues"]] == ["DEMO-1", "DEMO-2"]


async def test_issue_input_errors_are_json(demo: Demo) -> None:
    status, err, _ = await demo.call("POST", "/tracker/issues", {"body": "no title"})
    assert status == 422 and err == {"error": "unprocessable", "detail": "title: field required"}
    async with demo.http.post("/tracker/issues", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "bad request"
    status, err, headers = await demo.call("PUT", "/tracker/issues")
    assert status == 405 and "POST" in headers["Allow"]
    status, err, _ = await demo.call("GET", "/nowhere")
    assert status == 404 and err["error"] == "not found"
    status, _, _ = await demo.call("POST", "/tracker/issues/DEMO-9/restore")
    assert status == 404


async def test_chat_post_delete_restore_keeps_order(demo: Demo) -> None:
    first = await demo.ok("POST", "/chat/channels/releases/messages", {"text": "shipping 1.4"})
    assert set(first) == {"id", "ts", "channel", "text"}
    assert first["channel"] == "releases" and first["text"] == "shipping 1.4"
    second = await demo.ok("POST", "/chat/channels/releases/messages", {"text": "done"})
    assert second["ts"] > first["ts"]

    deleted = await demo.ok("DELETE", f"/chat/messages/{first['id']}")
    assert deleted == first
    msgs = await demo.ok("GET", "/chat/channels/releases/messages")
    assert [m["id"] for m in msgs["messages"]] == [second["id"]]
    assert (await demo.state())["chat"]["deleted"] == 1

    assert await demo.ok("POST", f"/chat/messages/{first['id']}/restore") == first
    msgs = await demo.ok("GET", "/chat/channels/releases/messages")
    assert msgs["messages"] == [first, second]
    status, _, _ = await demo.call("POST", f"/chat/messages/{first['id']}/restore")
    assert status == 409

    status, err, _ = await demo.call("POST", "/chat/channels/Bad Name/messages", {"text": "x"})
    assert status == 404
    status, err, _ = await demo.call("POST", "/chat/channels/general/messages", {})
    assert status == 422 and "text" in err["detail"]


async def test_code_host_pulls_and_branches(demo: Demo) -> None:
    pulls = await demo.ok("GET", "/code/pulls")
    assert pulls["total"] == 12 and all(p["state"] == "open" for p in pulls["pulls"])
    pr = await demo.ok("GET", "/code/pulls/1")
    head = pr["head"]
    assert pr["number"] == 1 and pr["base"] == "main"
    assert head in {b["name"] for b in (await demo.ok("GET", "/code/branches"))["branches"]}

    status, err, _ = await demo.call("DELETE", "/code/branches/main")
    assert status == 409 and "protected" in err["detail"]
    status, err, _ = await demo.call("DELETE", f"/code/branches/{head}")
    assert status == 409 and "open #1" in err["detail"]

    assert (await demo.ok("POST", "/code/pulls/1/close"))["state"] == "closed"
    deleted = await demo.ok("DELETE", f"/code/branches/{head}")  # a name with a slash
    assert deleted["name"] == head
    status, _, _ = await demo.call("GET", f"/code/branches/{head.replace('/', '%2F')}")
    assert status == 404
    status, err, _ = await demo.call("POST", "/code/pulls/1/reopen")
    assert status == 409 and "restore it first" in err["detail"]

    assert await demo.ok("POST", f"/code/branches/{head}/restore") == deleted
    assert (await demo.ok("POST", "/code/pulls/1/reopen"))["state"] == "open"
    assert (await demo.state())["code"]["open"] == 12

    status, _, _ = await demo.call("GET", "/code/pulls/99")
    assert status == 404
    created = await demo.ok("POST", "/code/branches", {"name": "feature/new"})
    assert created["sha"] == (await demo.ok("GET", "/code/branches/main"))["sha"]
    # The alias used by the example in DESIGN.md.
    assert (await demo.ok("POST", "/github/pulls/2/close"))["state"] == "closed"
    assert (await demo.ok("POST", "/github/issues", {"title": "t"}))["id"] == "DEMO-1"


# ---- LLM --------------------------------------------------------------------------------------


def _completion_request(prompt: str) -> dict[str, Any]:
    return {
        "model": "demo-small",
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": prompt},
        ],
    }


async def test_llm_completion_shape_and_usage(demo: Demo) -> None:
    prompt = "Summarise PR 12: close the release branch and merge the fix"
    answer = await demo.ok("POST", "/v1/chat/completions", _completion_request(prompt))
    assert answer["object"] == "chat.completion" and answer["model"] == "demo-small"
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    content = json.loads(choice["message"]["content"])
    assert set(content) == {"summary", "route", "confidence", "labels"}
    assert content["route"] == "code"
    assert 0.0 <= content["confidence"] <= 1.0
    assert content["summary"].startswith("Summarise PR 12")
    assert isinstance(content["labels"], list) and content["labels"]
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] >= round(len(prompt.split()) * 1.3)

    again = await demo.ok("POST", "/v1/chat/completions", _completion_request(prompt))
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    ticket = json.loads(
        (await demo.ok("POST", "/v1/chat/completions", _completion_request("File a bug ticket")))[
            "choices"
        ][0]["message"]["content"]
    )
    assert ticket["route"] == "tracker"
    assert (await demo.state())["llm"]["completions"] == 3


def test_llm_answers_vary_with_the_prompt_but_keep_their_shape() -> None:
    answers = [llm_answer(f"Tell the team about release {n}", "x", seed=1) for n in range(20)]
    assert {a["route"] for a in answers} == {"chat"}
    assert len({(a["confidence"], a["summary"], tuple(a["labels"])) for a in answers}) > 1


async def test_llm_bad_request_and_malformed_content(demo: Demo) -> None:
    status, err, _ = await demo.call("POST", "/v1/chat/completions", {"model": "m"})
    assert status == 400 and "messages" in err["error"]["message"]
    await demo.configure(llm_malformed_rate=1.0)
    answer = await demo.ok("POST", "/v1/chat/completions", _completion_request("File a bug"))
    with pytest.raises(ValueError):
        json.loads(answer["choices"][0]["message"]["content"])
    assert (await demo.state())["llm"]["malformed"] == 1


# ---- faults -----------------------------------------------------------------------------------


async def test_script_mode_500_500_then_real_handler(demo: Demo) -> None:
    script = {
        "path_prefix": "/tracker/issues",
        "method": "POST",
        "responses": [{"status": 500}, {"status": 500, "retry_after": 2}, {"status": 200}],
    }
    assert (await demo.ok("POST", "/admin/script", script))["pending"] == 3
    assert (await demo.ok("GET", "/tracker/issues"))["total"] == 0  # GET does not match
    key = {"Idempotency_Key": "run1-ticket"}
    status, err, headers = await demo.call("POST", "/tracker/issues", {"title": "t"}, **key)
    assert status == 500 and err["detail"] == "scripted" and "Retry-After" not in headers
    status, _, headers = await demo.call("POST", "/tracker/issues", {"title": "t"}, **key)
    assert status == 500 and headers["Retry-After"] == "2"
    status, issue, _ = await demo.call("POST", "/tracker/issues", {"title": "t"}, **key)
    assert status == 201 and issue["id"] == "DEMO-1"  # a 2xx without body reaches the handler
    assert (await demo.ok("GET", "/admin/script"))["scripts"] == []

    calls = await demo.ok("GET", "/admin/calls?key=run1-ticket")
    [entry] = calls["calls"]
    assert entry["route"] == "/tracker/issues" and entry["method"] == "POST"
    assert (entry["count"], entry["faults"], entry["effects"], entry["replays"]) == (3, 2, 1, 0)
    assert entry["statuses"] == {"500": 2, "201": 1}
    assert (await demo.state())["tracker"]["issues"] == 1


async def test_scripted_body_delay_and_lost_response(demo: Demo) -> None:
    await demo.ok(
        "POST",
        "/admin/script",
        {"path_prefix": "/code/pulls/3", "responses": [{"status": 200, "body": {"fake": True}}]},
    )
    assert await demo.ok("GET", "/code/pulls/3") == {"fake": True}

    # The side effect happens, the answer is lost; the retry with the same key is a replay.
    await demo.ok(
        "POST",
        "/admin/script",
        {"path_prefix": "/chat/", "responses": [{"status": 502, "effect": True, "delay": 0.01}]},
    )
    key = {"Idempotency_Key": "announce-1"}
    status, _, _ = await demo.call("POST", "/chat/channels/general/messages", {"text": "hi"}, **key)
    assert status == 502
    status, msg, headers = await demo.call(
        "POST", "/chat/channels/general/messages", {"text": "hi"}, **key
    )
    assert status == 201 and headers["Idempotent-Replayed"] == "true" and msg["text"] == "hi"
    assert (await demo.state())["chat"]["messages"] == 1
    [entry] = (await demo.ok("GET", "/admin/calls?key=announce-1"))["calls"]
    assert (entry["count"], entry["effects"], entry["replays"]) == (2, 1, 1)

    status, err, _ = await demo.call("POST", "/admin/script", {"path_prefix": "x", "responses": []})
    assert status == 422 and "path_prefix" in err["detail"] and "responses" in err["detail"]


async def test_rate_limit_answers_429_with_retry_after(demo: Demo) -> None:
    await demo.configure(rate_limit_rate=1.0)
    status, err, headers = await demo.call("POST", "/tracker/issues", {"title": "t"})
    assert status == 429 and headers["Retry-After"] == "1" and err["error"] == "rate limited"
    status, err, _ = await demo.call("POST", "/v1/chat/completions", _completion_request("x"))
    assert status == 429 and err["error"]["code"] == 429  # OpenAI-shaped under /v1
    assert (await demo.state())["tracker"]["issues"] == 0  # nothing happened
    await demo.configure(fault_services=["chat"])
    assert (await demo.call("GET", "/tracker/issues"))[0] == 200
    await demo.configure(rate_limit_rate=0.0, error_rate=1.0)
    assert (await demo.call("GET", "/chat/channels"))[0] == 500


async def test_outage_window_follows_the_clock(demo: Demo) -> None:
    await demo.configure(outage={"service": "chat", "every": 10, "duration": 2})
    # The service starts healthy; the first window is [8, 10) seconds after start.
    assert (await demo.call("GET", "/chat/channels"))[0] == 200
    demo.clock.t += 8.5
    status, err, headers = await demo.call("GET", "/chat/channels")
    assert status == 503 and err["error"] == "service unavailable"
    assert headers["Retry-After"] == "2"
    assert (await demo.call("GET", "/tracker/issues"))[0] == 200  # only chat is down
    state = await demo.state()
    assert state["outage"]["active"] and state["down"] == ["chat"]
    demo.clock.t += 1.6
    assert (await demo.call("GET", "/chat/channels"))[0] == 200
    demo.clock.t += 8.0  # 18.1: the next window
    assert (await demo.call("GET", "/chat/channels"))[0] == 503
    await demo.configure(outage=None, down=["code"])
    assert (await demo.call("GET", "/chat/channels"))[0] == 200
    assert (await demo.call("GET", "/code/pulls/1"))[0] == 503
    assert (await demo.call("GET", "/admin/state"))[0] == 200  # admin never fails


def test_outage_config_validation() -> None:
    with pytest.raises(ValidationError):
        OutageConfig(service="chat", every=5, duration=6)
    with pytest.raises(ValidationError):
        OutageConfig(service="mail")  # type: ignore[arg-type]
    assert OutageConfig(service="chat", every=60, duration=15).first_window() == 45


# ---- idempotency and admin ----------------------------------------------------------------------


async def test_idempotency_key_replays_without_a_second_effect(demo: Demo) -> None:
    key = {"Idempotency_Key": "k-1"}
    status, first, _ = await demo.call("POST", "/tracker/issues", {"title": "once"}, **key)
    status2, second, headers = await demo.call("POST", "/tracker/issues", {"title": "once"}, **key)
    assert (status, status2) == (201, 201) and first == second
    assert headers["Idempotent-Replayed"] == "true"
    # Concurrent duplicates wait for the first and replay it.
    results = await asyncio.gather(
        *(
            demo.call("POST", "/tracker/issues/DEMO-1/close", None, Idempotency_Key="c")
            for _ in "abc"
        )
    )
    assert [r[0] for r in results] == [200, 200, 200]
    assert (await demo.state())["tracker"] == {"issues": 1, "open": 0, "closed": 1, "deleted": 0}

    calls = await demo.ok("GET", "/admin/calls")
    by_key = {c["idempotency_key"]: c for c in calls["calls"] if c["mutating"]}
    assert (by_key["k-1"]["count"], by_key["k-1"]["effects"], by_key["k-1"]["replays"]) == (2, 1, 1)
    assert by_key["c"]["route"] == "/tracker/issues/{id}/close"
    assert (by_key["c"]["effects"], by_key["c"]["replays"]) == (1, 2)
    assert {c["idempotency_key"] for c in calls["duplicates"]} == {"k-1", "c"}
    assert calls["double_effects"] == []

    # Without idempotency the duplicate really happens, and the report says so.
    await demo.configure(honor_idempotency=False)
    await demo.ok("POST", "/tracker/issues", {"title": "twice"}, Idempotency_Key="k-2")
    await demo.ok("POST", "/tracker/issues", {"title": "twice"}, Idempotency_Key="k-2")
    calls = await demo.ok("GET", "/admin/calls")
    assert [c["idempotency_key"] for c in calls["double_effects"]] == ["k-2"]
    assert (await demo.state())["tracker"]["issues"] == 3


async def test_admin_config_validation_and_reset(demo: Demo) -> None:
    status, err, _ = await demo.call("POST", "/admin/config", {"error_rate": 2})
    assert status == 422 and err["detail"].startswith("error_rate:")
    status, err, _ = await demo.call("POST", "/admin/config", {"no_such_field": 1})
    assert status == 422
    status, err, _ = await demo.call("POST", "/admin/config", {"clock": 1})
    assert status == 422
    config = await demo.configure(seed=11, pull_requests=3)
    assert config["seed"] == 11 and "clock" not in config
    assert demo.service.config.clock is demo.clock  # kept across updates

    await demo.ok("POST", "/tracker/issues", {"title": "t"})
    state = await demo.ok("POST", "/admin/reset")
    assert state["tracker"]["issues"] == 0 and state["code"]["pulls"] == 3
    assert state["requests"] == 0 and (await demo.ok("GET", "/admin/calls"))["calls"] == []


async def test_latency_is_injected_when_scaled(demo: Demo) -> None:
    await demo.configure(latency_scale=1.0, latency_median_ms={"tracker": 30}, latency_sigma=0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await demo.ok("GET", "/tracker/issues")
    assert loop.time() - started >= 0.025


# ---- process entry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "inherited"),
    [("SIGINT", "default"), ("SIGINT", "ignored"), ("SIGTERM", "default")],
)
async def test_module_entry_serves_until_interrupted(sig: str, inherited: str) -> None:
    """Ctrl-C or SIGTERM stop it cleanly (130), also when it was started with SIGINT ignored,
    as a shell without job control starts a background job (`pytest &` in a script)."""
    entry = ["-m", "console.demo.service"]
    if inherited == "ignored":  # ignore SIGINT as such a shell does, then exec the same entry
        entry = [
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "os.execv(sys.executable, [sys.executable, '-m', 'console.demo.service', *sys.argv[1:]])",
        ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *entry,
        "--port",
        "0",
        "--latency-scale",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()  # type: ignore[union-attr]
        url = line.split(" on ")[1].split()[0]
        async with aiohttp.ClientSession() as http, http.get(f"{url}/admin/health") as resp:
            assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(getattr(signal, sig))
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            if proc.returncode is None:  # never leave it behind, even when the check failed
                proc.kill()
                await proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Warning" not in err and b"Traceback" not in err


async def test_importing_the_service_does_not_import_textual() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, console.demo.service; sys.exit('textual' in sys.modules)",
    )
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_post_message_with_the_channel_in_the_body(demo: Demo) -> None:
    status, msg, _ = await demo.call("POST", "/chat/messages", {"channel": "alerts", "text": "x"})
    assert status == 201 and msg["channel"] == "alerts" and msg["text"] == "x"
    listed = await demo.ok("GET", "/chat/channels/alerts/messages")
    assert [m["id"] for m in listed["messages"]] == [msg["id"]]
    status, err, _ = await demo.call("POST", "/chat/messages", {"channel": "No Way", "text": "x"})
    assert status == 422 and "channel" in err["detail"]
    status, err, _ = await demo.call("POST", "/chat/messages", {"text": "x"})
    assert status == 422 and "channel" in err["detail"]


async def test_separate_ports_give_each_service_its_own_origin() -> None:
    running = await start_service(ServiceConfig(latency_scale=0), separate_ports=True)
    try:
        ports = {s: int(o.rsplit(":", 1)[1]) for s, o in running.origins.items()}
        assert set(ports) == {"tracker", "chat", "code", "llm"}
        assert len({running.port, *ports.values()}) == 5
        assert running.base_url("chat") == running.origins["chat"] + "/chat"
        assert running.base_url("llm").endswith("/v1")
        async with (
            aiohttp.ClientSession() as http,
            http.get(running.base_url("code") + "/pulls/1") as resp,
        ):
            assert resp.status == 200 and (await resp.json())["number"] == 1
    finally:
        await running.stop()
    plain = await start_service(ServiceConfig(latency_scale=0))
    try:
        assert plain.origins == {} and plain.base_url("tracker") == plain.url + "/tracker"
    finally:
        await plain.stop()
