"""Retry policy -> tenacity, error classification, retry budgets. The only module that imports
tenacity.

The first attempt runs directly (tenacity is not even imported until something fails, which
keeps start-up and the hot path cheap); after a failure worth retrying, tenacity drives the
remaining attempts with the policy's wait shape, and `on_retry` is told the attempt number and
the wait before each one.

Which errors are worth another attempt (`should_retry`):

| error class | retried |
| --- | --- |
| `timeout`, `connection`, `circuit_open` | yes |
| `http` | 408, 429, 500, 502, 503, 504; any other status never |
| `exit_code` | only codes listed in `retry.on_exit_codes` |
| `validation`, `cancelled`, `rejected`, `budget`, `interrupted` | never (unless in `retry.on_error`) |
| `internal` | when the agent said so |

A `RetryBudget` caps retries over a sliding window: `retries < min_retries + ratio * first
attempts`. The runner keeps one per run and one per agent; an exhausted budget turns the error
that wanted a retry into a final `ErrorClass.BUDGET` error saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from engine.errors import ErrorClass, StepError
from engine.models import RetryBudgetSpec, RetryPolicy

if TYPE_CHECKING:  # tenacity is imported when a retry is first needed (not at start-up)
    from tenacity import RetryCallState

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_NEVER = frozenset(
    {
        ErrorClass.CANCELLED,
        ErrorClass.VALIDATION,
        ErrorClass.BUDGET,
        ErrorClass.REJECTED,
        ErrorClass.INTERRUPTED,
    }
)


def should_retry(policy: RetryPolicy, error: BaseException) -> bool:
    """Whether `error` is worth another attempt under `policy`."""
    if not isinstance(error, StepError):
        return False
    cls = error.error_class
    if cls.value in policy.on_error:
        return True
    if cls in _NEVER:
        return False
    if cls is ErrorClass.EXIT_CODE:
        return error.exit_code in policy.on_exit_codes
    if cls is ErrorClass.HTTP:
        return error.status in RETRY_STATUS
    if cls in (ErrorClass.TIMEOUT, ErrorClass.CONNECTION, ErrorClass.CIRCUIT_OPEN):
        return True
    return error.retryable


def _wait(policy: RetryPolicy):
    from tenacity import wait_exponential, wait_fixed, wait_none, wait_random_exponential

    if policy.backoff in ("immediate", "none"):
        return wait_none()
    if policy.backoff == "fixed":
        return wait_fixed(policy.initial)
    if policy.jitter:
        return wait_random_exponential(
            multiplier=policy.initial, max=policy.max, exp_base=policy.multiplier
        )
    return wait_exponential(multiplier=policy.initial, max=policy.max, exp_base=policy.multiplier)


def wait_for(policy: RetryPolicy, state: RetryCallState) -> float:
    """Seconds before the next attempt: the policy's shape, or `Retry-After` capped by `max`."""
    outcome = state.outcome
    error = outcome.exception() if outcome is not None and outcome.failed else None
    if isinstance(error, StepError) and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), policy.max)
    return min(_wait(policy)(state), policy.max)


async def run_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    *,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    allow: Callable[[StepError], str | None] | None = None,
    first_error: StepError | None = None,
) -> T:
    """Call `attempt(n)` for n = 1.. until it returns, the policy gives up or the error is final.

    `allow(error)` is asked before each retry the policy wants; it returns None to go on or a
    message, which ends the step with an `ErrorClass.BUDGET` error carrying that message.
    `on_retry(next_number, error, wait_seconds)` runs before each wait.
    The last error is raised as is. `first_error`: attempt 1 was made by the caller and failed
    with it (callers whose first attempt usually succeeds skip this function's set-up then).
    """
    if first_error is None:
        try:
            return await attempt(1)
        except StepError as first:
            first_error = first
    if policy.attempts <= 1 or not should_retry(policy, first_error):
        raise first_error
    _check_allowed(allow, first_error)

    async def guarded(n: int) -> T:
        try:
            return await attempt(n)
        except StepError as e:
            if n < policy.attempts and should_retry(policy, e):
                _check_allowed(allow, e)
            raise

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.attempt_number + 1, state.outcome.exception(), state.upcoming_sleep)

    async def _sleep(seconds: float) -> None:
        await sleep(seconds)

    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    # Attempt 1 already happened: tenacity's first "attempt" replays its error so the
    # wait before attempt 2 follows the same shape as every other wait.
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=lambda state: wait_for(policy, state),
        retry=retry_if_exception(lambda e: should_retry(policy, e)),
        before_sleep=before_sleep,
        sleep=_sleep,
        reraise=True,
    )
    replayed = False
    async for tenacity_attempt in retrying:
        with tenacity_attempt:
            if not replayed:
                replayed = True
                raise first_error
            return await guarded(tenacity_attempt.retry_state.attempt_number)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_allowed(allow: Callable[[StepError], str | None] | None, error: StepError) -> None:
    if allow is None:
        return
    refusal = allow(error)
    if refusal is not None:
        raise StepError(f"{refusal} (last error: {error.message})", ErrorClass.BUDGET) from error


# --------------------------------------------------------------------------- budgets


class SlidingCount:
    """Events counted over the last `window` seconds, in `buckets` slices (cheap to add to)."""

    __slots__ = ("counts", "head", "n", "width")

    def __init__(self, window: float, buckets: int = 10):
        self.n = buckets
        self.width = window / buckets
        self.counts = [0] * buckets
        self.head: int | None = None
        """Absolute index of the newest slice."""

    def _advance(self, now: float) -> int:
        b = int(now // self.width)
        head = self.head
        if head is None:
            self.head = head = b
        elif b > head:
            counts, n = self.counts, self.n
            for i in range(head + 1, head + 1 + min(b - head, n)):
                counts[i % n] = 0
            self.head = head = b
        return head

    def add(self, now: float, k: int = 1) -> None:
        self.counts[self._advance(now) % self.n] += k

    def total(self, now: float) -> int:
        self._advance(now)
        return sum(self.counts)


class RetryBudget:
    """At most `min_retries + ratio * first attempts` retries over a sliding window."""

    __slots__ = ("firsts", "name", "retries", "spec")

    def __init__(self, spec: RetryBudgetSpec, name: str):
        self.spec = spec
        self.name = name
        """What the budget belongs to, for messages: `run 3f2a...` or `agent github`."""
        self.firsts = SlidingCount(spec.window)
        self.retries = SlidingCount(spec.window)

    def first(self, now: float) -> None:
        """Count a first attempt (it earns `ratio` retries)."""
        self.firsts.add(now)

    def allowed(self, now: float) -> int:
        """Retries the window allows in all."""
        return self.spec.min_retries + int(self.spec.ratio * self.firsts.total(now))

    def has_room(self, now: float) -> bool:
        """Whether one more retry fits."""
        return self.retries.total(now) < self.allowed(now)

    def take(self, now: float) -> None:
        """Count a retry."""
        self.retries.add(now)

    def refusal(self, now: float) -> str:
        spec = self.spec
        return (
            f"retry budget of {self.name} exhausted: {self.retries.total(now)} retries for "
            f"{self.firsts.total(now)} first attempts in the last {spec.window:g} s "
            f"(allowed: {spec.min_retries} + {spec.ratio:.0%} of first attempts)"
        )
