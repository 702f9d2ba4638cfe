"""`flowdeck console`: the live console attached to a database another process writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from console.commands.common import open_store
from engine.config import Settings
from engine.errors import InputError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "console",
        parents=[common],
        help="the live console on a database that a run, serve or demo writes",
        description=(
            "Watch runs live, approve reviews, undo actions. Attaches to the database that "
            "another flowdeck process writes; actions go back through the database."
        ),
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="console config (keymap, theme); default ~/.config/flowdeck/console.yaml",
    )
    p.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace, settings: Settings) -> int:
    from console.app import FlowdeckApp, binding_ids
    from console.config import load_config

    config = load_config(args.config, known_ids=binding_ids())
    store = open_store(settings)
    try:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise InputError("flowdeck console needs a terminal (stdin and stdout are not a tty)")
        FlowdeckApp(store, config=config).run()
    finally:
        store.close()
    return 0
