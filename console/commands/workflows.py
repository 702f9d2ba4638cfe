"""`flowdeck validate`, `flowdeck run`, `flowdeck resume`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Any

from console.cli import EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK
from console.commands.common import open_store
from engine.errors import InputError

DISPLAY_DELAY = 0.2
"""Seconds into a run before `run` loads its live progress display (a run that ends sooner
shows the summary only)."""

if TYPE_CHECKING:
    from engine.config import Settings


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("validate", parents=[common], help="check workflow files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", parents=[common], help="run a workflow to the end")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--input", "-i", action="append", default=[], metavar="K=V", help="a workflow input"
    )
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.add_argument("--concurrency", type=int, help="steps at once across the engine")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", parents=[common], help="continue an interrupted run")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.set_defaults(func=cmd_resume)


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    from console import output
    from engine.loader import check_files

    problems = check_files(args.files)
    if args.json:
        output.print_json({"ok": not problems, "problems": problems})
    else:
        for line in problems:
            sys.stderr.write(line + "\n")
        if not problems:
            for f in args.files:
                output.stdout.print(output.safe(f"{f}: ok"))
    return EXIT_INPUT if problems else EXIT_OK


def parse_kv(pairs: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--input '{pair}': expected KEY=VALUE")
        result[key] = value
    return result


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.loader import load_workflow, parse_inputs

    spec = load_workflow(args.file)
    inputs = parse_inputs(spec, parse_kv(args.input))
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        settings.max_concurrency = args.concurrency
    store = open_store(settings, must_exist=False)
    try:
        return asyncio.run(
            _drive(store, settings, args, spec=spec, inputs=inputs, source=args.file)
        )
    finally:
        store.close()


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    from engine import queries

    store = open_store(settings)
    try:
        run_id = store.read(lambda db: queries.resolve_run_id(db, args.run_id))
        return asyncio.run(_drive(store, settings, args, resume=run_id))
    finally:
        store.close()


async def _drive(store: Any, settings: Settings, args: argparse.Namespace, **how: Any) -> int:
    from engine import queries
    from engine.models import RunStatus
    from engine.runner import Engine

    engine = Engine(store, max_concurrency=settings.max_concurrency)
    engine.undo.history_cap = settings.history_cap
    early: list[Any] = []  # events until the progress display is up
    ended = asyncio.get_running_loop().create_future()
    end_kinds = {f"run.{s.value}" for s in RunStatus if s.ended or s is RunStatus.INTERRUPTED}

    def keep(ev: Any) -> None:
        early.append(ev)
        if not ended.done() and ev.kind in end_kinds:
            ended.set_result(None)

    unsubscribe = engine.events.subscribe(keep)
    await engine.start()
    stop = _install_signals(engine, settings.grace)
    try:
        if "resume" in how:
            run = await engine.resume(how["resume"])
        else:
            run = await engine.submit(how["spec"], how["inputs"], source=how["source"])
        # The display (rich: ~30 ms of imports, holding the GIL) comes up DISPLAY_DELAY into
        # the run, so the first steps never wait for it; its events are replayed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ended), DISPLAY_DELAY)
        from console.progress import RunProgress

        progress = RunProgress(run.run_id, run.spec.name, len(run.spec.steps), live=not args.json)
        unsubscribe()
        with progress:  # its header first, then the events so far, then the live ones
            for ev in early:
                progress.on_event(ev)
            engine.events.subscribe(progress.on_event)
            status = await run.wait()
    finally:
        stop()
        await engine.aclose()
    from console import output

    if args.json:
        output.print_json(await store.aread(lambda db: queries.get_run(db, run.run_id)))
    else:
        _summary(run, status)
    if status is RunStatus.SUCCEEDED:
        return EXIT_OK
    if status is RunStatus.INTERRUPTED:
        output.stderr.print(
            output.safe(
                f"run {run.run_id} interrupted; continue it with: flowdeck resume {run.run_id}"
            )
        )
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def _summary(run: Any, status: Any) -> None:
    from console import output

    counts: dict[str, int] = {}
    for st in run.steps.values():
        counts[st.status.value] = counts.get(st.status.value, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    line = output.safe(f"run {run.run_id} {run.spec.name}: ")
    line.append_text(output.status_text(status.value))
    line.append(f" ({parts})")
    output.stdout.print(line)
    if run.error:
        output.stdout.print(output.safe(f"  {run.error}"), style="red")


def _install_signals(engine: Any, grace: float) -> Any:
    """SIGINT/SIGTERM: first one stops starting steps and waits `grace` s; a second one
    interrupts at once. The run stays resumable either way."""
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"n": 0, "tasks": []}

    def handler(signame: str) -> None:
        from console import output

        state["n"] += 1
        if state["n"] == 1:
            output.stderr.print(
                f"{signame}: stopping (waiting up to {grace:g} s for running steps; again to stop now)"
            )
            state["tasks"].append(loop.create_task(engine.shutdown(grace)))
        else:
            for run in list(engine.runs.values()):
                run.interrupt()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, handler, sig.name)

    def remove() -> None:
        for sig in sigs:
            loop.remove_signal_handler(sig)

    return remove
