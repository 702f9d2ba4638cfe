"""The DAG runner: starts each step as soon as its needs succeeded, within concurrency limits.

`Engine` owns the store, the agents' shared resources, the executor and the slot dispatcher;
`RunExecution` is one run's state. All state changes happen on the event loop, in memory first,
then as queued writes (group-committed by the store's writer thread) plus one event each.

Concurrency: a ready step needs a slot of the engine (`max_concurrency`), of its run
(`WorkflowSpec.concurrency`) and of its agent (`AgentSpec.concurrency`). Ready steps wait in a heap
ordered by priority (higher first), then by the order they became ready; a step blocked by its
run or agent is parked under that key and goes back to the heap when that key frees a slot, so
the heap is never rescanned.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from engine import dag, migrations, recovery
from engine.agents import Agent, AgentResources, StepCall, create
from engine.breaker import Breaker, Breakers
from engine.deadlines import Deadlines
from engine.errors import Conflict, ErrorClass, NotFound, StepError
from engine.events import EventLog
from engine.expressions import ExpressionError, has_expressions, render
from engine.models import (
    RetryBudgetSpec,
    RetryPolicy,
    RunStatus,
    StepSpec,
    StepStatus,
    WorkflowSpec,
    check_run_transition,
    check_step_transition,
)
from engine.retries import RetryBudget, run_with_retries
from engine.store import Rows, Store

log = logging.getLogger("flowdeck.runner")

LEASE_SECONDS = 15.0
HEARTBEAT_SECONDS = 5.0
COMMAND_POLL_SECONDS = 0.2

STEP_ROWS = Rows(
    "steps",
    12,
    "UPDATE steps SET status=?, attempt=?, started_at=coalesce(?, started_at), ended_at=?, "
    "duration_ms=?, output=coalesce(?, output), error=?, error_class=?, next_retry_at=?, "
    "operation=coalesce(?, operation) WHERE run_id=? AND step_id=?",
    key=(10, 11),
    sticky=(2, 5, 9),
)
"""A step row's state: (status, attempt, started_at, ended_at, duration_ms, output, error,
error_class, next_retry_at, operation, run_id, step_id); the last per step in a batch wins. One
UPDATE per row (by primary key): half the SQLite work of an UPDATE ... FROM (VALUES ...)."""
ATTEMPT_ROWS = Rows(
    "attempts",
    14,
    "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at, "
    "ended_at, duration_ms, error_class, error, next_retry_at, prompt_tokens, "
    "completion_tokens) VALUES {values} "
    "ON CONFLICT(run_id, step_id, number) DO UPDATE SET "
    "status=excluded.status, ended_at=excluded.ended_at, duration_ms=excluded.duration_ms, "
    "error_class=excluded.error_class, error=excluded.error, "
    "next_retry_at=excluded.next_retry_at, prompt_tokens=excluded.prompt_tokens, "
    "completion_tokens=excluded.completion_tokens, "
    "operation=coalesce(excluded.operation, operation)",
    before=migrations.BULK_BEFORE,
    after=migrations.BULK_AFTER,
)
"""An attempt row, inserted or updated (a durable start first writes it `running`); a batch
of them updates the analytics rollups once (engine/migrations.py, 0008)."""
CANCEL_UNSTARTED_RUN = (
    "UPDATE runs SET status='cancelled', ended_at=?, error='cancelled before it started' "
    "WHERE id=? AND status='pending'"
)
CANCEL_UNSTARTED_STEPS = (
    "UPDATE steps SET status='cancelled', ended_at=?, error_class='cancelled' "
    "WHERE run_id=? AND status='pending'"
)
RUN_UPDATE = (
    "UPDATE runs SET status=?, started_at=coalesce(?, started_at), ended_at=?, error=?, "
    "owner=?, lease_until=? WHERE id=?"
)
INTERRUPTED_ATTEMPT = (
    "INSERT INTO attempts(run_id, step_id, number, agent, operation, status, started_at, "
    "error_class, error) VALUES (?,?,?,?,?,'interrupted',?,'interrupted',?) "
    "ON CONFLICT(run_id, step_id, number) DO UPDATE SET status='interrupted', "
    "error_class='interrupted', error=excluded.error WHERE attempts.status='running'"
)
INTERRUPTED_MESSAGE = "the engine stopped during this attempt; its outcome is unknown"
DEFAULT_AGENT_BUDGET = RetryBudgetSpec()
STEP_EVENT = {status: f"step.{status.value}" for status in StepStatus}
"""Event kind of each step status."""


@dataclass(slots=True, frozen=True)
class Plan:
    """What the runner derives from a spec, computed once per spec object."""

    dependents: dict[str, list[str]]
    depths: dict[str, int]
    spec_json: str
    agent_limits: dict[str, int | None]
    new_states: list[tuple]
    """Each step's `StepState` arguments in a new run, in field order (id, spec, status,
    waiting: its distinct needs, policy, timeout, has_expr); positional arguments make a
    thousand states in a third of the time keywords take."""
    step_rows: list[tuple]
    """Each step's `steps` row but the run id (what `submit` inserts)."""


def plan_for(spec: WorkflowSpec) -> Plan:
    plan = spec._cache.get("plan")
    if plan is None:
        steps, agents = spec.steps, spec.agents
        depths = dag.depths(spec)
        policies = {sid: spec.retry_for(s) for sid, s in steps.items()}
        step_rows = [
            (sid, s.agent, agents[s.agent].kind if s.agent in agents
             else ("route" if s.route else None), "pending", s.priority, depths[sid],
             _dumps(s.needs), int(s.destructive), policies[sid].attempts)
            for sid, s in steps.items()
        ]  # fmt: skip
        plan = Plan(
            dependents=dag.dependents(spec),
            depths=depths,
            spec_json=spec.model_dump_json(by_alias=True),
            agent_limits={aid: a.concurrency for aid, a in agents.items()},
            new_states=[
                (
                    sid,
                    s,
                    StepStatus.PENDING,
                    len(set(s.needs)),
                    policies[sid],
                    spec.timeout_for(s),
                    has_expressions(s.with_),
                )
                for sid, s in steps.items()
            ],
            step_rows=step_rows,
        )
        spec._cache["plan"] = plan
    return plan


def new_run_id() -> str:
    return secrets.token_hex(6)


def owner_is_dead(owner: str) -> bool:
    """True when `owner` (`HOST:PID:TOKEN`, the default engine owner) names a process of this
    host that no longer exists, so its runs can be resumed before the lease runs out."""
    host, sep, _token = owner.rpartition(":")
    host, sep2, pid_text = host.rpartition(":")
    if not sep or not sep2 or host != socket.gethostname():
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:  # a zombie (killed, not reaped yet) is dead too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _dumps(value: Any) -> str:
    if type(value) is dict and not value:
        return "{}"
    return _ENCODE(value)


class Executor(Protocol):
    """Where a step attempt runs. Local today; a distributed executor implements the same call
    (an `async def` will do: `execute` returns something to await for the output)."""

    def execute(self, agent: Agent, call: StepCall) -> Awaitable[Any]: ...


class StepHook:
    """Extension point around a step's action (review gates, the undo log, ...).

    For each step the engine asks every hook in `Engine.hooks` whether it `applies` (keep that
    cheap: it runs for every step); `before` runs in order and may change the rendered params
    or raise `StepError` (e.g. `ErrorClass.REJECTED`), or raise `SkipAction(output)` to end the
    step with that output and no action; after the action `after` runs in reverse
    order and may replace the output; if anything fails after a hook's `before`, its `failed`
    runs (CancelledError included) and the error propagates.
    """

    def applies(self, run: RunExecution, st: StepState) -> bool:
        return False

    async def before(
        self, run: RunExecution, st: StepState, agent: Agent, params: dict[str, Any]
    ) -> dict[str, Any]:
        return params

    async def after(self, run: RunExecution, st: StepState, output: Any) -> Any:
        return output

    async def failed(self, run: RunExecution, st: StepState, error: BaseException) -> None:
        return None


class SkipAction(Exception):
    """Raised by a hook's `before` to end the step `succeeded` with `output` without acting
    (e.g. the operator said a step found in flight after a crash had already happened)."""

    def __init__(self, output: Any):
        super().__init__("action skipped")
        self.output = output


class LocalExecutor:
    """Runs the agent in this process (sync agents move themselves to a thread)."""

    def execute(self, agent: Agent, call: StepCall) -> Awaitable[Any]:
        return agent.call(call)  # the agent's coroutine itself: no wrapper on the hot path


@dataclass(slots=True, eq=False)
class AgentContext:
    """What a run keeps per agent: the agent, its circuit breakers and its retry budget."""

    agent: Agent
    guards: tuple[Breaker, ...]
    budget: RetryBudget


@dataclass(slots=True, eq=False)
class StepState:
    """In-memory state of one step of one run."""

    id: str
    spec: StepSpec
    status: StepStatus
    waiting: int
    """Needs that have not succeeded yet."""
    policy: RetryPolicy
    timeout: float
    has_expr: bool
    attempt_base: int = 0
    """Attempts made before a resume (numbers continue from here)."""
    started: bool = False
    """Its task has begun running (a task cancelled before that never runs its handlers)."""
    attempt: int = 0
    output: Any = None
    started_at: float | None = None
    ended_at: float | None = None
    next_retry_at: float | None = None
    error: str | None = None
    error_class: str | None = None
    operation: str | None = None
    task: asyncio.Task | None = None
    wake: asyncio.Event | None = None
    """Set by a `retry_now` command to cut a backoff wait short."""
    failed_attempt: tuple | None = None
    """Row of the last failed attempt, written once its next retry time is known."""
    output_json: str | None = None
    slotted: bool = False
    """Its task holds concurrency slots (false while it waits outside them, see
    `RunExecution.release_slot`)."""
    slot_waiter: asyncio.Future | None = None
    """Resolved by the dispatcher when a step that gave its slots back gets them again."""
    in_flight: bool = False
    """An attempt's call is under way (its outcome is not known yet)."""
    crash_check: recovery.CrashQuestion | None = None
    """Set by resume: ask the operator (a `crash_check` review) before acting again."""

    @property
    def max_attempts(self) -> int:
        return self.attempt_base + self.policy.attempts


def _task_started(st: StepState) -> bool:
    """The step's task is running its body (a task not started yet is cancelled by marking the
    step ended: it then returns at its first line; cancelling it would skip its handlers)."""
    return st.task is not None and not st.task.done() and st.started


class RunExecution:
    """One run: its steps' states and the logic moving them along."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        spec: WorkflowSpec,
        inputs: dict[str, Any],
        states: dict[str, StepState] | None = None,
    ):
        self.engine = engine
        self.run_id = run_id
        self.spec = spec
        self.inputs = inputs
        self.status = RunStatus.PENDING
        self.plan = plan = plan_for(spec)
        self.dependents = plan.dependents
        if states is None:
            states = {args[0]: StepState(*args) for args in plan.new_states}
        self.steps = states
        self.outputs: dict[str, Any] = {
            sid: st.output for sid, st in states.items() if st.status is StepStatus.SUCCEEDED
        }
        self.scope = {"inputs": inputs, "steps": self.outputs}
        self.ended = sum(1 for st in states.values() if st.status.ended)
        self.active = 0
        """Step tasks holding a slot."""
        self.outside = 0
        """Step tasks alive without a slot (waiting for a review)."""
        self.parked: list = []
        self.agents: dict[str, Agent] = {}
        self.contexts: dict[str, AgentContext] = {}
        self.budget = RetryBudget(spec.defaults.retry_budget, f"run {run_id}")
        """Retry budget of this run (`defaults.retry_budget`)."""
        self.started_at: float | None = None
        self.error: str | None = None
        self.done: asyncio.Future[RunStatus] = asyncio.get_running_loop().create_future()
        self.cancelling = False
        self.interrupting = False

    # ------------------------------------------------------------------ helpers

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def events(self) -> EventLog:
        return self.engine.events

    def agent(self, st: StepState) -> Agent:
        return self.agent_named(st.spec.agent or "")

    def agent_named(self, agent_id: str) -> Agent:
        """The run's agent `agent_id` (created on first use)."""
        agent = self.agents.get(agent_id)
        if agent is None:
            agent = create(agent_id, self.spec.agents[agent_id], self.engine.resources)
            self.agents[agent_id] = agent
        return agent

    def context_of(self, agent: Agent) -> AgentContext:
        """`agent` with its breakers and retry budget (built once per run and agent)."""
        ctx = self.contexts.get(agent.agent_id)
        if ctx is None or ctx.agent is not agent:
            ctx = self.contexts[agent.agent_id] = AgentContext(
                agent,
                self.engine.breakers.for_agent(agent.agent_id, agent),
                self.engine.agent_budget(agent.agent_id, agent.spec.retry_budget),
            )
        return ctx

    def agent_key(self, st: StepState) -> tuple[str, str]:
        return (self.spec.name, st.spec.agent or "")

    def agent_limit(self, st: StepState) -> int | None:
        return self.plan.agent_limits.get(st.spec.agent or "")

    def _write_step(self, st: StepState, *, output: str | None = None) -> None:
        self.store.put(
            STEP_ROWS,
            (
                st.status.value,
                st.attempt,
                st.started_at,
                st.ended_at,
                (st.ended_at - st.started_at) * 1000 if st.ended_at and st.started_at else None,
                output,
                st.error,
                st.error_class,
                st.next_retry_at,
                st.operation,
                self.run_id,
                st.id,
            ),
        )

    def _set(self, st: StepState, status: StepStatus, **data: Any) -> None:
        check_step_transition(st.status, status)
        st.status = status
        if status.ended:
            st.ended_at = self.engine.clock()
            self.ended += 1
        output = data.pop("_output", None)
        self._write_step(st, output=output)
        self.events.emit(STEP_EVENT[status], self.run_id, st.id, **data)

    def _set_run(self, status: RunStatus, **data: Any) -> None:
        check_run_transition(self.status, status)
        self.status = status
        now = self.engine.clock()
        ended = status.ended or status is RunStatus.INTERRUPTED
        self.store.execute(
            RUN_UPDATE,
            (
                status.value,
                now if status is RunStatus.RUNNING and self.started_at is None else None,
                now if ended else None,
                self.error,
                # an interrupted run keeps its owner (so `resume_owned` finds it) but no lease
                None if status.ended else self.engine.owner,
                None if ended else now + LEASE_SECONDS,
                self.run_id,
            ),
        )
        if status is RunStatus.RUNNING and self.started_at is None:
            self.started_at = now
        self.events.emit(f"run.{status.value}", self.run_id, None, **data)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._set_run(RunStatus.RUNNING)
        for st in self.steps.values():
            if st.status is StepStatus.PENDING and st.waiting == 0:
                self._make_ready(st)
        self._check_done()
        self.engine._dispatch()

    def _make_ready(self, st: StepState) -> None:
        check_step_transition(st.status, StepStatus.READY)
        st.status = StepStatus.READY  # scheduling detail: not persisted (the row says pending)
        self.engine._enqueue(self, st)

    def _launch(self, st: StepState) -> None:
        self.active += 1
        st.slotted = True
        waiter = st.slot_waiter
        if waiter is not None:  # a step taking back the slots it gave up (see acquire_slot)
            st.slot_waiter = None
            self.outside -= 1
            waiter.set_result(None)
            return
        st.task = asyncio.create_task(self._run_step(st))  # unnamed: naming costs per step

    def release_slot(self, st: StepState) -> None:
        """Give back the step's concurrency slots (engine, run, agent) while it waits for
        something that is not work, e.g. a human decision; other steps may use them meanwhile.
        Call from the step's own task; take them back with `acquire_slot` before acting."""
        if not st.slotted:
            return
        st.slotted = False
        self.outside += 1
        self.engine._release(self, st)

    async def acquire_slot(self, st: StepState) -> None:
        """Wait until the dispatcher grants the step its slots again (priority order)."""
        if st.slotted:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.slot_waiter = fut
        self.engine._enqueue(self, st)
        self.engine._dispatch()
        try:
            await fut
        finally:
            st.slot_waiter = None  # if cancelled before granted, the heap entry is skipped

    async def _run_step(self, st: StepState) -> None:
        st.started = True
        try:
            if st.status.ended:  # cancelled between its launch and now: nothing to do
                return
            if st.spec.route is not None:
                output = await self.engine.router.run(self, st)
            else:
                output = await self.act(st, self.agent(st))
        except asyncio.CancelledError:
            self._flush_failed_attempt(st, None)
            st.next_retry_at = None
            if self.interrupting and not self.cancelling:
                st.attempt_base = st.attempt
                if st.in_flight and recovery.needs_durable_start(st.spec):
                    # The row keeps saying `running`: whether the call happened is unknown,
                    # so resume asks the operator instead of repeating it.
                    st.status = StepStatus.PENDING  # in memory only
                    self.events.emit(
                        "step.interrupted", self.run_id, st.id, attempt=st.attempt, in_flight=True
                    )
                else:
                    self._set(st, StepStatus.PENDING, reason="interrupted")
            else:
                st.error, st.error_class = "cancelled", ErrorClass.CANCELLED.value
                self._set(st, StepStatus.CANCELLED)
                if not st.spec.optional and self.error is None and not self.cancelling:
                    self.error = f"step {st.id} cancelled by operator"
                self._skip_dependents(st)  # a cancel of this one step (`cancel_step`)
        except StepError as e:
            self._flush_failed_attempt(st, None)
            rejected = e.error_class is ErrorClass.REJECTED
            self._fail(st, e, StepStatus.REJECTED if rejected else StepStatus.FAILED)
        except Exception as e:  # a bug in an agent must not take the engine down
            log.exception("step %s of run %s crashed", st.id, self.run_id)
            self._flush_failed_attempt(st, None)
            self._fail(st, StepError(f"{type(e).__name__}: {e}", ErrorClass.INTERNAL))
        else:
            self._succeed(st, output)
        finally:
            if not st.status.ended and st.status is not StepStatus.PENDING:
                # Safety net: a bug above must not leave the run waiting forever.
                log.error("step %s of run %s left in %s; failing it", st.id, self.run_id, st.status)
                st.status = StepStatus.FAILED
                st.ended_at = self.engine.clock()
                st.error, st.error_class = "internal error in the runner", ErrorClass.INTERNAL.value
                self.ended += 1
                self._write_step(st)
                self.events.emit("step.failed", self.run_id, st.id, error=st.error)
                self._skip_dependents(st)
            if st.slotted:
                self.engine._release(self, st)
            else:
                self.outside -= 1
                self.engine._unslotted_exit(self)
            self._check_done()

    async def act(self, st: StepState, agent: Agent) -> Any:
        """The step's action through `agent`: render `with`, run the hooks' `before`, the
        attempts with retries, then the hooks' `after`. Returns the output."""
        try:
            params = render(st.spec.with_, self.scope) if st.has_expr else st.spec.with_
        except ExpressionError as e:
            raise StepError(str(e), ErrorClass.VALIDATION) from None
        ctx = self.context_of(agent)
        st.operation = agent.operation(params)
        entered: list[StepHook] = []
        skip: SkipAction | None = None
        try:
            for hook in self.engine.hooks:
                if hook.applies(self, st):
                    try:
                        params = await hook.before(self, st, agent, params)
                    except SkipAction as e:
                        skip = e
                        break
                    entered.append(hook)
            if skip is not None:
                st.output_json = None
                output = skip.output
            else:
                first: StepError | None = None
                try:  # the first attempt outside `run_with_retries`: most steps need no more
                    output = await self._attempt(st, ctx, params, 1)
                except StepError as e:
                    first = e
                if first is not None:
                    output = await run_with_retries(
                        st.policy,
                        lambda n: self._attempt(st, ctx, params, n),
                        on_retry=lambda n, err, wait: self._on_retry(st, n, err, wait),
                        sleep=lambda seconds: self._backoff(st, seconds),
                        allow=lambda err: self._allow_retry(ctx, err),
                        first_error=first,
                    )
        except BaseException as e:
            for hook in reversed(entered):
                await hook.failed(self, st, e)
            raise
        for hook in reversed(entered):
            output = await hook.after(self, st, output)
        return output

    async def _attempt(self, st: StepState, ctx: AgentContext, params: dict, n: int) -> Any:
        clock = self.engine.clock
        number = st.attempt_base + n
        now = clock()
        st.attempt = number
        st.next_retry_at = None
        if st.started_at is None:
            st.started_at = now
        if n == 1:  # first attempts earn retries in the budgets
            self.budget.first(now)
            ctx.budget.first(now)
        self._set(st, StepStatus.RUNNING, attempt=number, of=st.max_attempts)
        agent_id = ctx.agent.agent_id
        call = StepCall(
            run_id=self.run_id,
            step_id=st.id,
            attempt=number,
            params=params,
            timeout=st.timeout,
            idempotency_key=f"{self.run_id}:{st.id}",
            destructive=st.spec.destructive,
        )
        guards = ctx.guards
        trials: list[bool] | None = None
        error: StepError | None = None
        output: Any = None
        try:
            if guards:
                trials = self.engine.breakers.admit(guards, self.run_id, st.id)
            st.in_flight = True
            if st.spec.destructive or st.spec.idempotent is False:
                # Committed before the call: a crash can never hide a call that was made.
                self.store.put(
                    ATTEMPT_ROWS,
                    (self.run_id, st.id, number, agent_id, st.operation, "running", now, None,
                     None, None, None, None, None, None),
                )  # fmt: skip
                await self.store.flush()
            deadline = self.engine.deadlines.after(st.timeout)  # `async with`, unrolled
            try:
                output = await self.engine.executor.execute(ctx.agent, call)
            except BaseException as e:
                deadline.leave(e)
                raise
            deadline.leave()
            encoded = _dumps(output)
        except TimeoutError:
            error = StepError(
                f"timed out after {st.timeout:g} s", ErrorClass.TIMEOUT, retryable=True
            )
        except StepError as e:
            error = e
        except asyncio.CancelledError:
            if trials is not None:
                self.engine.breakers.release(guards, trials)
            end = clock()
            if (
                st.in_flight
                and self.interrupting
                and not self.cancelling
                and recovery.needs_durable_start(st.spec)
            ):
                status, cls, message = (
                    "interrupted", ErrorClass.INTERRUPTED.value, INTERRUPTED_MESSAGE
                )  # fmt: skip
            else:
                st.in_flight = False
                status, cls, message = "cancelled", ErrorClass.CANCELLED.value, "cancelled"
            self.store.put(
                ATTEMPT_ROWS,
                (self.run_id, st.id, number, agent_id, call.operation or st.operation, status,
                 now, end, (end - now) * 1000, cls, message, None, None, None),
            )  # fmt: skip
            raise
        except (TypeError, ValueError) as e:
            error = StepError(f"output is not JSON: {e}", ErrorClass.VALIDATION)
        except Exception as e:
            error = StepError(f"{type(e).__name__}: {e}", ErrorClass.INTERNAL, retryable=True)
        st.in_flight = False
        if trials is not None:
            self.engine.breakers.record(guards, trials, error, self.run_id, st.id)
        end = clock()
        usage = call.usage
        row = (
            self.run_id, st.id, number, agent_id, call.operation or st.operation,
            "failed" if error else "succeeded", now, end, (end - now) * 1000,
            error.error_class.value if error else None, error.message if error else None, None,
            usage.get("prompt_tokens"), usage.get("completion_tokens"),
        )  # fmt: skip
        if error is not None:
            st.failed_attempt = row
            st.error, st.error_class = error.message, error.error_class.value
            raise error
        self.store.put(ATTEMPT_ROWS, row)
        st.output_json = encoded
        return output

    def _allow_retry(self, ctx: AgentContext, error: StepError) -> str | None:
        """Spend one retry of the run's and the agent's budgets, or say which is exhausted.
        Fast failures of an open circuit cost nothing: they never reach the service."""
        if error.error_class is ErrorClass.CIRCUIT_OPEN:
            return None
        now = self.engine.clock()
        for budget in (self.budget, ctx.budget):
            if not budget.has_room(now):
                return budget.refusal(now)
        self.budget.take(now)
        ctx.budget.take(now)
        return None

    def _flush_failed_attempt(self, st: StepState, next_retry_at: float | None) -> None:
        row = st.failed_attempt
        if row is not None:
            st.failed_attempt = None
            self.store.put(ATTEMPT_ROWS, (*row[:11], next_retry_at, *row[12:]))

    def _on_retry(self, st: StepState, n: int, err: BaseException, wait: float) -> None:
        st.next_retry_at = self.engine.clock() + wait
        self._flush_failed_attempt(st, st.next_retry_at)
        data: dict[str, Any] = {}
        if isinstance(err, StepError):
            data["error_class"] = err.error_class.value
            if err.retry_after is not None:
                data["retry_after"] = err.retry_after
        self._set(
            st,
            StepStatus.RETRYING,
            attempt=st.attempt_base + n,
            of=st.max_attempts,
            wait=round(wait, 3),
            retry_at=st.next_retry_at,
            error=str(err),
            **data,
        )

    async def _backoff(self, st: StepState, seconds: float) -> None:
        """Wait before the next attempt; a `retry_now` command cuts it short. While the engine
        is stopping no new attempt starts: the wait lasts until the run is interrupted."""
        st.wake = wake = asyncio.Event()
        try:
            sleep = self.engine.sleep
            if sleep is None:
                try:
                    await asyncio.wait_for(wake.wait(), timeout=seconds)
                except TimeoutError:
                    pass
            else:
                sleeper = asyncio.ensure_future(sleep(seconds))
                waker = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    waker.cancel()
            if self.engine._stopping:
                await asyncio.get_running_loop().create_future()  # cancelled by interrupt()
        finally:
            st.wake = None

    def _succeed(self, st: StepState, output: Any) -> None:
        st.output = output
        st.error = st.error_class = None
        self.outputs[st.id] = output
        self._set(st, StepStatus.SUCCEEDED, _output=st.output_json or _dumps(output))
        for child_id in self.dependents.get(st.id, ()):
            child = self.steps[child_id]
            child.waiting -= 1
            if child.waiting == 0 and child.status is StepStatus.PENDING and not self.cancelling:
                self._make_ready(child)

    def _fail(
        self, st: StepState, error: StepError, status: StepStatus = StepStatus.FAILED
    ) -> None:
        st.error, st.error_class = error.message, error.error_class.value
        st.next_retry_at = None
        self._set(st, status, error=error.message, error_class=error.error_class.value)
        if not st.spec.optional and self.error is None:
            self.error = f"step {st.id} {status.value}: {error.message}"
        self._skip_dependents(st)

    def _descendants(self, step_id: str) -> list[str]:
        """Every step below `step_id`, breadth first (only needed when something fails)."""
        seen: dict[str, None] = {}
        frontier = [step_id]
        while frontier:
            nxt = []
            for sid in frontier:
                for child in self.dependents.get(sid, ()):
                    if child not in seen:
                        seen[child] = None
                        nxt.append(child)
            frontier = nxt
        return list(seen)

    def _skip_dependents(self, st: StepState) -> None:
        for child_id in self._descendants(st.id):
            child = self.steps[child_id]
            if child.status in (StepStatus.PENDING, StepStatus.READY):
                self._set(child, StepStatus.SKIPPED, reason=f"{st.id} {st.status.value}")

    def _check_done(self) -> None:
        if self.done.done() or self.ended < len(self.steps):
            return
        failed = any(
            st.status in (StepStatus.FAILED, StepStatus.REJECTED, StepStatus.CANCELLED)
            and not st.spec.optional
            for st in self.steps.values()
        )
        if self.cancelling:
            final = RunStatus.CANCELLED
        else:
            final = RunStatus.FAILED if failed else RunStatus.SUCCEEDED
        self._set_run(final, error=self.error) if self.error else self._set_run(final)
        self.engine._forget(self)
        self.done.set_result(final)

    # ------------------------------------------------------------------ control

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel every step not ended; the run ends `cancelled` once running steps stop."""
        if self.done.done() or self.cancelling:
            return
        self.cancelling = True
        self.error = self.error or reason
        for st in self.steps.values():
            if _task_started(st):  # its own handlers record the cancel (hooks included)
                st.task.cancel()  # type: ignore[union-attr]
            elif st.status in (StepStatus.PENDING, StepStatus.READY):
                st.error, st.error_class = reason, ErrorClass.CANCELLED.value
                self._set(st, StepStatus.CANCELLED)
        self._check_done()

    def interrupt(self) -> None:
        """Stop now, keeping the run resumable: running steps go back to pending."""
        if self.done.done():
            return
        self.interrupting = True
        running = [st.task for st in self.steps.values() if st.task and not st.task.done()]
        for task in running:
            task.cancel()
        for st in self.steps.values():
            if st.status is StepStatus.READY:
                st.status = StepStatus.PENDING
        if not running:
            self._finish_interrupted()

    def _finish_interrupted(self) -> None:
        if self.done.done():
            return
        self._set_run(RunStatus.INTERRUPTED)
        self.engine._forget(self)
        self.done.set_result(RunStatus.INTERRUPTED)

    def retry_now(self, step_id: str) -> bool:
        st = self.steps.get(step_id)
        if st is None or st.wake is None:
            return False
        st.wake.set()
        return True

    def cancel_step(self, step_id: str) -> bool:
        st = self.steps.get(step_id)
        if st is None or st.status.ended:
            return False
        if _task_started(st):
            st.task.cancel()  # type: ignore[union-attr]
        elif st.status in (StepStatus.PENDING, StepStatus.READY):
            st.error, st.error_class = "cancelled by operator", ErrorClass.CANCELLED.value
            self._set(st, StepStatus.CANCELLED)
            self._skip_dependents(st)
            self._check_done()
        return True

    async def wait(self) -> RunStatus:
        status = await asyncio.shield(self.done)
        await self.engine.store.flush()
        return status


class Engine:
    """Runs workflows. One per process; `async with Engine(store):` or `await aclose()`."""

    def __init__(
        self,
        store: Store,
        *,
        max_concurrency: int = 64,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        poll_commands: bool = True,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ):
        self.store = store
        self.clock = clock
        """Seconds clock of every timestamp, lease, budget window and breaker cool-down."""
        self.sleep = sleep
        """Waits between attempts (None: real time); tests give a fake clock's sleep."""
        self.events = EventLog(store, clock)
        self.breakers = Breakers(store, self.events, clock)
        """Circuit breakers of this engine (engine/breaker.py)."""
        self.agent_budgets: dict[str, RetryBudget] = {}
        """Retry budget per agent id, shared by every run of this engine."""
        self.resources = AgentResources()
        self.executor: Executor = executor or LocalExecutor()
        self.deadlines = Deadlines()
        """Per-attempt timeouts (one loop timer for all of them)."""
        self.max_concurrency = max_concurrency
        """Steps running at once across all runs of this engine."""
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """Who holds the lease of the runs this engine executes."""
        self.runs: dict[str, RunExecution] = {}
        self.hooks: list[StepHook] = []
        """Step hooks, in the order their `before` runs."""
        from engine.gates import ReviewGate
        from engine.routing import Router
        from engine.undo.hook import UndoHook

        self.reviews = ReviewGate(self)
        """Review gates: opens reviews, waits on decisions, `await engine.reviews.decide(...)`."""
        self.router = Router(self)
        """Runs `route:` steps."""
        self.hooks.append(self.reviews)
        from engine.crash_check import CrashCheck

        self.crash_checks = CrashCheck(self)
        """Asks about steps found in flight after a crash before they act again (first hook)."""
        self.hooks.insert(0, self.crash_checks)
        self.undo = UndoHook(self)
        """The undo log of destructive steps and the undo API (`await engine.undo.undo(ID)`);
        keep it the last hook, nearest the action."""
        self.hooks.append(self.undo)
        self._ready: list = []
        self._seq = itertools.count()
        self._active = 0
        self._agent_active: dict[tuple[str, str], int] = {}
        self._agent_parked: dict[tuple[str, str], list] = {}
        self._stopping = False
        self._background: list[asyncio.Task] = []
        self._poll_commands = poll_commands
        self._loading: asyncio.Future[list[dict[str, Any]]] | None = None
        """The read of the breakers' states `start` began (None once loaded)."""

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        # The breakers' states are read while the first run's rows are written (`submit`
        # waits for both): a read connection and its thread take milliseconds to open.
        self._loading = asyncio.ensure_future(self.store.aquery(Breakers.READ_ROWS))
        self._background.append(asyncio.create_task(self._heartbeat(), name="flowdeck-heartbeat"))
        if self._poll_commands:
            self._background.append(asyncio.create_task(self._commands(), name="flowdeck-commands"))

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        """Run a background task of this engine; `aclose` cancels it."""
        self._background = [t for t in self._background if not t.done()]
        task = asyncio.create_task(coro, name=name)
        self._background.append(task)
        return task

    async def decide(
        self,
        review_id: int | str,
        decision: str,
        reviewer: str,
        comment: str | None = None,
        *,
        choice: str | None = None,
    ) -> dict[str, Any]:
        """Approve or reject a review from this process (see engine/reviews.py `adecide`);
        a step of this engine waiting on it continues at once."""
        return await self.reviews.decide(review_id, decision, reviewer, comment, choice=choice)

    async def _loaded(self) -> None:
        """Wait until `start` has read the breakers' states (raises what the read raised)."""
        loading = self._loading
        if loading is not None:
            rows = await loading
            if self._loading is loading:
                self._loading = None
                self.breakers.load(rows)

    async def aclose(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(BaseException):
                await self._loading
            self._loading = None
        for task in self._background:
            task.cancel()
        for task in self._background:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._background.clear()
        await self.resources.aclose()
        await self.store.flush()

    # ------------------------------------------------------------------ runs

    async def submit(
        self, spec: WorkflowSpec, inputs: dict[str, Any] | None = None, *, source: str | None = None
    ) -> RunExecution:
        """Create a run (committed before this returns) and start it."""
        inputs = dict(inputs or {})
        run_id = new_run_id()
        plan = plan_for(spec)
        now = self.clock()
        spec_json = plan.spec_json

        def create_rows(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO runs(id, workflow, source, spec, inputs, status, created_at, "
                "steps_total, owner, lease_until) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, spec.name, source, spec_json, _dumps(inputs), "pending", now,
                 len(spec.steps), self.owner, now + LEASE_SECONDS),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO steps(run_id, step_id, agent, kind, status, priority, depth, needs, "
                "destructive, max_attempts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(run_id, *row) for row in plan.step_rows],
            )

        created = self.store.call(create_rows, raw=True)
        run = RunExecution(self, run_id, spec, inputs)  # while the writer inserts the rows
        try:
            await self._loaded()  # the breakers' states, also read meanwhile
            await self._refresh_breakers()
            await asyncio.wrap_future(created)
        except BaseException:
            failed = created.done() and not created.cancelled() and created.exception()
            if not failed:  # not when the rows themselves could not be written
                # The rows are written all the same (the writer does not stop for us): end the
                # run as cancelled, queued after them, so none is left pending with nobody to
                # run it.
                self.store.execute(CANCEL_UNSTARTED_RUN, (self.clock(), run_id))
                self.store.execute(CANCEL_UNSTARTED_STEPS, (self.clock(), run_id))
                self.events.emit(
                    "run.cancelled", run_id, None, reason="cancelled before it started"
                )
            raise
        self.events.emit("run.created", run_id, None, workflow=spec.name, steps=len(spec.steps))
        self.runs[run_id] = run
        run.start()
        return run

    async def run(
        self, spec: WorkflowSpec, inputs: dict[str, Any] | None = None, **kw: Any
    ) -> RunExecution:
        """Submit and wait for the end."""
        run = await self.submit(spec, inputs, **kw)
        await run.wait()
        return run

    async def resume(self, run_id: str) -> RunExecution:
        """Continue an interrupted run, or one whose engine died.

        Succeeded steps keep their outputs and are not run again; attempt numbers continue.
        A step found in flight (its row still says `running`) is handled as engine/recovery.py
        says: run again when that is safe, else asked about first (a `crash_check` review
        through `engine.reviews`, engine/crash_check.py). Raises
        NotFound, or Conflict when the run ended or an engine that is alive owns it (a lease
        not expired, held by a process that still exists).
        """
        if run_id in self.runs:
            raise Conflict(f"run {run_id} is already running in this engine")
        now = self.clock()
        row = await self.store.aread(
            lambda db: next(iter(db.query("SELECT * FROM runs WHERE id = ?", [run_id])), None)
        )
        if row is None:
            raise NotFound(f"no run {run_id}")
        status = RunStatus(row["status"])
        if status.ended:
            raise Conflict(f"run {run_id} already ended ({status.value})")
        dead = row["owner"] if row["owner"] and owner_is_dead(row["owner"]) else None

        def take(db: Any) -> int:
            cur = db.execute(
                "UPDATE runs SET owner=?, lease_until=? WHERE id=? AND status NOT IN "
                "('succeeded','failed','cancelled') AND (owner IS NULL OR owner=? OR owner=? OR "
                "lease_until IS NULL OR lease_until < ?)",
                (self.owner, now + LEASE_SECONDS, run_id, self.owner, dead, now),
            )
            return cur.rowcount

        if await self.store.run(take) != 1:
            raise Conflict(
                f"run {run_id} is owned by {row['owner']} which is alive "
                f"(lease until {time.strftime('%H:%M:%S', time.localtime(row['lease_until']))})"
            )
        spec = WorkflowSpec.model_validate_json(row["spec"])
        inputs = json.loads(row["inputs"])
        await self._loaded()
        await self._refresh_breakers()

        def read_state(db: Any) -> tuple[dict, dict, dict]:
            steps = {
                r["step_id"]: r for r in db.query("SELECT * FROM steps WHERE run_id=?", [run_id])
            }
            started = {
                r["step_id"]: r["ts"]
                for r in db.query(
                    "SELECT step_id, max(ts) AS ts FROM events WHERE run_id=? AND "
                    "kind='step.running' GROUP BY step_id",
                    [run_id],
                )
            }
            return steps, recovery.latest_crash_checks(db, run_id), started

        rows, checks, started = await self.store.aread(read_state)
        states: dict[str, StepState] = {}
        in_flight: list[str] = []
        for sid, s in spec.steps.items():
            r = rows.get(sid, {})
            st_status = StepStatus(r.get("status", "pending"))
            output = json.loads(r["output"]) if r.get("output") else None
            if st_status is StepStatus.RUNNING:
                in_flight.append(sid)
            if not st_status.ended:
                st_status = StepStatus.PENDING
            states[sid] = StepState(
                id=sid,
                spec=s,
                status=st_status,
                waiting=0,
                policy=spec.retry_for(s),
                timeout=spec.timeout_for(s),
                has_expr=has_expressions(s.with_),
                attempt_base=r.get("attempt") or 0,
                attempt=r.get("attempt") or 0,
                output=output,
                started_at=r.get("started_at"),
                operation=r.get("operation"),
            )
        for st in states.values():
            st.waiting = sum(
                1 for n in set(st.spec.needs) if states[n].status is not StepStatus.SUCCEEDED
            )
        run = RunExecution(self, run_id, spec, inputs, states)
        run.status = status
        run.started_at = row["started_at"]
        self.events.emit("run.resumed", run_id, None, owner=self.owner, previous_owner=row["owner"])
        for sid in in_flight:
            self._recover_in_flight(run, states[sid], rows[sid], started.get(sid) or now)
        for sid, review in checks.items():
            st = states[sid]
            if st.crash_check is None and not st.status.ended:
                # asked by an earlier resume: wait on that question (or use its answer)
                st.crash_check = recovery.CrashQuestion(review["reason"] or "", reuse=True)
        for st in states.values():
            if st.status is StepStatus.PENDING:
                self._write_pending(run, st)
        self.runs[run_id] = run
        if status is RunStatus.RUNNING:  # its engine died: same as interrupted
            run.status = RunStatus.INTERRUPTED
        run.start()
        return run

    def _recover_in_flight(
        self, run: RunExecution, st: StepState, row: dict[str, Any], started_at: float
    ) -> None:
        """Record the lost attempt of a step found in flight and decide what to do with it
        (engine/recovery.py); a step to ask about gets its `crash_check` question."""
        try:
            agent = run.agent(st) if st.spec.agent in run.spec.agents else None
        except KeyError:  # an agent kind this engine does not know: ask, do not guess
            agent = None
        params = st.spec.with_
        if st.has_expr:
            try:
                params = render(params, run.scope)
            except ExpressionError:
                pass  # it fails again when it runs
        action, why = recovery.crash_action(st.spec, agent, params)
        if st.attempt:
            self.store.execute(
                INTERRUPTED_ATTEMPT,
                (run.run_id, st.id, st.attempt, st.spec.agent, row.get("operation"), started_at,
                 INTERRUPTED_MESSAGE),
            )  # fmt: skip
        self.events.emit(
            "step.recovered", run.run_id, st.id, action=action, reason=why, attempt=st.attempt
        )
        if action == recovery.ASK:
            reason = recovery.question(st.id, row.get("operation"), st.attempt, why)
            st.crash_check = recovery.CrashQuestion(reason, reuse=False)

    async def resume_owned(self) -> list[RunExecution]:
        """Resume every unfinished run held under this engine's `owner` name (what `flowdeck
        serve` does on start, with a stable owner name). Runs another live engine took over
        are skipped."""
        ids = await self.store.aread(
            lambda db: [
                r["id"]
                for r in db.query(
                    "SELECT id FROM runs WHERE owner=? AND status IN "
                    "('pending','running','interrupted') ORDER BY created_at",
                    [self.owner],
                )
            ]
        )
        resumed = []
        for run_id in ids:
            if run_id in self.runs:
                continue
            try:
                resumed.append(await self.resume(run_id))
            except Conflict as e:
                log.warning("not resuming run %s: %s", run_id, e)
        return resumed

    def _write_pending(self, run: RunExecution, st: StepState) -> None:
        st.ended_at = None
        st.next_retry_at = None
        run._write_step(st)

    def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        run = self.runs.get(run_id)
        if run is None:
            return False
        run.cancel(reason)
        return True

    async def shutdown(self, grace: float = 10.0) -> None:
        """Graceful stop: start no more steps or attempts, give attempts under way up to `grace`
        seconds to finish, then interrupt what is left (runs stay resumable)."""
        self._stopping = True
        runs = list(self.runs.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and any(
            st.status is StepStatus.RUNNING
            for run in runs
            if not run.done.done()
            for st in run.steps.values()
        ):
            await asyncio.sleep(0.05)
        for run in runs:
            if not run.done.done():
                run.interrupt()
        for run in runs:
            try:
                await asyncio.wait_for(asyncio.shield(run.done), timeout=5)
            except TimeoutError:
                pass
        await self.store.flush()

    # ------------------------------------------------------------------ slots

    def _enqueue(self, run: RunExecution, st: StepState) -> None:
        heapq.heappush(self._ready, (-st.spec.priority, next(self._seq), run, st))

    def _dispatch(self) -> None:
        ready = self._ready
        while ready and self._active < self.max_concurrency and not self._stopping:
            item = heapq.heappop(ready)
            _, _, run, st = item
            if (
                (st.status is not StepStatus.READY and st.slot_waiter is None)
                or run.done.done()
                or run.interrupting
            ):
                continue
            if run.active >= run.spec.concurrency:
                heapq.heappush(run.parked, item)
                continue
            limit = run.agent_limit(st)
            if limit is not None:
                key = run.agent_key(st)
                if self._agent_active.get(key, 0) >= limit:
                    heapq.heappush(self._agent_parked.setdefault(key, []), item)
                    continue
                self._agent_active[key] = self._agent_active.get(key, 0) + 1
            self._active += 1
            run._launch(st)

    def _release(self, run: RunExecution, st: StepState) -> None:
        self._active -= 1
        run.active -= 1
        if run.parked:
            heapq.heappush(self._ready, heapq.heappop(run.parked))
        if run.agent_limit(st) is not None:
            key = run.agent_key(st)
            self._agent_active[key] -= 1
            parked = self._agent_parked.get(key)
            if parked:
                heapq.heappush(self._ready, heapq.heappop(parked))
        if run.interrupting and run.active == 0 and run.outside == 0:
            run._finish_interrupted()
        self._dispatch()

    def _unslotted_exit(self, run: RunExecution) -> None:
        """A step task that held no slot ended."""
        if run.interrupting and run.active == 0 and run.outside == 0:
            run._finish_interrupted()

    def _forget(self, run: RunExecution) -> None:
        self.runs.pop(run.run_id, None)

    async def _refresh_breakers(self) -> None:
        """Re-read the breakers table when a circuit is not closed here: another process may
        have reset it while no run of this engine was polling."""
        if self.breakers.any_open():
            self.breakers.load(await self.store.aquery(Breakers.READ_ROWS))

    def agent_budget(self, agent_id: str, spec: RetryBudgetSpec | None) -> RetryBudget:
        """The retry budget of an agent (settings of the first run that used it)."""
        budget = self.agent_budgets.get(agent_id)
        if budget is None:
            budget = self.agent_budgets[agent_id] = RetryBudget(
                spec or DEFAULT_AGENT_BUDGET, f"agent {agent_id}"
            )
        return budget

    # ------------------------------------------------------------------ background

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if self.runs:
                now = self.clock()
                self.store.execute(
                    "UPDATE runs SET lease_until=? WHERE owner=? AND status IN ('pending','running')",
                    (now + LEASE_SECONDS, self.owner),
                )

    async def _commands(self) -> None:
        """Pick up what other processes wrote: commands for runs this engine owns, breaker
        changes."""
        last_version: int | None = None
        while True:
            await asyncio.sleep(COMMAND_POLL_SECONDS)
            if not self.runs:
                continue
            try:
                version = await self.store.aread(
                    lambda db: db.execute("PRAGMA data_version").fetchone()[0]
                )
                if version == last_version:
                    continue
                last_version = version
                rows, breakers = await self.store.aread(self._poll_db)
                self.breakers.load(breakers)
                for row in rows:
                    await self._handle_command(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command poll failed")

    def _poll_db(self, db: Any) -> tuple[list[dict], list[dict]]:
        ids = list(self.runs)
        marks = ",".join("?" * len(ids))
        commands = list(
            db.query(
                f"SELECT * FROM commands WHERE status='pending' AND run_id IN ({marks}) ORDER BY id",
                ids,
            )
        )
        return commands, Breakers.read_rows(db)

    async def _handle_command(self, row: dict[str, Any]) -> None:
        def claim(db: Any) -> int:
            return db.execute(
                "UPDATE commands SET status='running', handled_by=? WHERE id=? AND status='pending'",
                (self.owner, row["id"]),
            ).rowcount

        if await self.store.run(claim) != 1:
            return
        run = self.runs.get(row["run_id"])
        kind = row["kind"]
        ok = False
        if run is not None:
            if kind == "cancel_run":
                run.cancel("cancelled by operator")
                ok = True
            elif kind == "cancel_step":
                ok = run.cancel_step(row["step_id"])
            elif kind == "retry_now":
                ok = run.retry_now(row["step_id"])
        self.store.execute(
            "UPDATE commands SET status=?, handled_at=?, result=? WHERE id=?",
            (
                "done" if ok else "failed",
                self.clock(),
                None if ok else "not applicable now",
                row["id"],
            ),
        )
        self.events.emit(
            "command.done" if ok else "command.failed",
            row["run_id"],
            row["step_id"],
            command=kind,
            id=row["id"],
        )
