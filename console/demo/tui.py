"""`flowdeck demo`: the console on a live demo session, all in one process and one event loop.

The engine, the demo service, the pacer and the (leisurely) simulated operator run on the
console's own event loop; the console gets the in-process engine, so a keystroke acts at once.
`q` (or SIGTERM / SIGHUP, e.g. a closed terminal) quits: the console closes, then the session
stops everything it started. Log records go to a file beside the demo DB (stderr would draw
over the screen).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from console.app import FlowdeckApp
from console.demo.autopilot import Habits
from console.demo.logs import route_logs
from console.demo.session import DemoOptions, DemoSession
from engine.errors import InputError

CONSOLE_HABITS = Habits(delay=(8.0, 25.0), undo_every=5, undo_delay=(5.0, 20.0))
"""Under the console the simulated operator takes its time, so that pending reviews stay on
screen and a person can decide them first (whoever decides first wins)."""


class DemoApp(FlowdeckApp):
    """The console on a running `DemoSession`."""

    TITLE = "flowdeck demo"

    def __init__(self, session: DemoSession, **kw: object):
        assert session.store is not None and session.engine is not None
        super().__init__(
            session.store,
            engine=session.engine,
            source_label=f"demo · {session.db_path}",
            **kw,  # type: ignore[arg-type]
        )
        self.session = session
        """The demo that feeds this console."""

    def on_mount(self) -> None:
        super().on_mount()
        outage = self.session.running.service.config.outage if self.session.running else None
        lines = ["New runs start every few seconds."]
        if outage is not None:
            lines.append(
                f"The {outage.service} service goes down for {outage.duration:g} s every "
                f"{outage.every:g} s (first at {outage.first_window():g} s): watch its breaker."
            )
        if self.session.autopilot is not None:
            lines.append("Press 2 for reviews: a simulated operator decides those you leave.")
        else:
            lines.append("Press 2 for reviews: every decision is yours.")
        self.notify("\n".join(lines), title="flowdeck demo", timeout=12, markup=False)


async def run_console(options: DemoOptions, db_path: Path) -> int:
    """Run the demo under the console until the user quits; returns the exit code."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError("flowdeck demo needs a terminal; use --headless --runs N without one")
    if options.habits is None:
        options.habits = CONSOLE_HABITS
    unroute = route_logs(to_file=db_path.with_name(db_path.name + ".log"))
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGHUP)
    try:
        async with DemoSession(options, db_path) as session:
            app = DemoApp(session)
            for sig in signals:
                loop.add_signal_handler(sig, app.exit)
            watch = asyncio.create_task(_stop_on_failure(session, app))
            try:
                await app.run_async()
            finally:
                watch.cancel()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        unroute()
    return app.return_code or 0


async def _stop_on_failure(session: DemoSession, app: DemoApp) -> None:
    """Close the console with a message if the pacer or the operator fails."""
    try:
        await session.wait()
    except Exception as e:
        app.exit(return_code=1, message=f"flowdeck demo stopped: {type(e).__name__}: {e}")
