"""`flowdeck runs`, `flowdeck show RUN_ID`, `flowdeck cancel RUN_ID`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.table import Table

from console import output
from console.commands.common import open_store
from engine import control, queries
from engine.config import Settings
from engine.errors import Conflict

ENDED = control.ENDED_RUN


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runs", parents=[common], help="list runs, newest first")
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", parents=[common], help="one run with its steps and attempts")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cancel", parents=[common], help="cancel a run")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (or a unique prefix)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the engine")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_cancel)


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        rows = store.read(lambda db: queries.list_runs(db, limit=args.limit, status=args.status))
    if args.json:
        output.print_json({"runs": rows})
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("RUN", "WORKFLOW", "STATUS", "STEPS", "STARTED", "DURATION", "ERROR"):
        table.add_column(col)
    now = time.time()
    for r in rows:
        end = r["ended_at"] or (now if r["started_at"] else None)
        table.add_row(
            output.safe(r["id"]),
            output.safe(r["workflow"]),
            output.status_text(r["status"]),
            f"{r['steps_done']}/{r['steps_total']}",
            output.ts(r["started_at"] or r["created_at"]),
            output.duration(end - r["started_at"] if end and r["started_at"] else None),
            output.safe((r["error"] or "")[:60]),
        )
    output.stdout.print(table if rows else "no runs yet")
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        run = store.read(lambda db: queries.get_run(db, args.run_id))
    if args.json:
        output.print_json(run)
        return 0
    out = output.stdout
    dur = (
        output.duration(run["ended_at"] - run["started_at"])
        if run["ended_at"] and run["started_at"]
        else "-"
    )
    header = output.safe(f"run {run['id']}  {run['workflow']}  ")
    header.append_text(output.status_text(run["status"]))
    header.append(f"  started {output.ts(run['started_at'])}  took {dur}")
    out.print(header)
    if run["inputs"]:
        out.print(output.safe(f"inputs: {run['inputs']}"))
    if run["error"]:
        out.print(output.safe(f"error: {run['error']}"), style="red")
    table = Table(box=None, header_style="bold")
    for col in ("STEP", "AGENT", "STATUS", "ATTEMPTS", "DURATION", "OUTPUT / ERROR"):
        table.add_column(col, overflow="fold")
    for s in run["steps"]:
        detail = s["error"] if s["error"] else s["output"]
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail, ensure_ascii=False)
        text = output.safe("" if detail is None else detail[:120])
        table.add_row(
            output.safe(s["step_id"]),
            output.safe(s["agent"] or "-"),
            output.status_text(s["status"]),
            f"{s['attempt']}/{s['max_attempts']}",
            output.duration(s["duration_ms"] / 1000 if s["duration_ms"] is not None else None),
            text,
        )
    out.print(table)
    attempts = Table(box=None, header_style="bold", title="attempts", title_justify="left")
    for col in ("STEP", "#", "STATUS", "STARTED", "DURATION", "ERROR", "NEXT RETRY"):
        attempts.add_column(col, overflow="fold")
    for s in run["steps"]:
        for a in s["attempts"]:
            attempts.add_row(
                output.safe(s["step_id"]),
                str(a["number"]),
                output.status_text(a["status"]),
                output.ts(a["started_at"]),
                output.duration(a["duration_ms"] / 1000 if a["duration_ms"] is not None else None),
                output.safe(f"{a['error_class']}: {a['error']}" if a["error"] else ""),
                output.ts(a["next_retry_at"]) if a["next_retry_at"] else "",
            )
    if attempts.row_count:
        out.print(attempts)
    return 0


def cancel_run(store: Any, run_id: str, *, wait: float = 10.0) -> str:
    """Cancel through the owning engine if it is alive, else directly in the DB.

    Returns the run's final status; raises Conflict if it had already ended.
    """
    now = time.time()
    run = store.read(lambda db: queries.get_run(db, run_id))
    run_id = run["id"]
    if run["status"] in ENDED:
        raise Conflict(f"run {run_id} already ended ({run['status']})")
    if control.lease_alive(run, now):
        store.run_sync(lambda db: control.request_cancel(db, run_id, now))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            status = store.query("SELECT status FROM runs WHERE id=?", [run_id])[0]["status"]
            if status in ENDED:
                return status
            time.sleep(0.1)
        raise Conflict(
            f"run {run_id}: the engine owning it did not confirm the cancel in {wait:g} s"
        )
    if store.run_sync(lambda db: control.cancel_abandoned(db, run_id, time.time())) != 1:
        raise Conflict(f"run {run_id} changed while cancelling; try again")
    return "cancelled"


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with open_store(settings) as store:
        status = cancel_run(store, args.run_id, wait=args.wait)
    if args.json:
        output.print_json({"run_id": args.run_id, "status": status})
    else:
        output.stdout.print(output.safe(f"run {args.run_id}: {status}"))
    return 0
