"""Crash-safe resume: what happens to a step that was in flight when its engine died.

A step whose row still says `running` when a run is resumed had an attempt in flight: the engine
was killed (or forced to stop) after the attempt started and before its outcome was written.
Whether the action happened is unknown, so resume decides by what the step is (`crash_action`):

| step | resume |
| --- | --- |
| `destructive: true` | never repeated blindly: a `crash_check` review asks the operator |
| `idempotent: false` | the author said repeating is unsafe: a `crash_check` review |
| `idempotent: true`, or idempotent by default (shell, python, http GET/HEAD/PUT/DELETE/OPTIONS) | run again |
| not idempotent by default (http POST/PATCH), not destructive | run again with the same `Idempotency-Key` (`run_id:step_id`), so a server that honours the key does it once |

The attempt that was in flight is kept as a row with status `interrupted`
(`ErrorClass.INTERRUPTED`); numbering continues after it. For steps that get a review, the write
saying the attempt starts is committed before the call (`needs_durable_start`), so a crash can
never hide a call that was made.

A `crash_check` review is a row of `reviews` with `kind = 'crash_check'` and candidates
`rerun` / `done`, opened and waited on through `engine.reviews` like any gate (so `flowdeck
reviews`, `flowdeck approve/reject`, the console and the HTTP API all see and decide it); its
decision (engine/crash_check.py applies it):

- approve (choice `rerun`, the default): it did not happen, or repeating is fine: run it again;
- approve with choice `done`: it happened: the step succeeds with output `{}` and the run goes on
  (an undo entry of it stays `prepared`; `flowdeck undo` re-checks such entries);
- reject: do not repeat it: the step ends `rejected` (dependents skipped, run fails unless
  the step is optional).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite_utils

    from engine.agents.base import Agent
    from engine.models import StepSpec

RERUN = "rerun"
"""Run the step again (it is idempotent)."""
REPEAT = "repeat"
"""Run the step again with the same Idempotency-Key (not idempotent, not destructive)."""
ASK = "ask"
"""Open a crash_check review."""

CRASH_CHECK = "crash_check"
"""`reviews.kind` of the question resume asks about an in-flight destructive step."""
CHOICES = ("rerun", "done")
"""What an approval of a crash_check may say (`choice`); `rerun` when not given."""


def needs_durable_start(step: StepSpec) -> bool:
    """Steps whose start must be committed before the call: the ones resume asks about."""
    return step.destructive or step.idempotent is False


def crash_action(step: StepSpec, agent: Agent | None, params: dict[str, Any]) -> tuple[str, str]:
    """What resume does with `step` found in flight, and why (for the event and the review)."""
    if step.destructive:
        return ASK, "destructive step: never repeated without asking"
    if step.idempotent is False:
        return ASK, "marked idempotent: false"
    if step.idempotent:
        return RERUN, "marked idempotent: true"
    if agent is None or agent.is_idempotent(params):
        kind = agent.kind if agent is not None else "step"
        return RERUN, f"{kind} step is idempotent by default"
    return REPEAT, (
        "not idempotent by default and not destructive: repeated with the same "
        "Idempotency-Key, which servers that honour it do only once"
    )


def question(step_id: str, operation: str | None, attempt: int, why: str) -> str:
    what = f" ({operation})" if operation else ""
    return (
        f"step {step_id}{what} was in flight (attempt {attempt}) when its engine stopped; did it "
        f"happen? {why}. Approve to run it again, approve with choice 'done' if it already "
        f"happened, reject to stop here."
    )


# --------------------------------------------------------------------------- review rows


@dataclass(slots=True, frozen=True)
class CrashQuestion:
    """What resume asks the operator about one step (engine/crash_check.py asks it)."""

    reason: str
    """The question, shown to the reviewer."""
    reuse: bool
    """Wait on the step's existing crash_check review (asked by an earlier resume) instead of
    opening a new one."""


def latest_crash_checks(db: sqlite_utils.Database, run_id: str) -> dict[str, dict[str, Any]]:
    """The newest crash_check review of each step of a run."""
    rows = db.query(
        "SELECT * FROM reviews WHERE run_id=? AND kind=? ORDER BY id", [run_id, CRASH_CHECK]
    )
    return {r["step_id"]: r for r in rows}
