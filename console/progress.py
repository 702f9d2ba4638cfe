"""Live progress of one run on stderr for `flowdeck run` / `resume`.

Engine events only update counters and a dict of active steps; the display redraws on its own
timer (rich Live, 4 per second) on a terminal, or prints one line per finished step otherwise.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from console import output
from engine.events import Event

SYMBOL = {
    "succeeded": ("✓", "green"),
    "failed": ("✗", "red"),
    "rejected": ("✗", "red"),
    "skipped": ("-", "dim"),
    "cancelled": ("⊘", "yellow"),
}
ACTIVE = ("running", "retrying", "waiting_review")


class RunProgress:
    """Collects events of one run and shows them."""

    def __init__(self, run_id: str, workflow: str, total: int, *, live: bool):
        self.run_id = run_id
        self.workflow = workflow
        self.total = total
        self.counts: dict[str, int] = {}
        self.active: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.use_live = live and output.stderr.is_terminal
        self._live: Live | None = None
        self.status = "running"

    def on_event(self, ev: Event) -> None:
        if ev.run_id != self.run_id:
            return
        kind = ev.kind
        if kind.startswith("run."):
            self.status = kind[4:]
            return
        if not kind.startswith("step.") or ev.step_id is None:
            return
        status = kind[5:]
        if status in ACTIVE:
            self.active[ev.step_id] = {"status": status, "since": time.monotonic(), **ev.data}
            if status == "waiting_review" and not self.use_live:
                rid = ev.data.get("review_id")
                line = Text("  ? ", style="bold yellow")
                line.append_text(output.safe(f"{ev.step_id} waits for review {rid}: "))
                line.append_text(output.safe(f"flowdeck approve {rid} | flowdeck reject {rid}"))
                output.stderr.print(line)
        elif status in SYMBOL:
            self.active.pop(ev.step_id, None)
            self.counts[status] = self.counts.get(status, 0) + 1
            if not self.use_live:
                sym, style = SYMBOL[status]
                line = Text(f"  {sym} ", style=style)
                line.append_text(output.safe(ev.step_id))
                if ev.data.get("error"):
                    line.append_text(output.safe(f"  {ev.data['error']}"))
                output.stderr.print(line)
        elif status == "pending":
            self.active.pop(ev.step_id, None)

    def render(self) -> Group:
        done = sum(self.counts.values())
        head = Text()
        head.append_text(output.safe(f"run {self.run_id}  {self.workflow}  "))
        head.append(f"{done}/{self.total} steps", style="bold")
        for status, n in sorted(self.counts.items()):
            sym, style = SYMBOL[status]
            head.append(f"  {sym} {n}", style=style)
        head.append(f"  {output.duration(time.monotonic() - self.started)}", style="dim")
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for step_id, info in list(self.active.items())[:12]:
            status = info["status"]
            if status == "retrying":
                left = max(0.0, info.get("wait", 0) - (now - info["since"]))
                detail = f"attempt {info.get('attempt')}/{info.get('of')} in {left:.1f} s"
            elif status == "waiting_review":
                rid = info.get("review_id")
                detail = f"review {rid}: flowdeck approve {rid} | reject {rid}"
            else:
                detail = f"attempt {info.get('attempt', 1)}/{info.get('of', 1)}"
            table.add_row(Spinner("dots"), output.safe(step_id), output.status_text(status), detail)
        if len(self.active) > 12:
            table.add_row("", Text(f"... {len(self.active) - 12} more active", style="dim"), "", "")
        return Group(head, table)

    def __enter__(self) -> RunProgress:
        if self.use_live:
            self._live = Live(
                get_renderable=self.render,
                console=output.stderr,
                refresh_per_second=4,
                transient=True,
            )
            self._live.__enter__()
        else:
            output.stderr.print(
                output.safe(f"run {self.run_id}  {self.workflow}  ({self.total} steps)")
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
