"""Operator actions from the console: review decisions, undo, and commands to a run's engine.

When the engine that owns a run lives in this process (the demo), a command goes straight to
it; otherwise it becomes a row in the `commands` table that the owning engine picks up within
its poll interval (DESIGN.md: the SQLite file is the contract between processes). Decisions
are compare-and-set in the database, so a decision made elsewhere first wins and this one
gets `Conflict`. Every method runs on the event loop and never blocks it: writes go through
the store's writer thread (`await store.run`), reads through `aread`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine import control
from engine.errors import Conflict, NotFound
from engine.store import Store

ACTIVE_STEP = ("running", "retrying", "waiting_review", "pending", "ready")


class Operator:
    """Carries out what the operator asks for."""

    def __init__(
        self,
        store: Store,
        *,
        engine: Any = None,
        reviewer: str = "console",
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.engine = engine
        """An `engine.runner.Engine` running in this process and loop, if any."""
        self.reviewer = reviewer
        """Name recorded with decisions and undos."""
        self.clock = clock

    # ------------------------------------------------------------------ reviews

    async def decide(
        self,
        review_id: int,
        decision: str,
        comment: str | None = None,
        *,
        choice: str | None = None,
    ) -> str:
        """Approve or reject a pending review (`choice`: the candidate of a route review);
        returns the new status. The one decision function of every surface
        (`engine.reviews.adecide`: compare-and-set, deadlines, learned approvals); an engine
        in this process wakes the waiting step at once. Raises Conflict if another decision
        won, NotFound, or InputError."""
        if self.engine is not None:
            row = await self.engine.decide(
                review_id, decision, self.reviewer, comment, choice=choice
            )
        else:
            from engine import reviews

            row = await reviews.adecide(
                self.store, review_id, decision, self.reviewer, comment, choice=choice,
                now=self.clock(),
            )  # fmt: skip
        return str(row["status"])

    # ------------------------------------------------------------------ undo

    async def undo(self, entry_id: int, *, retry: bool = False) -> str:
        """Undo one entry of the undo log; returns a one-line result.

        Raises Conflict when the undo is refused or its compensation failed (the message says
        why), NotFound for an unknown id.
        """
        from engine.undo import undo_entry

        if self.engine is not None:
            result = await self.engine.undo.undo(entry_id, actor=self.reviewer, retry=retry)
        else:
            result = await undo_entry(
                self.store, entry_id, actor=self.reviewer, clock=self.clock, retry=retry
            )
        if not result.ok:
            raise Conflict(result.message)
        return result.message

    # ------------------------------------------------------------------ commands

    async def _owner(self, run_id: str) -> tuple[str, bool]:
        rows = await self.store.aread(
            lambda db: list(
                db.query("SELECT status, owner, lease_until FROM runs WHERE id = ?", [run_id])
            )
        )
        if not rows:
            raise NotFound(f"no run {run_id}")
        row = rows[0]
        return row["status"], control.lease_alive(row, time.time())

    def _local(self, run_id: str) -> Any:
        engine = self.engine
        if engine is None:
            return None
        return engine.runs.get(run_id)

    async def _command(self, kind: str, run_id: str, step_id: str | None = None) -> int:
        now = self.clock()

        def insert(db: Any) -> int:
            cur = db.execute(
                "INSERT INTO commands(created_at, run_id, step_id, kind) VALUES (?, ?, ?, ?)",
                (now, run_id, step_id, kind),
            )
            return cur.lastrowid

        return await self.store.run(insert)

    async def cancel_run(self, run_id: str) -> str:
        """Cancel a run: through its engine (here or in another process), or in the DB when
        no engine owns it any more."""
        local = self._local(run_id)
        if local is not None:
            local.cancel("cancelled by operator")
            return "cancelling"
        status, alive = await self._owner(run_id)
        if status in control.ENDED_RUN:
            raise Conflict(f"run {run_id} already ended ({status})")
        now = time.time()
        if alive:
            await self.store.run(lambda db: control.request_cancel(db, run_id, now))
            return "cancel requested"
        if await self.store.run(lambda db: control.cancel_abandoned(db, run_id, now)) != 1:
            raise Conflict(f"run {run_id} changed while cancelling; try again")
        return "cancelled"

    async def cancel_step(self, run_id: str, step_id: str) -> str:
        """Cancel one step (running, waiting or not started)."""
        local = self._local(run_id)
        if local is not None:
            if not local.cancel_step(step_id):
                raise Conflict(f"step {step_id} already ended")
            return "cancelled"
        _, alive = await self._owner(run_id)
        if not alive:
            raise Conflict(f"no engine is running run {run_id}")
        await self._command("cancel_step", run_id, step_id)
        return "cancel requested"

    async def retry_now(self, run_id: str, step_id: str) -> str:
        """Start the next attempt of a step waiting out its retry backoff now."""
        local = self._local(run_id)
        if local is not None:
            if not local.retry_now(step_id):
                raise Conflict(f"step {step_id} is not waiting to retry")
            return "retrying now"
        _, alive = await self._owner(run_id)
        if not alive:
            raise Conflict(f"no engine is running run {run_id}")
        await self._command("retry_now", run_id, step_id)
        return "retry requested"
