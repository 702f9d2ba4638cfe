"""`flowdeck stats [--since 1h] [--json]` and `flowdeck prune --older-than 30d [--json]`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from console import output
from console.commands.common import open_store
from engine import analytics, retention
from engine.analytics import AnalyticsSnapshot
from engine.config import Settings
from engine.errors import InputError

HEALTH_STYLE = {"healthy": "bold green", "degraded": "bold yellow", "unhealthy": "bold red"}
BARS = " ▁▂▃▄▅▆▇█"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "stats", parents=[common], help="analytics: health, agents, latency, errors, usage"
    )
    p.add_argument(
        "--since",
        default="1h",
        metavar="WINDOW",
        help="time window: 15m, 1h, 24h, 7d (any number with s/m/h/d/w) or all (default 1h)",
    )
    p.add_argument(
        "--slo-ms",
        type=float,
        default=analytics.DEFAULT_SLO_MS,
        metavar="MS",
        help=f"P95 latency SLO of every agent (default {analytics.DEFAULT_SLO_MS:g})",
    )
    p.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="AGENT=MS",
        help="P95 latency SLO of one agent (repeatable)",
    )
    p.add_argument(
        "--min-calls", type=int, default=10, metavar="N", help="calls to be ranked (default 10)"
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="length of top lists")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "prune", parents=[common], help="delete ended runs older than a time (retention)"
    )
    p.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="runs that ended longer ago than this: e.g. 30d, 12h, 2w",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=retention.DEFAULT_BATCH,
        metavar="N",
        help=f"runs deleted per transaction (default {retention.DEFAULT_BATCH})",
    )
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_prune)


def _slos(items: list[str]) -> dict[str, float]:
    slos = {}
    for item in items:
        agent, sep, value = item.partition("=")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not sep or not agent or ms <= 0:
            raise InputError(f"--slo '{item}': expected AGENT=MS with MS > 0, e.g. github=500")
        slos[agent] = ms
    return slos


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    if args.slo_ms <= 0:
        raise InputError("--slo-ms must be > 0")
    if args.min_calls < 0 or args.top < 1:
        raise InputError("--min-calls must be >= 0 and --top >= 1")
    seconds = analytics.parse_window(args.since)
    slos = _slos(args.slo)
    now = time.time()
    since = None if seconds is None else now - seconds
    with open_store(settings) as store:
        snap = store.read(
            lambda db: analytics.compute(
                db,
                since=since,
                now=now,
                slo_ms=slos,
                default_slo_ms=args.slo_ms,
                min_calls=args.min_calls,
                top=args.top,
            )
        )
    if args.json:
        doc = snap.model_dump(mode="json")
        doc["window"] = args.since
        output.print_json(doc)
        return 0
    render(snap, args.since)
    return 0


# --------------------------------------------------------------------------- rendering


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _table(
    title: str, *columns: str, right: tuple[str, ...] = (), flex: str = "", fold: bool = True
) -> Table:
    """A borderless table; numbers right-aligned. Column `flex` is the one a narrow terminal
    squeezes (see `_fit`): folded onto more lines, or cut with an ellipsis (`fold=False`)."""
    table = Table(
        box=None, header_style="bold", title=title, title_justify="left", title_style="bold"
    )
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in right else "left",
            no_wrap=col != flex or not fold,
            overflow="fold" if fold else "ellipsis",
            ratio=1 if col == flex else None,
        )
    return table


def _fit(table: Table) -> Table:
    """Keep every column but the `flex` one at the width of its widest cell and give the flex
    column what is left of the terminal, so a narrow terminal squeezes only that one."""
    rest = output.stdout.width - 2 * len(table.columns)
    flex = None
    for col in table.columns:
        if col.ratio:
            flex = col
            continue
        cells = [Text.from_markup(str(col.header)), *col.cells]
        col.min_width = max(c.cell_len if isinstance(c, Text) else cell_len(str(c)) for c in cells)
        rest -= col.min_width
    if flex is not None:
        flex.ratio = None
        flex.max_width = max(8, rest)
    return table


def _bars(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return BARS[0] * len(values)
    return "".join(BARS[round(v / top * (len(BARS) - 1))] for v in values)


def render(snap: AnalyticsSnapshot, window: str) -> None:
    out = output.stdout
    h, t = snap.health, snap.totals
    head = Text("health ")
    head.append(f"{h.score:g}/100 {h.status}", style=HEALTH_STYLE[h.status])
    head.append(
        f"  ·  window {window}  ·  {t.calls:,} calls  ·  success {_pct(t.success_rate)}"
        f"  ·  retries {t.retries:,}  ·  tokens {t.total_tokens:,}"
    )
    out.print(head)

    table = _table("health components", "COMPONENT", "POINTS", "WHY", right=("POINTS",), flex="WHY")
    for c in h.components:
        style = "" if c.value >= 0.999 else "yellow" if c.value >= 0.5 else "red"
        table.add_row(
            c.name, Text(f"{c.points:g}/{c.weight:g}", style=style), output.safe(c.detail)
        )
    out.print(_fit(table))

    if snap.agents:
        cols = ("AGENT", "CALLS", "SUCCESS", "MEAN", "P50", "P95", "P99", "RETRIES", "ERRORS")
        table = _table("agents", *cols, right=cols[1:8], flex="ERRORS", fold=False)
        for a in snap.agents:
            p95 = Text(_ms(a.p95_ms), style="red" if a.within_slo is False else "")
            errors = ", ".join(f"{k} {v:,}" for k, v in a.errors.items())
            table.add_row(
                output.safe(a.agent),
                f"{a.calls:,}",
                _pct(a.success_rate),
                _ms(a.mean_ms),
                _ms(a.p50_ms),
                p95,
                _ms(a.p99_ms),
                f"{a.retries:,}",
                output.safe(errors),
            )
        out.print(_fit(table))
    else:
        out.print("no calls in the window")

    r = snap.runs
    by_status = ", ".join(f"{k} {v:,}" for k, v in r.by_status.items()) or "none"
    rate = "-" if r.steps_per_second is None else f"{r.steps_per_second:.3g}"
    out.print(
        output.safe(f"runs: {r.total:,} ({by_status}); steps ended {r.steps_ended:,}, {rate}/s")
    )
    v = snap.reviews
    median = output.duration(v.median_decision_s) if v.median_decision_s is not None else "-"
    out.print(
        output.safe(
            f"reviews: {v.pending} pending ({v.overdue} overdue), {v.decided} decided, "
            f"approval {_pct(v.approval_rate)}, median decision {median}, "
            f"auto-approved {_pct(v.auto_approved_share)}"
        )
    )
    u, g, b = snap.undo, snap.routing, snap.breakers
    out.print(
        output.safe(
            f"undo: {u.recorded} recorded, {u.undone} undone, {u.undoable_now} undoable now"
        )
    )
    out.print(
        output.safe(
            f"routing: {g.decisions} decisions, {g.overridden} overridden "
            f"({_pct(g.override_rate)}); breakers: {b.open} open, {b.half_open} half-open "
            f"of {b.total}" + (f" ({', '.join(b.open_keys)})" if b.open_keys else "")
        )
    )

    if snap.error_patterns:
        table = _table(
            f"error patterns (newest {snap.errors_sampled:,} failures)",
            "COUNT",
            "CLASS",
            "PATTERN",
            "AGENTS",
            right=("COUNT",),
            flex="PATTERN",
        )
        for e in snap.error_patterns:
            table.add_row(
                f"{e.count:,}", output.safe(e.error_class), output.safe(e.pattern),
                output.safe(", ".join(e.agents[:4]) + (" …" if len(e.agents) > 4 else "")),
            )  # fmt: skip
        out.print(_fit(table))

    if snap.operations:
        table = _table(
            "most used operations",
            "CALLS",
            "AGENT",
            "OPERATION",
            "SUCCESS",
            right=("CALLS", "SUCCESS"),
            flex="OPERATION",
        )
        for o in snap.operations:
            table.add_row(
                f"{o.calls:,}",
                output.safe(o.agent),
                output.safe(o.operation or "-"),
                _pct(o.success_rate),
            )
        out.print(_fit(table))

    if snap.rankings:
        table = _table(
            "ranking (success, then P95)",
            "#",
            "AGENT",
            "CALLS",
            "SUCCESS",
            "P95",
            right=("#", "CALLS", "SUCCESS", "P95"),
            flex="AGENT",
        )
        for x in snap.rankings:
            table.add_row(
                str(x.rank),
                output.safe(x.agent),
                f"{x.calls:,}",
                _pct(x.success_rate),
                _ms(x.p95_ms),
            )
        out.print(_fit(table))
        slow = ", ".join(f"{x.agent} {_ms(x.p95_ms)}" for x in snap.slowest[:5])
        out.print(output.safe(f"slowest (P95): {slow}"))

    hours = [u.calls for u in snap.usage_by_hour]
    out.print(
        Text(f"usage by hour (UTC 00-23): {_bars(hours)}  peak {hours.index(max(hours)):02d}h")
    )
    calls = [p.calls for p in snap.series]
    p95 = [round(p.p95_ms or 0) for p in snap.series]
    out.print(Text(f"last {len(snap.series)} min calls:  {_bars(calls)}"))
    out.print(Text(f"last {len(snap.series)} min P95:    {_bars(p95)}"))


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    older = analytics.parse_window(args.older_than, allow_all=False)
    assert older is not None
    if args.batch < 1:
        raise InputError("--batch must be >= 1")
    with open_store(settings) as store:
        result = retention.prune(store, older, batch=args.batch, dry_run=args.dry_run)
    if args.json:
        output.print_json(result.model_dump(mode="json"))
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    output.stdout.print(
        output.safe(
            f"{verb} {result.runs:,} runs ended before {output.ts(result.cutoff)}: "
            f"{result.steps:,} steps, {result.attempts:,} attempts, {result.events:,} events, "
            f"{result.reviews:,} reviews, {result.undo_log:,} undo entries"
            + ("" if result.dry_run else f" in {result.batches} batches")
        )
    )
    if result.kept_pending_review or result.kept_undo_window:
        output.stdout.print(
            output.safe(
                f"kept {result.kept_pending_review} with a pending review and "
                f"{result.kept_undo_window} with undo entries still in their window"
            )
        )
    return 0
