"""The python agent and the undo-handler registry.

The callables the steps call are defined in this module and named by `__name__`.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine.agents import python as pyagent
from engine.agents.base import AgentResources, StepCall, create
from engine.errors import ErrorClass, StepError
from engine.models import AgentSpec

HERE = __name__
RELEASE = threading.Event()
NOT_CALLABLE = 42


# --------------------------------------------------------------------------- step callables


def add(a: int, b: int = 1) -> dict:
    return {"sum": a + b}


def wait_for_the_loop() -> dict:
    """Blocks until a coroutine on the event loop sets RELEASE: only possible off the loop."""
    released = RELEASE.wait(timeout=10)
    return {"released": released, "thread": threading.current_thread().name}


async def async_echo(text: str) -> dict:
    await asyncio.sleep(0)
    return {"echo": text}


async def async_with_ctx(n: int, ctx) -> dict:
    return {"n": n, "step": ctx.step_id, "attempt": ctx.attempt, "key": ctx.idempotency_key}


def sync_with_ctx(*, ctx: StepCall) -> dict:
    ctx.usage["calls"] = 1
    return {"run": ctx.run_id}


def returns_tuple() -> tuple:
    return (1, "two", None)


def returns_set() -> set:
    return {1, 2}


def returns_nan() -> float:
    return float("nan")


def raises_value_error(what: str) -> None:
    raise ValueError(f"bad {what}")


def raises_step_error() -> None:
    raise StepError("HTTP 503 upstream", ErrorClass.HTTP, status=503, retryable=True)


async def sleeps_forever() -> None:
    await asyncio.sleep(3600)


class Counter:
    total = 0

    @staticmethod
    def bump(by: int) -> int:
        Counter.total += by
        return Counter.total


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x * 2


double = AsyncCallable()


# --------------------------------------------------------------------------- helpers


def make_agent() -> pyagent.PythonAgent:
    agent = create("py", AgentSpec(kind="python"), AgentResources())
    assert isinstance(agent, pyagent.PythonAgent)
    return agent


def step(target: str, **args) -> StepCall:
    params = {"call": target, "args": args} if args else {"call": target}
    return StepCall(
        run_id="run7", step_id="tidy", attempt=3, params=params, timeout=30, idempotency_key="ik"
    )


# --------------------------------------------------------------------------- calling


async def test_sync_function_with_args():
    call = step(f"{HERE}:add", a=2, b=5)
    assert await make_agent().call(call) == {"sum": 7}
    assert call.operation == f"{HERE}:add"


async def test_sync_function_runs_off_the_event_loop():
    RELEASE.clear()

    async def release_soon():
        await asyncio.sleep(0.05)
        RELEASE.set()

    releaser = asyncio.create_task(release_soon())
    out = await make_agent().call(step(f"{HERE}:wait_for_the_loop"))
    await releaser
    # Had the function run on the loop, release_soon could not have run while it waited.
    assert out["released"] is True
    assert out["thread"] != threading.main_thread().name


async def test_async_function_is_awaited():
    assert await make_agent().call(step(f"{HERE}:async_echo", text="hi")) == {"echo": "hi"}


async def test_async_callable_object_is_awaited():
    assert await make_agent().call(step(f"{HERE}:double", x=21)) == 42


async def test_ctx_is_injected_into_async_function():
    out = await make_agent().call(step(f"{HERE}:async_with_ctx", n=1))
    assert out == {"n": 1, "step": "tidy", "attempt": 3, "key": "ik"}


async def test_ctx_is_injected_into_sync_function():
    call = step(f"{HERE}:sync_with_ctx")
    assert await make_agent().call(call) == {"run": "run7"}
    assert call.usage == {"calls": 1}


async def test_attribute_path_and_module_imported_on_demand():
    Counter.total = 0
    assert await make_agent().call(step(f"{HERE}:Counter.bump", by=3)) == 3
    # a stdlib module, imported (in a thread) if not loaded yet; the tuple becomes a list
    out = await make_agent().call(step("colorsys:rgb_to_hls", r=1.0, g=0.0, b=0.0))
    assert out == [0.0, 0.5, 1.0]


async def test_tuple_output_becomes_json_list():
    assert await make_agent().call(step(f"{HERE}:returns_tuple")) == [1, "two", None]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module_xyz.sub:func", "no_such_module_xyz"),
        (f"{HERE}:missing_function", "missing_function"),
        (f"{HERE}:Counter.missing", "missing"),
        (f"{HERE}:NOT_CALLABLE", "not callable"),
        ("not a target", "not a target"),
    ],
)
async def test_bad_target_is_validation_naming_the_target(target, fragment):
    with pytest.raises(StepError) as info:
        await make_agent().call(step(target))
    assert info.value.error_class is ErrorClass.VALIDATION
    assert info.value.retryable is False
    assert fragment in info.value.message


async def test_bad_args_are_validation():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(f"{HERE}:add", a=1, c=3))
    assert info.value.error_class is ErrorClass.VALIDATION
    assert f"{HERE}:add" in info.value.message


async def test_exception_becomes_retryable_internal_error():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(f"{HERE}:raises_value_error", what="input"))
    err = info.value
    assert err.error_class is ErrorClass.INTERNAL
    assert err.retryable is True
    assert err.message == "ValueError: bad input"
    assert isinstance(err.__cause__, ValueError)


async def test_step_error_passes_through():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(f"{HERE}:raises_step_error"))
    assert info.value.error_class is ErrorClass.HTTP
    assert info.value.status == 503


@pytest.mark.parametrize("name", ["returns_set", "returns_nan"])
async def test_non_json_output_is_validation(name):
    with pytest.raises(StepError) as info:
        await make_agent().call(step(f"{HERE}:{name}"))
    assert info.value.error_class is ErrorClass.VALIDATION
    assert name in info.value.message


async def test_cancellation_propagates_unchanged():
    task = asyncio.create_task(make_agent().call(step(f"{HERE}:sleeps_forever")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- params


def test_operation_and_idempotency():
    agent = make_agent()
    assert agent.operation({"call": "pkg.mod:fn", "args": {}}) == "pkg.mod:fn"
    assert agent.operation({}) == "python"
    assert agent.is_idempotent({"call": "pkg.mod:fn"}) is True


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "call:"),
        ({"call": 3}, "call:"),
        ({"call": "pkg.mod.fn"}, "call:"),
        ({"call": "pkg.mod:"}, "call:"),
        ({"call": ":fn"}, "call:"),
        ({"call": "pkg-x:fn"}, "call:"),
        ({"call": "pkg:fn", "args": [1, 2]}, "args:"),
        ({"call": "pkg:fn", "args": {1: "one"}}, "args:"),
        ({"call": "pkg:fn", "kwargs": {}}, "kwargs:"),
    ],
)
def test_validate_params_problems(params, problem):
    problems = pyagent.PythonAgent.validate_params(params)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "params",
    [
        {"call": "pkg.mod:fn"},
        {"call": "pkg.mod:Class.method", "args": {"a": 1, "b": [1, 2]}},
        {"call": "pkg:fn", "args": "${{ steps.plan.output.args }}"},
    ],
)
def test_validate_params_accepts(params):
    assert pyagent.PythonAgent.validate_params(params) == []


# --------------------------------------------------------------------------- undo handlers


@pyagent.register_undo_handler("test.reopen")
def reopen(params, output, before):
    return {"reopened": params["pr"], "was": before, "closed": output["closed"]}


@pyagent.register_undo_handler("test.async_restore")
async def async_restore(params, output, before):
    await asyncio.sleep(0)
    return {"restored": before}


def unregistered_handler(params, output, before):
    return {"via": "target", "thread": threading.current_thread().name}


@pyagent.register_undo_handler("test.fails")
def fails(params, output, before):
    raise RuntimeError("remote said no")


def test_register_and_get_undo_handler():
    assert pyagent.get_undo_handler("test.reopen") is reopen
    assert "test.reopen" in pyagent.undo_handler_names()
    assert pyagent.get_undo_handler(f"{HERE}:unregistered_handler") is unregistered_handler
    with pytest.raises(KeyError, match=r"test\.nope"):
        pyagent.get_undo_handler("test.nope")
    with pytest.raises(KeyError):
        pyagent.get_undo_handler(f"{HERE}:no_such_handler")


async def test_run_undo_handlers_sync_and_async():
    out = await pyagent.run_undo_handler("test.reopen", {"pr": 7}, {"closed": True}, "open")
    assert out == {"reopened": 7, "was": "open", "closed": True}
    assert await pyagent.run_undo_handler("test.async_restore", {}, None, {"a": 1}) == {
        "restored": {"a": 1}
    }
    out = await pyagent.run_undo_handler(f"{HERE}:unregistered_handler", {}, None, None)
    assert out["via"] == "target"
    assert out["thread"] != threading.main_thread().name


async def test_run_undo_handler_errors():
    with pytest.raises(StepError) as info:
        await pyagent.run_undo_handler("test.nope", {}, None, None)
    assert info.value.error_class is ErrorClass.VALIDATION
    with pytest.raises(StepError) as info:
        await pyagent.run_undo_handler("test.fails", {}, None, None)
    assert info.value.error_class is ErrorClass.INTERNAL
    assert info.value.message == "RuntimeError: remote said no"
