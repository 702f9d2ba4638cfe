"""Learned approvals and preferred agents.

**Approvals.** Every human decision on a review gate is counted against the operation's pattern
`AGENT:OPERATION` (e.g. `github:POST /pulls/*/close`; the operation comes from the agent, with
ids replaced by `*`). A pattern turns `auto` when its evidence window holds at least
`MIN_DECISIONS` decisions and the lower bound of the Wilson score interval (95 %, z = 1.96) of
its approval rate is at least `THRESHOLD`; new reviews of it are then approved by reviewer
`preference` with the reason written out. With all decisions approvals the bound is
n / (n + z²), so the rule needs 35 approvals in a row before it trusts a pattern.

A rejection of an `auto` pattern (a review opened before it turned auto, or a step with
`review: {learn: false}`, which is never auto-approved but still counts) drops it to `manual`
and restarts its evidence window with that rejection in it. Decisions by `timeout` and by
`preference` itself are never counted. `flowdeck prefs reset PATTERN` forgets a pattern.

**Preferred agents.** The success rate of each agent on each operation (the task type) comes
from the `attempts` table over the last `AGENT_WINDOW` seconds; the preferred agent of an
operation is the one with the highest rate among those with at least `AGENT_MIN_CALLS`
finished attempts. Routing uses it as a candidate score (`confidence: learned`).

The functions taking `db` run in the store's writer thread (`record`, `reset`) or in a reader
(everything else).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite_utils


MIN_DECISIONS = 10
"""Decisions a pattern needs before it may be auto-approved."""
THRESHOLD = 0.9
"""Lowest Wilson lower bound of the approval rate that auto-approves."""
Z = 1.96
"""z of the Wilson interval (95 % two-sided)."""
AGENT_MIN_CALLS = 10
"""Finished attempts an agent needs on an operation before its success rate counts."""
AGENT_PRIOR = 0.5
"""Score of an agent with fewer calls than that (`confidence: learned`)."""
AGENT_WINDOW = 30 * 86400.0
"""Seconds of attempts that count for agent success rates."""

AUTOMATIC_REVIEWERS = frozenset({"preference", "timeout", "engine"})
"""Reviewer names the engine uses for decisions nobody made by hand."""


def pattern_for(agent_id: str | None, operation: str | None) -> str | None:
    """`AGENT:OPERATION`, the key decisions are learned under (None without an agent)."""
    if not agent_id:
        return None
    return f"{agent_id}:{operation or '?'}"


def wilson_lower_bound(successes: int, n: int, z: float = Z) -> float:
    """Lower bound of the Wilson score interval of `successes` out of `n` (0 when n is 0)."""
    if n <= 0:
        return 0.0
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def qualifies(approvals: int, rejections: int) -> bool:
    """Whether this evidence auto-approves under the rule above."""
    n = approvals + rejections
    return n >= MIN_DECISIONS and wilson_lower_bound(approvals, n) >= THRESHOLD


def explain(approvals: int, rejections: int) -> str:
    """The reason recorded on an auto-approval."""
    n = approvals + rejections
    bound = wilson_lower_bound(approvals, n)
    return (
        f"auto-approved: {approvals} of {n} approvals "
        f"(Wilson 95% lower bound {bound:.3f} >= {THRESHOLD:g})"
    )


def record(db: sqlite_utils.Database, pattern: str, approved: bool, now: float) -> dict[str, Any]:
    """Count one human decision on `pattern` and update its state; returns the new row.

    Runs in the writer (inside the decision's transaction). Writes before it reads so that a
    transaction started by this call never has to upgrade a stale read snapshot.
    """
    db.execute(
        "INSERT INTO preferences(pattern, created_at, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(pattern) DO NOTHING",
        (pattern, now, now),
    )
    row = next(iter(db.query("SELECT * FROM preferences WHERE pattern = ?", [pattern])))
    approvals = row["approvals"] + (1 if approved else 0)
    rejections = row["rejections"] + (0 if approved else 1)
    win_a = row["window_approvals"] + (1 if approved else 0)
    win_r = row["window_rejections"] + (0 if approved else 1)
    state, auto_since, revoked_at = row["state"], row["auto_since"], row["revoked_at"]
    if not approved and state == "auto":
        state, auto_since, revoked_at = "manual", None, now
        win_a, win_r = 0, 1
    elif qualifies(win_a, win_r):
        if state != "auto":
            state, auto_since = "auto", now
    elif state == "auto":  # cannot happen with one more approval, kept for safety
        state, auto_since = "learning", None
    db.execute(
        "UPDATE preferences SET approvals=?, rejections=?, window_approvals=?, "
        "window_rejections=?, state=?, auto_since=?, revoked_at=?, updated_at=? WHERE pattern=?",
        (approvals, rejections, win_a, win_r, state, auto_since, revoked_at, now, pattern),
    )
    row.update(
        approvals=approvals,
        rejections=rejections,
        window_approvals=win_a,
        window_rejections=win_r,
        state=state,
        auto_since=auto_since,
        revoked_at=revoked_at,
        updated_at=now,
    )
    return row


def auto_approval(db: sqlite_utils.Database, pattern: str | None) -> str | None:
    """The auto-approval reason when `pattern` is auto-approved now, else None (a read)."""
    if not pattern:
        return None
    row = db.execute(
        "SELECT state, window_approvals, window_rejections FROM preferences WHERE pattern = ?",
        [pattern],
    ).fetchone()
    if row is None or row[0] != "auto" or not qualifies(row[1], row[2]):
        return None
    return explain(row[1], row[2])


def _describe(row: dict[str, Any]) -> dict[str, Any]:
    n = row["window_approvals"] + row["window_rejections"]
    row["decisions"] = row["approvals"] + row["rejections"]
    row["lower_bound"] = round(wilson_lower_bound(row["window_approvals"], n), 4)
    if row["state"] == "auto":
        row["detail"] = explain(row["window_approvals"], row["window_rejections"])
    else:
        need = max(0, MIN_DECISIONS - n)
        streak = 0
        while not qualifies(row["window_approvals"] + streak, row["window_rejections"]):
            streak += 1
        row["detail"] = (
            f"{row['window_approvals']} of {n} approved"
            + (" since revoked" if row["revoked_at"] else "")
            + f"; auto after {max(need, streak)} more approvals in a row"
        )
    return row


def list_preferences(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every pattern with its counts, state, Wilson lower bound and a one-line detail."""
    rows = db.query(
        "SELECT pattern, approvals, rejections, window_approvals, window_rejections, state, "
        "created_at, updated_at, auto_since, revoked_at FROM preferences "
        "ORDER BY state = 'auto' DESC, approvals + rejections DESC, pattern"
    )
    return [_describe(dict(r)) for r in rows]


def get_preference(db: sqlite_utils.Database, pattern: str) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT pattern, approvals, rejections, window_approvals, window_rejections, state, "
            "created_at, updated_at, auto_since, revoked_at FROM preferences WHERE pattern = ?",
            [pattern],
        )
    )
    return _describe(rows[0]) if rows else None


def reset(db: sqlite_utils.Database, pattern: str) -> bool:
    """Forget `pattern` (writer). True if it existed."""
    return db.execute("DELETE FROM preferences WHERE pattern = ?", [pattern]).rowcount > 0


# --------------------------------------------------------------------------- agents


def agent_score(
    db: sqlite_utils.Database, agent: str, operation: str, now: float | None = None
) -> dict[str, Any]:
    """`{agent, operation, calls, succeeded, rate, score}` of `agent` on `operation`; `score`
    is the success rate with at least `AGENT_MIN_CALLS` calls, else `AGENT_PRIOR`."""
    since = (now if now is not None else time.time()) - AGENT_WINDOW
    calls, ok = db.execute(
        "SELECT count(*), coalesce(sum(status = 'succeeded'), 0) FROM attempts "
        "WHERE agent = ? AND started_at >= ? AND operation = ? AND status IN ('succeeded','failed')",
        (agent, since, operation),
    ).fetchone()
    rate = ok / calls if calls else None
    score = rate if calls >= AGENT_MIN_CALLS and rate is not None else AGENT_PRIOR
    return {
        "agent": agent,
        "operation": operation,
        "calls": calls,
        "succeeded": ok,
        "rate": rate,
        "score": round(score, 4),
    }


def preferred_agents(
    db: sqlite_utils.Database, now: float | None = None, min_calls: int = AGENT_MIN_CALLS
) -> list[dict[str, Any]]:
    """Per operation (task type): the agent with the highest success rate among those with
    at least `min_calls` finished attempts, with its rate and how many agents competed."""
    since = (now if now is not None else time.time()) - AGENT_WINDOW
    rows = db.query(
        "SELECT operation, agent, count(*) AS calls, sum(status = 'succeeded') AS succeeded "
        "FROM attempts WHERE started_at >= ? AND status IN ('succeeded','failed') "
        "AND agent IS NOT NULL AND operation IS NOT NULL GROUP BY operation, agent",
        [since],
    )
    best: dict[str, dict[str, Any]] = {}
    competing: dict[str, int] = {}
    for r in rows:
        if r["calls"] < min_calls:
            continue
        op = r["operation"]
        competing[op] = competing.get(op, 0) + 1
        rate = r["succeeded"] / r["calls"]
        cur = best.get(op)
        if cur is None or rate > cur["rate"] or (rate == cur["rate"] and r["calls"] > cur["calls"]):
            best[op] = {"operation": op, "agent": r["agent"], "calls": r["calls"],
                        "succeeded": r["succeeded"], "rate": round(rate, 4)}  # fmt: skip
    out = []
    for op in sorted(best):
        out.append({**best[op], "agents": competing[op]})
    return out
