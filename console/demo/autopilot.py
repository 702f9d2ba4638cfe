"""The simulated operator of the demo: decides pending reviews and undoes now and then.

It acts like a person at the console, through the same calls the console and the CLI use:
every pending review gets a decision after a short random delay (`reviews.adecide`, the
compare-and-set, so a human who decides first simply wins), and every few runs that left
something undoable are undone as a whole (`engine.undo.undo_run`, newest entry first).

Its habits are fixed so the demo tells a story: posting to chat is always approved (so that
pattern turns into a learned auto-approval after enough runs), other gates are approved most of
the time, a low-confidence route usually takes the model's best guess but sometimes another
candidate, and now and then a decision is a rejection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import Conflict, FlowdeckError
from engine.models import RunStatus

if TYPE_CHECKING:
    from console.demo.catalog import Example
    from engine.runner import Engine, RunExecution

log = logging.getLogger("flowdeck.demo")

REVIEWER = "demo-operator"
"""Name recorded on the simulated operator's decisions and undos."""


@dataclass(frozen=True)
class Habits:
    """How the simulated operator behaves."""

    delay: tuple[float, float] = (0.5, 2.5)
    """Seconds (uniform range) between a review appearing and its decision."""
    approve: float = 0.9
    """Chance that a gate is approved."""
    always_approve: tuple[str, ...] = ("chat:POST /messages",)
    """Patterns (`AGENT:OPERATION`) that are always approved: the learned approvals to come."""
    override: float = 0.2
    """Chance that a route review picks another candidate than the best one."""
    reject_route: float = 0.05
    """Chance that a route review is rejected."""
    undo_every: int = 2
    """Every this-many-th run that left undoable actions is undone (0: never)."""
    undo_delay: tuple[float, float] = (0.3, 1.5)
    """Seconds between such a run ending and its undo."""
    poll: float = 0.25
    """Seconds between two looks for new pending reviews."""


class Autopilot:
    """Decides reviews and undoes runs of one engine's store, until its task is cancelled."""

    def __init__(self, engine: Engine, rng: random.Random, habits: Habits | None = None):
        self.engine = engine
        self.rng = rng
        self.habits = habits or Habits()
        self.decisions: Counter[str] = Counter()
        """Decisions made, by outcome: approved, rejected, overridden, lost (someone else won)."""
        self.undone: Counter[str] = Counter()
        """Undo results by outcome (undone, failed, refused, ...)."""
        self._seen: set[int] = set()
        self._undoable_runs = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._undos: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ reviews

    async def run(self) -> None:
        """Watch for pending reviews; cancel the task to stop."""
        try:
            while True:
                rows = await self.engine.store.aread(_pending)
                for row in rows:
                    if row["id"] not in self._seen and row["kind"] in ("gate", "route"):
                        self._seen.add(row["id"])
                        self._spawn(self._decide_later(row))
                await asyncio.sleep(self.habits.poll)
        finally:
            await self.aclose()

    def _spawn(self, coro: Any, group: set[asyncio.Task[None]] | None = None) -> None:
        task = asyncio.create_task(coro)
        for tasks in (self._tasks, group if group is not None else self._tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait for the undos already decided on (so none is cut off half-way)."""
        if self._undos:
            await asyncio.wait(list(self._undos), timeout=timeout)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def decision_for(self, row: dict[str, Any]) -> tuple[str, str | None, str | None]:
        """(`approve` | `reject`, comment, route choice) for a pending review row."""
        h, rng = self.habits, self.rng
        if row["kind"] == "route":
            names = [c.get("name") for c in _candidates(row) if c.get("name")]
            if rng.random() < h.reject_route:
                return "reject", "none of these fit; I will handle it by hand", None
            if len(names) > 1 and rng.random() < h.override:
                best = _best(row)
                others = [n for n in names if n != best] or names
                return "approve", "better fit elsewhere", rng.choice(others)
            return "approve", None, None
        pattern = row.get("pattern") or ""
        if any(pattern.startswith(p) for p in h.always_approve) or rng.random() < h.approve:
            return "approve", None, None
        return "reject", "not now", None

    async def _decide_later(self, row: dict[str, Any]) -> None:
        from engine import reviews

        await asyncio.sleep(self.rng.uniform(*self.habits.delay))
        decision, comment, choice = self.decision_for(row)
        try:
            await reviews.adecide(
                self.engine.store, row["id"], decision, REVIEWER, comment, choice=choice
            )
        except Conflict:  # decided meanwhile: by a person, a timeout or a learned approval
            self.decisions["lost"] += 1
        except FlowdeckError as e:
            log.warning("demo operator: review %s: %s", row["id"], e)
            self.decisions["error"] += 1
        else:
            outcome = (
                "overridden" if choice else ("approved" if decision == "approve" else "rejected")
            )
            self.decisions[outcome] += 1

    # ------------------------------------------------------------------ undo

    def on_run_end(self, example: Example, run: RunExecution, status: RunStatus) -> None:
        """Pacer callback: undo every `undo_every`-th run that left undoable actions."""
        if self.habits.undo_every <= 0:
            return
        if not any(st.spec.destructive and st.spec.undo for st in run.steps.values()):
            return
        if not any(
            st.spec.undo is not None and st.status.value == "succeeded" for st in run.steps.values()
        ):
            return
        self._undoable_runs += 1
        if self._undoable_runs % self.habits.undo_every == 0:
            self._spawn(self._undo_later(run.run_id), self._undos)

    async def _undo_later(self, run_id: str) -> None:
        await asyncio.sleep(self.rng.uniform(*self.habits.undo_delay))
        try:
            results = await self.engine.undo.undo_run(run_id, actor=REVIEWER)
        except FlowdeckError as e:
            log.warning("demo operator: undo of run %s: %s", run_id, e)
            self.undone["refused"] += 1
            return
        for result in results:
            self.undone[result.outcome] += 1


def _pending(db: Any) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in db.query(
            "SELECT id, kind, pattern, candidates, confidence FROM reviews "
            "WHERE status = 'pending' ORDER BY id LIMIT 200"
        )
    ]


def _candidates(row: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    raw = row.get("candidates")
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return []
    return [c for c in value or [] if isinstance(c, dict)]


def _best(row: dict[str, Any]) -> str | None:
    cands = _candidates(row)
    if not cands:
        return None
    return max(cands, key=lambda c: float(c.get("confidence") or 0)).get("name")
