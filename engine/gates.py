"""Review gates in the engine: open a review, wait for its decision without a thread, go on.

`ReviewGate` is the `StepHook` (registered by `Engine.__init__`) that pauses a step with
`review:` before its action:

```yaml
close_pr:
  agent: github
  destructive: true
  with: {method: POST, path: "/pulls/${{ inputs.pr }}/close"}
  review: {when: always, timeout: 3600, on_timeout: reject, reason: "closes a PR"}
```

`when` is `always`, `destructive` (only if the step is destructive), `never`, or
`confidence < X` / `confidence <= X` with the confidence from `review.confidence` (an expression
such as `${{ steps.triage.output.confidence }}`; a confidence that cannot be read opens the
review). A pattern with learned auto-approval (engine/preferences.py) is approved at once by
reviewer `preference` unless the step says `learn: false`.

Waiting: the review row is committed first, the step goes to `waiting_review` and gives its
concurrency slots back (other steps run meanwhile), then its task awaits an `asyncio.Future`
keyed by review id. The future is resolved by `ReviewGate.decide` in this process at once, or
by the watcher, which every `POLL_SECONDS` reads the waited rows that are no longer pending
(decisions made by other processes) and applies deadlines that passed (`expires_at` on the
engine's clock). Once approved the step takes its slots back and acts; rejected, it ends
`rejected` (its dependents are skipped; the run fails unless the step is `optional`); timed out
with `on_timeout: fail` it ends `failed` (error class `timeout`).

Interrupted (shutdown, signal) while waiting, the review stays pending and the step goes back to
`pending`; `Engine.resume` runs the hook again, which finds that review (`reviews.find_review`)
and waits on it, or uses its decision if one was made meanwhile. A cancelled step or run closes
its pending review (`cancelled`).

Other engine modules reuse the waiting machinery: `await engine.reviews.open_and_wait(run, st,
kind="crash_check", reason="did this destructive step happen?")` returns the decided row.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import preferences, reviews
from engine.errors import ErrorClass, StepError
from engine.expressions import ExpressionError, iter_refs, render
from engine.models import StepStatus
from engine.runner import StepHook

if TYPE_CHECKING:
    from engine.agents import Agent
    from engine.runner import Engine, RunExecution, StepState

log = logging.getLogger("flowdeck.reviews")

POLL_SECONDS = 0.2
"""How often waited reviews are checked for decisions from other processes and deadlines."""
_WHEN_RE = re.compile(r"\s*confidence\s*(<=|<)\s*([0-9.]+)\s*")


@dataclass(slots=True)
class _Waiter:
    fut: asyncio.Future
    expires_at: float | None


def confidence_value(value: Any) -> float | None:
    """`value` as a confidence 0..1, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and 0 <= value <= 1:
        return float(value)
    return None


def upstream_values(spec_value: Any, scope: dict[str, Any]) -> dict[str, Any]:
    """`{expression: value}` for every `${{ ... }}` reference inside `spec_value`."""
    out: dict[str, Any] = {}
    try:
        refs = list(iter_refs(spec_value))
    except ExpressionError:
        return out
    for ref in refs:
        if ref.text in out:
            continue
        try:
            out[ref.text] = render("${{ " + ref.text + " }}", scope)
        except ExpressionError as e:
            out[ref.text] = f"<{e}>"
    return out


def raise_for(row: dict[str, Any]) -> None:
    """Turn a decided review that does not let the step go on into the step's error."""
    status = row["status"]
    if status == "approved":
        return
    comment = f": {row['comment']}" if row.get("comment") else ""
    if status == "rejected":
        raise StepError(f"rejected by {row['reviewer']}{comment}", ErrorClass.REJECTED)
    if status == "expired":
        raise StepError(f"review {row['id']} timed out{comment}", ErrorClass.TIMEOUT)
    raise StepError(f"review {row['id']} {status}{comment}", ErrorClass.CANCELLED)


class ReviewGate(StepHook):
    """Opens reviews for steps with `review:`, waits for decisions, applies them."""

    def __init__(self, engine: Engine):
        self.engine = engine
        """The engine whose steps this gate pauses."""
        self._waiters: dict[int, _Waiter] = {}
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------------ the hook

    def applies(self, run: RunExecution, st: StepState) -> bool:
        review = st.spec.review
        return (
            review is not None
            and st.spec.route is None
            and review.when != "never"
            and (review.when != "destructive" or st.spec.destructive)
        )

    async def before(
        self, run: RunExecution, st: StepState, agent: Agent, params: dict[str, Any]
    ) -> dict[str, Any]:
        review = st.spec.review
        assert review is not None
        confidence = reason = None
        if review.confidence is not None:
            try:
                confidence = confidence_value(render(review.confidence, run.scope))
            except ExpressionError as e:
                reason = f"confidence unknown ({e})"
            else:
                if confidence is None:
                    reason = "confidence unknown (not a number from 0 to 1)"
        m = _WHEN_RE.fullmatch(review.when)
        if m is not None:
            op, limit = m.group(1), float(m.group(2))
            if confidence is not None:
                below = confidence <= limit if op == "<=" else confidence < limit
                if not below:
                    return params
                reason = f"confidence {confidence:g} {op} {limit:g}"
            elif reason is None:
                reason = "confidence unknown (review.confidence is not set)"
        if review.reason:
            reason = f"{review.reason} ({reason})" if reason else review.reason
        elif reason is None:
            what = "destructive step" if st.spec.destructive else "step"
            reason = f"{what} {st.id}: {agent.agent_id} {st.operation}"
        row = await self.open_and_wait(
            run,
            st,
            kind="gate",
            reason=reason,
            params=params,
            upstream={
                **upstream_values(st.spec.with_, run.scope),
                **upstream_values(review.confidence, run.scope),
            },
            confidence=confidence,
            timeout=review.timeout,
            on_timeout=review.on_timeout,
            agent=agent.agent_id,
            operation=st.operation,
            learn=review.learn,
        )
        raise_for(row)
        return params

    # ------------------------------------------------------------------ open and wait

    async def open_and_wait(
        self,
        run: RunExecution,
        st: StepState,
        *,
        kind: str,
        reason: str,
        params: Any = None,
        upstream: dict[str, Any] | None = None,
        confidence: float | None = None,
        candidates: list[dict[str, Any]] | None = None,
        timeout: float | None = None,
        on_timeout: str = "reject",
        agent: str | None = None,
        operation: str | None = None,
        learn: bool = False,
        reuse: bool = True,
    ) -> dict[str, Any]:
        """Open a review of `kind` for step `st` and wait for its decision; returns the
        decided row (`status` approved, rejected, expired or cancelled).

        With `reuse` (default) a review of this kind that the step already has (a resumed run)
        is waited on, or its decision returned, instead of opening a second one. `learn`
        allows auto-approval by a learned preference (gate reviews with an agent). While
        waiting, the step is `waiting_review` and holds no concurrency slot; an approval
        takes the slots back before returning.
        """
        store = self.engine.store
        row = None
        if reuse:
            row = await store.aread(lambda db: reviews.find_review(db, run.run_id, st.id, kind))
            if row is not None and row["status"] == "cancelled":
                row = None
        if row is None:
            now = self.engine.clock()
            pattern = preferences.pattern_for(agent, operation) if kind == "gate" else None
            auto = None
            if learn and pattern:
                auto = await store.aread(lambda db: preferences.auto_approval(db, pattern))
            new = {
                "run_id": run.run_id,
                "step_id": st.id,
                "kind": kind,
                "workflow": run.spec.name,
                "description": st.spec.description or None,
                "destructive": st.spec.destructive,
                "learn": learn,
                "agent": agent,
                "operation": operation,
                "pattern": pattern,
                "params": params if params is not None else {},
                "upstream": upstream or {},
                "reason": reason,
                "confidence": confidence,
                "candidates": candidates,
                "timeout": timeout,
                "on_timeout": on_timeout,
                "expires_at": now + timeout if timeout is not None else None,
            }
            if auto is not None:
                new.update(
                    status="approved",
                    reviewer="preference",
                    comment=auto,
                    decided_at=now,
                    auto=True,
                    expires_at=None,
                )
            row = await store.run(lambda db: reviews.insert(db, new, now))
        if row["status"] != "pending":
            return row
        return await self._wait(run, st, row)

    async def _wait(self, run: RunExecution, st: StepState, row: dict[str, Any]) -> dict[str, Any]:
        review_id = row["id"]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[review_id] = _Waiter(fut, row["expires_at"])
        if self._watcher is None or self._watcher.done():
            self._watcher = self.engine.spawn(self._watch(), "flowdeck-reviews")
        if st.status is not StepStatus.WAITING_REVIEW:
            run._set(
                st,
                StepStatus.WAITING_REVIEW,
                review_id=review_id,
                review_kind=row["kind"],
                reason=row["reason"],
                expires_at=row["expires_at"],
            )
        held = st.slotted  # False when called outside the step's own task (nothing to give)
        run.release_slot(st)
        try:
            decided = await fut
        except asyncio.CancelledError:
            if run.cancelling or not run.interrupting:
                reason = "run cancelled" if run.cancelling else "step cancelled"
                now = self.engine.clock()
                self.engine.store.call(lambda db: reviews.close_in(db, review_id, reason, now))
            raise
        finally:
            self._waiters.pop(review_id, None)
        if decided["status"] == "approved" and held:
            await run.acquire_slot(st)
        return decided

    def _resolve(self, row: dict[str, Any]) -> None:
        waiter = self._waiters.get(row["id"])
        if waiter is not None and not waiter.fut.done() and row["status"] != "pending":
            waiter.fut.set_result(row)

    async def _watch(self) -> None:
        """Poll the waited reviews while there are any: decisions written by other processes,
        deadlines that passed. Ends when nothing is waited on."""
        store = self.engine.store
        while self._waiters:
            await asyncio.sleep(POLL_SECONDS)
            try:
                ids = [i for i, w in self._waiters.items() if not w.fut.done()]
                if not ids:
                    continue
                for row in await store.aread(lambda db, ids=ids: reviews.decided(db, ids)):
                    self._resolve(row)
                now = self.engine.clock()
                for review_id in ids:
                    w = self._waiters.get(review_id)
                    if w is None or w.fut.done() or w.expires_at is None or w.expires_at > now:
                        continue
                    row = await store.run(
                        lambda db, i=review_id, t=now: reviews.expire_in(db, i, t)
                    )
                    if row is not None:
                        self._resolve(row)
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked database must not stop the watcher
                log.exception("review watcher: poll failed")

    # ------------------------------------------------------------------ decisions

    async def decide(
        self,
        review_id: int | str,
        decision: str,
        reviewer: str,
        comment: str | None = None,
        *,
        choice: str | None = None,
    ) -> dict[str, Any]:
        """`reviews.adecide` plus waking the step of this engine that waits on it."""
        row = await reviews.adecide(
            self.engine.store,
            review_id,
            decision,
            reviewer,
            comment,
            choice=choice,
            now=self.engine.clock(),
        )
        self._resolve(row)
        return row

    @property
    def waiting(self) -> list[int]:
        """Ids of the reviews steps of this engine wait on."""
        return list(self._waiters)
