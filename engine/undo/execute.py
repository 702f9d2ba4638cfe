"""Undoing: one entry, the last one, or a whole run (newest first, like a saga).

Works in any process that can open the DB: everything needed is in SQLite (the entry, the
run's spec with its agents and retry policy). An entry is undone at most once: the compensation
only starts after a compare-and-set `done -> undoing` (or `failed -> undoing` with `retry`);
it ends `undone` or `failed`.

Refusals raise `Conflict` (exit 4 / HTTP 409) and change nothing: already undone, being undone,
expired, the action failed (`void`), not undoable, a failed undo without `retry`, or a
`prepared` entry whose action is still running. A compensation that ran and failed is not an
exception: the result says `failed` (and the entry can be retried).

A `prepared` entry whose engine is gone (a crash between the action and the log update) is
re-checked before anything is compensated: the `capture:` read runs again; the same state as
captured means the action never happened (the entry becomes `void`); a different state or a
404/410 means it did, and the compensation runs. Without a capture, `force=True` (a human
checked) compensates anyway; otherwise the undo is refused with what to do.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.agents import AgentResources
from engine.errors import Conflict, ErrorClass, NotFound, StepError
from engine.events import EventLog
from engine.models import UndoEntry, UndoStatus, WorkflowSpec
from engine.store import Store
from engine.undo import entries
from engine.undo.calls import (
    CAPTURE_SUFFIX,
    UNDO_SUFFIX,
    Target,
    agent_target,
    effective_timeout,
    handler_target,
    run_target,
)

_U = UndoStatus
GONE_STATUS = frozenset({404, 410})
"""HTTP statuses of a re-check read that mean "the thing is gone": the action happened."""


def default_actor() -> str:
    """Who is undoing, when `--as` is not given: the OS user."""
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@dataclass(slots=True)
class UndoResult:
    """What happened to one entry."""

    entry_id: int
    """The undo entry."""
    run_id: str
    step_id: str
    outcome: str
    """`undone`, `failed` (the compensation ran and failed), `void` (re-check: the action
    never happened), `skipped` (nothing to do: already undone or void) or `refused`."""
    message: str
    """One line for a human: what was done, or why not."""
    entry: UndoEntry | None = None
    """The entry afterwards."""

    @property
    def ok(self) -> bool:
        """Nothing is left to do for this entry (exit 0)."""
        return self.outcome in ("undone", "skipped", "void")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "outcome": self.outcome,
            "message": self.message,
            "entry": self.entry.model_dump(mode="json") if self.entry else None,
        }


@dataclass(slots=True)
class _Ctx:
    store: Store
    actor: str
    clock: Callable[[], float]
    events: EventLog
    resources: AgentResources
    owner: str
    retry: bool = False
    force: bool = False
    specs: dict[str, WorkflowSpec] = field(default_factory=dict)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _what(row: dict[str, Any]) -> str:
    return f"undo entry {row['id']} (run {row['run_id']}, step {row['step_id']})"


# --------------------------------------------------------------------------- public API


async def undo_entry(
    store: Store,
    entry_id: int,
    *,
    actor: str,
    clock: Callable[[], float] = time.time,
    events: EventLog | None = None,
    resources: AgentResources | None = None,
    owner: str | None = None,
    retry: bool = False,
    force: bool = False,
) -> UndoResult:
    """Undo entry `entry_id`. Raises NotFound, or Conflict when refused (nothing changed).

    `retry` allows undoing an entry whose undo failed; `force` compensates a `prepared` entry
    of a crashed engine without re-checking (use when a human checked the action happened).
    """
    async with _context(store, actor, clock, events, resources, owner, retry, force) as ctx:
        return await _undo_one(ctx, entry_id)


async def undo_last(
    store: Store,
    *,
    actor: str,
    clock: Callable[[], float] = time.time,
    events: EventLog | None = None,
    resources: AgentResources | None = None,
    owner: str | None = None,
    retry: bool = False,
    force: bool = False,
) -> UndoResult:
    """Undo the last operation: the newest entry whose action did not fail (not `void`).

    If that one is already undone (or not undoable, expired, ...), this refuses like
    `undo_entry` does instead of reaching further back: repeating `--last` never undoes two
    operations by accident. Use an id for older ones.
    """
    row = await store.aread(
        lambda db: next(
            iter(
                db.query("SELECT id FROM undo_log WHERE status != 'void' ORDER BY id DESC LIMIT 1")
            ),
            None,
        )
    )
    if row is None:
        raise NotFound("the undo log is empty: no destructive step has run yet")
    return await undo_entry(
        store,
        row["id"],
        actor=actor,
        clock=clock,
        events=events,
        resources=resources,
        owner=owner,
        retry=retry,
        force=force,
    )


async def undo_run(
    store: Store,
    run_id: str,
    *,
    actor: str,
    clock: Callable[[], float] = time.time,
    events: EventLog | None = None,
    resources: AgentResources | None = None,
    owner: str | None = None,
    retry: bool = False,
    keep_going: bool = False,
) -> list[UndoResult]:
    """Undo every undoable entry of a run, newest first (a saga's compensation).

    Refused as a whole (Conflict, nothing changed) while the run is executing, when nothing is
    left to undo, or, unless `keep_going`, when an entry cannot be undone (expired, not
    undoable, a failed undo without `retry`). Stops at the first compensation that fails,
    since older steps' undos may depend on newer ones being undone first; `keep_going`
    continues with the rest instead. Returns one result per entry of the run, newest first.
    """
    from engine.queries import resolve_run_id

    now = clock()

    def read(db: Any) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
        rid = resolve_run_id(db, run_id)
        rows = list(db.query("SELECT * FROM undo_log WHERE run_id = ? ORDER BY id DESC", [rid]))
        return rid, entries.run_alive(db, rid, now), rows

    rid, alive, rows = await store.aread(read)
    if alive is not None:
        raise Conflict(
            f"run {rid} is still running (engine {alive['owner']}); cancel it or let it finish "
            "before undoing the whole run"
        )
    plan: list[tuple[dict[str, Any], str | None]] = []  # (row, why it cannot be undone)
    for row in rows:
        plan.append((row, _blocker(row, now, retry)))
    todo = [r for r, why in plan if why is None and r["status"] not in ("undone", "void")]
    blocked = [(r, why) for r, why in plan if why is not None]
    if not rows:
        raise Conflict(f"run {rid} has no undo entries (it ran no destructive step)")
    if blocked and not keep_going:
        lines = "; ".join(f"entry {r['id']} ({r['step_id']}): {why}" for r, why in blocked)
        raise Conflict(
            f"run {rid} cannot be undone completely: {lines}. Nothing was changed; "
            "--keep-going undoes the others"
        )
    if not todo:
        states = ", ".join(f"entry {r['id']} ({r['step_id']}) {r['status']}" for r in rows)
        raise Conflict(f"nothing left to undo in run {rid}: {states}")

    results: list[UndoResult] = []
    stop = False
    async with _context(store, actor, clock, events, resources, owner, retry, False) as ctx:
        for row, why in plan:
            res = _static_result(row, why, stop)
            if res is None:
                try:
                    res = await _undo_one(ctx, row["id"])
                except Conflict as e:
                    res = UndoResult(row["id"], rid, row["step_id"], "refused", str(e))
                if res.outcome in ("failed", "refused") and not keep_going:
                    stop = True
            results.append(res)
    return results


def _blocker(row: dict[str, Any], now: float, retry: bool) -> str | None:
    status = _U(row["status"])
    if status is _U.NOT_UNDOABLE:
        return "not undoable" + (f" ({row['error']})" if row["error"] else "")
    if (
        status in entries.UNDOABLE_LATER
        and row["expires_at"] is not None
        and row["expires_at"] <= now
    ):
        return f"expired at {_when(row['expires_at'])}"
    if status is _U.FAILED and not retry:
        return f"its undo failed ({row['error']}); --retry tries again"
    if status is _U.PREPARED and not (entries.loads(row["undo"]) or {}).get("capture"):
        return (
            "unresolved after a crash, with no `capture:` to re-check it; resume the run or "
            f"`flowdeck undo {row['id']} --force`"
        )
    return None


def _static_result(row: dict[str, Any], why: str | None, stop: bool) -> UndoResult | None:
    rid, sid, eid = row["run_id"], row["step_id"], row["id"]
    if why is not None:
        return UndoResult(eid, rid, sid, "refused", why)
    if row["status"] == "undone":
        return UndoResult(eid, rid, sid, "skipped", f"already undone at {_when(row['undone_at'])}")
    if row["status"] == "void":
        return UndoResult(eid, rid, sid, "skipped", "the action failed: nothing to undo")
    if stop:
        return UndoResult(eid, rid, sid, "refused", "not attempted: a newer undo failed first")
    return None


# --------------------------------------------------------------------------- one entry


@asynccontextmanager
async def _context(
    store: Store,
    actor: str,
    clock: Callable[[], float],
    events: EventLog | None,
    resources: AgentResources | None,
    owner: str | None,
    retry: bool,
    force: bool,
) -> AsyncIterator[_Ctx]:
    """A `_Ctx` for one undo request; closes the HTTP session if it had to open one."""
    ctx = _Ctx(
        store=store,
        actor=actor,
        clock=clock,
        events=events or EventLog(store, clock),
        resources=resources or AgentResources(),
        owner=owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        retry=retry,
        force=force,
    )
    try:
        yield ctx
    finally:
        if resources is None:
            await ctx.resources.aclose()
        await store.flush()


async def _undo_one(ctx: _Ctx, entry_id: int) -> UndoResult:
    store = ctx.store
    now = ctx.clock()
    row = await store.aread(lambda db: entries.get_row(db, entry_id))
    status = _U(row["status"])
    what = _what(row)

    if status is _U.UNDOING:
        if entries.holder_alive(row["holder"], row["lease_until"], now):
            raise Conflict(f"{what} is being undone right now by {row['undone_by']}")
        # Its undoer died mid-compensation: say so, then treat it as a failed undo.
        msg = "the process undoing it stopped before recording the outcome"
        if await store.run(
            lambda db: entries.transition(
                db,
                entry_id,
                _U.UNDOING,
                _U.FAILED,
                error=msg,
                updated_at=now,
                holder=None,
                lease_until=None,
            )
        ):
            ctx.events.emit("undo.failed", row["run_id"], row["step_id"], id=entry_id, error=msg)
        row = await store.aread(lambda db: entries.get_row(db, entry_id))
        status = _U(row["status"])
    why = _refusal(row, now, ctx.retry)
    if why is not None:
        raise Conflict(f"{what} {why}")

    spec = await _spec(ctx, row["run_id"])
    step = spec.steps.get(row["step_id"])
    if step is None or step.undo is None:
        raise Conflict(f"{what} cannot be undone: the run's workflow has no undo for this step")
    record: dict[str, Any] = entries.loads(row["undo"]) or {}

    if status is _U.PREPARED:
        outcome = await _recheck(ctx, row, spec, record)
        if outcome is not None:
            return outcome

    target = _target(ctx, row, spec, record)
    policy = spec.retry_for(step)
    timeout = effective_timeout(spec, step, target.agent_id)
    lease = now + policy.attempts * (timeout + policy.max) + 60
    undo_step = row["step_id"] + UNDO_SUFFIX
    rid = row["run_id"]

    def claim(db: Any) -> int | None:
        ok = entries.transition(
            db,
            entry_id,
            status,
            _U.UNDOING,
            where="AND (expires_at IS NULL OR expires_at > ?)",
            params=(now,),
            holder=ctx.owner,
            lease_until=lease,
            undone_by=ctx.actor,
            updated_at=now,
            error=None,
        )
        return entries.max_attempt(db, rid, undo_step) if ok else None

    base = await store.run(claim)
    if base is None:  # lost a race (another undo, the window closing): say why
        fresh = await store.aread(lambda db: entries.get_row(db, entry_id))
        why = _refusal(fresh, ctx.clock(), ctx.retry)
        raise Conflict(f"{what} {why or 'changed meanwhile'}; nothing was done")
    ctx.events.emit("undo.undoing", rid, row["step_id"], id=entry_id, by=ctx.actor)

    error: StepError | None = None
    result: Any = None
    try:
        result = await run_target(
            store,
            target,
            run_id=rid,
            step_id=undo_step,
            policy=policy,
            timeout=timeout,
            idempotency_key=f"{rid}:{row['step_id']}:undo:{entry_id}:{base + 1}",
            first_number=base + 1,
            clock=ctx.clock,
        )
    except StepError as e:
        error = e
    except BaseException as e:  # interrupted (Ctrl-C, cancel): record it, then let it go on
        error = StepError(f"interrupted: {type(e).__name__}", ErrorClass.CANCELLED)
        await _finish(ctx, row, base, error, None)
        raise
    return await _finish(ctx, row, base, error, result)


def _refusal(row: dict[str, Any], now: float, retry: bool) -> str | None:
    """Why entry `row` cannot be undone now (the end of a sentence), or None if it can."""
    status = _U(row["status"])
    if status is _U.UNDOING:
        return f"is being undone right now by {row['undone_by']}"
    if status is _U.UNDONE:
        return f"was already undone at {_when(row['undone_at'])} by {row['undone_by']}"
    if status is _U.VOID:
        return f"has nothing to undo: the action did not happen ({row['error']})"
    if status is _U.NOT_UNDOABLE:
        return f"cannot be undone: {row['error'] or 'it declares no undo'}"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return f"expired at {_when(row['expires_at'])} (undo window {row['ttl'] or 0:g} s)"
    if status is _U.FAILED and not retry:
        return (
            f"could not be undone: its undo failed ({row['error']}); retry with "
            f"`flowdeck undo {row['id']} --retry`"
        )
    return None


async def _finish(
    ctx: _Ctx, row: dict[str, Any], base: int, error: StepError | None, result: Any
) -> UndoResult:
    entry_id, rid, sid = row["id"], row["run_id"], row["step_id"]
    now = ctx.clock()
    undo_step = sid + UNDO_SUFFIX

    def done(db: Any) -> bool:
        attempts = entries.max_attempt(db, rid, undo_step)
        if error is None:
            return entries.transition(
                db,
                entry_id,
                _U.UNDOING,
                _U.UNDONE,
                result=entries.dumps(result),
                undone_at=now,
                updated_at=now,
                holder=None,
                lease_until=None,
                undo_attempts=attempts,
            )
        return entries.transition(
            db,
            entry_id,
            _U.UNDOING,
            _U.FAILED,
            error=f"{error.error_class.value}: {error.message}",
            updated_at=now,
            holder=None,
            lease_until=None,
            undo_attempts=attempts,
        )

    await ctx.store.flush()  # attempt rows first, so the count is right
    await ctx.store.run(done)
    entry = await ctx.store.aread(lambda db: entries.to_entry(entries.get_row(db, entry_id), now))
    if error is None:
        ctx.events.emit("undo.undone", rid, sid, id=entry_id, by=ctx.actor)
        return UndoResult(entry_id, rid, sid, "undone", f"undone: {entry.description}", entry)
    ctx.events.emit("undo.failed", rid, sid, id=entry_id, error=error.message)
    return UndoResult(
        entry_id,
        rid,
        sid,
        "failed",
        f"undo failed: {error.message} (retry with `flowdeck undo {entry_id} --retry`)",
        entry,
    )


async def _spec(ctx: _Ctx, run_id: str) -> WorkflowSpec:
    spec = ctx.specs.get(run_id)
    if spec is None:
        text = await ctx.store.aread(
            lambda db: db.execute("SELECT spec FROM runs WHERE id = ?", [run_id]).fetchone()
        )
        if text is None:
            raise NotFound(f"run {run_id} of the undo entry is gone")
        spec = ctx.specs[run_id] = WorkflowSpec.model_validate_json(text[0])
    return spec


def _target(ctx: _Ctx, row: dict[str, Any], spec: WorkflowSpec, record: dict[str, Any]) -> Target:
    what = _what(row)
    step = spec.steps[row["step_id"]]
    if record.get("handler"):
        params = entries.loads(row["params"]) or {}
        return handler_target(
            step,
            record["handler"],
            params,
            entries.loads(row["output"]),
            entries.loads(row["before"]),
        )
    params = record.get("with")
    if params is None:
        raise Conflict(
            f"{what}: its undo needs the action's output, which was never recorded (the engine "
            f"stopped mid-action); resume the run (`flowdeck resume {row['run_id']}`) so the "
            "step finishes, then undo it"
        )
    agent_id = record.get("agent") or ""
    try:
        return agent_target(spec, agent_id, params, ctx.resources)
    except KeyError as e:
        raise Conflict(f"{what}: cannot build the undo's agent '{agent_id}': {e}") from None


# --------------------------------------------------------------------------- after a crash


async def _recheck(
    ctx: _Ctx, row: dict[str, Any], spec: WorkflowSpec, record: dict[str, Any]
) -> UndoResult | None:
    """Decide what a `prepared` entry means. Returns a result when there is nothing to
    compensate; None when the compensation should run; raises Conflict when it cannot tell."""
    now = ctx.clock()
    what = _what(row)
    alive = await ctx.store.aread(lambda db: entries.run_alive(db, row["run_id"], now))
    if alive is not None:
        raise Conflict(
            f"{what}: its action is still running (engine {alive['owner']}); wait for the step "
            "to finish, then undo"
        )
    if ctx.force:
        return None
    capture = record.get("capture")
    if capture is None:
        raise Conflict(
            f"{what} is unresolved: the engine stopped between the action and the log update "
            "and the step has no `capture:` to re-check whether the action happened. Resume "
            f"the run (`flowdeck resume {row['run_id']}`) or, if you checked it happened, "
            f"`flowdeck undo {row['id']} --force`"
        )
    step = spec.steps[row["step_id"]]
    agent_id = record.get("capture_agent") or step.agent or ""
    try:
        target = agent_target(spec, agent_id, capture, ctx.resources)
    except KeyError as e:
        raise Conflict(f"{what}: cannot build the capture agent '{agent_id}': {e}") from None
    rid, sid = row["run_id"], row["step_id"]
    base = await ctx.store.aread(lambda db: entries.max_attempt(db, rid, sid + CAPTURE_SUFFIX))
    try:
        state = await run_target(
            ctx.store,
            target,
            run_id=rid,
            step_id=sid + CAPTURE_SUFFIX,
            policy=spec.retry_for(step),
            timeout=effective_timeout(spec, step, agent_id),
            idempotency_key=f"{rid}:{sid}:recheck:{base + 1}",
            first_number=base + 1,
            clock=ctx.clock,
        )
    except StepError as e:
        if e.error_class is ErrorClass.HTTP and e.status in GONE_STATUS:
            return None  # what the action removed is gone: it happened
        raise Conflict(
            f"{what} is unresolved and re-checking it failed ({e.message}); try again later"
        ) from None
    if state != entries.loads(row["before"]):
        return None  # the state changed: the action happened
    msg = "re-checked after a crash: the state is as captured, so the action never happened"
    ok = await ctx.store.run(
        lambda db: entries.transition(
            db, row["id"], _U.PREPARED, _U.VOID, error=msg, updated_at=now, holder=None
        )
    )
    if not ok:
        raise Conflict(f"{what} changed meanwhile; nothing was done")
    ctx.events.emit("undo.void", rid, sid, id=row["id"], error=msg)
    entry = await ctx.store.aread(lambda db: entries.to_entry(entries.get_row(db, row["id"]), now))
    return UndoResult(row["id"], rid, sid, "void", f"nothing to undo: {msg}", entry)
