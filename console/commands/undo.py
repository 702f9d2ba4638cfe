"""`flowdeck history` (the undo log) and `flowdeck undo ID | --last | --run RUN_ID`."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from console import output
from console.cli import EXIT_CONFLICT, EXIT_OK
from console.commands.common import open_store
from engine.config import Settings
from engine.errors import InputError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("history", parents=[common], help="the undo log, newest first")
    p.add_argument("--run", metavar="RUN_ID", help="only entries of this run (or id prefix)")
    p.add_argument(
        "--status",
        help="only entries in this state: prepared, done, expired, void, not_undoable, "
        "undoing, undone, failed",
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser(
        "undo",
        parents=[common],
        help="undo a destructive step: one entry, the last one, or a whole run",
        description="Undo destructive operations recorded in the undo log (see `flowdeck "
        "history`). Exit 4 when refused (already undone, expired, ...) or when an undo failed.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_entry_id, metavar="ID", help="undo entry id")
    which.add_argument("--last", action="store_true", help="the last operation")
    which.add_argument(
        "--run", metavar="RUN_ID", help="every undoable entry of a run, newest first"
    )
    p.add_argument("--retry", action="store_true", help="try again an entry whose undo failed")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="--run: skip what cannot be undone and go on after a failed undo",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="compensate an entry left unresolved by a crash without re-checking it",
    )
    p.add_argument("--as", dest="actor", metavar="NAME", help="who is undoing (default: $USER)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_undo)


def _entry_id(text: str) -> int:
    text = text.lstrip("#")
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not an undo entry id (a number)")
    return int(text)


def _left(seconds: float | None, state: str) -> str:
    if state == "expired":
        return "expired"
    return output.duration(seconds) if seconds is not None else "-"


STATE_STYLE = {
    "done": "green",
    "undone": "cyan",
    "undoing": "magenta",
    "prepared": "yellow",
    "failed": "red",
    "void": "dim",
    "not_undoable": "dim",
    "expired": "dim",
}


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from engine import queries
    from engine.undo import list_entries

    if args.limit < 1:
        raise InputError("--limit must be at least 1")
    now = time.time()
    with open_store(settings) as store:

        def read(db: Any) -> list[Any]:
            run_id = queries.resolve_run_id(db, args.run) if args.run else None
            return list_entries(db, now=now, limit=args.limit, run_id=run_id, status=args.status)

        rows = store.read(read)
    if args.json:
        output.print_json({"entries": [e.model_dump(mode="json") for e in rows]})
        return EXIT_OK
    if not rows:
        output.stdout.print("the undo log is empty")
        return EXIT_OK
    table = Table(box=None, header_style="bold")
    for col in ("ID", "WHEN", "RUN", "STEP", "ACTION", "STATUS", "LEFT", "DESCRIPTION"):
        table.add_column(col, overflow="fold")
    for e in rows:
        note = e.description or ""
        if e.error and e.state in ("prepared", "failed", "void", "not_undoable"):
            note = f"{note} [{e.error}]" if note else e.error
        elif e.state == "undone":
            note = f"{note} [undone by {e.undone_by}]"
        table.add_row(
            str(e.id),
            output.ts(e.created_at),
            output.safe(e.run_id),
            output.safe(e.step_id),
            output.safe(e.operation or "-"),
            Text(e.state, style=STATE_STYLE.get(e.state, "")),
            _left(e.seconds_left, e.state),
            output.safe(note[:160]),
        )
    output.stdout.print(table)
    return EXIT_OK


def cmd_undo(args: argparse.Namespace, settings: Settings) -> int:
    from engine.undo import default_actor, undo_entry, undo_last, undo_run

    if args.keep_going and not args.run:
        raise InputError("--keep-going only applies to --run")
    if args.force and args.run:
        raise InputError("--force applies to one entry (ID or --last), not to --run")
    actor = args.actor or default_actor()
    with open_store(settings) as store:
        if args.run:
            results = asyncio.run(
                undo_run(store, args.run, actor=actor, retry=args.retry, keep_going=args.keep_going)
            )
        elif args.last:
            results = [
                asyncio.run(undo_last(store, actor=actor, retry=args.retry, force=args.force))
            ]
        else:
            results = [
                asyncio.run(
                    undo_entry(store, args.id, actor=actor, retry=args.retry, force=args.force)
                )
            ]
    ok = all(r.ok for r in results)
    if args.json:
        output.print_json({"ok": ok, "results": [r.to_dict() for r in results]})
    else:
        for r in results:
            line = Text(f"{r.outcome:<8} ", style=_OUTCOME_STYLE.get(r.outcome, ""))
            line.append_text(output.safe(f"#{r.entry_id} {r.run_id} {r.step_id}: {r.message}"))
            (output.stdout if r.ok else output.stderr).print(line)
    return EXIT_OK if ok else EXIT_CONFLICT


_OUTCOME_STYLE = {
    "undone": "green",
    "failed": "red",
    "refused": "red",
    "void": "yellow",
    "skipped": "dim",
}
