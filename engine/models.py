"""Pydantic models of workflow files and the run-time status vocabulary.

Spec models (`WorkflowSpec` and what it holds) describe a workflow file; every model forbids
unknown keys so a typo is reported instead of silently ignored. Status enums and their allowed
transitions are the state machine that the runner and the store both follow.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class InputSpec(_Spec):
    """One declared workflow input."""

    type: Literal["string", "integer", "number", "boolean", "object", "array"] = "string"
    """JSON type the value must have; `--input k=v` strings are converted to it."""
    required: bool = False
    """A run cannot start without it (unless `default` is set)."""
    default: Any = None
    """Value used when the input is not given."""
    description: str = ""
    """Shown by `flowdeck show` and the console."""


class RetryPolicy(_Spec):
    """How often and how patiently a step is retried (through tenacity, see engine/retries.py)."""

    attempts: int = Field(default=1, ge=1, le=100)
    """Total attempts including the first one."""
    backoff: Literal["exponential", "fixed", "immediate", "none"] = "exponential"
    """Wait shape between attempts; `immediate` and `none` do not wait."""
    initial: float = Field(default=0.5, ge=0)
    """First wait in seconds."""
    max: float = Field(default=10.0, ge=0)
    """Upper bound of any wait, `Retry-After` included."""
    multiplier: float = Field(default=2.0, ge=1)
    """Growth factor of exponential backoff."""
    jitter: bool = True
    """Randomise waits (full jitter) so retries of many steps do not align."""
    on_exit_codes: list[int] = Field(default_factory=list)
    """Shell exit codes that are worth retrying; any other non-zero exit is final."""
    on_error: list[str] = Field(default_factory=list)
    """Extra error classes to retry (e.g. `validation` for an llm that answered badly)."""


class RetryBudgetSpec(_Spec):
    """Caps retries over a sliding window so a failing service does not get a retry storm.

    A retry is allowed while `retries < min_retries + ratio * first_attempts` counted over the
    last `window` seconds. The run's budget comes from `defaults.retry_budget`; each agent has its
    own (its `retry_budget`, shared by every run of one engine). Fast failures of an open circuit
    do not spend it (they never reach the service).
    """

    ratio: float = Field(default=0.2, ge=0)
    """Retries allowed per first attempt (0.2: at most 20% extra attempts)."""
    min_retries: int = Field(default=10, ge=0)
    """Retries allowed per window on top of the ratio, so a small run can still retry."""
    window: float = Field(default=60.0, gt=0)
    """Length of the sliding window in seconds."""


class BreakerSpec(_Spec):
    """A circuit breaker (engine/breaker.py) in front of an agent, and of its host for http.

    closed -> open after `failures` failures in a row, or when at least `min_calls` calls in the
    last `window` seconds failed at `failure_ratio` or more; open -> half-open after `cooldown`
    seconds; half-open lets `trial_calls` calls through at once and closes after `successes`
    of them succeeded (one failure opens it again). Only failures that say something about the
    service count: timeouts, connection errors, HTTP 5xx/408/429, shell exit codes, crashes.
    """

    enabled: bool = True
    """False turns the breaker off for this agent (http and llm agents have one by default)."""
    failures: int = Field(default=5, ge=1)
    """Consecutive failures that open the circuit."""
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    """Share of failed calls over `window` that opens the circuit."""
    min_calls: int = Field(default=10, ge=1)
    """Calls in the window before `failure_ratio` is looked at."""
    window: float = Field(default=60.0, gt=0)
    """Seconds of history for `failure_ratio`."""
    cooldown: float = Field(default=30.0, ge=0)
    """Seconds the circuit stays open before trial calls are let through."""
    trial_calls: int = Field(default=1, ge=1)
    """Calls let through at once while half-open."""
    successes: int = Field(default=1, ge=1)
    """Successful trial calls that close the circuit again."""


class AgentSpec(_Spec):
    """An agent declared under `agents:`; `kind` picks the implementation in the registry."""

    kind: str
    """Registered agent kind: python, shell, http, llm."""
    base_url: str | None = None
    """http/llm: prefix of every request path."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds per attempt for steps of this agent (the step's own `timeout` wins)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """http/llm: headers sent with every request."""
    model: str | None = None
    """llm: model name sent to the endpoint."""
    api_key_env: str | None = None
    """llm/http: name of the environment variable holding the bearer token."""
    temperature: float | None = None
    """llm: sampling temperature."""
    concurrency: int | None = Field(default=None, ge=1)
    """At most this many steps of this agent run at once (across runs of one engine)."""
    env: dict[str, str] = Field(default_factory=dict)
    """shell: environment added to every command."""
    cwd: str | None = None
    """shell: working directory of every command."""
    max_output: int = Field(default=65536, ge=1024)
    """shell: bytes of stdout/stderr kept (the rest is cut, with a marker)."""
    breaker: BreakerSpec | None = None
    """Circuit breaker settings; default: on (with default settings) for http and llm agents,
    off for others unless given."""
    retry_budget: RetryBudgetSpec | None = None
    """Retry budget of this agent across the runs of one engine (default settings if not given)."""


class ReviewSpec(_Spec):
    """A human review gate in front of a step's action."""

    when: str = "always"
    """`always`, `destructive`, or a confidence condition such as `confidence < 0.8`."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds to wait for a decision; then `on_timeout` applies."""
    on_timeout: Literal["reject", "approve", "fail"] = "reject"
    """What a timeout decides."""
    reason: str | None = None
    """Why a human must look, shown to the reviewer."""
    confidence: str | None = None
    """Expression giving the confidence (e.g. `${{ steps.triage.output.confidence }}`)."""
    learn: bool = True
    """Whether repeated approvals of this operation may turn into auto-approval."""

    @field_validator("when")
    @classmethod
    def _check_when(cls, v: str) -> str:
        if v in ("always", "destructive", "never") or re.fullmatch(
            r"\s*confidence\s*(<|<=)\s*(0(\.\d+)?|1(\.0+)?)\s*", v
        ):
            return v
        raise ValueError("must be 'always', 'destructive' or 'confidence < NUMBER' (0..1)")


class CaptureSpec(_Spec):
    """A read taken before a destructive action, kept as the undo entry's before-state."""

    agent: str | None = None
    """Agent of the read; defaults to the step's agent."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """Parameters of the read."""


class UndoSpec(_Spec):
    """How to take back a destructive step."""

    agent: str | None = None
    """Agent of the compensating action; defaults to the step's agent."""
    with_: dict[str, Any] | None = Field(default=None, alias="with")
    """Parameters of the compensating action (expressions may use `inputs`, `steps`, `output`, `before`)."""
    handler: str | None = None
    """python steps: a registered undo handler name instead of `with`."""
    ttl: float = Field(default=3600, gt=0)
    """Seconds the action stays undoable."""
    description: str | None = None
    """What undoing does, in words."""
    capture: CaptureSpec | None = None
    """A read made before the action; its output is available as `before`."""

    @model_validator(mode="after")
    def _one_action(self) -> UndoSpec:
        if self.with_ is None and self.handler is None:
            raise ValueError("undo needs `with` (a compensating action) or `handler`")
        return self


class RouteCandidate(_Spec):
    """One candidate of a routing step."""

    target: str
    """Step id (or agent id) chosen when this candidate wins. A step target must list the
    route step in its `needs`; the targets that lose are skipped. An agent target performs the
    route step's own `with`."""
    name: str | None = None
    """The name an upstream answer uses for this candidate (`route.pick`); default `target`."""
    confidence: float | str | None = None
    """A fixed score 0..1, an expression giving it (`${{ steps.triage.output.scores.x }}`), or
    `learned`: the agent's success rate on this operation (see engine/preferences.py). None
    scores 0 unless `route.pick` names this candidate."""

    @field_validator("confidence")
    @classmethod
    def _check_confidence(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, bool):
            raise ValueError("must be a number from 0 to 1, an expression or 'learned'")
        if isinstance(v, (int, float)) and not 0 <= v <= 1:
            raise ValueError("must be from 0 to 1")
        if isinstance(v, str) and v != "learned" and "${{" not in v:
            raise ValueError("must be a number from 0 to 1, an expression or 'learned'")
        return v

    @property
    def key(self) -> str:
        """The candidate's name (`name`, else `target`)."""
        return self.name or self.target


class RouteSpec(_Spec):
    """Pick the best candidate by confidence; below `threshold` a human picks."""

    candidates: list[RouteCandidate] = Field(min_length=1)
    """The routes to choose from; ties go to the first one listed."""
    threshold: float = Field(default=0.0, ge=0, le=1)
    """A best score below this opens a review of kind `route` showing every candidate."""
    pick: str | None = None
    """Expression naming the candidate an upstream step chose, e.g.
    `${{ steps.triage.output.route }}` (matched against each candidate's `name`/`target`)."""
    confidence: str | float | None = None
    """Score of the picked candidate, e.g. `${{ steps.triage.output.confidence }}` (default 1)."""

    @model_validator(mode="after")
    def _unique_names(self) -> RouteSpec:
        seen: set[str] = set()
        for cand in self.candidates:
            if cand.key in seen:
                raise ValueError(f"candidate '{cand.key}' is listed twice")
            seen.add(cand.key)
        return self


class StepSpec(_Spec):
    """One step of a workflow."""

    agent: str | None = None
    """Agent id from `agents:` that performs the step (not needed for `route` steps)."""
    needs: list[str] = Field(default_factory=list)
    """Steps that must succeed first."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """Parameters of the action; strings may hold `${{ ... }}` expressions."""
    description: str = ""
    """Shown in the console and `flowdeck show`."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds per attempt (default: agent timeout, then workflow defaults)."""
    retry: RetryPolicy | None = None
    """Retry policy; fields not given come from `defaults.retry`."""
    priority: int = 0
    """Higher starts first when concurrency slots are scarce."""
    destructive: bool = False
    """The action changes the outside world in a way someone may want to take back. Its start
    is committed before the call, and an attempt in flight at a crash is never repeated blindly:
    resume asks the operator whether it happened (a `crash_check` review)."""
    idempotent: bool | None = None
    """Safe to repeat after a crash; default: shell, python and HTTP GET/HEAD/PUT/DELETE/OPTIONS
    are. `false` makes an attempt in flight at a crash a question for the operator (like
    `destructive`); a non-destructive step that is not idempotent only by default (e.g. an http
    POST) is repeated on resume with the same `Idempotency-Key`."""
    optional: bool = False
    """A failure or rejection of this step does not fail the run."""
    review: ReviewSpec | None = None
    """Human review gate before the action."""
    undo: UndoSpec | None = None
    """Compensating action for a destructive step."""
    route: RouteSpec | None = None
    """Routing step: picks one of several candidates by confidence."""

    @field_validator("needs", mode="before")
    @classmethod
    def _needs_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class DefaultsSpec(_Spec):
    """Settings every step inherits unless it sets its own."""

    timeout: float = Field(default=30.0, gt=0)
    """Seconds per attempt."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    """Default retry policy."""
    retry_budget: RetryBudgetSpec = Field(default_factory=RetryBudgetSpec)
    """Retry budget of each run of this workflow."""


class WorkflowSpec(_Spec):
    """A whole workflow file."""

    name: str
    """Letters, digits, `-` and `_`."""
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    concurrency: int = Field(default=16, ge=1)
    """At most this many steps of one run at once."""
    steps: dict[str, StepSpec] = Field(min_length=1)

    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)
    """Derived data (graph, depths, JSON) computed once per spec object; specs are not
    mutated after loading."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use only letters, digits, '-' and '_'")
        return v

    def retry_for(self, step: StepSpec) -> RetryPolicy:
        """The effective retry policy of `step` (its own fields over `defaults.retry`)."""
        if step.retry is None:
            return self.defaults.retry
        merged = self.defaults.retry.model_dump()
        merged.update(step.retry.model_dump(exclude_unset=True))
        return RetryPolicy.model_validate(merged)

    def timeout_for(self, step: StepSpec) -> float:
        """The effective per-attempt timeout of `step` in seconds."""
        if step.timeout is not None:
            return step.timeout
        agent = self.agents.get(step.agent or "")
        if agent is not None and agent.timeout is not None:
            return agent.timeout
        return self.defaults.timeout


# --------------------------------------------------------------------------- statuses


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """Stopped by a signal or a crash; `flowdeck resume` continues it."""

    @property
    def ended(self) -> bool:
        return self in RUN_ENDED


RUN_ENDED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(StrEnum):
    PENDING = "pending"
    """Waiting for its needs."""
    READY = "ready"
    """Needs done, waiting for a concurrency slot."""
    RUNNING = "running"
    RETRYING = "retrying"
    """Waiting out a backoff before the next attempt."""
    WAITING_REVIEW = "waiting_review"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def ended(self) -> bool:
        return self in STEP_ENDED


STEP_ENDED = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
        StepStatus.REJECTED,
    }
)

_S = StepStatus
STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    _S.PENDING: frozenset({_S.READY, _S.SKIPPED, _S.CANCELLED}),
    _S.READY: frozenset(
        {
            _S.RUNNING,
            _S.WAITING_REVIEW,
            _S.FAILED,
            _S.REJECTED,
            _S.SKIPPED,
            _S.CANCELLED,
            _S.PENDING,
        }
    ),
    _S.WAITING_REVIEW: frozenset(
        {_S.READY, _S.RUNNING, _S.REJECTED, _S.FAILED, _S.CANCELLED, _S.SUCCEEDED, _S.PENDING}
    ),
    _S.RUNNING: frozenset(
        {
            _S.SUCCEEDED,
            _S.FAILED,
            _S.RETRYING,
            _S.CANCELLED,
            _S.WAITING_REVIEW,
            _S.READY,
            _S.PENDING,
        }
    ),
    _S.RETRYING: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED, _S.READY, _S.PENDING}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.SKIPPED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.REJECTED: frozenset(),
}
"""Allowed step transitions. Going back to pending/ready only happens on resume of an
interrupted run (an in-flight step that is safe to repeat; a step waiting for review goes back
to pending while its review stays pending, and the resumed run waits on that same review)."""

_R = RunStatus
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    _R.PENDING: frozenset({_R.RUNNING, _R.CANCELLED, _R.FAILED}),
    _R.RUNNING: frozenset({_R.SUCCEEDED, _R.FAILED, _R.CANCELLED, _R.INTERRUPTED}),
    _R.INTERRUPTED: frozenset({_R.RUNNING, _R.CANCELLED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A status change the state machine does not allow: a bug, never user input."""


def check_step_transition(old: StepStatus, new: StepStatus) -> None:
    if new not in STEP_TRANSITIONS[old]:
        raise IllegalTransition(f"step cannot go from {old} to {new}")


def check_run_transition(old: RunStatus, new: RunStatus) -> None:
    if new not in RUN_TRANSITIONS[old]:
        raise IllegalTransition(f"run cannot go from {old} to {new}")


# --------------------------------------------------------------------------- undo log


class UndoStatus(StrEnum):
    """Status of an undo-log entry (`undo_log.status`), see engine/undo/."""

    PREPARED = "prepared"
    """Written before the destructive action started; the action is running, or the process
    stopped before recording how it ended (then `flowdeck undo` re-checks it)."""
    DONE = "done"
    """The action succeeded: undoable until `expires_at`."""
    VOID = "void"
    """The action failed: nothing to undo."""
    NOT_UNDOABLE = "not_undoable"
    """A destructive step without `undo:` (or whose undo parameters could not be built)."""
    UNDOING = "undoing"
    """The compensation is running."""
    UNDONE = "undone"
    """The compensation succeeded. Final."""
    FAILED = "failed"
    """The compensation failed; `flowdeck undo ID --retry` may try again."""


_U = UndoStatus
UNDO_TRANSITIONS: dict[UndoStatus, frozenset[UndoStatus]] = {
    _U.PREPARED: frozenset({_U.PREPARED, _U.DONE, _U.VOID, _U.NOT_UNDOABLE, _U.UNDOING}),
    _U.DONE: frozenset({_U.UNDOING}),
    _U.UNDOING: frozenset({_U.UNDONE, _U.FAILED}),
    _U.FAILED: frozenset({_U.UNDOING}),
    _U.VOID: frozenset(),
    _U.NOT_UNDOABLE: frozenset(),
    _U.UNDONE: frozenset(),
}
"""Allowed undo-log transitions. `prepared -> prepared` is a resumed run taking over the entry
of its crashed predecessor; `prepared -> undoing` is an undo after a crash once a re-read showed
that the action happened; `failed -> undoing` is an explicit retry."""


def check_undo_transition(old: UndoStatus, new: UndoStatus) -> None:
    if new not in UNDO_TRANSITIONS[old]:
        raise IllegalTransition(f"undo entry cannot go from {old} to {new}")


class UndoEntry(BaseModel):
    """One row of the undo log as the CLI, the console and the HTTP API show it."""

    id: int
    """Entry id (`flowdeck undo ID`)."""
    run_id: str
    """The run whose step acted."""
    step_id: str
    """The destructive step."""
    workflow: str | None = None
    """Workflow name of the run."""
    agent: str | None = None
    """Agent of the destructive action."""
    operation: str | None = None
    """Short name of the action, e.g. `DELETE /tracker/issues/*`."""
    params: Any = None
    """The action's rendered `with`."""
    description: str | None = None
    """What undoing does, in words (the undo's `description`, rendered)."""
    before: Any = None
    """Output of the `capture:` read taken before the action, if any."""
    undo: dict[str, Any] | None = None
    """How to undo: `agent`, rendered `with` or `handler`, rendered `capture` parameters."""
    output: Any = None
    """Output of the action."""
    created_at: float
    """When the entry was written (before the action started)."""
    updated_at: float | None = None
    """Last status change."""
    expires_at: float | None = None
    """End of the undo window."""
    status: UndoStatus
    """Stored status."""
    state: str
    """What the entry is now: the status, or `expired` for a `done`/`failed` entry past its
    window."""
    seconds_left: float | None = None
    """Seconds left in the undo window (None when no longer undoable)."""
    undone_at: float | None = None
    """When the compensation succeeded."""
    undone_by: str | None = None
    """Who ran the last undo (`--as`)."""
    undo_attempts: int = 0
    """Attempts the compensation has made so far (rows `STEP.undo` in `attempts`)."""
    result: Any = None
    """Output of the compensation."""
    error: str | None = None
    """Why the action or its undo failed, or why the entry is not undoable / uncertain."""
