"""`flowdeck reviews`, `approve ID`, `reject ID`, `prefs`, `prefs reset PATTERN`, `routes`.

Decisions go through `engine.reviews.decide` (a compare-and-set in the database), so they work
while the engine that waits on the review runs in another process, and exactly one of two
concurrent decisions wins: the other exits 4 with "already decided by X at T".
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from typing import Any

from rich.table import Table

from console import output
from console.commands.common import open_store
from engine import preferences, reviews
from engine.config import Settings
from engine.errors import InputError, NotFound


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reviews", parents=[common], help="pending reviews, oldest first")
    p.add_argument("review_id", nargs="?", metavar="ID", help="show this review in full")
    p.add_argument("--all", action="store_true", help="decided reviews too, newest first")
    p.add_argument("--status", help="only reviews with this status (implies --all)")
    p.add_argument("--run", metavar="RUN_ID", help="only reviews of this run")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_reviews)

    for name, word in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(name, parents=[common], help=f"{word} a pending review")
        p.add_argument("review_id", metavar="ID", help="review id (see `flowdeck reviews`)")
        p.add_argument("--comment", "-m", help="why (stored with the decision)")
        p.add_argument("--as", dest="reviewer", metavar="NAME", help="reviewer name")
        if name == "approve":
            p.add_argument("--choice", metavar="NAME", help="route reviews: the candidate to take")
        p.add_argument("--json", action="store_true", help="print the decided review as JSON")
        p.set_defaults(func=cmd_decide, decision=word)

    p = sub.add_parser("prefs", parents=[common], help="learned approval preferences")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_prefs)
    prefs_sub = p.add_subparsers(dest="prefs_command", metavar="reset PATTERN")
    r = prefs_sub.add_parser("reset", parents=[common], help="forget one pattern")
    r.add_argument("pattern", metavar="PATTERN", help="e.g. 'github:POST /pulls/*/close'")
    r.add_argument("--json", action="store_true", help="one JSON document on stdout")
    r.set_defaults(func=cmd_prefs_reset)

    p = sub.add_parser("routes", parents=[common], help="routing decisions per route")
    p.add_argument("--workflow", help="only this workflow")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_routes)


def _age(t: float | None, now: float) -> str:
    return output.duration(now - t) if t else "-"


def _expires(r: dict[str, Any], now: float) -> str:
    if r["expires_at"] is None:
        return "-"
    left = r["expires_at"] - now
    if left <= 0:
        return f"overdue ({r['on_timeout']})"
    return f"in {output.duration(left)} ({r['on_timeout']})"


def show_review(row: dict[str, Any]) -> None:
    """One review in full: what it is about and, once decided, the decision."""
    out = output.stdout
    head = output.safe(f"review {row['id']}  {row['kind']}  ")
    head.append_text(output.status_text(row["status"]))
    out.print(head)
    fields = [
        ("run", f"{row['run_id']} ({row['workflow']})"),
        ("step", row["step_id"] + (f": {row['description']}" if row["description"] else "")),
        ("action", " ".join(x for x in (row["agent"], row["operation"]) if x) or None),
        ("pattern", row["pattern"]),
        ("destructive", "yes" if row["destructive"] else None),
        ("reason", row["reason"]),
        ("confidence", None if row["confidence"] is None else f"{row['confidence']:g}"),
        ("opened", output.ts(row["created_at"])),
        ("expires", f"{output.ts(row['expires_at'])} (on_timeout: {row['on_timeout']})"
         if row["expires_at"] else None),
        ("decided", f"{output.ts(row['decided_at'])} by {row['reviewer']}"
         if row["decided_at"] else None),
        ("choice", row["choice"]),
        ("comment", row["comment"]),
    ]  # fmt: skip
    for name, value in fields:
        if value is not None:
            line = output.safe(f"{name:>12}: ")
            line.append_text(output.safe(value))
            out.print(line)
    for name in ("candidates", "params", "upstream"):
        if row.get(name):
            out.print(output.safe(f"{name:>12}:"))
            for text in json.dumps(row[name], indent=2, ensure_ascii=False).splitlines():
                out.print(output.safe(" " * 14 + text))


def cmd_reviews(args: argparse.Namespace, settings: Settings) -> int:
    if args.review_id is not None:
        review_id = reviews.parse_review_id(args.review_id)
        with open_store(settings) as store:
            row = store.read(lambda db: reviews.get_review(db, review_id))
        if args.json:
            output.print_json(row)
        else:
            show_review(row)
        return 0
    if args.limit < 1:
        raise InputError("--limit must be at least 1")
    with open_store(settings) as store:
        run_id = None
        if args.run:
            from engine import queries

            run_id = store.read(lambda db: queries.resolve_run_id(db, args.run))
        if args.all or args.status:
            rows = store.read(
                lambda db: reviews.list_reviews(
                    db, status=args.status, run_id=run_id, limit=args.limit
                )
            )
        else:
            rows = store.read(
                lambda db: reviews.pending_reviews(db, run_id=run_id, limit=args.limit)
            )
    if args.json:
        output.print_json({"reviews": rows})
        return 0
    if not rows:
        output.stdout.print("no pending reviews" if not (args.all or args.status) else "no reviews")
        return 0
    now = time.time()
    table = Table(box=None, header_style="bold")
    decided = args.all or args.status
    cols = ["ID", "AGE", "RUN", "STEP", "KIND", "ACTION", "CONF", "REASON"]
    cols += ["STATUS", "BY"] if decided else ["EXPIRES"]
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        action = " ".join(x for x in (r["agent"], r["operation"]) if x) or "-"
        if r["kind"] == "route" and r["candidates"]:
            action = ", ".join(f"{c['name']} {c['confidence']:g}" for c in r["candidates"])
        cells = [
            str(r["id"]),
            _age(r["created_at"], now),
            output.safe(r["run_id"]),
            output.safe(r["step_id"]),
            output.safe(r["kind"]),
            output.safe(action),
            "-" if r["confidence"] is None else f"{r['confidence']:.2f}",
            output.safe(r["reason"] or ""),
        ]
        if decided:
            cells += [output.status_text(r["status"]), output.safe(r["reviewer"] or "-")]
        else:
            cells.append(_expires(r, now))
        table.add_row(*cells)
    output.stdout.print(table)
    if not decided:
        output.stdout.print(
            "decide with: flowdeck approve ID | flowdeck reject ID  [--comment TEXT] [--as NAME]",
            style="dim",
        )
    return 0


def reviewer_name(args: argparse.Namespace, settings: Settings) -> str:
    """`--as`, else FLOWDECK_REVIEWER, else the OS user."""
    if args.reviewer is not None:
        return args.reviewer
    if settings.reviewer:
        return settings.reviewer
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "operator"


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    review_id = reviews.parse_review_id(args.review_id)
    reviewer = reviewer_name(args, settings)
    with open_store(settings) as store:
        row = reviews.decide(
            store,
            review_id,
            args.decision,
            reviewer,
            args.comment,
            choice=getattr(args, "choice", None),
        )
    if args.json:
        output.print_json(row)
        return 0
    line = output.safe(f"review {row['id']} ")
    line.append_text(output.status_text(row["status"]))
    extra = f" -> {row['choice']}" if row["choice"] else ""
    line.append_text(
        output.safe(f"{extra} by {row['reviewer']} (step {row['step_id']} of run {row['run_id']})")
    )
    output.stdout.print(line)
    return 0


def cmd_prefs(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        rows = store.read(preferences.list_preferences)
        agents = store.read(lambda db: preferences.preferred_agents(db))
    if args.json:
        output.print_json(
            {
                "patterns": rows,
                "preferred_agents": agents,
                "rule": {
                    "min_decisions": preferences.MIN_DECISIONS,
                    "threshold": preferences.THRESHOLD,
                    "z": preferences.Z,
                },
            }
        )
        return 0
    if not rows:
        output.stdout.print("no learned approvals yet (every human review decision counts)")
    else:
        table = Table(box=None, header_style="bold")
        for col in ("PATTERN", "STATE", "APPROVED", "REJECTED", "LOWER BOUND", "DETAIL"):
            table.add_column(col, overflow="fold")
        style = {"auto": "green", "manual": "yellow", "learning": "dim"}
        for r in rows:
            state = output.safe(r["state"])
            state.stylize(style.get(r["state"], ""))
            table.add_row(
                output.safe(r["pattern"]),
                state,
                str(r["approvals"]),
                str(r["rejections"]),
                f"{r['lower_bound']:.3f}",
                output.safe(r["detail"]),
            )
        output.stdout.print(table)
    if agents:
        table = Table(box=None, header_style="bold", title="preferred agents", title_justify="left")
        for col in ("OPERATION", "AGENT", "SUCCESS", "CALLS", "AGENTS COMPARED"):
            table.add_column(col, overflow="fold")
        for a in agents:
            table.add_row(
                output.safe(a["operation"]),
                output.safe(a["agent"]),
                f"{a['rate'] * 100:.1f}%",
                str(a["calls"]),
                str(a["agents"]),
            )
        output.stdout.print(table)
    return 0


def cmd_prefs_reset(args: argparse.Namespace, settings: Settings) -> int:
    pattern = args.pattern
    with open_store(settings) as store:
        if not store.run_sync(lambda db: preferences.reset(db, pattern)):
            raise NotFound(f"no learned preference '{pattern}' (see `flowdeck prefs`)")
    if args.json:
        output.print_json({"pattern": pattern, "reset": True})
    else:
        output.stdout.print(output.safe(f"forgot {pattern}"))
    return 0


def cmd_routes(args: argparse.Namespace, settings: Settings) -> int:
    from engine.routing import route_stats

    with open_store(settings) as store:
        rows = store.read(lambda db: route_stats(db, workflow=args.workflow))
    if args.json:
        output.print_json({"routes": rows})
        return 0
    if not rows:
        output.stdout.print("no routing decisions yet")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("WORKFLOW", "STEP", "ROUTE", "COUNT", "AVG", "MIN", "MAX", "CHOSEN OVER BEST",
                "LOST WHEN BEST", "REVIEWED"):  # fmt: skip
        table.add_column(col, overflow="fold")

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        table.add_row(
            output.safe(r["workflow"]),
            output.safe(r["step_id"]),
            output.safe(r["route"]),
            str(r["count"]),
            num(r["avg_confidence"]),
            num(r["min_confidence"]),
            num(r["max_confidence"]),
            str(r["overridden"]),
            str(r["overridden_away"]),
            str(r["reviewed"]),
        )
    output.stdout.print(table)
    return 0
