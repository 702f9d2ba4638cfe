"""`flowdeck demo`: the bundled demo service, the engine and the console on a fresh demo DB.

The DB lives in a temporary directory removed on exit, unless `--db PATH` keeps it (an
existing demo DB is reused: runs and learned approvals pile up across sessions). FLOWDECK_DB is
ignored here so that the demo never writes into a working database by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.errors import InputError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="a live console on realistic agents (bundled demo service, fresh demo DB)",
        description="Start the bundled demo service, the engine and the console on a fresh demo "
        "DB, and keep starting runs of the examples. --db PATH keeps the DB.",
    )
    p.add_argument(
        "--headless", action="store_true", help="no console: a simulated operator decides"
    )
    p.add_argument("--runs", type=int, help="headless: end after this many runs (default 10)")
    p.add_argument("--json", action="store_true", help="headless: the summary as JSON")
    p.add_argument("--seed", type=int, default=7, help="seed of every random choice (default 7)")
    p.add_argument(
        "--fast", action="store_true", help="short latencies, pauses and outage (tests, CI)"
    )
    p.add_argument(
        "--no-autopilot",
        action="store_true",
        help="console: leave every review and undo to you (no simulated operator)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from console.demo.session import DemoOptions

    if args.runs is not None and args.runs < 1:
        raise InputError("--runs must be at least 1")
    if not args.headless and (args.runs is not None or args.json):
        raise InputError("--runs and --json go with --headless")
    if args.headless and args.no_autopilot:
        raise InputError("--no-autopilot goes without --headless (headless needs the operator)")
    options = DemoOptions(
        seed=args.seed,
        fast=args.fast,
        runs=(args.runs or 10) if args.headless else None,
        autopilot=not args.no_autopilot,
        max_concurrency=settings.max_concurrency,
    )
    keep = args.db is not None
    tmp = None if keep else Path(tempfile.mkdtemp(prefix="flowdeck-demo-"))
    db_path = Path(args.db) if keep else tmp / "demo.db"  # type: ignore[operator]
    try:
        if args.headless:
            from console.demo.headless import run_headless

            return asyncio.run(
                run_headless(
                    options, db_path, as_json=args.json, db_kept=keep, debug=settings.debug
                )
            )
        from console.demo.tui import run_console

        return asyncio.run(run_console(options, db_path))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
