"""Request and response bodies of the HTTP API (engine/api.py).

These pydantic models are the contract: handlers validate requests with them, serialise
responses through them, and `GET /api/openapi.json` is generated from them. Request models
forbid unknown fields, so a typo is a 422 naming the field instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.models import UndoEntry

RUN_ID_PATTERN = r"^[0-9a-f]{1,64}$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)


# --------------------------------------------------------------------------- errors


class ErrorBody(_Response):
    """Every error response (4xx and 5xx)."""

    error: str
    """Short machine-readable kind: bad_request, unauthorized, not_found, conflict,
    payload_too_large, unprocessable, method_not_allowed, unavailable, internal."""
    detail: str
    """One line for a human: what was wrong and where (`body.inputs.pr: ...`)."""
    problems: list[str] = Field(default_factory=list)
    """Every problem, one line each, when there is more than one (422)."""


# --------------------------------------------------------------------------- runs


class RunsQuery(_Request):
    """Query of `GET /api/runs`."""

    status: str | None = Field(default=None, max_length=32)
    """Only runs with this status (pending, running, succeeded, failed, cancelled, interrupted)."""
    limit: int = Field(default=50, ge=1, le=1000)
    """At most this many runs, newest first."""


class RunSummary(_Response):
    """One run as listed by `GET /api/runs`."""

    id: str
    """Run id (hex)."""
    workflow: str
    """Name of the workflow."""
    status: str
    """pending, running, succeeded, failed, cancelled or interrupted."""
    created_at: float
    """Unix time the run was created."""
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    """Why the run failed or was cancelled."""
    steps_total: int
    steps_done: int
    """Steps that ended (succeeded, failed, skipped, cancelled, rejected)."""


class RunList(_Response):
    """Response of `GET /api/runs`."""

    runs: list[RunSummary]


class Attempt(_Response):
    """One attempt of a step."""

    number: int
    status: str
    started_at: float
    ended_at: float | None = None
    duration_ms: float | None = None
    error_class: str | None = None
    error: str | None = None
    next_retry_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Step(_Response):
    """One step of a run with its attempts."""

    step_id: str
    agent: str | None = None
    kind: str | None = None
    status: str
    priority: int = 0
    depth: int = 0
    needs: list[str] = Field(default_factory=list)
    destructive: bool = False
    attempt: int = 0
    """Number of the latest attempt (0: not started)."""
    max_attempts: int = 1
    started_at: float | None = None
    ended_at: float | None = None
    duration_ms: float | None = None
    output: Any = None
    """The JSON the agent returned (shell: `{stdout, stderr, exit_code}`)."""
    error: str | None = None
    error_class: str | None = None
    next_retry_at: float | None = None
    operation: str | None = None
    """What the step does, e.g. `POST /issues`."""
    attempts: list[Attempt] = Field(default_factory=list)


class RunDetail(RunSummary):
    """Response of `GET /api/runs/{id}`: the run with its steps and attempts."""

    steps_done: int = 0
    source: str | None = None
    """Workflow file the run came from."""
    inputs: Any = None
    """Inputs of the run."""
    owner: str | None = None
    """Engine holding the run's lease (while it runs)."""
    lease_until: float | None = None
    steps: list[Step] = Field(default_factory=list)


class StartRun(_Request):
    """Body of `POST /api/runs`."""

    workflow: str = Field(min_length=1, max_length=200)
    """Name of a workflow in the server's `--workflows` directory."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """Workflow inputs, already of their declared JSON types."""


class RunStarted(_Response):
    """Response of `POST /api/runs` (201)."""

    id: str
    workflow: str
    status: str
    url: str
    """Where to read the run: `/api/runs/{id}`."""


class RunCancelled(_Response):
    """Response of `POST /api/runs/{id}/cancel`: `cancelled` once the run ended (200),
    `cancelling` when the engine owning it has not confirmed yet (202)."""

    id: str
    status: str


# --------------------------------------------------------------------------- workflows


class WorkflowInput(_Response):
    """One declared input of a workflow."""

    type: str
    required: bool = False
    default: Any = None
    description: str = ""


class WorkflowInfo(_Response):
    """A workflow file of the `--workflows` directory."""

    name: str
    """Name to give `POST /api/runs` (the file's `name:`; the file name for a broken file)."""
    file: str
    description: str = ""
    inputs: dict[str, WorkflowInput] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    """Why the file cannot be started (empty when it is valid)."""


class WorkflowList(_Response):
    """Response of `GET /api/workflows`."""

    workflows: list[WorkflowInfo]


# --------------------------------------------------------------------------- events


class EventsQuery(_Request):
    """Query of `GET /api/events`. The `Last-Event-ID` header wins over `after`."""

    after: int | None = Field(default=None, ge=0)
    """Send events with a larger id first (0: the whole log). Without it (and without
    `Last-Event-ID`) the stream starts at the newest event."""
    run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    """Only events of this run."""


class EventOut(_Response):
    """The `data:` of each SSE message (its `id:` is the event id)."""

    id: int
    ts: float
    kind: str
    """run.created, run.started, step.running, step.retrying, step.succeeded, ..."""
    run_id: str | None = None
    step_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- reviews

REVIEW_STATUSES = ("pending", "approved", "rejected", "expired", "cancelled", "all")


class ReviewsQuery(_Request):
    """Query of `GET /api/reviews`."""

    status: Literal["pending", "approved", "rejected", "expired", "cancelled", "all"] = "pending"
    """Reviews with this status (`all`: every status, newest first; `pending`: oldest first)."""
    run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    """Only reviews of this run."""
    limit: int = Field(default=100, ge=1, le=1000)
    """At most this many."""


class Preference(_Response):
    """Learned-approval state of a review's operation pattern."""

    state: str
    approvals: int | None = None
    rejections: int | None = None


class Review(_Response):
    """A review: what a reviewer needs to decide and, once decided, who decided what."""

    id: int
    run_id: str
    step_id: str
    kind: str
    """gate, route or crash_check."""
    status: str
    """pending, approved, rejected, expired or cancelled."""
    created_at: float
    workflow: str | None = None
    description: str | None = None
    agent: str | None = None
    operation: str | None = None
    """What the step does, e.g. `POST /pulls/*/close`."""
    pattern: str | None = None
    """Operation pattern decisions are learned against."""
    destructive: bool = False
    learn: bool = True
    params: Any = None
    """The step's rendered `with`."""
    upstream: Any = None
    """Upstream outputs the parameters use."""
    reason: str | None = None
    confidence: float | None = None
    candidates: Any = None
    """Route reviews: every candidate with its score."""
    expires_at: float | None = None
    on_timeout: str | None = None
    timeout: float | None = None
    choice: str | None = None
    decided_at: float | None = None
    reviewer: str | None = None
    comment: str | None = None
    auto: bool = False
    """Decided automatically (learned approval or timeout)."""
    overdue: bool | None = None
    """Pending past its deadline (pending reviews only)."""
    preference: Preference | None = None
    """Learned-approval state of its pattern (pending reviews only)."""


class ReviewList(_Response):
    """Response of `GET /api/reviews`."""

    reviews: list[Review]


class Decision(_Request):
    """Body of `POST /api/reviews/{id}/decision`."""

    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=4000)
    """Why (stored with the decision)."""
    reviewer: str = Field(default="api", min_length=1, max_length=100)
    """Who decides (`preference`, `timeout` and `engine` are reserved)."""
    choice: str | None = Field(default=None, min_length=1, max_length=200)
    """Route reviews: the candidate to take (with approve)."""


# --------------------------------------------------------------------------- undo


class UndoQuery(_Request):
    """Query of `GET /api/undo`."""

    status: str | None = Field(default=None, max_length=32)
    """Only entries in this state: prepared, done, expired, void, not_undoable, undoing,
    undone, failed."""
    run_id: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    """Only entries of this run."""
    limit: int = Field(default=50, ge=1, le=1000)
    """At most this many, newest first."""


class UndoList(_Response):
    """Response of `GET /api/undo`: the undo log, newest first."""

    entries: list[UndoEntry]


class UndoRequest(_Request):
    """Body of `POST /api/undo/{id}` (optional: an empty body takes these defaults)."""

    actor: str = Field(default="api", min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    """Who is undoing (recorded as `undone_by`)."""
    retry: bool = False
    """Try again an entry whose undo failed."""
    force: bool = False
    """Compensate an entry left unresolved by a crash without re-checking it."""


class UndoOutcome(_Response):
    """Response of `POST /api/undo/{id}`."""

    id: int
    run_id: str
    step_id: str
    outcome: str
    """`undone`, `void` (a re-check showed the action never happened) or `skipped`."""
    message: str
    entry: UndoEntry | None = None
    """The entry afterwards."""


# --------------------------------------------------------------------------- analytics


class AnalyticsQuery(_Request):
    """Query of `GET /api/analytics`."""

    since: str = Field(default="1h", min_length=1, max_length=32)
    """Window: a number with s/m/h/d/w (15m, 1h, 24h, 7d) or `all`."""
    slo_ms: float = Field(default=2000.0, gt=0, le=1e9)
    """P95 latency SLO of every agent, in ms (the health score's latency component)."""
    min_calls: int = Field(default=10, ge=0, le=1_000_000)
    """Calls an agent needs to be ranked."""
    top: int = Field(default=10, ge=1, le=1000)
    """Length of the top lists."""


class Health(_Response):
    """Response of `GET /api/health`."""

    ok: bool
    version: str
    events_last_id: int
    """Newest event id the server has seen."""
    sse_clients: int
