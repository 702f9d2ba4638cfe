"""Routing by confidence: a `route:` step picks one of several candidates.

```yaml
triage: {agent: llm, with: {prompt: "..."}}        # answers {"route": "tracker", "confidence": 0.83}
dispatch:
  needs: [triage]
  route:
    pick: "${{ steps.triage.output.route }}"
    confidence: "${{ steps.triage.output.confidence }}"
    threshold: 0.8
    candidates:
      - {name: tracker, target: file_ticket}
      - {name: chat, target: post_note, confidence: 0.3}
file_ticket: {agent: github, needs: [dispatch], with: {...}}
post_note: {agent: chat, needs: [dispatch], with: {...}}
```

Each candidate gets a score 0..1: the route's `confidence` if `pick` names it, else its own
`confidence` (a number, an expression, or `learned` = the target agent's success rate on the
operation, see engine/preferences.py), else 0. The highest score wins (ties: the first listed).
When the best score is below `threshold`, when the step's `review.when` asks for it
(`always`, `destructive`, `confidence < X` on the best score), or when an upstream answer
cannot be used (a pick that is no candidate, a confidence that is not a number), a review of
kind `route` shows every candidate with its score and the operator picks one
(`flowdeck approve ID --choice NAME`; a plain approve takes the best; reject ends the step
`rejected`). `review.timeout` / `on_timeout` apply to that review.

The chosen candidate's target runs: a step target becomes ready (it must need the route step)
and the other step targets are skipped, with their dependents; an agent target performs the
route step's own `with`. Without an agent target the step's output is
`{route, target, confidence, best, overridden, reviewer, candidates}`.

Every decision is stored in `routes` (one row per route step of a run, with all candidates'
scores); `route_stats` gives per route: count, avg/min/max confidence, how often it was chosen
over the best one and how often it lost although best.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from engine import preferences
from engine.errors import ErrorClass, StepError
from engine.expressions import ExpressionError, render
from engine.gates import confidence_value, raise_for, upstream_values
from engine.models import RouteCandidate, StepStatus

if TYPE_CHECKING:
    import sqlite_utils

    from engine.runner import Engine, RunExecution, StepState

ROUTE_FORGET = "DELETE FROM routes WHERE run_id = ? AND step_id = ?"
"""A route step decides again after a resume: its earlier decision is replaced."""
ROUTE_INSERT = (
    "INSERT INTO routes(run_id, step_id, created_at, workflow, chosen, best, "
    "threshold, candidates, overridden, reviewer, confidence, best_confidence, review_id) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_WHEN_RE = re.compile(r"\s*confidence\s*(<=|<)\s*([0-9.]+)\s*")


class Router:
    """Runs `route:` steps for an engine (`Engine.router`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        """The engine whose route steps this runs."""

    async def run(self, run: RunExecution, st: StepState) -> Any:
        """Score, maybe ask, record, skip the losers, then act through the winner."""
        route = st.spec.route
        assert route is not None
        scores, notes = await self.score(run, st)
        best = max(scores, key=lambda c: c["confidence"])  # max keeps the first of equals
        reasons = list(notes)
        if best["confidence"] < route.threshold:
            reasons.append(
                f"best candidate {best['name']} scored {best['confidence']:g} "
                f"< threshold {route.threshold:g}"
            )
        review = st.spec.review
        if review is not None and not reasons:
            m = _WHEN_RE.fullmatch(review.when)
            if review.when == "always" or (review.when == "destructive" and st.spec.destructive):
                reasons.append("every routing decision of this step is confirmed")
            elif m is not None:
                limit = float(m.group(2))
                c = best["confidence"]
                if (c <= limit) if m.group(1) == "<=" else (c < limit):
                    reasons.append(f"best confidence {c:g} {m.group(1)} {limit:g}")
        chosen, decided = best, None
        if reasons:
            reason = "; ".join(reasons)
            if review is not None and review.reason:
                reason = f"{review.reason} ({reason})"
            decided = await self.engine.reviews.open_and_wait(
                run,
                st,
                kind="route",
                reason=reason,
                params={"route": {"threshold": route.threshold}},
                upstream={
                    **upstream_values(route.pick, run.scope),
                    **upstream_values(route.confidence, run.scope),
                    **upstream_values([c.confidence for c in route.candidates], run.scope),
                },
                confidence=best["confidence"],
                candidates=scores,
                timeout=review.timeout if review is not None else None,
                on_timeout=review.on_timeout if review is not None else "reject",
            )
            raise_for(decided)
            if decided.get("choice"):
                chosen = next(c for c in scores if c["name"] == decided["choice"])
        overridden = chosen["name"] != best["name"]
        reviewer = decided["reviewer"] if decided is not None else None
        now = self.engine.clock()
        run.store.execute(ROUTE_FORGET, (run.run_id, st.id))
        run.store.execute(
            ROUTE_INSERT,
            (run.run_id, st.id, now, run.spec.name, chosen["name"], best["name"], route.threshold,
             json.dumps(scores), int(overridden), reviewer, chosen["confidence"],
             best["confidence"], decided["id"] if decided is not None else None),
        )  # fmt: skip
        run.events.emit(
            "route.chosen",
            run.run_id,
            st.id,
            route=chosen["name"],
            target=chosen["target"],
            confidence=chosen["confidence"],
            best=best["name"],
            overridden=overridden,
            reviewer=reviewer,
        )
        for cand in scores:
            target = run.steps.get(cand["target"])
            if (
                target is not None
                and cand["target"] != chosen["target"]
                and target.status is StepStatus.PENDING
            ):
                run._set(target, StepStatus.SKIPPED, reason=f"route {st.id} chose {chosen['name']}")
                run._skip_dependents(target)
        target = chosen["target"]
        if target not in run.spec.steps and target in run.spec.agents:
            return await run.act(st, run.agent_named(target))
        run._set(st, StepStatus.RUNNING, route=chosen["name"])
        return {
            "route": chosen["name"],
            "target": target,
            "confidence": chosen["confidence"],
            "best": best["name"],
            "overridden": overridden,
            "reviewer": reviewer,
            "candidates": scores,
        }

    async def score(
        self, run: RunExecution, st: StepState
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Every candidate as `{name, target, confidence, source}` plus notes on upstream
        answers that could not be used (a note makes the route ask a human)."""
        route = st.spec.route
        assert route is not None
        notes: list[str] = []
        picked: str | None = None
        pick_score = 1.0
        if route.pick is not None:
            value = self._render(route.pick, run, "route.pick")
            keys = {c.key: c.key for c in route.candidates}
            keys.update({c.target: c.key for c in route.candidates if c.target not in keys})
            if isinstance(value, str) and value in keys:
                picked = keys[value]
            else:
                names = ", ".join(c.key for c in route.candidates)
                notes.append(f"upstream picked {json.dumps(value)[:60]}, not a candidate ({names})")
            if route.confidence is not None:
                raw = (
                    self._render(route.confidence, run, "route.confidence")
                    if isinstance(route.confidence, str)
                    else route.confidence
                )
                score = confidence_value(raw)
                if score is None:
                    notes.append(f"upstream confidence {json.dumps(raw)[:40]} is not 0..1")
                    pick_score = 0.0
                else:
                    pick_score = score
        scores = []
        for cand in route.candidates:
            if cand.key == picked:
                value, source = pick_score, "pick"
            else:
                value, source = await self._candidate_score(run, st, cand, notes)
            scores.append(
                {"name": cand.key, "target": cand.target, "confidence": round(value, 4),
                 "source": source}
            )  # fmt: skip
        return scores, notes

    async def _candidate_score(
        self, run: RunExecution, st: StepState, cand: RouteCandidate, notes: list[str]
    ) -> tuple[float, str]:
        conf = cand.confidence
        if conf is None:
            return 0.0, "none"
        if isinstance(conf, (int, float)):
            return float(conf), "fixed"
        if conf == "learned":
            agent_id, operation = self._operation_of(run, st, cand.target)
            if agent_id is None:
                return preferences.AGENT_PRIOR, "learned"
            now = self.engine.clock()
            found = await run.store.aread(
                lambda db: preferences.agent_score(db, agent_id, operation, now)
            )
            return found["score"], "learned"
        raw = self._render(conf, run, f"candidate {cand.key}")
        value = confidence_value(raw)
        if value is None:
            notes.append(f"candidate {cand.key}: confidence {json.dumps(raw)[:40]} is not 0..1")
            return 0.0, "invalid"
        return value, "expression"

    def _operation_of(
        self, run: RunExecution, st: StepState, target: str
    ) -> tuple[str | None, str]:
        """The agent and operation the target would run (for learned scores)."""
        if target in run.spec.steps:
            step = run.spec.steps[target]
            agent_id, params = step.agent, step.with_
        else:
            agent_id, params = target, st.spec.with_
        if not agent_id or agent_id not in run.spec.agents:
            return None, ""
        try:
            params = render(params, run.scope)
        except ExpressionError:
            pass  # agents name operations of unrendered parameters too (ids become `*`)
        return agent_id, run.agent_named(agent_id).operation(params)

    @staticmethod
    def _render(expr: str, run: RunExecution, what: str) -> Any:
        try:
            return render(expr, run.scope)
        except ExpressionError as e:
            raise StepError(f"{what}: {e}", ErrorClass.VALIDATION) from None


# --------------------------------------------------------------------------- reads


def route_stats(db: sqlite_utils.Database, *, workflow: str | None = None) -> list[dict[str, Any]]:
    """Per route (workflow, route step, chosen candidate): how often it was chosen, the
    avg/min/max confidence it was chosen with, how often an operator chose it over the best
    (`overridden`), how often it was best but the operator chose another (`overridden_away`),
    and how many of its decisions went through a review."""
    where = "WHERE workflow = :workflow" if workflow else ""
    params = {"workflow": workflow}
    rows = list(
        db.query(
            f"""
            SELECT workflow, step_id, chosen AS route, count(*) AS count,
                   avg(confidence) AS avg_confidence, min(confidence) AS min_confidence,
                   max(confidence) AS max_confidence, sum(overridden) AS overridden,
                   sum(review_id IS NOT NULL) AS reviewed
            FROM routes {where} GROUP BY workflow, step_id, chosen
            ORDER BY workflow, step_id, count DESC, chosen
            """,
            params,
        )
    )
    away = {
        (r["workflow"], r["step_id"], r["best"]): r["n"]
        for r in db.query(
            f"SELECT workflow, step_id, best, count(*) AS n FROM routes {where} "
            f"{'AND' if where else 'WHERE'} overridden = 1 GROUP BY workflow, step_id, best",
            params,
        )
    }
    for r in rows:
        r["avg_confidence"] = (
            round(r["avg_confidence"], 4) if r["avg_confidence"] is not None else None
        )
        r["overridden_away"] = away.pop((r["workflow"], r["step_id"], r["route"]), 0)
    for (wf, step, best), n in away.items():  # best routes that were never chosen
        rows.append(
            {"workflow": wf, "step_id": step, "route": best, "count": 0, "avg_confidence": None,
             "min_confidence": None, "max_confidence": None, "overridden": 0, "reviewed": 0,
             "overridden_away": n}
        )  # fmt: skip
    return rows


def list_routes(
    db: sqlite_utils.Database, *, run_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Routing decisions newest first, candidates parsed."""
    where = "WHERE run_id = :run_id" if run_id else ""
    rows = db.query(
        f"SELECT * FROM routes {where} ORDER BY id DESC LIMIT :limit",
        {"run_id": run_id, "limit": limit},
    )
    out = []
    for r in rows:
        r = dict(r)
        r["candidates"] = json.loads(r["candidates"] or "[]")
        r["overridden"] = bool(r["overridden"])
        out.append(r)
    return out
