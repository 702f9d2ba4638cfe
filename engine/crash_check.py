"""The `crash_check` step hook: ask before acting again on a step found in flight after a crash.

`Engine.resume` gives such a step a `CrashQuestion` (engine/recovery.py says which steps: the
destructive ones and those marked `idempotent: false`). This hook, first in `Engine.hooks`,
opens the question as a review through the review machinery (`engine.reviews.open_and_wait`:
the step waits in `waiting_review` without holding a slot, decisions come from any process),
then applies the answer: `rerun` lets the action go ahead, `done` ends the step succeeded with
output `{}` without calling anything (`SkipAction`), a rejection ends it `rejected`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import recovery
from engine.errors import ErrorClass, StepError
from engine.runner import SkipAction, StepHook

if TYPE_CHECKING:
    from engine.agents import Agent
    from engine.runner import Engine, RunExecution, StepState


class CrashCheck(StepHook):
    """Opens and applies crash_check reviews."""

    def __init__(self, engine: Engine):
        self.engine = engine
        """The engine whose resumed steps this hook asks about."""

    def applies(self, run: RunExecution, st: StepState) -> bool:
        return st.crash_check is not None

    async def before(
        self, run: RunExecution, st: StepState, agent: Agent, params: dict[str, Any]
    ) -> dict[str, Any]:
        question = st.crash_check
        assert question is not None
        row = await self.engine.reviews.open_and_wait(
            run,
            st,
            kind=recovery.CRASH_CHECK,
            reason=question.reason,
            params=params,
            candidates=list(recovery.CHOICES),
            agent=agent.agent_id,
            operation=st.operation,
            reuse=question.reuse,
        )
        st.crash_check = None
        who = row.get("reviewer") or "?"
        if row["status"] == "approved":
            action = row.get("choice") or recovery.RERUN
            run.events.emit(
                "step.recovered", run.run_id, st.id, action=action, review_id=row["id"],
                reviewer=who,
            )  # fmt: skip
            if action == "done":
                raise SkipAction({})
            return params
        comment = f": {row['comment']}" if row.get("comment") else ""
        raise StepError(
            f"in flight at a crash and not repeated: crash check {row['status']} by {who}{comment}",
            ErrorClass.REJECTED if row["status"] == "rejected" else ErrorClass.CANCELLED,
        )
