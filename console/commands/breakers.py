"""`flowdeck breakers` (circuit breakers and their state) and `flowdeck breakers reset KEY`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from console import output
from console.commands.common import open_store
from engine.config import Settings
from engine.errors import NotFound


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "breakers", parents=[common], help="circuit breakers per agent and host, open ones first"
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_breakers, action=None)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    r = actions.add_parser("reset", parents=[common], help="close a breaker now")
    r.add_argument("key", metavar="KEY", help="breaker key, e.g. agent:github or host:HOST:PORT")
    r.add_argument("--as", dest="who", default="operator", help="name recorded in the event")
    r.add_argument("--json", action="store_true", help="one JSON document on stdout")
    r.set_defaults(func=cmd_reset)


def cmd_breakers(args: argparse.Namespace, settings: Settings) -> int:
    from engine.breaker import list_breakers  # imported on use: keeps every command quick

    with open_store(settings) as store:
        rows = store.read(list_breakers)
    if args.json:
        output.print_json({"breakers": rows})
        return 0
    if not rows:
        output.stdout.print("no circuit breakers yet")
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("KEY", "AGENT", "STATE", "FAILURES", "OPENED", "NEXT TRIAL", "REASON"):
        table.add_column(col, overflow="fold")
    for r in rows:
        retry_at = r["retry_at"]
        state = r["state"]
        table.add_row(
            output.safe(r["key"]),
            output.safe(r["agent"] or "-"),
            Text(state, style={"open": "red", "half_open": "yellow"}.get(state, "green")),
            str(r["failures"]),
            output.ts(r["opened_at"]),
            output.ts(retry_at) if retry_at else "",
            output.safe((r["detail"] or "")[:80]),
        )
    output.stdout.print(table)
    return 0


def cmd_reset(args: argparse.Namespace, settings: Settings) -> int:
    from engine.breaker import reset_breaker

    with open_store(settings) as store:
        key = args.key
        ok = store.run_sync(lambda db: reset_breaker(db, key, now=time.time(), by=args.who))
    if not ok:
        raise NotFound(f"no circuit breaker '{args.key}' (see `flowdeck breakers`)")
    if args.json:
        output.print_json({"key": args.key, "state": "closed"})
    else:
        output.stdout.print(output.safe(f"breaker {args.key}: closed"))
    return 0
