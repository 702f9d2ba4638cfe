"""The `flowdeck` command line: parser, settings, error handling and exit codes.

Each group of subcommands lives in its own module under console/commands/ and exposes
`register(subparsers)`; a subcommand sets `func(args, settings) -> int` with `set_defaults`.

Exit codes: 0 ok; 1 the run failed or was cancelled; 2 bad input; 3 database unusable;
4 conflict; 130 interrupted. Errors go to stderr, one line each; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from engine.errors import Conflict, DatabaseError, InputError, NotFound, WorkflowError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_DB, EXIT_CONFLICT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

COMMANDS = {
    "console.commands.workflows": ("validate", "run", "resume"),
    "console.commands.runs": ("runs", "show", "cancel"),
    "console.commands.reviews": ("reviews", "approve", "reject", "prefs", "routes"),
    "console.commands.stats": ("stats", "prune"),
    "console.commands.undo": ("history", "undo"),
    "console.commands.console": ("console",),
    "console.commands.serve": ("serve",),
    "console.commands.demo": ("demo",),
    "console.commands.breakers": ("breakers",),
}
"""Modules that add subcommands (in help order) and the subcommands each adds. A command line
naming one of them imports only its module: `flowdeck run` starts its first step sooner when it
does not load the console, the HTTP server or rich tables first."""
COMMAND_MODULES = list(COMMANDS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"flowdeck: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_INPUT)


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes (after the subcommand name too)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--db", help="SQLite file (default ./flowdeck.db, env FLOWDECK_DB)")
    p.add_argument("--debug", action="store_true", default=None, help="show tracebacks")
    return p


def _module_for(argv: Sequence[str]) -> str | None:
    """The module of the subcommand `argv` names, if it names one (first non-option word)."""
    words = iter(argv)
    for word in words:
        if word.startswith("-"):
            if word in ("-h", "--help"):
                return None
            if word == "--db":
                next(words, None)
            continue
        for module, names in COMMANDS.items():
            if word in names:
                return module
        return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv` naming a subcommand, only that subcommand's module is loaded."""
    only = _module_for(argv) if argv is not None else None
    parser = _Parser(
        prog="flowdeck",
        description="A terminal console for agent workflows.",
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in [only] if only else COMMAND_MODULES:
        importlib.import_module(name).register(sub, common_options())
    return parser


def error(message: str) -> None:
    for line in message.splitlines() or [message]:
        sys.stderr.write(f"flowdeck: {line}\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from engine.config import load_settings

    try:
        settings = load_settings(db=args.db, debug=args.debug)
    except Exception as e:  # pydantic ValidationError from a bad FLOWDECK_* variable
        error(f"bad setting: {e}".splitlines()[0])
        return EXIT_INPUT
    try:
        return int(args.func(args, settings) or 0)
    except WorkflowError as e:
        for problem in e.problems:
            sys.stderr.write(problem + "\n")
        return EXIT_INPUT
    except (InputError, NotFound) as e:
        error(str(e))
        return EXIT_INPUT
    except DatabaseError as e:
        error(str(e))
        return EXIT_DB
    except Conflict as e:
        error(str(e))
        return EXIT_CONFLICT
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if settings.debug:
            raise
        error(f"unexpected error: {type(e).__name__}: {e} (run with --debug for details)")
        return EXIT_FAILED


def run() -> None:
    if (
        _module_for(sys.argv[1:]) == "console.commands.workflows"
        and os.environ.get("FLOWDECK_WRITER", "process").strip().lower() != "thread"
    ):
        # `run` and `resume` write through a writer process: start it now, so that its
        # interpreter starts while this one imports (the settings decide whether it is used).
        from engine import writer

        writer.prespawn()
    sys.exit(main())


if __name__ == "__main__":
    run()
