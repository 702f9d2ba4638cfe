"""Retry policy -> tenacity. The only module that imports tenacity.

The first attempt runs directly (no tenacity objects are built when nothing fails, which keeps
the hot path cheap); after a failure worth retrying, tenacity drives the remaining attempts with
the policy's wait shape, and `on_retry` is told the attempt number and the wait before each one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
    wait_none,
    wait_random_exponential,
)

from engine.errors import ErrorClass, StepError
from engine.models import RetryPolicy

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def should_retry(policy: RetryPolicy, error: BaseException) -> bool:
    """Whether `error` is worth another attempt under `policy`."""
    if not isinstance(error, StepError):
        return False
    cls = error.error_class
    if cls.value in policy.on_error:
        return True
    if cls in (ErrorClass.CANCELLED, ErrorClass.VALIDATION, ErrorClass.BUDGET, ErrorClass.REJECTED):
        return False
    if cls is ErrorClass.EXIT_CODE:
        return error.exit_code in policy.on_exit_codes
    if cls is ErrorClass.HTTP:
        return error.status in RETRY_STATUS
    if cls in (ErrorClass.TIMEOUT, ErrorClass.CONNECTION, ErrorClass.CIRCUIT_OPEN):
        return True
    return error.retryable


def _wait(policy: RetryPolicy):
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
    base = _wait(policy)(state)
    outcome = state.outcome
    error = outcome.exception() if outcome is not None and outcome.failed else None
    if isinstance(error, StepError) and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), policy.max)
    return min(base, policy.max)


async def run_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    *,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Call `attempt(n)` for n = 1.. until it returns, the policy gives up or the error is final.

    `on_retry(next_number, error, wait_seconds)` runs before each wait.
    The last error is raised as is.
    """
    try:
        return await attempt(1)
    except StepError as first:
        if policy.attempts <= 1 or not should_retry(policy, first):
            raise
        first_error = first

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.attempt_number + 1, state.outcome.exception(), state.upcoming_sleep)

    async def _sleep(seconds: float) -> None:
        await sleep(seconds)

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
            return await attempt(tenacity_attempt.retry_state.attempt_number)
    raise AssertionError("unreachable")  # pragma: no cover
