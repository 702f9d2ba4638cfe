"""Review rows, the one decision function, and the read helpers every surface shares.

A review is a row in `reviews`: what a reviewer needs to decide (step, agent, operation, the
rendered parameters, the upstream values they use, reason, confidence, route candidates) and,
once decided, who decided what and when. Engine code opens reviews and waits on them
(engine/gates.py); everything else decides them through `decide` / `adecide` here: the CLI, the
engine in-process, the HTTP API and the console. A decision is one compare-and-set

    UPDATE reviews SET status=... WHERE id=? AND status='pending' AND (not past its deadline)

in the store's writer, so exactly one decision wins across processes; the loser gets
`Conflict("review N already decided by X at T (approved)")` (exit 4, HTTP 409). The winning
transaction also appends the `review.decided` event and counts the decision for learned
approvals (engine/preferences.py), so nothing is half-written.

Statuses: `pending`; `approved` / `rejected` (by a person, by `preference` for learned
approvals, or by `timeout` when the deadline passed with `on_timeout: approve|reject`);
`expired` (deadline passed with `on_timeout: fail`); `cancelled` (its run or step was cancelled).
A deadline (`expires_at`) is enforced by whoever looks first: the engine waiting on it, or a
decision arriving late, which applies the timeout outcome and reports the conflict.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from engine import preferences
from engine.errors import Conflict, InputError, NotFound
from engine.store import Store

if TYPE_CHECKING:
    import sqlite_utils

KINDS = ("gate", "route", "crash_check")
"""Kinds of review: a gate before a step's action, a routing choice, a crash check (did this
destructive step happen?). Other kinds may be added by engine modules."""
DECISIONS = {"approve": "approved", "reject": "rejected"}
"""Decision words accepted from callers -> the status they set."""
ENDED = frozenset({"approved", "rejected", "expired", "cancelled"})
TIMEOUT_STATUS = {"approve": "approved", "reject": "rejected", "fail": "expired"}
"""`on_timeout` -> the status a passed deadline sets."""

MAX_COMMENT = 4000
"""Longest comment accepted (characters)."""
MAX_REVIEWER = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_JSON_FIELDS = ("params", "upstream", "candidates")
_BOOL_FIELDS = ("auto", "destructive", "learn")
EVENT_SQL = "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?, ?, ?, ?, ?)"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def when(t: float | None) -> str:
    """A timestamp for messages (local time)."""
    if t is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def to_dict(row: Any) -> dict[str, Any]:
    """A `reviews` row as plain data (JSON columns parsed, flags as booleans)."""
    out = dict(row)
    for key in _JSON_FIELDS:
        if key in out:
            out[key] = _loads(out[key])
    for key in _BOOL_FIELDS:
        if key in out and out[key] is not None:
            out[key] = bool(out[key])
    return out


def parse_review_id(text: str | int) -> int:
    """A review id from user input; InputError when it is not a positive integer."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    if isinstance(text, str) and text.strip().isdigit() and int(text) > 0:
        return int(text)
    raise InputError(f"'{text}' is not a review id (a positive number, see `flowdeck reviews`)")


def check_reviewer(name: str | None, *, automatic: bool = False) -> str:
    """A clean reviewer name; the names the engine uses itself are refused for people."""
    if name is None or not name.strip():
        raise InputError("reviewer: give a name (--as NAME)")
    name = name.strip()
    if len(name) > MAX_REVIEWER or _CONTROL.search(name):
        raise InputError(f"reviewer: at most {MAX_REVIEWER} printable characters")
    if not automatic and name in preferences.AUTOMATIC_REVIEWERS:
        raise InputError(f"reviewer: '{name}' is reserved for automatic decisions")
    return name


# --------------------------------------------------------------------------- writer side


def insert(db: sqlite_utils.Database, row: dict[str, Any], now: float) -> dict[str, Any]:
    """Insert a review (writer) with its `review.opened` event; a row that arrives already
    decided (a learned approval) gets its `review.decided` event and is not counted for
    learning. Returns the stored row."""
    data = {k: (_dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in row.items()}
    data.setdefault("created_at", now)
    for key in _BOOL_FIELDS:
        if key in data and data[key] is not None:
            data[key] = int(bool(data[key]))
    cols = ",".join(data)
    review_id = db.execute(
        f"INSERT INTO reviews({cols}) VALUES ({','.join('?' * len(data))})", list(data.values())
    ).lastrowid
    stored = _fetch(db, review_id)
    assert stored is not None
    db.execute(
        EVENT_SQL,
        (now, stored["run_id"], stored["step_id"], "review.opened", _dumps(
            {"review_id": review_id, "kind": stored["kind"], "reason": stored["reason"],
             "expires_at": stored["expires_at"]}
        )),
    )  # fmt: skip
    if stored["status"] != "pending":
        _decided_event(db, stored, now)
    return stored


def _fetch(db: sqlite_utils.Database, review_id: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM reviews WHERE id = ?", [review_id]))
    return to_dict(rows[0]) if rows else None


def _decided_event(db: sqlite_utils.Database, row: dict[str, Any], now: float) -> None:
    db.execute(
        EVENT_SQL,
        (now, row["run_id"], row["step_id"], "review.decided", _dumps(
            {"review_id": row["id"], "kind": row["kind"], "decision": row["status"],
             "reviewer": row["reviewer"], "auto": row["auto"], "choice": row["choice"],
             "comment": row["comment"]}
        )),
    )  # fmt: skip


def _after_decision(db: sqlite_utils.Database, row: dict[str, Any], now: float) -> None:
    _decided_event(db, row, now)
    if (
        row["kind"] == "gate"
        and row["pattern"]
        and not row["auto"]
        and row["status"] in ("approved", "rejected")
    ):
        preferences.record(db, row["pattern"], row["status"] == "approved", now)


def _timeout_outcome(row: dict[str, Any]) -> tuple[str, str]:
    on_timeout = row["on_timeout"] or "reject"
    status = TIMEOUT_STATUS.get(on_timeout, "rejected")
    limit = f"{row['timeout']:g} s" if row.get("timeout") else "its deadline"
    return status, f"no decision within {limit} (on_timeout: {on_timeout})"


def decide_in(
    db: sqlite_utils.Database,
    review_id: int,
    status: str,
    reviewer: str,
    comment: str | None,
    choice: str | None,
    now: float,
    *,
    auto: bool = False,
) -> dict[str, Any]:
    """The compare-and-set, in the writer. Returns `{"won": bool, "row": row or None,
    "expired": bool}`; never raises for a lost race (the caller turns that into Conflict).

    The UPDATE is the first statement so the transaction takes the write lock before reading
    (no stale read snapshot to upgrade when another process wrote in between).
    """
    won = db.execute(
        "UPDATE reviews SET status=?, reviewer=?, comment=?, choice=?, decided_at=?, auto=? "
        "WHERE id=? AND status='pending' AND (expires_at IS NULL OR expires_at > ?)",
        (status, reviewer, comment, choice, now, int(auto), review_id, now),
    ).rowcount
    row = _fetch(db, review_id)
    if won:
        assert row is not None
        _after_decision(db, row, now)
        return {"won": True, "row": row, "expired": False}
    if row is not None and row["status"] == "pending":  # past its deadline: apply it now
        expired = expire_in(db, review_id, now)
        return {"won": False, "row": expired or _fetch(db, review_id), "expired": True}
    return {"won": False, "row": row, "expired": False}


def expire_in(db: sqlite_utils.Database, review_id: int, now: float) -> dict[str, Any] | None:
    """Apply the timeout outcome if the review is pending and its deadline has passed
    (writer). Returns the decided row, or None if nothing changed."""
    row = _fetch(db, review_id)
    if row is None or row["status"] != "pending" or row["expires_at"] is None:
        return None
    if row["expires_at"] > now:
        return None
    status, comment = _timeout_outcome(row)
    n = db.execute(
        "UPDATE reviews SET status=?, reviewer='timeout', comment=?, decided_at=?, auto=1 "
        "WHERE id=? AND status='pending'",
        (status, comment, row["expires_at"], review_id),
    ).rowcount
    if not n:
        return None
    row = _fetch(db, review_id)
    assert row is not None
    _after_decision(db, row, now)
    return row


def close_in(
    db: sqlite_utils.Database, review_id: int, reason: str, now: float
) -> dict[str, Any] | None:
    """Mark a pending review `cancelled` (its run or step was cancelled); writer."""
    n = db.execute(
        "UPDATE reviews SET status='cancelled', reviewer='engine', comment=?, decided_at=?, "
        "auto=1 WHERE id=? AND status='pending'",
        (reason, now, review_id),
    ).rowcount
    if not n:
        return None
    row = _fetch(db, review_id)
    assert row is not None
    _decided_event(db, row, now)
    return row


# --------------------------------------------------------------------------- decide


def _lost(review_id: int, row: dict[str, Any] | None, expired: bool) -> Exception:
    if row is None:
        return NotFound(f"no review {review_id}")
    if expired or row["reviewer"] == "timeout":
        return Conflict(
            f"review {review_id} expired at {when(row['expires_at'])} "
            f"({row['comment']}; it is {row['status']})"
        )
    if row["status"] == "cancelled":
        return Conflict(f"review {review_id} was cancelled at {when(row['decided_at'])}")
    return Conflict(
        f"review {review_id} already decided by {row['reviewer']} at "
        f"{when(row['decided_at'])} ({row['status']})"
    )


def choices(row: dict[str, Any]) -> list[str]:
    """The names an approval of this review may pick (`candidates`: route candidates as
    `{name, ...}`, or plain strings for other kinds)."""
    out = []
    for c in row.get("candidates") or []:
        name = c.get("name") if isinstance(c, dict) else c
        if isinstance(name, str):
            out.append(name)
    return out


def _prepare(
    row: dict[str, Any] | None,
    review_id: int,
    decision: str,
    reviewer: str,
    comment: str | None,
    choice: str | None,
) -> tuple[str, str, str | None, str | None]:
    if decision not in DECISIONS:
        raise InputError(f"decision: '{decision}' is not one of {', '.join(DECISIONS)}")
    reviewer = check_reviewer(reviewer)
    if comment is not None:
        if len(comment) > MAX_COMMENT:
            raise InputError(f"comment: at most {MAX_COMMENT} characters")
        comment = comment.strip() or None
    if row is None:
        raise NotFound(f"no review {review_id}")
    if choice is not None:
        names = choices(row)
        if not names:
            raise InputError(
                f"review {review_id} is a {row['kind']} review without choices "
                "(--choice is for routes)"
            )
        if decision != "approve":
            raise InputError("--choice goes with approve")
        if choice not in names:
            raise InputError(
                f"review {review_id}: '{choice}' is not a candidate (choose from {', '.join(names)})"
            )
    return DECISIONS[decision], reviewer, comment, choice


def decide(
    store: Store,
    review_id: int | str,
    decision: str,
    reviewer: str,
    comment: str | None = None,
    *,
    choice: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Approve or reject review `review_id` (blocking; for the CLI and threads).

    `decision` is `approve` or `reject`; `choice` (route reviews) picks a candidate by name.
    Returns the decided row. Raises InputError (bad arguments), NotFound, or Conflict when
    another decision won or the deadline had passed (the timeout outcome is applied then).
    """
    review_id = parse_review_id(review_id)
    row = store.read(lambda db: _fetch(db, review_id))
    status, reviewer, comment, choice = _prepare(
        row, review_id, decision, reviewer, comment, choice
    )
    t = time.time() if now is None else now
    result = store.run_sync(
        lambda db: decide_in(db, review_id, status, reviewer, comment, choice, t)
    )
    if not result["won"]:
        raise _lost(review_id, result["row"], result["expired"])
    return result["row"]


async def adecide(
    store: Store,
    review_id: int | str,
    decision: str,
    reviewer: str,
    comment: str | None = None,
    *,
    choice: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """`decide` for the event loop (the engine, the HTTP API, the console)."""
    review_id = parse_review_id(review_id)
    row = await store.aread(lambda db: _fetch(db, review_id))
    status, reviewer, comment, choice = _prepare(
        row, review_id, decision, reviewer, comment, choice
    )
    t = time.time() if now is None else now
    result = await store.run(
        lambda db: decide_in(db, review_id, status, reviewer, comment, choice, t)
    )
    if not result["won"]:
        raise _lost(review_id, result["row"], result["expired"])
    return result["row"]


# --------------------------------------------------------------------------- reads

_PENDING_SQL = """
SELECT r.*, p.state AS pref_state, p.window_approvals AS pref_approvals,
       p.window_rejections AS pref_rejections
FROM reviews r LEFT JOIN preferences p ON p.pattern = r.pattern
WHERE r.status = 'pending' {extra}
  AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = r.run_id
                  AND runs.status IN ('succeeded', 'failed', 'cancelled'))
ORDER BY r.id
LIMIT :limit
"""


def pending_reviews(
    db: sqlite_utils.Database,
    *,
    run_id: str | None = None,
    limit: int = 500,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Pending reviews, oldest first, with everything a reviewer needs: run, workflow, step,
    description, kind, agent, operation, pattern, destructive, rendered `params`, the
    `upstream` values they use, reason, confidence, route `candidates` (name, target,
    confidence), deadline (`expires_at`, `on_timeout`, `overdue`) and the learned-approval
    state of the pattern (`preference`: state, approvals, rejections)."""
    extra = "AND r.run_id = :run_id" if run_id else ""
    rows = db.query(_PENDING_SQL.format(extra=extra), {"run_id": run_id, "limit": limit})
    t = time.time() if now is None else now
    out = []
    for r in rows:
        d = to_dict(r)
        state = d.pop("pref_state")
        approvals = d.pop("pref_approvals")
        rejections = d.pop("pref_rejections")
        d["preference"] = (
            {"state": state, "approvals": approvals, "rejections": rejections} if state else None
        )
        d["overdue"] = d["expires_at"] is not None and d["expires_at"] <= t
        out.append(d)
    return out


def list_reviews(
    db: sqlite_utils.Database,
    *,
    status: str | None = None,
    run_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Reviews newest first, optionally of one status or run (decided ones included)."""
    where, params = [], {"limit": limit}
    if status:
        where.append("status = :status")
        params["status"] = status
    if run_id:
        where.append("run_id = :run_id")
        params["run_id"] = run_id
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.query(f"SELECT * FROM reviews {clause} ORDER BY id DESC LIMIT :limit", params)
    return [to_dict(r) for r in rows]


def get_review(db: sqlite_utils.Database, review_id: int | str) -> dict[str, Any]:
    """One review; NotFound if there is none."""
    review_id = parse_review_id(review_id)
    row = _fetch(db, review_id)
    if row is None:
        raise NotFound(f"no review {review_id}")
    return row


def find_review(
    db: sqlite_utils.Database, run_id: str, step_id: str, kind: str
) -> dict[str, Any] | None:
    """The newest review of one kind for one step of one run (how a resumed run finds the
    review it was waiting on), or None."""
    rows = list(
        db.query(
            "SELECT * FROM reviews WHERE run_id = ? AND step_id = ? AND kind = ? "
            "ORDER BY id DESC LIMIT 1",
            [run_id, step_id, kind],
        )
    )
    return to_dict(rows[0]) if rows else None


def decided(db: sqlite_utils.Database, ids: list[int]) -> list[dict[str, Any]]:
    """The reviews among `ids` that are no longer pending."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = db.query(
        f"SELECT * FROM reviews WHERE id IN ({marks}) AND status != 'pending'", list(ids)
    )
    return [to_dict(r) for r in rows]
