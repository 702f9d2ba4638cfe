"""Analytics: success rates, latency percentiles, health score, rankings and error patterns.

`compute(db, since=..., now=...)` reads one consistent snapshot of the store (one read
transaction) and returns an `AnalyticsSnapshot`. It works in two stages: `measure()` runs the
SQL (the only stage that touches the database) and `assemble()` turns the measurements into the
report (pure Python on a few hundred rows). The reference implementation in `bench/analytics.py`
measures the same things by loading every row, and the tests check both agree.

Definitions
-----------
* The window is every attempt with `started_at >= since` (`since=None`: everything kept).
  Runs count by `created_at`, steps by `ended_at`, reviews by `decided_at` (decisions) or
  `created_at` (by status), undo entries and routing decisions by `created_at`, all `>= since`.
* A *call* is a finished attempt, `succeeded` or `failed`. Cancelled attempts are counted apart
  and are not calls; attempts still `running` are not counted at all.
  Success rate = succeeded / calls. Retries = calls with `number > 1`.
  Errors by class count failed calls by `error_class` (`unknown` when empty).
* Latency (mean, P50, P95, P99) is over calls with a `duration_ms`.
* **Percentiles use the nearest-rank method**: sort the n values ascending; Pp is the value at
  1-based rank ceil(p * n / 100). It is always a measured value (no interpolation):
  for [10, 20, 30, 40] P50 = 20, P95 = P99 = 40; for one value every percentile is that value.
  The median time to a review decision is the nearest-rank P50 of `decided_at - created_at`.
* Usage by hour is by UTC hour of day (0-23) of `started_at`.
* Error patterns: messages are normalised by `normalize_error` (ids such as UUIDs, runs of 8+
  hex digits and other words mixing letters and digits become `<id>`, `0x..` becomes `<hex>`,
  other numbers `<n>`, whitespace is collapsed), grouped by (error class, pattern), and the `top` biggest groups
  are reported. They are computed from the
  newest `error_sample` failed calls of the window (`errors_sampled` says how many were looked
  at; counts by class are always exact).
* Rankings: agents with at least `min_calls` calls, best success rate first, ties broken by
  lower P95 then name. Slowest agents: the same agents by P95, highest first (top N).
* Time series: one point per minute for the last `series_minutes` minutes up to `now` (not
  before `since`), each with calls, errors, error rate and nearest-rank P50/P95/P99.

Health score
------------
score = sum of weight x value over four components, each value in [0, 1] (100 = all healthy):

| component | weight | value |
| --- | --- | --- |
| success  | 40 | 1 - error_rate / 0.25, clamped to [0, 1] (error_rate = failed / calls) |
| latency  | 30 | calls-weighted mean over agents of min(1, SLO / P95) |
| breakers | 20 | 1 - (open + 0.5 x half_open) / breakers |
| reviews  | 10 | 1 - overdue / pending |

A component with nothing to measure (no calls, no breakers, no pending review) is 1. The SLO of
an agent is `slo_ms[agent]`, else `default_slo_ms`. A review is overdue when it is pending and
past its `expires_at`, or older than `overdue_after` seconds. Status: healthy >= 90, degraded
>= 70, else unhealthy. Every component is reported with its points and a one-line reason.

Performance
-----------
Nothing here loads every attempt. Counts, sums, errors by class, operations, tokens and usage by
hour come from `attempt_rollup` (per hour and per day) and `attempt_hours`, kept exact by
triggers on `attempts` (migration 0002): whole days and hours of the window are read from the
rollup, and only the partial hours at its edges from `attempts`. Percentiles are read at their
rank from the partial index `attempts_latency (agent, duration_ms, started_at)` with
`ORDER BY ... LIMIT 1 OFFSET rank` (walking from whichever end is nearer; over all time the
`latency_hist` table, exact per agent and duration bucket, says which bucket holds the rank, so
only that bucket is stepped through), or, for windows
holding at most `percentile_sort_share` of all calls (e.g. the last hour of a month), by one
window-function query over the window's rows.
"""

from __future__ import annotations

import functools
import math
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from engine.errors import InputError

PERCENTILES = (50, 95, 99)
"""The latency percentiles reported, in percent."""
DEFAULT_SLO_MS = 2000.0
"""P95 latency an agent should stay under when `slo_ms` does not name it."""
ERROR_RATE_FLOOR = 0.25
"""Error rate at which the success component of the health score reaches 0."""
HEALTH_WEIGHTS = {"success": 40.0, "latency": 30.0, "breakers": 20.0, "reviews": 10.0}
"""Points each health component is worth (they add up to 100)."""
NO_AGENT = "(none)"
"""Name shown for attempts without an agent."""

_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CALL = ("succeeded", "failed")


def parse_window(text: str, *, allow_all: bool = True) -> float | None:
    """Seconds in a window such as `15m`, `1h`, `24h`, `7d` (also `s` and `w`); `all` -> None."""
    value = (text or "").strip().lower()
    if value == "all" and allow_all:
        return None
    m = _WINDOW_RE.match(value)
    if not m or float(m.group(1)) <= 0:
        choices = "15m, 1h, 24h, 7d" + (" or all" if allow_all else "")
        raise InputError(
            f"'{text}' is not a time window; use a number with s/m/h/d/w, e.g. {choices}"
        )
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def since_for(window: str, now: float) -> float | None:
    """`since` for a window label at `now` (None for `all`)."""
    seconds = parse_window(window)
    return None if seconds is None else now - seconds


# --------------------------------------------------------------------------- error patterns

_TOKEN = re.compile(r"\b(?:[\w-]*\d[\w.-]*|[0-9a-fA-F]{8,}\b)")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_HEXWORD = re.compile(r"[0-9a-fA-F]{8,}")


def _token(m: re.Match[str]) -> str:
    word = m.group()
    if word[:2] in ("0x", "0X"):
        return "<hex>"
    if _HEXWORD.fullmatch(word) or (
        len(word) >= 6 and not word.isdigit() and any(c.isalpha() for c in word)
    ):
        return "<id>"
    return _NUMBER.sub("<n>", word)


@functools.lru_cache(maxsize=50_000)
def normalize_error(message: str | None, *, limit: int = 200) -> str:
    """The shape of an error message, with what varies between occurrences taken out.

    Words (runs of letters, digits, `_` and `-`) are replaced when they vary: `0x1f` ->
    `<hex>`; 8+ hex digits (`3fa9c2d1`, `deadbeef`, `12345678`) or 6+ characters mixing letters
    and digits (a UUID, `req_8f2k1x`, `agent-07`) -> `<id>`; otherwise each number in a word
    (`503`, `2.5`, `10.0.0.1`) -> `<n>`. Runs of whitespace become one space and the result is
    cut to `limit` characters.
    """
    return " ".join(_TOKEN.sub(_token, message or "").split())[:limit]


# --------------------------------------------------------------------------- result models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentStats(_Model):
    """Performance of one agent over the window."""

    agent: str
    """Agent id from the workflow file (`(none)` for attempts without one)."""
    calls: int
    """Finished attempts (succeeded + failed)."""
    successes: int
    """Attempts that succeeded."""
    failures: int
    """Attempts that failed."""
    cancelled: int
    """Attempts cancelled by an operator or shutdown (not calls)."""
    success_rate: float | None
    """successes / calls; None without calls."""
    retries: int
    """Calls that were not a step's first attempt (`number > 1`)."""
    mean_ms: float | None
    """Mean duration of calls in milliseconds."""
    p50_ms: float | None
    """Median call duration (nearest rank)."""
    p95_ms: float | None
    """95th percentile call duration (nearest rank)."""
    p99_ms: float | None
    """99th percentile call duration (nearest rank)."""
    errors: dict[str, int]
    """Failed calls by error class, biggest first."""
    prompt_tokens: int
    """LLM prompt tokens used."""
    completion_tokens: int
    """LLM completion tokens used."""
    slo_ms: float
    """The P95 latency this agent should stay under."""
    within_slo: bool | None
    """P95 <= SLO; None without timed calls."""


class Totals(_Model):
    """All agents together."""

    calls: int
    """Finished attempts (succeeded + failed)."""
    successes: int
    """Attempts that succeeded."""
    failures: int
    """Attempts that failed."""
    cancelled: int
    """Attempts cancelled."""
    success_rate: float | None
    """successes / calls."""
    retries: int
    """Calls with `number > 1`."""
    mean_ms: float | None
    """Mean call duration."""
    errors: dict[str, int]
    """Failed calls by error class, biggest first."""
    prompt_tokens: int
    """LLM prompt tokens."""
    completion_tokens: int
    """LLM completion tokens."""
    total_tokens: int
    """prompt + completion tokens."""


class OperationStats(_Model):
    """How often one operation of one agent was called."""

    agent: str
    """Agent id."""
    operation: str | None
    """Operation name (e.g. `POST /issues`); None when the agent reports none."""
    calls: int
    """Finished attempts."""
    failures: int
    """Failed attempts."""
    success_rate: float | None
    """(calls - failures) / calls."""


class HourUsage(_Model):
    """Calls started in one hour of the day, over the whole window."""

    hour: int
    """Hour of day, 0-23, UTC."""
    calls: int
    """Finished attempts started in that hour."""
    failures: int
    """Of which failed."""


class RunStats(_Model):
    """Runs created and steps ended in the window."""

    total: int
    """Runs created in the window."""
    by_status: dict[str, int]
    """Those runs by current status."""
    steps_ended: int
    """Steps that ended (any final status) in the window."""
    steps_per_second: float | None
    """steps_ended / window_seconds."""


class ReviewStats(_Model):
    """Human review gates."""

    pending: int
    """Reviews waiting for a decision now (whatever the window)."""
    overdue: int
    """Pending reviews past `expires_at` or older than `overdue_after`."""
    created: int
    """Reviews opened in the window."""
    by_status: dict[str, int]
    """Reviews opened in the window by current status."""
    decided: int
    """Decisions made in the window (any non-pending status with `decided_at`)."""
    approved: int
    """Of which approved."""
    rejected: int
    """Of which rejected."""
    approval_rate: float | None
    """approved / (approved + rejected)."""
    median_decision_s: float | None
    """Nearest-rank median of `decided_at - created_at` over the decisions, in seconds."""
    auto_approved: int
    """Approvals made automatically from learned preferences (`auto = 1`)."""
    auto_approved_share: float | None
    """auto_approved / approved."""


class UndoStats(_Model):
    """The undo log."""

    recorded: int
    """Undo entries created in the window."""
    by_status: dict[str, int]
    """Those entries by status (prepared, done, void, undoing, undone, failed)."""
    undone: int
    """Entries of the window that were undone."""
    undoable_now: int
    """Entries (any age) that can be undone right now: `done` and not expired."""


class RoutingStats(_Model):
    """Confidence routing decisions."""

    decisions: int
    """Routing decisions made in the window."""
    overridden: int
    """Decisions where the operator picked another route."""
    override_rate: float | None
    """overridden / decisions."""
    best_chosen: int
    """Decisions that went to the best-scored route."""
    by_choice: dict[str, int]
    """Decisions by chosen route, biggest first."""


class BreakerStats(_Model):
    """Circuit breakers now."""

    total: int
    """Breakers known (one per agent or endpoint that has been called)."""
    open: int
    """Open: calls fail fast."""
    half_open: int
    """Half-open: trial calls only."""
    open_keys: list[str]
    """Keys of the open breakers."""


class ErrorPattern(_Model):
    """A group of failed calls whose messages have the same shape."""

    error_class: str
    """Error class of the group."""
    pattern: str
    """Normalised message (see `normalize_error`)."""
    count: int
    """Failed calls in the group (within the sample)."""
    agents: list[str]
    """Agents that failed this way."""
    first_seen: float
    """`started_at` of the oldest call in the group."""
    last_seen: float
    """`started_at` of the newest call in the group."""
    example: str
    """The newest raw message of the group."""


class RankedAgent(_Model):
    """One line of a ranking."""

    rank: int
    """1 is best (rankings) or slowest (slowest)."""
    agent: str
    """Agent id."""
    calls: int
    """Calls in the window."""
    success_rate: float | None
    """successes / calls."""
    p95_ms: float | None
    """P95 latency."""


class TimeSeriesPoint(_Model):
    """One minute of calls, for plotting."""

    t: float
    """Start of the minute (epoch seconds)."""
    calls: int
    """Calls started in the minute."""
    errors: int
    """Of which failed."""
    error_rate: float | None
    """errors / calls."""
    p50_ms: float | None
    """Nearest-rank P50 of the minute's calls."""
    p95_ms: float | None
    """Nearest-rank P95."""
    p99_ms: float | None
    """Nearest-rank P99."""


class HealthComponent(_Model):
    """One term of the health score."""

    name: Literal["success", "latency", "breakers", "reviews"]
    """Which component."""
    weight: float
    """Points it is worth."""
    value: float
    """0 (bad) to 1 (healthy)."""
    points: float
    """weight x value, rounded to 2 decimals."""
    detail: str
    """Why the value is what it is, in one line."""


class HealthReport(_Model):
    """The health score and what it is made of."""

    score: float
    """0-100, rounded to 1 decimal."""
    status: Literal["healthy", "degraded", "unhealthy"]
    """healthy >= 90, degraded >= 70, else unhealthy."""
    components: list[HealthComponent]
    """Each term of the score, in weight order."""


class AnalyticsSnapshot(_Model):
    """Everything `flowdeck stats` and `GET /api/analytics` show."""

    generated_at: float
    """The `now` the snapshot was computed for."""
    since: float | None
    """Start of the window (None: everything kept)."""
    window_seconds: float | None
    """now - since (for `all`: now - the first run's creation)."""
    health: HealthReport
    """The health score with its components."""
    totals: Totals
    """All agents together, with LLM tokens."""
    agents: list[AgentStats]
    """Per agent, most calls first."""
    runs: RunStats
    """Runs by status, steps per second."""
    reviews: ReviewStats
    """Review gates."""
    undo: UndoStats
    """The undo log."""
    routing: RoutingStats
    """Confidence routing."""
    breakers: BreakerStats
    """Circuit breakers now."""
    operations: list[OperationStats]
    """Most used operations (top N)."""
    usage_by_hour: list[HourUsage]
    """24 entries, UTC hour of day."""
    error_patterns: list[ErrorPattern]
    """Most common error shapes (top N)."""
    errors_sampled: int
    """Failed calls the error patterns were computed from (the newest ones)."""
    rankings: list[RankedAgent]
    """Agents with at least `min_calls` calls, best success rate first (ties: lower P95)."""
    slowest: list[RankedAgent]
    """The same agents by P95, slowest first (top N)."""
    series: list[TimeSeriesPoint]
    """Per minute, last `series_minutes` minutes."""


# --------------------------------------------------------------------------- measuring


@dataclass
class Options:
    """Knobs of a snapshot."""

    slo_ms: dict[str, float] = field(default_factory=dict)
    """P95 latency SLO per agent, in ms."""
    default_slo_ms: float = DEFAULT_SLO_MS
    """SLO of agents not in `slo_ms`."""
    min_calls: int = 10
    """Calls an agent needs to be ranked."""
    top: int = 10
    """Length of the error pattern, operation and slowest lists."""
    overdue_after: float = 3600.0
    """Seconds after which a pending review counts as overdue even without `expires_at`."""
    series_minutes: int = 60
    """Minutes in the time series."""
    error_sample: int = 2000
    """Newest failed calls the error patterns are computed from."""
    percentile_sort_share: float = 0.025
    """Windows holding at most this share of all timed calls get their percentiles from one
    sort of their rows; bigger ones (and `all`) read each percentile from the latency index."""


Group = tuple[str, str, str, str, int, int, int, float, int, int]
"""(agent, operation, status, error_class, retry, n, timed, sum_ms, prompt, completion); ''
stands for NULL in the text columns."""
FailureGroup = tuple[str, str, str, int, float, float]
"""(error_class, error, agent, count, first started_at, last started_at), '' for NULL."""


@dataclass
class Measurements:
    """What `measure()` reads from the database; `assemble()` turns it into the snapshot."""

    since: float | None
    now: float
    first_run_at: float | None
    """Creation time of the oldest run kept (window length of `all`)."""
    groups: list[Group]
    """Attempts of the window, not running, summed by (agent, operation, status, class, retry)."""
    percentiles: dict[str, tuple[float, ...]]
    """Agent -> nearest-rank values at PERCENTILES over its timed calls."""
    hours: dict[int, tuple[int, int]]
    """UTC hour of day -> (calls, failures)."""
    runs_by_status: dict[str, int]
    steps_ended: int
    reviews: ReviewStats
    undo: UndoStats
    routing: RoutingStats
    breakers: BreakerStats
    failures: list[FailureGroup]
    """The newest `error_sample` failed calls, grouped by raw message."""
    series: list[TimeSeriesPoint]


def rank_of(p: int, n: int) -> int:
    """1-based nearest rank of percentile `p` (integer percent) among `n` values."""
    return max(1, (p * n + 99) // 100)


def _bucket(t: float, size: int) -> int:
    """Same as SQL `CAST(t / size AS INTEGER)` (so Python and SQLite agree on edges)."""
    return int(t / size)


def _segments(since: float | None, now: float) -> tuple[list[tuple[str, list[Any]]], Any]:
    """How to read the window: SQL conditions on `attempts` for its partial hours, and the
    whole hours [lo, hi) to read from the rollup ("all" for everything, None for none).

    Hours are the buckets `CAST(started_at / 3600 AS INTEGER)` that the triggers use, so the
    rollup and the raw rows never overlap or miss a row, even at a float edge.
    """
    if since is None:
        return [], "all"
    h0 = _bucket(since, 3600) + 1  # first whole hour after `since`
    h1 = _bucket(now, 3600)  # the current hour: still filling, read raw
    if h0 >= h1:
        return [("started_at >= ?", [since])], None
    hour = "CAST(started_at / 3600 AS INTEGER)"
    head = (f"started_at >= ? AND started_at < ? AND {hour} < ?", [since, h0 * 3600 + 1, h0])
    tail = (f"started_at >= ? AND {hour} >= ?", [h1 * 3600 - 1, h1])
    return [head, tail], (h0, h1)


def _rollup_ranges(lo: int, hi: int) -> list[tuple[str, int, int]]:
    """Split hours [lo, hi) into whole days ('d') and the hours around them ('h')."""
    d_lo, d_hi = -(-lo // 24), hi // 24
    if d_lo >= d_hi:
        return [("h", lo, hi)]
    return [("h", lo, d_lo * 24), ("d", d_lo, d_hi), ("h", d_hi * 24, hi)]


def _groups(conn: sqlite3.Connection, since: float | None, now: float) -> list[Group]:
    raw, covered = _segments(since, now)
    columns = (
        "agent, operation, status, error_class, retry, n, timed, sum_ms, prompt_tokens, "
        "completion_tokens"
    )
    parts: list[str] = []
    params: list[Any] = []
    if covered == "all":  # already one row per key
        sql = f"SELECT {columns} FROM attempt_rollup WHERE grain = 't' AND bucket = 0 AND n <> 0"
        return [tuple(r) for r in conn.execute(sql)]  # type: ignore[misc]
    if covered is not None:
        for grain, lo, hi in _rollup_ranges(*covered):
            if lo < hi:
                parts.append(
                    f"SELECT {columns} FROM attempt_rollup "
                    "WHERE grain = ? AND bucket >= ? AND bucket < ?"
                )
                params += [grain, lo, hi]
    for cond, p in raw:
        parts.append(
            "SELECT coalesce(agent, '') AS agent, coalesce(operation, '') AS operation, status, "
            "coalesce(error_class, '') AS error_class, number > 1 AS retry, 1 AS n, "
            "duration_ms IS NOT NULL AS timed, coalesce(duration_ms, 0) AS sum_ms, "
            "coalesce(prompt_tokens, 0) AS prompt_tokens, "
            "coalesce(completion_tokens, 0) AS completion_tokens "
            f"FROM attempts INDEXED BY attempts_started WHERE {cond} AND status <> 'running'"
        )
        params += p
    sql = (
        "SELECT agent, operation, status, error_class, retry, sum(n), sum(timed), total(sum_ms), "
        f"sum(prompt_tokens), sum(completion_tokens) FROM ({' UNION ALL '.join(parts)}) "
        "GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) <> 0"
    )
    return [tuple(r) for r in conn.execute(sql, params)]  # type: ignore[misc]


def _hours(conn: sqlite3.Connection, since: float | None, now: float) -> dict[int, tuple[int, int]]:
    raw, covered = _segments(since, now)
    parts: list[str] = []
    params: list[Any] = []
    if covered == "all":
        parts.append("SELECT hour, calls, failed FROM attempt_hours")
    elif covered is not None:
        parts.append("SELECT hour, calls, failed FROM attempt_hours WHERE hour >= ? AND hour < ?")
        params += list(covered)
    for cond, p in raw:
        parts.append(
            "SELECT CAST(started_at / 3600 AS INTEGER) AS hour, "
            "status IN ('succeeded', 'failed') AS calls, status = 'failed' AS failed "
            f"FROM attempts INDEXED BY attempts_started WHERE {cond}"
        )
        params += p
    sql = f"SELECT hour % 24, sum(calls), sum(failed) FROM ({' UNION ALL '.join(parts)}) GROUP BY 1"
    return {int(h): (int(c), int(f)) for h, c, f in conn.execute(sql, params) if c or f}


def bucket_floor(bucket: int) -> int | None:
    """Smallest duration (ms) in a `latency_hist` bucket (None: no bound, below 0 ms).

    Buckets (migration 0004): -1 below 0 ms, the whole ms below 100, else the number of digits
    x 100 + the first two digits; so bucket(x) >= b exactly when x >= bucket_floor(b).
    """
    if bucket < 0:
        return None
    if bucket < 100:
        return bucket
    return (bucket % 100) * 10 ** (bucket // 100 - 2)


def _nth(
    conn: sqlite3.Connection,
    agent: str,
    since: float | None,
    k: int,
    n: int,
    lo: int | None = None,
    hi: int | None = None,
) -> float:
    """The k-th smallest (1-based) of the n timed calls of `agent` with lo <= ms < hi, stepping
    along the latency index from the nearer end of that range."""
    where = [
        "agent IS NULL" if agent == "" else "agent = ?",
        "status IN ('succeeded', 'failed') AND duration_ms IS NOT NULL",
    ]
    args: list[Any] = [] if agent == "" else [agent]
    if since is not None:
        where.append("started_at >= ?")
        args.append(since)
    if k <= n - k + 1:
        bound, order, offset = ("duration_ms >= ?", lo), "", k - 1
    else:
        bound, order, offset = ("duration_ms < ?", hi), " DESC", n - k
    if bound[1] is not None:
        where.append(bound[0])
        args.append(bound[1])
    sql = (
        f"SELECT duration_ms FROM attempts INDEXED BY attempts_latency WHERE {' AND '.join(where)} "
        f"ORDER BY duration_ms{order} LIMIT 1 OFFSET ?"
    )
    return conn.execute(sql, [*args, offset]).fetchone()[0]


def _percentiles_walk(
    conn: sqlite3.Connection, since: float | None, counts: dict[str, int]
) -> dict[str, tuple[float, ...]]:
    """Each percentile by stepping along the latency index to its rank. Over all time the
    `latency_hist` counts say which bucket holds the rank, so only that bucket is stepped."""
    hist: dict[str, list[tuple[int, int]]] = defaultdict(list)
    if since is None:
        for agent, bucket, n in conn.execute(
            "SELECT agent, bucket, n FROM latency_hist WHERE n <> 0 ORDER BY agent, bucket"
        ):
            hist[agent].append((bucket, n))
    out: dict[str, tuple[float, ...]] = {}
    for agent, n in counts.items():
        buckets = hist.get(agent, [])
        if sum(c for _, c in buckets) != n:  # only the all-time window has a histogram
            out[agent] = tuple(_nth(conn, agent, since, rank_of(p, n), n) for p in PERCENTILES)
            continue
        values = []
        for p in PERCENTILES:
            rank, before = rank_of(p, n), 0
            for i, (bucket, count) in enumerate(buckets):
                if rank <= before + count:
                    nxt = bucket_floor(buckets[i + 1][0]) if i + 1 < len(buckets) else None
                    lo = bucket_floor(bucket)
                    values.append(_nth(conn, agent, since, rank - before, count, lo, nxt))
                    break
                before += count
        out[agent] = tuple(values)
    return out


def _ranked(key: str, where: str) -> str:
    """SQL giving (key, count, rank, duration_ms) of the calls at each nearest rank of
    PERCENTILES, per `key`, from one sort (both window functions share the window `w`)."""
    ranks = " OR ".join(f"rn = ({p} * cnt + 99) / 100" for p in PERCENTILES)
    return f"""
        WITH t AS (
            SELECT {key} AS k, duration_ms, row_number() OVER w AS rn,
                   count(*) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                       AS cnt
            FROM attempts INDEXED BY attempts_started
            WHERE {where} AND status IN ('succeeded', 'failed') AND duration_ms IS NOT NULL
            WINDOW w AS (PARTITION BY {key} ORDER BY duration_ms)
        )
        SELECT k, cnt, rn, duration_ms FROM t WHERE {ranks}
    """


def _percentiles_sort(conn: sqlite3.Connection, since: float) -> dict[str, tuple[float, ...]]:
    """All agents' percentiles from one sort of the window's timed calls."""
    return _pick_ranks(conn.execute(_ranked("coalesce(agent, '')", "started_at >= ?"), [since]))


def _percentiles(
    conn: sqlite3.Connection, since: float | None, groups: list[Group], sort_share: float
) -> dict[str, tuple[float, ...]]:
    """Each agent's percentiles, by the cheaper of the two ways.

    Walking the latency index costs about 0.56 x all timed calls of the agents (index entries
    only); sorting the window's calls costs a table row per call, some 40 times more per row.
    """
    counts: dict[str, int] = defaultdict(int)
    for agent, _op, status, _cls, _retry, _n, timed, *_ in groups:
        if status in _CALL and timed:
            counts[agent] += timed
    if since is not None:
        everything = _one(
            conn,
            "SELECT total(timed) FROM attempt_rollup WHERE grain = 't' AND bucket = 0 "
            "AND status IN ('succeeded', 'failed')",
        )
        if sum(counts.values()) <= sort_share * everything:
            return _percentiles_sort(conn, since)
    return _percentiles_walk(conn, since, counts)


def _pick_ranks(rows: Iterable[tuple[Any, int, int, float]]) -> dict[Any, tuple[float, ...]]:
    found: dict[Any, tuple[int, dict[int, float]]] = {}
    for key, cnt, rn, value in rows:
        found.setdefault(key, (cnt, {}))[1][rn] = value
    return {
        key: tuple(by_rank[rank_of(p, cnt)] for p in PERCENTILES)
        for key, (cnt, by_rank) in found.items()
    }


def _series(
    conn: sqlite3.Connection, since: float | None, now: float, minutes: int
) -> list[TimeSeriesPoint]:
    m_hi = _bucket(now, 60)
    m_lo = m_hi - minutes + 1
    if since is not None:
        m_lo = max(m_lo, _bucket(since, 60))
    lo_ts = m_lo * 60 - 1 if since is None else max(since, m_lo * 60 - 1)
    minute = "CAST(started_at / 60 AS INTEGER)"
    where = f"started_at >= ? AND started_at < ? AND {minute} BETWEEN ? AND ?"
    params = [lo_ts, (m_hi + 1) * 60 + 1, m_lo, m_hi]
    counts = {
        m: (c, f)
        for m, c, f in conn.execute(
            f"SELECT {minute}, count(*), sum(status = 'failed') FROM attempts "
            f"INDEXED BY attempts_started WHERE {where} AND status IN ('succeeded', 'failed') "
            "GROUP BY 1",
            params,
        )
    }
    ranks = _pick_ranks(conn.execute(_ranked(minute, where), params))
    return series_points(m_lo, m_hi, counts, ranks)


def series_points(
    m_lo: int,
    m_hi: int,
    counts: dict[int, tuple[int, int]],
    ranks: dict[int, tuple[float, ...]],
) -> list[TimeSeriesPoint]:
    """One point per minute in [m_lo, m_hi] (minute numbers), empty minutes included."""
    points = []
    for m in range(m_lo, m_hi + 1):
        calls, errors = counts.get(m, (0, 0))
        p = ranks.get(m, (None, None, None))
        points.append(
            TimeSeriesPoint(
                t=m * 60.0,
                calls=calls,
                errors=errors,
                error_rate=errors / calls if calls else None,
                p50_ms=p[0],
                p95_ms=p[1],
                p99_ms=p[2],
            )
        )
    return points


def _one(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> Any:
    return conn.execute(sql, list(params)).fetchone()[0]


def _by(conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> dict[str, int]:
    rows = conn.execute(sql, list(params)).fetchall()
    return dict(sorted(((str(k), int(v)) for k, v in rows), key=lambda kv: (-kv[1], kv[0])))


def _window(column: str, since: float | None) -> tuple[str, list[Any]]:
    return ("1", []) if since is None else (f"{column} >= ?", [since])


def _reviews(
    conn: sqlite3.Connection, since: float | None, now: float, overdue_after: float
) -> ReviewStats:
    pending, overdue = conn.execute(
        "SELECT count(*), total(expires_at < ? OR created_at < ?) FROM reviews "
        "WHERE status = 'pending'",
        [now, now - overdue_after],
    ).fetchone()
    created_w, created_p = _window("created_at", since)
    by_status = _by(
        conn, f"SELECT status, count(*) FROM reviews WHERE {created_w} GROUP BY 1", created_p
    )
    decided_w, decided_p = _window("decided_at", since)
    decided_where = f"status <> 'pending' AND decided_at IS NOT NULL AND {decided_w}"
    decided, approved, rejected, auto = conn.execute(
        "SELECT count(*), total(status = 'approved'), total(status = 'rejected'), "
        f"total(status = 'approved' AND auto) FROM reviews WHERE {decided_where}",
        decided_p,
    ).fetchone()
    median = None
    if decided:
        median = _one(
            conn,
            f"SELECT decided_at - created_at AS d FROM reviews WHERE {decided_where} "
            "ORDER BY d LIMIT 1 OFFSET ?",
            [*decided_p, rank_of(50, decided) - 1],
        )
    return review_stats(
        pending, int(overdue), by_status, decided, int(approved), int(rejected), int(auto), median
    )


def review_stats(
    pending: int,
    overdue: int,
    by_status: dict[str, int],
    decided: int,
    approved: int,
    rejected: int,
    auto: int,
    median: float | None,
) -> ReviewStats:
    return ReviewStats(
        pending=pending,
        overdue=overdue,
        created=sum(by_status.values()),
        by_status=by_status,
        decided=decided,
        approved=approved,
        rejected=rejected,
        approval_rate=approved / (approved + rejected) if approved + rejected else None,
        median_decision_s=median,
        auto_approved=auto,
        auto_approved_share=auto / approved if approved else None,
    )


def _undo(conn: sqlite3.Connection, since: float | None, now: float) -> UndoStats:
    w, p = _window("created_at", since)
    by_status = _by(conn, f"SELECT status, count(*) FROM undo_log WHERE {w} GROUP BY 1", p)
    undoable = _one(
        conn,
        "SELECT count(*) FROM undo_log WHERE status = 'done' "
        "AND (expires_at IS NULL OR expires_at > ?)",
        [now],
    )
    return UndoStats(
        recorded=sum(by_status.values()),
        by_status=by_status,
        undone=by_status.get("undone", 0),
        undoable_now=undoable,
    )


def _routing(conn: sqlite3.Connection, since: float | None) -> RoutingStats:
    w, p = _window("created_at", since)
    decisions, overridden, best = conn.execute(
        f"SELECT count(*), total(overridden <> 0), total(chosen IS best) FROM routes WHERE {w}", p
    ).fetchone()
    by_choice = _by(
        conn,
        f"SELECT coalesce(chosen, ''), count(*) FROM routes WHERE {w} GROUP BY 1",
        p,
    )
    return RoutingStats(
        decisions=decisions,
        overridden=int(overridden),
        override_rate=overridden / decisions if decisions else None,
        best_chosen=int(best),
        by_choice=by_choice,
    )


def _breakers(conn: sqlite3.Connection) -> BreakerStats:
    rows = conn.execute("SELECT key, state FROM breakers ORDER BY key").fetchall()
    return breaker_stats(rows)


def breaker_stats(rows: Iterable[tuple[str, str]]) -> BreakerStats:
    rows = list(rows)
    return BreakerStats(
        total=len(rows),
        open=sum(1 for _, s in rows if s == "open"),
        half_open=sum(1 for _, s in rows if s == "half_open"),
        open_keys=sorted(k for k, s in rows if s == "open"),
    )


def _failures(conn: sqlite3.Connection, since: float | None, sample: int) -> list[FailureGroup]:
    w, p = _window("started_at", since)
    rows = conn.execute(
        f"""
        SELECT error_class, error, agent, count(*), min(started_at), max(started_at) FROM (
            SELECT coalesce(error_class, '') AS error_class, coalesce(error, '') AS error,
                   coalesce(agent, '') AS agent, started_at
            FROM attempts INDEXED BY attempts_failed
            WHERE status = 'failed' AND {w}
            ORDER BY started_at DESC, id DESC LIMIT ?
        ) GROUP BY 1, 2, 3
        """,
        [*p, sample],
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def measure(
    conn: sqlite3.Connection, since: float | None, now: float, opts: Options
) -> Measurements:
    """Read everything a snapshot needs (call inside one read transaction)."""
    groups = _groups(conn, since, now)
    if since is None:  # streams over runs_status and steps_ended (ended steps only)
        runs = _by(conn, "SELECT status, count(*) FROM runs GROUP BY 1")
        steps = _one(conn, "SELECT count(*) FROM steps WHERE ended_at IS NOT NULL")
    else:
        runs = _by(
            conn,
            "SELECT status, count(*) FROM runs INDEXED BY runs_created_status "
            "WHERE created_at >= ? GROUP BY 1",
            [since],
        )
        steps = _one(conn, "SELECT count(*) FROM steps WHERE ended_at >= ?", [since])
    return Measurements(
        since=since,
        now=now,
        first_run_at=_one(conn, "SELECT min(created_at) FROM runs"),
        groups=groups,
        percentiles=_percentiles(conn, since, groups, opts.percentile_sort_share),
        hours=_hours(conn, since, now),
        runs_by_status=runs,
        steps_ended=steps,
        reviews=_reviews(conn, since, now, opts.overdue_after),
        undo=_undo(conn, since, now),
        routing=_routing(conn, since),
        breakers=_breakers(conn),
        failures=_failures(conn, since, opts.error_sample),
        series=_series(conn, since, now, opts.series_minutes),
    )


# --------------------------------------------------------------------------- assembling


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _sorted_counts(d: dict[str, int]) -> dict[str, int]:
    return dict(sorted(d.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass
class _Acc:
    calls: int = 0
    successes: int = 0
    failures: int = 0
    cancelled: int = 0
    retries: int = 0
    timed: int = 0
    sum_ms: float = 0.0
    prompt: int = 0
    completion: int = 0
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, status: str, error_class: str, retry: int, n: int, timed: int, sum_ms: float,
            prompt: int, completion: int) -> None:  # fmt: skip
        self.prompt += prompt
        self.completion += completion
        if status == "cancelled":
            self.cancelled += n
        if status not in _CALL:
            return
        self.calls += n
        self.timed += timed
        self.sum_ms += sum_ms
        self.retries += n if retry else 0
        if status == "succeeded":
            self.successes += n
        else:
            self.failures += n
            self.errors[error_class or "unknown"] += n


def _health(
    totals: Totals, agents: list[AgentStats], breakers: BreakerStats, reviews: ReviewStats,
    overdue_after: float,
) -> HealthReport:  # fmt: skip
    parts: list[tuple[str, float, str]] = []
    if totals.calls:
        rate = totals.failures / totals.calls
        value = min(1.0, max(0.0, 1 - rate / ERROR_RATE_FLOOR))
        detail = f"{totals.failures:,} of {totals.calls:,} calls failed ({rate:.1%})"
    else:
        value, detail = 1.0, "no calls in the window"
    parts.append(("success", value, detail))

    timed = [a for a in agents if a.p95_ms is not None and a.calls]
    if timed:
        weight = sum(a.calls for a in timed)
        value = sum(a.calls * _slo_value(a) for a in timed) / weight
        late = sorted(
            (a for a in timed if not a.within_slo),
            key=lambda a: (-a.calls * (1 - _slo_value(a)), a.agent),
        )
        if late:
            shown = ", ".join(
                f"{a.agent} P95 {a.p95_ms:.0f} ms > {a.slo_ms:.0f} ms" for a in late[:3]
            )
            more = f" (+{len(late) - 3} more)" if len(late) > 3 else ""
            detail = f"{len(late)} of {len(timed)} agents over their SLO: {shown}{more}"
        else:
            detail = f"all {len(timed)} agents within their P95 SLO"
    else:
        value, detail = 1.0, "no timed calls in the window"
    parts.append(("latency", value, detail))

    if breakers.total:
        value = 1 - (breakers.open + 0.5 * breakers.half_open) / breakers.total
        detail = f"{breakers.open} open, {breakers.half_open} half-open of {breakers.total}"
        if breakers.open_keys:
            detail += ": " + ", ".join(breakers.open_keys[:5])
    else:
        value, detail = 1.0, "no circuit breakers"
    parts.append(("breakers", value, detail))

    if reviews.pending:
        value = 1 - reviews.overdue / reviews.pending
        detail = (
            f"{reviews.overdue} of {reviews.pending} pending reviews overdue "
            f"(expired or older than {overdue_after / 60:g} min)"
        )
    else:
        value, detail = 1.0, "no pending reviews"
    parts.append(("reviews", value, detail))

    components = [
        HealthComponent(
            name=name,  # type: ignore[arg-type]
            weight=HEALTH_WEIGHTS[name],
            value=value,
            points=round(HEALTH_WEIGHTS[name] * value, 2),
            detail=detail,
        )
        for name, value, detail in parts
    ]
    score = round(sum(c.weight * c.value for c in components), 1)
    status = "healthy" if score >= 90 else "degraded" if score >= 70 else "unhealthy"
    return HealthReport(score=score, status=status, components=components)


def _slo_value(a: AgentStats) -> float:
    if a.p95_ms is None or a.p95_ms <= a.slo_ms:
        return 1.0
    return a.slo_ms / a.p95_ms


def _patterns(failures: list[FailureGroup], top: int) -> list[ErrorPattern]:
    cache: dict[str, str] = {}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for error_class, error, agent, count, first, last in failures:
        pattern = cache.get(error)
        if pattern is None:
            pattern = cache[error] = normalize_error(error)
        g = groups.setdefault(
            (error_class or "unknown", pattern),
            {"count": 0, "agents": set(), "first": first, "last": last, "example": error},
        )
        g["count"] += count
        g["agents"].add(agent or NO_AGENT)
        g["first"] = min(g["first"], first)
        if (last, -len(error), error) > (g["last"], -len(g["example"]), g["example"]):
            g["example"] = error
        g["last"] = max(g["last"], last)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1]["count"], -kv[1]["last"], kv[0]))
    return [
        ErrorPattern(
            error_class=cls,
            pattern=pattern,
            count=g["count"],
            agents=sorted(g["agents"]),
            first_seen=g["first"],
            last_seen=g["last"],
            example=g["example"][:500],
        )
        for (cls, pattern), g in ordered[:top]
    ]


def assemble(m: Measurements, opts: Options) -> AnalyticsSnapshot:
    """Build the snapshot from measurements (no database access)."""
    per_agent: dict[str, _Acc] = defaultdict(_Acc)
    per_op: dict[tuple[str, str], _Acc] = defaultdict(_Acc)
    total = _Acc()
    for agent, op, status, cls, retry, n, timed, sum_ms, prompt, completion in m.groups:
        for acc in (per_agent[agent], per_op[(agent, op)], total):
            acc.add(status, cls, retry, n, timed, sum_ms, prompt, completion)

    agents = []
    for key, acc in per_agent.items():
        name = key or NO_AGENT
        p = m.percentiles.get(key) if acc.timed else None
        slo = float(opts.slo_ms.get(name, opts.default_slo_ms))
        agents.append(
            AgentStats(
                agent=name,
                calls=acc.calls,
                successes=acc.successes,
                failures=acc.failures,
                cancelled=acc.cancelled,
                success_rate=_rate(acc.successes, acc.calls),
                retries=acc.retries,
                mean_ms=acc.sum_ms / acc.timed if acc.timed else None,
                p50_ms=p[0] if p else None,
                p95_ms=p[1] if p else None,
                p99_ms=p[2] if p else None,
                errors=_sorted_counts(acc.errors),
                prompt_tokens=acc.prompt,
                completion_tokens=acc.completion,
                slo_ms=slo,
                within_slo=None if not p else p[1] <= slo,
            )
        )
    agents.sort(key=lambda a: (-a.calls, a.agent))

    totals = Totals(
        calls=total.calls,
        successes=total.successes,
        failures=total.failures,
        cancelled=total.cancelled,
        success_rate=_rate(total.successes, total.calls),
        retries=total.retries,
        mean_ms=total.sum_ms / total.timed if total.timed else None,
        errors=_sorted_counts(total.errors),
        prompt_tokens=total.prompt,
        completion_tokens=total.completion,
        total_tokens=total.prompt + total.completion,
    )
    operations = sorted(
        (
            OperationStats(
                agent=agent or NO_AGENT,
                operation=op or None,
                calls=acc.calls,
                failures=acc.failures,
                success_rate=_rate(acc.calls - acc.failures, acc.calls),
            )
            for (agent, op), acc in per_op.items()
            if acc.calls
        ),
        key=lambda o: (-o.calls, o.agent, o.operation or ""),
    )[: opts.top]

    eligible = [a for a in agents if a.calls >= opts.min_calls]
    inf = math.inf
    best = sorted(
        eligible,
        key=lambda a: (-(a.success_rate or 0.0), inf if a.p95_ms is None else a.p95_ms, a.agent),
    )
    slow = sorted(
        (a for a in eligible if a.p95_ms is not None),
        key=lambda a: (-(a.p95_ms or 0.0), -(a.mean_ms or 0.0), a.agent),
    )[: opts.top]

    def ranked(items: list[AgentStats]) -> list[RankedAgent]:
        return [
            RankedAgent(
                rank=i, agent=a.agent, calls=a.calls, success_rate=a.success_rate, p95_ms=a.p95_ms
            )
            for i, a in enumerate(items, start=1)
        ]

    if m.since is not None:
        window = m.now - m.since
    elif m.first_run_at is not None:
        window = m.now - m.first_run_at
    else:
        window = None
    steps_rate = m.steps_ended / window if window and window > 0 else None
    runs = RunStats(
        total=sum(m.runs_by_status.values()),
        by_status=_sorted_counts(m.runs_by_status),
        steps_ended=m.steps_ended,
        steps_per_second=steps_rate,
    )
    return AnalyticsSnapshot(
        generated_at=m.now,
        since=m.since,
        window_seconds=window,
        health=_health(totals, agents, m.breakers, m.reviews, opts.overdue_after),
        totals=totals,
        agents=agents,
        runs=runs,
        reviews=m.reviews,
        undo=m.undo,
        routing=m.routing,
        breakers=m.breakers,
        operations=operations,
        usage_by_hour=[
            HourUsage(hour=h, calls=m.hours.get(h, (0, 0))[0], failures=m.hours.get(h, (0, 0))[1])
            for h in range(24)
        ],
        error_patterns=_patterns(m.failures, opts.top),
        errors_sampled=sum(f[3] for f in m.failures),
        rankings=ranked(best),
        slowest=ranked(slow),
        series=m.series,
    )


def compute(
    db: Any,
    *,
    since: float | None,
    now: float,
    slo_ms: dict[str, float] | None = None,
    default_slo_ms: float = DEFAULT_SLO_MS,
    **options: Any,
) -> AnalyticsSnapshot:
    """The analytics snapshot of attempts started at or after `since` (None: all), as of `now`.

    `db` is a sqlite-utils Database (e.g. inside `store.read`) or a sqlite3 connection. Other
    keyword arguments are `Options` fields (min_calls, top, overdue_after, series_minutes,
    error_sample, percentile_sort_limit).
    """
    opts = Options(slo_ms=dict(slo_ms or {}), default_slo_ms=default_slo_ms, **options)
    conn: sqlite3.Connection = getattr(db, "conn", db)
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        m = measure(conn, since, now, opts)
    finally:
        if own:
            conn.execute("COMMIT")
    return assemble(m, opts)
