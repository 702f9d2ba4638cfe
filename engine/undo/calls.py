"""Calls the undo log makes besides the action itself: the `capture` read and the compensation.

Both go through the same agent kinds and the step's retry policy, and every attempt is a row in
`attempts` like a step's, under a derived step id: `STEP.capture` for the read and `STEP.undo`
for the compensation (step ids cannot contain `.`, so these never clash with a real step).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.agents import Agent, AgentResources, StepCall, create
from engine.errors import ErrorClass, StepError
from engine.models import RetryPolicy, StepSpec, WorkflowSpec
from engine.retries import run_with_retries
from engine.store import Store

CAPTURE_SUFFIX = ".capture"
UNDO_SUFFIX = ".undo"

ATTEMPT_SQL = (
    "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at, "
    "ended_at, duration_ms, error_class, error, next_retry_at, prompt_tokens, completion_tokens) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id, step_id, number) DO UPDATE SET "
    "status=excluded.status, ended_at=excluded.ended_at, duration_ms=excluded.duration_ms, "
    "error_class=excluded.error_class, error=excluded.error, next_retry_at=excluded.next_retry_at"
)


@dataclass(slots=True)
class Target:
    """What one call (capture or compensation) runs: an agent with params, or an undo handler."""

    agent_id: str
    """Agent id (for a handler: the step's agent, for the attempt rows)."""
    params: dict[str, Any]
    """Rendered parameters (for a handler: the step's rendered `with`)."""
    operation: str
    agent: Agent | None = None
    handler: str | None = None
    """python steps: undo handler name."""
    output: Any = None
    """For a handler: the action's output."""
    before: Any = None
    """For a handler: the captured before-state."""


def effective_timeout(spec: WorkflowSpec, step: StepSpec, agent_id: str) -> float:
    """The step's own timeout, else the given agent's, else the workflow default."""
    if step.timeout is not None:
        return step.timeout
    agent = spec.agents.get(agent_id)
    if agent is not None and agent.timeout is not None:
        return agent.timeout
    return spec.defaults.timeout


def agent_target(
    spec: WorkflowSpec, agent_id: str, params: dict[str, Any], resources: AgentResources
) -> Target:
    """A target calling agent `agent_id` of `spec` (KeyError if the spec has no such agent)."""
    agent = create(agent_id, spec.agents[agent_id], resources)
    return Target(agent_id, params, agent.operation(params), agent=agent)


def handler_target(
    step: StepSpec, name: str, params: dict[str, Any], output: Any, before: Any
) -> Target:
    return Target(
        step.agent or "", params, f"undo:{name}", handler=name, output=output, before=before
    )


async def _import_step_module(params: dict[str, Any]) -> None:
    """Import the module of a python step's `call` so handlers it registers are known."""
    from engine.agents.python import target_problem

    target = params.get("call") if isinstance(params, dict) else None
    if isinstance(target, str) and target_problem(target) is None:
        module = target.partition(":")[0]
        try:
            await asyncio.to_thread(__import__, module)
        except Exception:  # reported by run_undo_handler as an unknown handler
            pass


async def run_target(
    store: Store,
    target: Target,
    *,
    run_id: str,
    step_id: str,
    policy: RetryPolicy,
    timeout: float,
    idempotency_key: str,
    first_number: int,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Any:
    """Run `target` with retries under `policy`; attempts are numbered from `first_number`
    and recorded under `step_id`. Returns the output or raises the last `StepError`."""
    if target.handler is not None:
        from engine.agents.python import _UNDO_HANDLERS

        if target.handler not in _UNDO_HANDLERS:
            await _import_step_module(target.params)

    async def attempt(n: int) -> Any:
        number = first_number + n - 1
        started = clock()
        error: StepError | None = None
        output: Any = None
        try:
            async with asyncio.timeout(timeout):
                output = await _call(target, run_id, step_id, number, timeout, idempotency_key)
            json.dumps(output)
        except TimeoutError:
            error = StepError(f"timed out after {timeout:g} s", ErrorClass.TIMEOUT, retryable=True)
        except StepError as e:
            error = e
        except asyncio.CancelledError:
            _record(
                store,
                run_id,
                step_id,
                number,
                target,
                started,
                clock(),
                "cancelled",
                StepError("cancelled", ErrorClass.CANCELLED),
            )
            raise
        except (TypeError, ValueError) as e:
            error = StepError(f"output is not JSON: {e}", ErrorClass.VALIDATION)
        except Exception as e:
            error = StepError(f"{type(e).__name__}: {e}", ErrorClass.INTERNAL, retryable=True)
        _record(
            store,
            run_id,
            step_id,
            number,
            target,
            started,
            clock(),
            "failed" if error else "succeeded",
            error,
        )
        if error is not None:
            raise error
        return output

    def on_retry(n: int, err: BaseException, wait: float) -> None:
        number = first_number + n - 2
        store.execute(
            "UPDATE attempts SET next_retry_at = ? WHERE run_id = ? AND step_id = ? AND number = ?",
            (clock() + wait, run_id, step_id, number),
        )

    return await run_with_retries(policy, attempt, on_retry=on_retry, sleep=sleep)


async def _call(
    target: Target, run_id: str, step_id: str, number: int, timeout: float, key: str
) -> Any:
    if target.handler is not None:
        from engine.agents.python import run_undo_handler

        return await run_undo_handler(target.handler, target.params, target.output, target.before)
    assert target.agent is not None
    call = StepCall(
        run_id=run_id,
        step_id=step_id,
        attempt=number,
        params=target.params,
        timeout=timeout,
        idempotency_key=key,
        destructive=False,
    )
    return await target.agent.call(call)


def _record(
    store: Store,
    run_id: str,
    step_id: str,
    number: int,
    target: Target,
    started: float,
    ended: float,
    status: str,
    error: StepError | None,
) -> None:
    store.execute(
        ATTEMPT_SQL,
        (
            run_id,
            step_id,
            number,
            target.agent_id,
            target.operation,
            status,
            started,
            ended,
            (ended - started) * 1000,
            error.error_class.value if error else None,
            error.message if error else None,
            None,
            None,
            None,
        ),
    )
