"""Error types shared by the engine.

Every failure of a step attempt is a `StepError` carrying an `error_class`, which is what the
retry policy, the circuit breakers and the analytics look at. Agents raise these; the runner
turns anything else into `ErrorClass.INTERNAL`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    """Why an attempt failed. Stored in `attempts.error_class`."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    HTTP = "http"
    EXIT_CODE = "exit_code"
    VALIDATION = "validation"
    CANCELLED = "cancelled"
    CIRCUIT_OPEN = "circuit_open"
    BUDGET = "budget"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"
    """The engine stopped (crash, kill, forced stop) while the attempt was in flight: its
    outcome is unknown."""
    INTERNAL = "internal"


class FlowdeckError(Exception):
    """Base of all errors the engine raises on purpose."""


class WorkflowError(FlowdeckError):
    """A workflow file or its inputs are invalid. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class InputError(FlowdeckError):
    """Bad input given by a user (arguments, run inputs, API bodies)."""


class NotFound(FlowdeckError):
    """A run, step, review or undo entry that does not exist."""


class Conflict(FlowdeckError):
    """A compare-and-set lost: already decided, already undone, expired, owned by someone else."""


class DatabaseError(FlowdeckError):
    """The database file is unusable: not SQLite, corrupt, locked, newer schema, unwritable."""


class StepError(FlowdeckError):
    """One attempt of a step failed.

    `retryable` is the agent's classification; the retry policy has the last word.
    `retry_after` (seconds) comes from an HTTP `Retry-After` header when there was one.
    """

    def __init__(
        self,
        message: str,
        error_class: ErrorClass = ErrorClass.INTERNAL,
        *,
        retryable: bool = False,
        status: int | None = None,
        exit_code: int | None = None,
        retry_after: float | None = None,
        output: object | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.error_class = ErrorClass(error_class)
        self.retryable = retryable
        self.status = status
        self.exit_code = exit_code
        self.retry_after = retry_after
        self.output = output

    def __str__(self) -> str:
        return self.message
