"""Read-only view models of the database for consoles: one consistent read, plain data out.

`read_snapshot(db, request, now)` reads everything a console screen shows in one read
transaction (so a run's steps and its progress never disagree) and returns frozen dataclasses:
the runs page, pending reviews oldest first, the undo history, open breakers, and optionally one
run with its steps laid out for a DAG view. `EventTail` follows the `events` table by id.

Nothing here knows a terminal exists: widgets take these objects as they are, and the HTTP API
or a test can use them too. Every query is bounded (LIMIT) and uses an index, so a database
with 100,000 runs reads as fast as a new one.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import sqlite_utils

from engine.expressions import ExpressionError, has_expressions, render
from engine.queries import STEPS_DONE_SQL

RUN_ENDED = ("succeeded", "failed", "cancelled")
STEP_ENDED = ("succeeded", "failed", "skipped", "cancelled", "rejected")
UNDO_SHORT = {
    "prepared": "not finished",
    "void": "nothing to undo",
    "undoing": "undoing…",
    "undone": "undone",
    "failed": "undo failed",
    "not_undoable": "not undoable",
}
"""One or two words per blocked status, for tables."""

UNDO_BLOCKED = {
    "prepared": "the action has not finished",
    "void": "the action did not happen: nothing to undo",
    "undoing": "being undone now",
    "undone": "already undone",
    "not_undoable": "the step has no undo action",
}
"""Undo entry statuses that cannot be undone, with the reason shown to the operator. Only
`done` entries inside their window can be undone."""


def _json(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------- view models


@dataclass(frozen=True, slots=True)
class RunRow:
    """One line of the runs table."""

    id: str
    workflow: str
    status: str
    """pending, running, succeeded, failed, cancelled or interrupted."""
    created_at: float
    started_at: float | None
    ended_at: float | None
    steps_done: int
    """Steps that ended (any way)."""
    steps_total: int
    error: str | None
    """Why the run failed, as stored (data text: show it literally)."""

    def duration(self, now: float) -> float | None:
        """Seconds from start to end, or to `now` while it runs."""
        if self.started_at is None:
            return None
        return (self.ended_at or now) - self.started_at


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One attempt of a step."""

    number: int
    status: str
    started_at: float
    ended_at: float | None
    duration_ms: float | None
    error_class: str | None
    error: str | None
    next_retry_at: float | None


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a run, with what a DAG view and a detail panel need."""

    step_id: str
    agent: str | None
    kind: str | None
    status: str
    depth: int
    """Longest chain of `needs` below this step (roots are 0): the DAG layer."""
    needs: tuple[str, ...]
    attempt: int
    max_attempts: int
    started_at: float | None
    ended_at: float | None
    duration_ms: float | None
    next_retry_at: float | None
    """When the next attempt starts while the step waits out a backoff."""
    error: str | None
    error_class: str | None
    output: Any
    """The step's output, decoded from JSON (data: show it literally)."""
    destructive: bool
    operation: str | None
    description: str = ""
    """From the workflow file."""
    params: Any = None
    """The step's `with:` from the workflow file (before expressions are rendered)."""
    attempts: tuple[AttemptView, ...] = ()

    def duration(self, now: float) -> float | None:
        """Seconds the step took, or has been running at `now`."""
        if self.duration_ms is not None:
            return self.duration_ms / 1000
        if self.started_at is None:
            return None
        if self.ended_at is not None:
            return self.ended_at - self.started_at
        return now - self.started_at

    def retry_in(self, now: float) -> float | None:
        """Seconds until the next attempt while retrying, else None."""
        if self.status != "retrying" or self.next_retry_at is None:
            return None
        return max(0.0, self.next_retry_at - now)


@dataclass(frozen=True, slots=True)
class RunView:
    """One run with all its steps (in depth order)."""

    run: RunRow
    inputs: Any
    description: str
    steps: tuple[StepView, ...]
    owner: str | None
    lease_until: float | None

    def step(self, step_id: str) -> StepView | None:
        for s in self.steps:
            if s.step_id == step_id:
                return s
        return None

    def rendered_params(self, step: StepView) -> tuple[Any, bool]:
        """The step's `with:` with its expressions filled in from the run's inputs and the
        outputs of the steps it needs, and whether that worked (else the template)."""
        if not has_expressions(step.params):
            return step.params, True
        outputs = {s.step_id: s.output for s in self.steps if s.status == "succeeded"}
        try:
            return render(step.params, {"inputs": self.inputs or {}, "steps": outputs}), True
        except ExpressionError:
            return step.params, False


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A review of a step: pending ones wait for an operator."""

    id: int
    run_id: str
    step_id: str
    workflow: str | None
    kind: str
    """`gate` (approve the action), `route` (pick a candidate), `confidence` (low score)."""
    status: str
    created_at: float
    expires_at: float | None
    on_timeout: str | None
    agent: str | None
    operation: str | None
    params: Any
    """The rendered inputs of the proposed action."""
    reason: str | None
    confidence: float | None
    candidates: Any
    decided_at: float | None
    reviewer: str | None
    comment: str | None
    auto: bool
    """Decided by a learned preference, not a person."""
    choice: str | None = None


@dataclass(frozen=True, slots=True)
class UndoRow:
    """One entry of the undo log."""

    id: int
    run_id: str
    step_id: str
    agent: str | None
    operation: str | None
    description: str | None
    created_at: float
    expires_at: float | None
    status: str
    undone_at: float | None
    undone_by: str | None
    result: Any
    error: str | None

    def time_left(self, now: float) -> float | None:
        """Seconds left in the undo window (None: no window)."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)

    def short_why(self, now: float) -> str | None:
        """`why_not` in one or two words."""
        why = self.why_not(now)
        if why is None:
            return None
        if why.startswith("the undo window"):
            return "expired"
        return UNDO_SHORT.get(self.status, why)

    def why_not(self, now: float) -> str | None:
        """Why this entry cannot be undone at `now`, or None when it can."""
        reason = UNDO_BLOCKED.get(self.status)
        if reason is not None:
            return reason
        if self.status not in ("done", "failed"):  # a failed undo may be tried again
            return f"status is {self.status}"
        if self.expires_at is not None and self.expires_at <= now:
            return "the undo window has expired"
        return None


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """A circuit breaker that is not closed."""

    key: str
    agent: str | None
    state: str
    failures: int
    opened_at: float | None
    updated_at: float | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of the `events` table."""

    id: int
    ts: float
    kind: str
    run_id: str | None
    step_id: str | None
    data: Any


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """What to read. A console changes it when the operator moves around."""

    runs_limit: int = 50
    runs_filter: str = ""
    """Keep runs whose id, workflow or status contains this text."""
    run_id: str | None = None
    """Also read this run with its steps."""
    reviews_limit: int = 50
    history_limit: int = 100
    decided_limit: int = 10
    """Recent decided reviews (auto-approvals with their reason are among them)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a console shows at one moment."""

    now: float
    """The clock reading the snapshot was taken with (durations and countdowns use it)."""
    version: int
    """Increases with every read that saw new data."""
    runs: tuple[RunRow, ...] = ()
    run_counts: dict[str, int] = field(default_factory=dict)
    """Runs per status over the whole database."""
    pending_reviews: tuple[ReviewRow, ...] = ()
    """Oldest first."""
    pending_count: int = 0
    decided_reviews: tuple[ReviewRow, ...] = ()
    """Most recently decided first."""
    undo: tuple[UndoRow, ...] = ()
    """Newest first."""
    breakers: tuple[BreakerRow, ...] = ()
    events: tuple[EventRow, ...] = ()
    """Most recent last."""
    run: RunView | None = None
    analytics: Any = None
    """An `engine.analytics.AnalyticsSnapshot` when available."""
    last_event_id: int = 0


# --------------------------------------------------------------------------- reads

_RUN_COLUMNS = (
    "r.id, r.workflow, r.status, r.created_at, r.started_at, r.ended_at, r.error, r.steps_total, "
    f"{STEPS_DONE_SQL} AS steps_done"
)


def _run_row(r: dict[str, Any]) -> RunRow:
    return RunRow(
        id=r["id"],
        workflow=r["workflow"],
        status=r["status"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        steps_done=r["steps_done"] or 0,
        steps_total=r["steps_total"] or 0,
        error=r["error"],
    )


def runs_page(db: sqlite_utils.Database, *, limit: int = 50, text: str = "") -> list[RunRow]:
    """Newest runs first, optionally those whose id, workflow or status contains `text`."""
    where, params = "", {"limit": limit}
    if text:
        where = (
            "WHERE instr(lower(r.id), :t) OR instr(lower(r.workflow), :t) "
            "OR instr(lower(r.status), :t)"
        )
        params["t"] = text.lower()
    rows = db.query(
        f"SELECT {_RUN_COLUMNS} FROM runs r {where} "
        "ORDER BY r.created_at DESC, r.id DESC LIMIT :limit",
        params,
    )
    return [_run_row(r) for r in rows]


def run_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Runs per status (an index-only scan)."""
    return {
        r["status"]: r["n"]
        for r in db.query("SELECT status, count(*) AS n FROM runs GROUP BY status")
    }


def _review_row(r: dict[str, Any]) -> ReviewRow:
    return ReviewRow(
        id=r["id"],
        run_id=r["run_id"],
        step_id=r["step_id"],
        workflow=r.get("workflow"),
        kind=r["kind"],
        status=r["status"],
        created_at=r["created_at"],
        expires_at=r["expires_at"],
        on_timeout=r["on_timeout"],
        agent=r["agent"],
        operation=r["operation"],
        params=_json(r["params"]),
        reason=r["reason"],
        confidence=r["confidence"],
        candidates=_json(r["candidates"]),
        decided_at=r["decided_at"],
        reviewer=r["reviewer"],
        comment=r["comment"],
        auto=bool(r["auto"]),
        choice=r["choice"],
    )


def pending_reviews(db: sqlite_utils.Database, *, limit: int = 50) -> list[ReviewRow]:
    """Pending reviews, oldest first (nothing waits unseen)."""
    rows = db.query(
        "SELECT rv.*, r.workflow FROM reviews rv LEFT JOIN runs r ON r.id = rv.run_id "
        "WHERE rv.status = 'pending' ORDER BY rv.created_at, rv.id LIMIT ?",
        [limit],
    )
    return [_review_row(r) for r in rows]


def decided_reviews(db: sqlite_utils.Database, *, limit: int = 10) -> list[ReviewRow]:
    """The most recent decisions (by a person or a learned preference)."""
    rows = db.query(
        "SELECT rv.*, r.workflow FROM reviews rv LEFT JOIN runs r ON r.id = rv.run_id "
        "WHERE rv.decided_at IS NOT NULL AND rv.status <> 'pending' "
        "ORDER BY rv.decided_at DESC, rv.id DESC LIMIT ?",
        [limit],
    )
    return [_review_row(r) for r in rows]


def undo_history(db: sqlite_utils.Database, *, limit: int = 100) -> list[UndoRow]:
    """Undo log entries, newest first."""
    rows = db.query("SELECT * FROM undo_log ORDER BY id DESC LIMIT ?", [limit])
    return [
        UndoRow(
            id=r["id"],
            run_id=r["run_id"],
            step_id=r["step_id"],
            agent=r["agent"],
            operation=r["operation"],
            description=r["description"],
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            status=r["status"],
            undone_at=r["undone_at"],
            undone_by=r["undone_by"],
            result=_json(r["result"]),
            error=r["error"],
        )
        for r in rows
    ]


def open_breakers(db: sqlite_utils.Database) -> list[BreakerRow]:
    """Breakers that are open or half-open."""
    rows = db.query("SELECT * FROM breakers WHERE state <> 'closed' ORDER BY key LIMIT 100")
    return [
        BreakerRow(
            key=r["key"],
            agent=r["agent"],
            state=r["state"],
            failures=r["failures"] or 0,
            opened_at=r["opened_at"],
            updated_at=r["updated_at"],
            detail=r["detail"],
        )
        for r in rows
    ]


def _event_row(r: dict[str, Any]) -> EventRow:
    data = _json(r["data"])
    return EventRow(r["id"], r["ts"], r["kind"], r["run_id"], r["step_id"], data or {})


def recent_events(db: sqlite_utils.Database, *, limit: int = 200) -> list[EventRow]:
    """The last `limit` events, oldest first."""
    rows = list(
        db.query(
            "SELECT id, ts, run_id, step_id, kind, data FROM events ORDER BY id DESC LIMIT ?",
            [limit],
        )
    )
    return [_event_row(r) for r in reversed(rows)]


def events_after(db: sqlite_utils.Database, after_id: int, *, limit: int = 200) -> list[EventRow]:
    """The newest `limit` events with id > `after_id`, oldest first (a tail: when more came,
    the older ones are skipped)."""
    rows = list(
        db.query(
            "SELECT id, ts, run_id, step_id, kind, data FROM events WHERE id > ? "
            "ORDER BY id DESC LIMIT ?",
            [after_id, limit],
        )
    )
    return [_event_row(r) for r in reversed(rows)]


def _spec_parts(spec_json: str | None) -> tuple[str, dict[str, tuple[str, Any]]]:
    """(workflow description, step id -> (description, with)) from a stored spec."""
    spec = _json(spec_json)
    if not isinstance(spec, dict):
        return "", {}
    steps = spec.get("steps") or {}
    parts = {
        sid: (str(s.get("description") or ""), s.get("with"))
        for sid, s in steps.items()
        if isinstance(s, dict)
    }
    return str(spec.get("description") or ""), parts


def run_view(
    db: sqlite_utils.Database,
    run_id: str,
    *,
    spec_cache: dict[str, tuple[str, dict[str, tuple[str, Any]]]] | None = None,
) -> RunView | None:
    """One run with its steps (depth order) and every attempt; None when there is no such run."""
    row = next(
        iter(
            db.query(
                f"SELECT {_RUN_COLUMNS}, r.inputs, r.owner, r.lease_until FROM runs r "
                "WHERE r.id = ?",
                [run_id],
            )
        ),
        None,
    )
    if row is None:
        return None
    parts = spec_cache.get(run_id) if spec_cache is not None else None
    if parts is None:
        spec_json = next(iter(db.query("SELECT spec FROM runs WHERE id = ?", [run_id])))["spec"]
        parts = _spec_parts(spec_json)
        if spec_cache is not None:
            if len(spec_cache) > 64:
                spec_cache.clear()
            spec_cache[run_id] = parts
    description, step_parts = parts
    attempts: dict[str, list[AttemptView]] = {}
    for a in db.query(
        "SELECT step_id, number, status, started_at, ended_at, duration_ms, error_class, error, "
        "next_retry_at FROM attempts WHERE run_id = ? ORDER BY step_id, number",
        [run_id],
    ):
        attempts.setdefault(a["step_id"], []).append(
            AttemptView(
                number=a["number"],
                status=a["status"],
                started_at=a["started_at"],
                ended_at=a["ended_at"],
                duration_ms=a["duration_ms"],
                error_class=a["error_class"],
                error=a["error"],
                next_retry_at=a["next_retry_at"],
            )
        )
    steps = []
    for s in db.query("SELECT * FROM steps WHERE run_id = ?", [run_id]):
        desc, params = step_parts.get(s["step_id"], ("", None))
        needs = _json(s["needs"]) or []
        steps.append(
            StepView(
                step_id=s["step_id"],
                agent=s["agent"],
                kind=s["kind"],
                status=s["status"],
                depth=s["depth"] or 0,
                needs=tuple(str(n) for n in needs) if isinstance(needs, list) else (),
                attempt=s["attempt"] or 0,
                max_attempts=s["max_attempts"] or 1,
                started_at=s["started_at"],
                ended_at=s["ended_at"],
                duration_ms=s["duration_ms"],
                next_retry_at=s["next_retry_at"],
                error=s["error"],
                error_class=s["error_class"],
                output=_json(s["output"]),
                destructive=bool(s["destructive"]),
                operation=s["operation"],
                description=desc,
                params=params,
                attempts=tuple(attempts.get(s["step_id"], ())),
            )
        )
    # The file's order of steps within one depth (the spec keeps it), then id.
    order = {sid: i for i, sid in enumerate(step_parts)}
    steps.sort(key=lambda st: (st.depth, order.get(st.step_id, len(order)), st.step_id))
    return RunView(
        run=_run_row(row),
        inputs=_json(row["inputs"]),
        description=description,
        steps=tuple(steps),
        owner=row["owner"],
        lease_until=row["lease_until"],
    )


def data_version(db: sqlite_utils.Database) -> int:
    """Changes whenever another connection commits."""
    return db.execute("PRAGMA data_version").fetchone()[0]


# --------------------------------------------------------------------------- following


AnalyticsFn = Callable[[sqlite_utils.Database, float], Any]


def default_analytics() -> AnalyticsFn | None:
    """`engine.analytics.compute` over the last hour, if that module is available."""
    try:
        from engine import analytics
    except ImportError:
        return None
    compute = getattr(analytics, "compute", None)
    if compute is None:
        return None
    return lambda db, now: compute(db, since=now - 3600, now=now)


class SnapshotReader:
    """Follows a database and produces snapshots when something changed.

    Call `poll()` from one thread (it uses that thread's read connection through `read`). An
    idle poll costs one `PRAGMA data_version`. Events are followed by id into a ring of the last
    `events_kept`; analytics (costlier) are recomputed at most every `analytics_every` seconds.
    """

    def __init__(
        self,
        read: Callable[[Callable[[sqlite_utils.Database], Any]], Any],
        *,
        events_kept: int = 200,
        analytics: AnalyticsFn | None = None,
        analytics_every: float = 3.0,
    ):
        self._read = read
        self.request = SnapshotRequest()
        """What the next snapshot holds; replace it (it is immutable) to change it."""
        self.events: deque[EventRow] = deque(maxlen=events_kept)
        self.analytics_fn = analytics
        self.analytics_every = analytics_every
        """Seconds between two analytics computations."""
        self.last: Snapshot | None = None
        """The last snapshot produced."""
        self._version: int | None = None
        self._request_seen: SnapshotRequest | None = None
        self._last_event = 0
        self._analytics_at = float("-inf")
        self._analytics: Any = None
        self._specs: dict[str, tuple[str, dict[str, tuple[str, Any]]]] = {}
        self._count = 0

    def poll(self, now: float, *, force: bool = False, quick: bool = False) -> Snapshot | None:
        """A new snapshot if the data or the request changed (or `force`), else None.

        `quick` (an operator waits for the answer): read only what that answer needs. When
        only `request.run_id` changed, the new run is read and the rest of the last snapshot
        kept; otherwise analytics due now wait for the next poll that is not quick. Data
        that changed meanwhile is read in full by the next poll."""
        return self._read(lambda db: self._poll(db, now, force, quick))

    def _poll(
        self, db: sqlite_utils.Database, now: float, force: bool, quick: bool = False
    ) -> Snapshot | None:
        request = self.request
        version = data_version(db)
        if not force and version == self._version and request == self._request_seen:
            return None
        last, seen = self.last, self._request_seen
        if (
            quick
            and not force
            and last is not None
            and seen is not None
            and request.run_id
            and request != seen
            and replace(request, run_id=seen.run_id) == seen
        ):
            self._count += 1
            run = run_view(db, request.run_id, spec_cache=self._specs)
            snap = replace(last, now=now, version=self._count, run=run)
            self._request_seen = request  # self._version stays: new data is read next time
            self.last = snap
            return snap
        db.execute("BEGIN")
        try:
            snap = self._snapshot(db, request, now, version, analytics=not quick)
        finally:
            db.execute("COMMIT")
        self._version = version
        self._request_seen = request
        self.last = snap
        return snap

    def _snapshot(
        self,
        db: sqlite_utils.Database,
        req: SnapshotRequest,
        now: float,
        version: int,
        *,
        analytics: bool = True,
    ) -> Snapshot:
        if self._last_event == 0:
            self.events.extend(recent_events(db, limit=self.events.maxlen or 200))
        else:
            self.events.extend(events_after(db, self._last_event, limit=self.events.maxlen or 200))
        if self.events:
            self._last_event = self.events[-1].id
        if (
            analytics
            and self.analytics_fn is not None
            and (
                self._analytics_at == float("-inf")
                or now - self._analytics_at >= self.analytics_every
            )
        ):
            self._analytics = self.analytics_fn(db, now)
            self._analytics_at = now
        self._count += 1
        return Snapshot(
            now=now,
            version=self._count,
            runs=tuple(runs_page(db, limit=req.runs_limit, text=req.runs_filter)),
            run_counts=run_counts(db),
            pending_reviews=tuple(pending_reviews(db, limit=req.reviews_limit)),
            pending_count=db.execute(
                "SELECT count(*) FROM reviews WHERE status = 'pending'"
            ).fetchone()[0],
            decided_reviews=tuple(decided_reviews(db, limit=req.decided_limit)),
            undo=tuple(undo_history(db, limit=req.history_limit)),
            breakers=tuple(open_breakers(db)),
            events=tuple(self.events),
            run=run_view(db, req.run_id, spec_cache=self._specs) if req.run_id else None,
            analytics=self._analytics,
            last_event_id=self._last_event,
        )
