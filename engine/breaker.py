"""Circuit breakers per agent and per host, persisted in the `breakers` table.

```
closed --(N failures in a row, or failure ratio over the window)--> open
open --(cooldown elapsed; next call asks)--> half_open --(trial succeeded)--> closed
half_open --(trial failed)--> open          open/half_open --(operator reset)--> closed
```

Every attempt of a guarded step asks `Breakers.admit` first: while a circuit is open the attempt
fails at once with `ErrorClass.CIRCUIT_OPEN` ("circuit open: ...", `retry_after` = time left of
the cool-down) without calling the service; the retry policy counts it like any failed attempt.
After the call `Breakers.record` tells each breaker how it went. Only failures that say something
about the service count (`failure_kind`): timeouts, connection errors, HTTP 5xx/408/429, shell
exit codes and agent crashes; an HTTP 4xx means the service answered (a success for the breaker);
validation errors, cancellations and fast failures count for nothing.

Keys: `agent:ID` for every guarded agent, plus `host:HOST:PORT` for agents that call a network
service (`Agent.endpoint()`), so every agent pointing at a host that is down stops calling it.
A breaker shared by several agents takes the settings of the first one that used it.

Each transition is written to `breakers` (state, consecutive failures, trial successes,
opened_at, updated_at, `detail` = the reason in words, `retry_at` = end of the cool-down) and
emitted as a
`breaker.opened` / `breaker.half_open` / `breaker.closed` event, so another process sees it;
the engine loads the table on start (a restart keeps open circuits open) and re-reads it when
the database changed, which is how an operator's `flowdeck breakers reset KEY` or another
engine's transition reaches it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from engine.errors import ErrorClass, StepError
from engine.models import BreakerSpec
from engine.retries import SlidingCount

if TYPE_CHECKING:
    import sqlite_utils

    from engine.agents.base import Agent
    from engine.events import EventLog
    from engine.store import Store

DEFAULT_SPEC = BreakerSpec()

BREAKER_UPSERT = (
    "INSERT INTO breakers(key, agent, state, failures, successes, opened_at, updated_at, detail, "
    "retry_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET agent=excluded.agent, "
    "state=excluded.state, failures=excluded.failures, successes=excluded.successes, "
    "opened_at=excluded.opened_at, updated_at=excluded.updated_at, detail=excluded.detail, "
    "retry_at=excluded.retry_at"
)


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Calls go through; failures are counted."""
    OPEN = "open"
    """Calls fail fast until the cool-down ends."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls go through; the first outcome decides."""


_B = BreakerState
BREAKER_TRANSITIONS: dict[BreakerState, frozenset[BreakerState]] = {
    _B.CLOSED: frozenset({_B.OPEN}),
    _B.OPEN: frozenset({_B.HALF_OPEN, _B.CLOSED}),
    _B.HALF_OPEN: frozenset({_B.CLOSED, _B.OPEN}),
}
"""Allowed breaker transitions (open -> closed only by an operator's reset)."""

FAILURE, SUCCESS, NEUTRAL = "failure", "success", "neutral"


def failure_kind(error: BaseException | None) -> str:
    """How an attempt's outcome counts for a breaker: FAILURE, SUCCESS or NEUTRAL."""
    if error is None:
        return SUCCESS
    if not isinstance(error, StepError):
        return FAILURE
    cls = error.error_class
    if cls is ErrorClass.HTTP:
        status = error.status or 0
        return FAILURE if status >= 500 or status in (408, 429) else SUCCESS
    if cls in (
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECTION,
        ErrorClass.EXIT_CODE,
        ErrorClass.INTERNAL,
    ):
        return FAILURE
    return NEUTRAL


@dataclass(slots=True, eq=False)
class Breaker:
    """One circuit breaker's state in this engine."""

    key: str
    """`agent:ID` or `host:HOST:PORT`."""
    agent: str | None
    """The agent that created it (for the console)."""
    spec: BreakerSpec
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    """Failures in a row (reset by a success)."""
    trial_successes: int = 0
    trials: int = 0
    """Trial calls in flight while half-open (local to this engine)."""
    opened_at: float | None = None
    updated_at: float = 0.0
    reason: str | None = None
    calls: SlidingCount = field(init=False)
    failed: SlidingCount = field(init=False)

    def __post_init__(self) -> None:
        self.calls = SlidingCount(self.spec.window)
        self.failed = SlidingCount(self.spec.window)

    @property
    def label(self) -> str:
        kind, _, name = self.key.partition(":")
        return f"{kind} {name}"

    def retry_at(self) -> float | None:
        if self.state is BreakerState.OPEN and self.opened_at is not None:
            return self.opened_at + self.spec.cooldown
        return None

    def open_error(self, wait: float | None) -> StepError:
        if wait is None:
            detail = "half-open, trial call in progress"
        else:
            detail = f"{self.reason}; next trial in {wait:.1f} s"
        return StepError(
            f"circuit open: {self.label} ({detail})",
            ErrorClass.CIRCUIT_OPEN,
            retryable=True,
            retry_after=wait,
        )


class Breakers:
    """The breakers of one engine, keyed by `agent:ID` / `host:HOST:PORT`."""

    READ_ROWS = "SELECT * FROM breakers"
    """Every row, as `load` takes them."""

    def __init__(self, store: Store, events: EventLog, clock: Callable[[], float] = time.time):
        self.store = store
        self.events = events
        self.clock = clock
        self.by_key: dict[str, Breaker] = {}
        self._rows: dict[str, dict[str, Any]] = {}
        """Rows read from the table, applied when a breaker of that key is first used."""

    # ------------------------------------------------------------------ building

    def for_agent(self, agent_id: str, agent: Agent) -> tuple[Breaker, ...]:
        """The breakers guarding calls of `agent` (empty when it has none)."""
        spec = agent.spec.breaker
        if spec is None:
            if not agent.network:
                return ()
            spec = DEFAULT_SPEC
        if not spec.enabled:
            return ()
        keys = [f"agent:{agent_id}"]
        endpoint = agent.endpoint()
        if endpoint:
            keys.append(f"host:{endpoint}")
        return tuple(self._get(key, agent_id, spec) for key in keys)

    def _get(self, key: str, agent_id: str, spec: BreakerSpec) -> Breaker:
        b = self.by_key.get(key)
        if b is None:
            b = self.by_key[key] = Breaker(key, agent_id, spec)
            row = self._rows.pop(key, None)
            if row is not None:
                self._apply(b, row)
        return b

    def any_open(self) -> bool:
        """Whether some breaker of this engine is open or half-open."""
        return any(b.state is not BreakerState.CLOSED for b in self.by_key.values())

    # ------------------------------------------------------------------ the call path

    def admit(
        self, guards: Sequence[Breaker], run_id: str | None, step_id: str | None
    ) -> list[bool]:
        """Let a call through every breaker or raise `StepError(CIRCUIT_OPEN)`.

        Returns, per breaker, whether the call is one of its half-open trials.
        """
        trials: list[bool] = []
        for b in guards:
            if b.state is BreakerState.CLOSED:
                trials.append(False)
                continue
            if b.state is BreakerState.OPEN:
                wait = (b.opened_at or 0.0) + b.spec.cooldown - self.clock()
                if wait > 0:
                    self.release(guards, trials)
                    raise b.open_error(wait)
                b.trial_successes = 0
                self._move(b, BreakerState.HALF_OPEN, run_id, step_id, reason=b.reason)
            if b.trials >= b.spec.trial_calls:
                self.release(guards, trials)
                raise b.open_error(None)
            b.trials += 1
            trials.append(True)
        return trials

    def release(self, guards: Sequence[Breaker], trials: Sequence[bool]) -> None:
        """Give back trial slots of a call that ended without an outcome (e.g. cancelled)."""
        for b, trial in zip(guards, trials, strict=False):
            if trial and b.trials > 0:
                b.trials -= 1

    def record(
        self,
        guards: Sequence[Breaker],
        trials: Sequence[bool],
        error: BaseException | None,
        run_id: str | None,
        step_id: str | None,
    ) -> None:
        """Tell each breaker how the call it let through went."""
        kind = failure_kind(error)
        self.release(guards, trials)
        if kind == NEUTRAL:
            return
        now = self.clock()
        for b in guards:
            if kind == SUCCESS:
                b.calls.add(now)
                self._success(b, run_id, step_id)
            else:
                self._failure(b, now, str(error), run_id, step_id)

    def _success(self, b: Breaker, run_id: str | None, step_id: str | None) -> None:
        if b.state is BreakerState.CLOSED:
            if b.consecutive:  # writes only when a failure streak ends
                b.consecutive = 0
                self._write(b)
            return
        if b.state is BreakerState.HALF_OPEN:
            b.consecutive = 0
            b.trial_successes += 1
            if b.trial_successes >= b.spec.successes:
                self._move(b, BreakerState.CLOSED, run_id, step_id, reason="trial call succeeded")
            else:
                self._write(b)
        # OPEN: a call let through before the circuit opened answered late; it proves little.

    def _failure(
        self, b: Breaker, now: float, error: str, run_id: str | None, step_id: str | None
    ) -> None:
        b.calls.add(now)
        b.failed.add(now)
        b.consecutive += 1
        if b.state is BreakerState.HALF_OPEN:
            self._open(b, now, f"trial call failed: {error}", run_id, step_id)
        elif b.state is BreakerState.CLOSED:
            spec = b.spec
            calls = b.calls.total(now)
            failed = b.failed.total(now)
            if b.consecutive >= spec.failures:
                self._open(
                    b, now, f"{b.consecutive} failures in a row, last: {error}", run_id, step_id
                )
            elif calls >= spec.min_calls and failed / calls >= spec.failure_ratio:
                self._open(
                    b, now, f"{failed} of {calls} calls failed in {spec.window:g} s, last: {error}",
                    run_id, step_id,
                )  # fmt: skip
            else:
                self._write(b)

    def _open(
        self, b: Breaker, now: float, reason: str, run_id: str | None, step_id: str | None
    ) -> None:
        b.opened_at = now
        b.trial_successes = 0
        self._move(b, BreakerState.OPEN, run_id, step_id, reason=reason)

    # ------------------------------------------------------------------ persistence

    def _move(
        self,
        b: Breaker,
        state: BreakerState,
        run_id: str | None,
        step_id: str | None,
        *,
        reason: str | None,
    ) -> None:
        if state not in BREAKER_TRANSITIONS[b.state]:
            raise RuntimeError(f"breaker {b.key} cannot go from {b.state} to {state}")
        previous = b.state
        b.state = state
        b.reason = reason
        if state is BreakerState.CLOSED:
            b.consecutive = 0
            b.opened_at = None
            b.calls = SlidingCount(b.spec.window)
            b.failed = SlidingCount(b.spec.window)
        self._write(b)
        name = {"open": "opened", "half_open": "half_open", "closed": "closed"}[state.value]
        self.events.emit(
            f"breaker.{name}",
            run_id,
            step_id,
            key=b.key,
            agent=b.agent,
            previous=previous.value,
            reason=reason,
            failures=b.consecutive,
            retry_at=b.retry_at(),
        )

    def _write(self, b: Breaker) -> None:
        b.updated_at = self.clock()
        self.store.execute(
            BREAKER_UPSERT,
            (
                b.key,
                b.agent,
                b.state.value,
                b.consecutive,
                b.trial_successes,
                b.opened_at,
                b.updated_at,
                b.reason,
                b.retry_at(),
            ),
        )

    def load(self, rows: Sequence[dict[str, Any]]) -> None:
        """Apply rows read from the `breakers` table (on start, and when another process
        wrote). A row newer than this engine's own state wins."""
        for row in rows:
            b = self.by_key.get(row["key"])
            if b is None:
                self._rows[row["key"]] = row
            elif (row["updated_at"] or 0) > b.updated_at:
                self._apply(b, row)

    @staticmethod
    def _apply(b: Breaker, row: dict[str, Any]) -> None:
        try:
            state = BreakerState(row["state"])
        except ValueError:
            return
        b.state = state
        b.consecutive = row["failures"] or 0
        b.trial_successes = row["successes"] or 0
        b.opened_at = row["opened_at"]
        b.updated_at = row["updated_at"] or 0.0
        b.reason = row["detail"]
        if state is BreakerState.CLOSED:
            b.calls = SlidingCount(b.spec.window)
            b.failed = SlidingCount(b.spec.window)

    @staticmethod
    def read_rows(db: sqlite_utils.Database) -> list[dict[str, Any]]:
        return list(db.query(Breakers.READ_ROWS))


# --------------------------------------------------------------------------- other processes


def list_breakers(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every breaker row, open ones first."""
    return list(
        db.query(
            "SELECT * FROM breakers ORDER BY CASE state WHEN 'open' THEN 0 "
            "WHEN 'half_open' THEN 1 ELSE 2 END, key"
        )
    )


def reset_breaker(db: sqlite_utils.Database, key: str, *, now: float, by: str = "operator") -> bool:
    """Close a breaker from any process (run inside `store.run`); False if there is no such key.
    Engines pick the change up when they next re-read the table."""
    row = next(iter(db.query("SELECT state FROM breakers WHERE key = ?", [key])), None)
    if row is None:
        return False
    db.execute(
        "UPDATE breakers SET state='closed', failures=0, successes=0, opened_at=NULL, "
        "retry_at=NULL, updated_at=?, detail=? WHERE key=?",
        (now, f"reset by {by}", key),
    )
    db.execute(
        "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?, NULL, NULL, ?, ?)",
        (
            now,
            "breaker.closed",
            json.dumps({"key": key, "previous": row["state"], "reason": f"reset by {by}"}),
        ),
    )
    return True
