"""The write-ahead half of the undo log: a `StepHook` around every destructive step.

`before` the action: run the optional `capture:` read, render what can be rendered of the undo
parameters, and commit an entry `prepared` (the action does not start before that commit).
`after`: the entry becomes `done` with the action's output and `expires_at = now + ttl`.
`failed`: `void` when the action certainly did not happen; when the outcome is unknown (timeout,
connection lost, cancelled, or a resumed run whose earlier attempt may have acted) the entry
stays `prepared` with the reason in `error`, and `flowdeck undo` re-checks it.

A resumed run that finds a `prepared` entry of the same step (its engine died mid-action) takes
that entry over instead of capturing again: the before-state it holds is the one from before
the first attempt, which a fresh read could no longer see.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.agents import create
from engine.errors import ErrorClass, StepError
from engine.expressions import ExpressionError, has_expressions, iter_refs, render
from engine.models import UndoStatus
from engine.runner import StepHook
from engine.undo import entries
from engine.undo.calls import CAPTURE_SUFFIX, agent_target, effective_timeout, run_target

if TYPE_CHECKING:
    from engine.agents import Agent
    from engine.models import StepSpec, UndoSpec
    from engine.runner import Engine, RunExecution, StepState

log = logging.getLogger("flowdeck.undo")

UNCERTAIN = frozenset({ErrorClass.TIMEOUT, ErrorClass.CONNECTION, ErrorClass.CANCELLED})
"""Error classes after which a destructive action may or may not have happened."""

_P = UndoStatus.PREPARED
NOT_STARTED = " (the action was not started)"
NOT_UNDOABLE_KEPT = 3600.0
"""Seconds a `not_undoable` entry counts as recent (after that the history cap may prune it)."""


@dataclass(slots=True)
class _Open:
    """An entry between `before` and `after`/`failed`."""

    entry_id: int | None
    """None for a destructive step without `undo:` (recorded `not_undoable` after)."""
    before: Any = None
    undo: dict[str, Any] | None = None
    description: str | None = None
    adopted: bool = False


def uses_output(template: Any, step_id: str) -> bool:
    """Whether `template` refers to the action's output (`output...` or `steps.SELF.output`)."""
    try:
        return any(
            ref.root == "output" or (ref.root == "steps" and ref.step == step_id)
            for ref in iter_refs(template)
        )
    except ExpressionError:
        return False


def describe(step_id: str, spec: UndoSpec, undo: dict[str, Any], scope: dict[str, Any]) -> str:
    """The entry's description: the undo's `description` rendered, else a generated one."""
    if spec.description:
        if not has_expressions(spec.description):
            return spec.description
        try:
            return str(render(spec.description, scope))
        except ExpressionError:
            return spec.description
    if undo.get("handler"):
        return f"undo {step_id} with handler {undo['handler']}"
    return f"undo {step_id}: {undo.get('operation') or 'compensating action'}"


class UndoHook(StepHook):
    """Writes the undo log of destructive steps; `Engine.undo` is the engine's instance.

    Register it last in `Engine.hooks`: its `before` must run right before the action (after a
    review gate has decided), so that the captured before-state is current.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.history_cap = 1000
        """Undo entries kept in the DB; beyond it the oldest expired ones are pruned."""
        self._open: dict[tuple[str, str], _Open] = {}

    def applies(self, run: RunExecution, st: StepState) -> bool:
        return st.spec.destructive

    # ------------------------------------------------------------------ before

    async def before(
        self, run: RunExecution, st: StepState, agent: Agent, params: dict[str, Any]
    ) -> dict[str, Any]:
        key = (run.run_id, st.id)
        undo = st.spec.undo
        if undo is None:
            self._open[key] = _Open(None)
            return params
        store = self.engine.store
        found, capture_base = await store.aread(
            lambda db: (
                entries.find_prepared(db, run.run_id, st.id),
                entries.max_attempt(db, run.run_id, st.id + CAPTURE_SUFFIX),
            )
        )
        if found is not None and await self._adopt(run, st, found):
            self._open[key] = _Open(
                found["id"],
                before=entries.loads(found["before"]),
                undo=entries.loads(found["undo"]) or {},
                adopted=True,
            )
            return params
        opened = await self._prepare(run, st, undo, agent, params, capture_base)
        self._open[key] = opened
        return params

    async def _adopt(self, run: RunExecution, st: StepState, found: dict[str, Any]) -> bool:
        engine = self.engine
        now = engine.clock()
        ok = await engine.store.run(
            lambda db: entries.transition(
                db, found["id"], _P, _P, updated_at=now, holder=engine.owner, error=None
            )
        )
        if ok:
            engine.events.emit(
                "undo.prepared",
                run.run_id,
                st.id,
                id=found["id"],
                operation=st.operation,
                adopted=True,
            )
        return ok

    async def _prepare(
        self,
        run: RunExecution,
        st: StepState,
        undo: UndoSpec,
        agent: Agent,
        params: dict[str, Any],
        capture_base: int,
    ) -> _Open:
        engine = self.engine
        step: StepSpec = st.spec
        before = None
        capture_params = None
        if undo.capture is not None:
            capture_agent = undo.capture.agent or step.agent or ""
            capture_params = _render(
                undo.capture.with_, run.scope, "undo.capture.with", NOT_STARTED
            )
            try:
                target = agent_target(run.spec, capture_agent, capture_params, engine.resources)
            except KeyError as e:
                raise StepError(f"undo.capture.agent: {e.args[0]}", ErrorClass.VALIDATION) from None
            try:
                before = await run_target(
                    engine.store,
                    target,
                    run_id=run.run_id,
                    step_id=st.id + CAPTURE_SUFFIX,
                    policy=st.policy,
                    timeout=effective_timeout(run.spec, step, capture_agent),
                    idempotency_key=f"{run.run_id}:{st.id}:capture",
                    first_number=capture_base + 1,
                    clock=engine.clock,
                )
            except StepError as e:
                raise StepError(
                    f"undo capture failed, so the action was not started: {e.message}",
                    e.error_class,
                    status=e.status,
                ) from e
        scope = {**run.scope, "before": before}
        record: dict[str, Any] = {"capture": capture_params}
        if undo.capture is not None:
            record["capture_agent"] = undo.capture.agent or step.agent
        if undo.handler is not None:
            record["handler"] = undo.handler
        else:
            undo_agent = undo.agent or step.agent or ""
            record["agent"] = undo_agent
            if uses_output(undo.with_, st.id):
                record["with"] = None
                record["needs_output"] = True
            else:
                rendered = _render(undo.with_, scope, "undo.with", NOT_STARTED)
                record["with"] = rendered
                record["operation"] = _operation(run, undo_agent, rendered)
        description = describe(st.id, undo, record, scope)
        now = engine.clock()
        row = {
            "run_id": run.run_id,
            "step_id": st.id,
            "agent": step.agent,
            "operation": st.operation,
            "params": entries.dumps(params),
            "description": description,
            "before": entries.dumps(before),
            "undo": entries.dumps(record),
            "created_at": now,
            "updated_at": now,
            "expires_at": now + undo.ttl,
            "ttl": undo.ttl,
            "status": _P.value,
            "holder": engine.owner,
        }
        fut = engine.store.call(lambda db: entries.insert(db, **row))
        try:
            entry_id = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            # The insert still commits; the action will never start: void it right after.
            fut.add_done_callback(lambda f: self._void_cancelled(f, now))
            raise
        engine.events.emit(
            "undo.prepared",
            run.run_id,
            st.id,
            id=entry_id,
            operation=st.operation,
            description=description,
        )
        return _Open(entry_id, before=before, undo=record, description=description)

    def _void_cancelled(self, fut: Any, now: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self.engine.store.execute(
            "UPDATE undo_log SET status='void', error=?, updated_at=? WHERE id=? "
            "AND status='prepared'",
            ("cancelled before the action started", now, fut.result()),
        )

    # ------------------------------------------------------------------ after

    async def after(self, run: RunExecution, st: StepState, output: Any) -> Any:
        opened = self._open.pop((run.run_id, st.id), None)
        if opened is None:
            return output
        engine = self.engine
        now = engine.clock()
        cap = self.history_cap
        if opened.entry_id is None:
            row = {
                "run_id": run.run_id,
                "step_id": st.id,
                "agent": st.spec.agent,
                "operation": st.operation,
                "output": entries.dumps(output),
                "created_at": now,
                "updated_at": now,
                "expires_at": now + NOT_UNDOABLE_KEPT,
                "status": UndoStatus.NOT_UNDOABLE.value,
                "error": "the step is destructive but declares no `undo:`",
            }
            entry_id, pruned = await engine.store.run(
                lambda db: (entries.insert(db, **row), entries.prune(db, cap, now))
            )
            engine.events.emit(
                "undo.not_undoable", run.run_id, st.id, id=entry_id, operation=st.operation
            )
            self._pruned(pruned)
            return output

        undo = st.spec.undo
        assert undo is not None
        record = dict(opened.undo or {})
        scope = {
            "inputs": run.inputs,
            "steps": {**run.outputs, st.id: output},
            "output": output,
            "before": opened.before,
        }
        error = None
        if record.get("needs_output"):
            try:
                record["with"] = _render(undo.with_, scope, "undo.with")
                record.pop("needs_output", None)
                record["operation"] = _operation(run, record.get("agent") or "", record["with"])
            except StepError as e:
                error = f"{e.message}; the action happened but cannot be undone automatically"
        description = describe(st.id, undo, record, scope)
        cols: dict[str, Any] = {
            "output": entries.dumps(output),
            "undo": entries.dumps(record),
            "description": description,
            "updated_at": now,
            "holder": None,
            "error": error,
        }
        if error is None:
            new = UndoStatus.DONE
            cols["expires_at"] = now + undo.ttl
        else:
            new = UndoStatus.NOT_UNDOABLE
        entry_id = opened.entry_id

        def finish(db: Any) -> tuple[bool, int]:
            return entries.transition(db, entry_id, _P, new, **cols), entries.prune(db, cap, now)

        ok, pruned = await engine.store.run(finish)
        if ok:
            engine.events.emit(
                f"undo.{new.value}",
                run.run_id,
                st.id,
                id=entry_id,
                operation=st.operation,
                expires_at=cols.get("expires_at"),
                error=error,
            )
        else:
            log.warning("undo entry %s changed while step %s ran; left as is", entry_id, st.id)
        self._pruned(pruned)
        return output

    def _pruned(self, count: int) -> None:
        if count:
            self.engine.events.emit("undo.pruned", None, None, count=count)

    # ------------------------------------------------------------------ failed

    async def failed(self, run: RunExecution, st: StepState, error: BaseException) -> None:
        opened = self._open.pop((run.run_id, st.id), None)
        if opened is None or opened.entry_id is None:
            return
        try:
            await self._settle_failed(run, st, opened, error)
        except Exception:  # never hide the step's own error; the entry stays `prepared`
            log.exception("could not record the end of undo entry %s", opened.entry_id)

    async def _settle_failed(
        self, run: RunExecution, st: StepState, opened: _Open, error: BaseException
    ) -> None:
        engine = self.engine
        now = engine.clock()
        entry_id = opened.entry_id
        reason = _reason(error)
        uncertain = (
            opened.adopted
            or isinstance(error, asyncio.CancelledError)
            or (isinstance(error, StepError) and error.error_class in UNCERTAIN)
        )
        if uncertain:
            why = "an earlier attempt before the crash may have acted" if opened.adopted else reason
            message = f"outcome unknown ({why}); `flowdeck undo {entry_id}` re-checks it"
            await engine.store.run(
                lambda db: db.execute(
                    "UPDATE undo_log SET error=?, updated_at=?, holder=NULL WHERE id=? "
                    "AND status='prepared'",
                    (message, now, entry_id),
                )
            )
            engine.events.emit("undo.unknown", run.run_id, st.id, id=entry_id, error=message)
            return
        ok = await engine.store.run(
            lambda db: entries.transition(
                db, entry_id, _P, UndoStatus.VOID, error=reason, updated_at=now, holder=None
            )
        )
        if ok:
            engine.events.emit("undo.void", run.run_id, st.id, id=entry_id, error=reason)

    # ------------------------------------------------------------------ the engine's undo API

    async def undo(self, entry_id: int, *, actor: str, retry: bool = False, force: bool = False):
        """Undo one entry with this engine's store, clock, events and HTTP session."""
        from engine.undo.execute import undo_entry

        return await undo_entry(
            self.engine.store, entry_id, actor=actor, retry=retry, force=force, **self._context()
        )

    async def undo_last(self, *, actor: str, retry: bool = False, force: bool = False):
        from engine.undo.execute import undo_last

        return await undo_last(
            self.engine.store, actor=actor, retry=retry, force=force, **self._context()
        )

    async def undo_run(
        self, run_id: str, *, actor: str, retry: bool = False, keep_going: bool = False
    ):
        from engine.undo.execute import undo_run

        return await undo_run(
            self.engine.store,
            run_id,
            actor=actor,
            retry=retry,
            keep_going=keep_going,
            **self._context(),
        )

    async def history(self, **filters: Any):
        """`list_entries` on this engine's store (newest first)."""
        now = self.engine.clock()
        return await self.engine.store.aread(
            lambda db: entries.list_entries(db, now=now, **filters)
        )

    def _context(self) -> dict[str, Any]:
        e = self.engine
        return {"clock": e.clock, "events": e.events, "resources": e.resources, "owner": e.owner}


def _render(template: Any, scope: dict[str, Any], where: str, note: str = "") -> Any:
    try:
        return render(template, scope) if has_expressions(template) else template
    except ExpressionError as e:
        raise StepError(f"{where}: {e}{note}", ErrorClass.VALIDATION) from None


def _operation(run: RunExecution, agent_id: str, params: Any) -> str | None:
    """The compensation's short name, e.g. `POST /tracker/issues/*/restore`."""
    agent_spec = run.spec.agents.get(agent_id)
    if agent_spec is None or not isinstance(params, dict):
        return None
    try:
        return create(agent_id, agent_spec, run.engine.resources).operation(params)
    except Exception:  # an unknown kind is reported when the undo runs
        return None


def _reason(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, StepError):
        return f"{error.error_class.value}: {error.message}"
    return f"{type(error).__name__}: {error}"
