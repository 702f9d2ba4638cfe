"""`flowdeck demo --headless --runs N`: the demo without the console, for CI and scripts.

Starts N runs at the demo's pace while the simulated operator decides the reviews, prints one
line per ended run on stderr, and once all N have ended prints the summary on stdout (or one
JSON document with `--json`) and returns 0. SIGINT/SIGTERM stop it early: the runs in flight
are cancelled, everything is shut down, and it returns 130.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from console import output
from console.demo import summary
from console.demo.logs import route_logs
from console.demo.session import DemoOptions, DemoSession

if TYPE_CHECKING:
    from console.demo.catalog import Example
    from engine.models import RunStatus
    from engine.runner import RunExecution

EXIT_OK, EXIT_INTERRUPTED = 0, 130


async def run_headless(
    options: DemoOptions,
    db_path: Path,
    *,
    as_json: bool = False,
    db_kept: bool = True,
    debug: bool = False,
) -> int:
    """Run the demo until `options.runs` runs have ended; returns the exit code."""
    loop = asyncio.get_running_loop()
    unroute = route_logs(to_file=None, debug=debug)
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with DemoSession(options, db_path) as demo:
            assert demo.running is not None and demo.store is not None
            output.stderr.print(
                output.safe(
                    f"flowdeck demo: service on {demo.running.url}, database {db_path}, "
                    f"{options.runs} runs"
                ),
                soft_wrap=True,
            )
            demo.on_end.append(_progress)
            waiting = asyncio.create_task(_finish(demo))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                output.stderr.print("flowdeck demo: stopping (runs in flight are cancelled)")
                return EXIT_INTERRUPTED
            waiting.result()  # a failed pacer or operator raises here
            await demo.store.flush()
            report = await demo.store.aread(summary.collect)
            report["service"] = {
                k: demo.running.service.snapshot()[k] for k in ("requests", "faults", "replays")
            }
            report["db"] = str(db_path) if db_kept else None
            if demo.autopilot is not None:
                report["operator"] = {
                    "decisions": dict(demo.autopilot.decisions),
                    "undo": dict(demo.autopilot.undone),
                }
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        unroute()
    if as_json:
        output.print_json(report)
    else:
        summary.render(report, output.stdout)
    return EXIT_OK


async def _finish(demo: DemoSession) -> None:
    """Until every run has ended and the operator's last undos are through."""
    await demo.wait()
    if demo.autopilot is not None:
        await demo.autopilot.settle()


def _progress(example: Example, run: RunExecution, status: RunStatus) -> None:
    retries = sum(max(0, st.attempt - 1) for st in run.steps.values())
    took = ""
    if run.started_at is not None:
        took = f", {run.engine.clock() - run.started_at:.1f} s"
    line = output.safe(f"run {run.run_id} {example.name}: ")
    line.append_text(output.status_text(status.value))
    line.append(f" ({len(run.steps)} steps, {retries} retries{took})")
    output.stderr.print(line, soft_wrap=True)
