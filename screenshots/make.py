"""Regenerate screenshots/: an SVG and a PNG of every console screen on realistic data.

Real workflows run through the real engine against the bundled demo service (real HTTP,
long-tailed latency, injected 500s and 429s, scripted outages) for 30 simulated minutes: a
clock that starts at a fixed date and jumps a minute between batches, so the latency plot and
the analytics have history. Some runs fail, some retry, destructive steps leave undo entries
(one undone, one expired), and two runs are left in progress: one waiting out a retry backoff,
one 40-step nightly job half done. Then the console (the real app, attached to that database,
with the clock frozen and the terminal size fixed) is driven with Pilot and every screen is
saved as SVG, then converted with `rsvg-convert` (SVG text spacing preserved).

    python screenshots/make.py [--out screenshots] [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import steps  # noqa: E402

from console.app import FlowdeckApp  # noqa: E402
from console.demo.service import ServiceConfig, start_service  # noqa: E402
from engine.models import WorkflowSpec  # noqa: E402
from engine.runner import Engine  # noqa: E402
from engine.store import Store  # noqa: E402

START = 1_767_261_600.0  # 2026-01-01 10:00:00 UTC: the simulated morning begins here
SIZE = (160, 48)


class SimClock:
    """Wall time shifted to START; `jump()` moves it forward (time between batches)."""

    def __init__(self, start: float):
        self.offset = start - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


# --------------------------------------------------------------------------- workflows


def agents(svc: Any) -> dict:
    return {
        "llm": {"kind": "http", "base_url": svc.url + "/v1", "timeout": 10},
        "tracker": {"kind": "http", "base_url": svc.url + "/tracker", "timeout": 5},
        "chat": {"kind": "http", "base_url": svc.url + "/chat", "timeout": 5},
        "code": {"kind": "http", "base_url": svc.url + "/code", "timeout": 5},
        "sh": {"kind": "shell"},
        "py": {"kind": "python"},
    }


RETRY = {"attempts": 4, "backoff": "exponential", "initial": 0.2, "max": 2, "jitter": True}


def spec(svc: Any, name: str, description: str, steps_: dict, **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": name,
            "description": description,
            "agents": agents(svc),
            "defaults": {"timeout": 10, "retry": RETRY},
            "steps": steps_,
            **extra,
        }
    )


def triage(svc: Any) -> WorkflowSpec:
    return spec(svc, "triage-inbox", "Classify a report, file it, tell the team", {
        "classify": {"agent": "llm", "description": "Ask the model what this is",
                     "with": {"method": "POST", "path": "/chat/completions", "json": {
                         "model": "demo-small",
                         "messages": [{"role": "user", "content": "Classify: ${{ inputs.subject }}"}]}}},
        "file_ticket": {"agent": "tracker", "needs": ["classify"],
                        "with": {"method": "POST", "path": "/issues",
                                 "json": {"title": "${{ inputs.subject }}", "labels": ["triage"]}}},
        "label": {"agent": "tracker", "needs": ["file_ticket"],
                  "with": {"method": "PATCH", "path": "/issues/${{ steps.file_ticket.output.number }}",
                           "json": {"labels": ["triage", "bug"]}}},
        "notify": {"agent": "chat", "needs": ["file_ticket"],
                   "with": {"method": "POST", "path": "/messages", "json": {
                       "channel": "general", "text": "filed ${{ steps.file_ticket.output.id }}"}}},
        "summarise": {"agent": "py", "needs": ["label", "notify"],
                      "with": {"call": "steps:summary", "args": {
                          "ticket": "${{ steps.file_ticket.output.id }}"}}},
    }, inputs={"subject": {"type": "string", "default": "Login loop on Safari"}})  # fmt: skip


def branch_sweep(svc: Any, ttl: float = 3600) -> WorkflowSpec:
    return spec(svc, "branch-sweep", "Delete a merged branch, keep it restorable", {
        "create": {"agent": "code", "with": {"method": "POST", "path": "/branches",
                                             "json": {"name": "${{ inputs.branch }}"}}},
        "delete_branch": {
            "agent": "code", "needs": ["create"], "destructive": True,
            "with": {"method": "DELETE", "path": "/branches/${{ inputs.branch }}"},
            "undo": {"with": {"method": "POST", "path": "/branches/${{ inputs.branch }}/restore"},
                     "description": "restore branch ${{ inputs.branch }}", "ttl": ttl}},
        "announce": {"agent": "chat", "needs": ["delete_branch"],
                     "with": {"method": "POST", "path": "/messages", "json": {
                         "channel": "releases", "text": "deleted ${{ inputs.branch }}"}}},
    }, inputs={"branch": {"type": "string", "required": True}})  # fmt: skip


def release_cleanup(svc: Any, announce_retry: dict | None = None) -> WorkflowSpec:
    return spec(svc, "release-cleanup", "Close the release PR, file the follow-up, tell the team", {
        "fetch_pr": {"agent": "code", "with": {"method": "GET", "path": "/pulls/${{ inputs.pr }}"}},
        "close_pr": {
            "agent": "code", "needs": ["fetch_pr"], "destructive": True,
            "description": "Close the pull request (reopened by undo)",
            "with": {"method": "POST", "path": "/pulls/${{ inputs.pr }}/close"},
            "undo": {"with": {"method": "POST", "path": "/pulls/${{ inputs.pr }}/reopen"},
                     "description": "reopen PR #${{ inputs.pr }}"}},
        "ticket": {"agent": "tracker", "needs": ["close_pr"],
                   "with": {"method": "POST", "path": "/issues", "json": {
                       "title": "Follow up on ${{ steps.fetch_pr.output.title }}"}}},
        "changelog": {"agent": "llm", "needs": ["fetch_pr"],
                      "with": {"method": "POST", "path": "/chat/completions", "json": {
                          "model": "demo-small", "messages": [{"role": "user", "content":
                              "Changelog line for ${{ steps.fetch_pr.output.title }}"}]}}},
        "announce": {"agent": "chat", "needs": ["ticket", "changelog"],
                     "retry": announce_retry or RETRY,
                     "with": {"method": "POST", "path": "/messages", "json": {
                         "channel": "releases", "text": "closed PR #${{ inputs.pr }}"}}},
    }, inputs={"pr": {"type": "integer", "required": True}})  # fmt: skip


def issue_cleanup(svc: Any, ttl: float = 3600) -> WorkflowSpec:
    return spec(svc, "issue-cleanup", "Delete a duplicate issue, restorable for an hour", {
        "delete_issue": {
            "agent": "tracker", "destructive": True,
            "with": {"method": "DELETE", "path": "/issues/${{ inputs.issue }}"},
            "undo": {"with": {"method": "POST", "path": "/issues/${{ inputs.issue }}/restore",
                              "json": {"issue": "${{ before }}"}},
                     "capture": {"with": {"method": "GET", "path": "/issues/${{ inputs.issue }}"}},
                     "description": "restore '${{ before.title }}'", "ttl": ttl}},
    }, inputs={"issue": {"type": "integer", "required": True}})  # fmt: skip


def lint(svc: Any) -> WorkflowSpec:
    """A shell step whose failure output holds markup and escape sequences."""
    return spec(svc, "lint-check", "Run the linter on the release branch", {
        "checkout": {"agent": "sh", "with": {"argv": ["true"]}},
        "lint": {"agent": "sh", "needs": ["checkout"], "retry": {"attempts": 1},
                 "with": {"run": "printf '\\033[31mE501\\033[0m line too long [bold]app.py[/bold]\\n' >&2; exit 2"}},
        "report": {"agent": "chat", "needs": ["lint"],
                   "with": {"method": "POST", "path": "/messages",
                            "json": {"channel": "alerts", "text": "lint passed"}}},
    })  # fmt: skip


def nightly(svc: Any) -> WorkflowSpec:
    """100 steps: extract 20 sources, transform 40, load 20, check 18, report, publish."""
    s: dict[str, Any] = {}

    def job(name: str, needs: list[str]) -> None:
        s[name] = {"agent": "py", "needs": needs,
                   "with": {"call": "steps:work", "args": {"name": name}}}  # fmt: skip

    for i in range(20):
        job(f"extract_{i:02d}", [])
    for i in range(40):
        job(f"transform_{i:02d}", [f"extract_{i % 20:02d}", f"extract_{(i * 7 + 3) % 20:02d}"])
    for i in range(20):
        job(f"load_{i:02d}", [f"transform_{i * 2:02d}", f"transform_{i * 2 + 1:02d}"])
    for i in range(18):
        job(f"check_{i:02d}", [f"load_{i:02d}", f"load_{(i + 2) % 20:02d}"])
    s["report"] = {"agent": "py", "needs": [f"check_{i:02d}" for i in range(18)],
                   "with": {"call": "steps:summary", "args": {}}}  # fmt: skip
    s["publish"] = {"agent": "chat", "needs": ["report"],
                    "with": {"method": "POST", "path": "/messages",
                             "json": {"channel": "general", "text": "nightly report ready"}}}  # fmt: skip
    doc = spec(svc, "nightly-report", "Extract, transform, load, check, report", s, concurrency=12)
    doc.defaults.timeout = 3600  # held steps wait for the screenshots
    return doc


# --------------------------------------------------------------------------- history


async def post(svc: Any, path: str, body: dict) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(svc.url + path, json=body) as r:
        return await r.json()


async def history(engine: Engine, svc: Any, clock: SimClock, minutes: int) -> dict[str, Any]:
    """Runs over `minutes` simulated minutes; returns ids the screenshots need."""
    rng = random.Random(4)
    pr = iter(range(1, 100))
    keep: dict[str, Any] = {}
    for minute in range(minutes):
        started = time.monotonic()
        jobs: list[Awaitable[Any]] = []
        for _ in range(rng.randint(2, 4)):
            jobs.append(engine.run(triage(svc), {"subject": rng.choice(SUBJECTS)}))
        if minute % 3 == 0:
            jobs.append(engine.run(branch_sweep(svc, ttl=600 if minute == 0 else 3600),
                                   {"branch": f"stale/feature-{minute}"}))  # fmt: skip
        if minute % 5 == 2:
            jobs.append(engine.run(release_cleanup(svc), {"pr": next(pr)}))
        if minute % 7 == 3:
            issue = await post(svc, "/tracker/issues", {"title": rng.choice(SUBJECTS) + " (dup)"})
            jobs.append(engine.run(issue_cleanup(svc), {"issue": issue["number"]}))
        if minute in (3, 24):
            jobs.append(engine.run(lint(svc)))
        if minute == 12:  # a rough patch: the chat answers 503 for a while
            await post(svc, "/admin/config", {"error_rate": 0.35, "fault_services": ["chat"]})
        if minute == 15:
            await post(svc, "/admin/config", {"error_rate": 0.04, "fault_services": None})
        runs = await asyncio.gather(*jobs)
        for run in runs:
            keep.setdefault(run.spec.name, []).append(run.run_id)
        if minute == 20:  # an operator took one back
            entries = [e for e in await engine.undo.history() if e.status == "done"]
            if entries:
                await engine.undo.undo(entries[-1].id, actor="ana")
        clock.jump(max(0.0, 60 - (time.monotonic() - started)))
    return keep


SUBJECTS = [
    "Login loop on Safari", "Export times out over 10k rows", "Typo on the pricing page",
    "Webhook retries forever", "Dark mode loses contrast", "CSV import drops accents",
    "Password reset mail is late", "[urgent] checkout 500s",
]  # fmt: skip


async def in_progress(engine: Engine, svc: Any) -> dict[str, str]:
    """Leave two runs going: one waiting out a retry backoff, one 40-step job half done."""
    for name in ("transform_17", "transform_29", "load_03", "load_11"):
        steps.HELD[name] = asyncio.Event()
    nightly_run = await engine.submit(nightly(svc))
    await post(svc, "/admin/config", {"error_rate": 0.0})
    await post(svc, "/admin/script", {
        "path_prefix": "/chat/messages", "method": "POST",
        "responses": [{"status": 503}, {"status": 503}],
    })  # fmt: skip
    slow_retry = {
        "attempts": 5,
        "backoff": "exponential",
        "initial": 20,
        "max": 60,
        "jitter": False,
    }
    release = await engine.submit(release_cleanup(svc, slow_retry), {"pr": 11})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = release.steps["announce"].status.value
        held = [nightly_run.steps[n].status.value for n in ("transform_17", "load_03")]
        if st == "retrying" and release.steps["announce"].attempt >= 2 and "running" in held:
            break
        await asyncio.sleep(0.1)
    await engine.store.flush()
    return {"release": release.run_id, "nightly": nightly_run.run_id}


# --------------------------------------------------------------------------- capture


Shot = Callable[[Any, FlowdeckApp], Awaitable[None]]


async def settle(pilot: Any, app: FlowdeckApp, what: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await pilot.pause()
        if app.snapshot is not None and what():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    await pilot.pause()


async def capture(
    store: Store, engine: Engine, now: float, out: Path, name: str, shot: Shot, size=SIZE
) -> None:
    app = FlowdeckApp(store, engine=engine, clock=lambda: now, source_label="demo.db")
    async with app.run_test(size=size) as pilot:
        await settle(pilot, app, lambda: app.snapshot.analytics is not None)
        await shot(pilot, app)
        await settle(pilot, app)
        app.save_screenshot(f"{name}.svg", str(out))
    print(f"  {name}.svg")


def to_png(svg: Path) -> None:
    text = svg.read_text()
    # rsvg collapses spaces at the start of a text run unless told to keep them.
    text = re.sub(r"<svg(?![^>]*xml:space)", '<svg xml:space="preserve"', text, count=1)
    svg.write_text(text)
    subprocess.run(["rsvg-convert", "-f", "png", "-o", str(svg.with_suffix(".png")), str(svg)],
                   check=True)  # fmt: skip


async def main(out: Path, minutes: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.environ["TZ"] = "UTC"
    time.tzset()
    tmp = Path(tempfile.mkdtemp(prefix="flowdeck-shots-"))
    svc = await start_service(ServiceConfig(seed=11, latency_scale=1.0, error_rate=0.04,
                                            rate_limit_rate=0.02, retry_after=0.3))  # fmt: skip
    store = Store.open(tmp / "demo.db")
    clock = SimClock(START)
    engine = Engine(store, clock=clock, max_concurrency=32)
    await engine.start()
    try:
        print(f"running {minutes} simulated minutes of workflows…")
        await history(engine, svc, clock, minutes)
        live = await in_progress(engine, svc)
        now = clock()
        failed = store.query(
            "SELECT id FROM runs WHERE workflow = 'lint-check' ORDER BY created_at DESC LIMIT 1"
        )[0]["id"]

        async def overview(pilot: Any, app: FlowdeckApp) -> None:
            pass

        async def run_view(pilot: Any, app: FlowdeckApp, run_id: str, step: str, keys=()) -> None:
            app.open_run(run_id)
            await settle(pilot, app, lambda: getattr(app.screen, "view", None) is not None)
            from widgets.dag_view import DagView

            app.screen.query_one(DagView).select(step)
            for key in keys:
                await pilot.press(key)

        async def reviews(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("2")

        async def history_(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("3")

        async def undo_confirm(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("3")
            await settle(pilot, app)
            from widgets.undo_panel import UndoHistory

            panel = app.screen.query_one(UndoHistory)
            for _ in range(10):
                entry = panel.selected
                if entry is not None and entry.why_not(now) is None:
                    break
                await pilot.press("down")
            await pilot.press("u")

        async def analytics(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("4")

        async def help_(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("question_mark")

        async def palette(pilot: Any, app: FlowdeckApp) -> None:
            await pilot.press("colon")
            await pilot.pause()
            await pilot.press(*"open run")

        def bind(fn: Any, *args: Any, **kw: Any) -> Shot:
            return lambda pilot, app: fn(pilot, app, *args, **kw)

        print("capturing screens…")
        shots: list[tuple[str, Shot, tuple[int, int]]] = [
            ("overview", overview, SIZE),
            ("overview-80x24", overview, (80, 24)),
            ("overview-200x60", overview, (200, 60)),
            ("run-retrying", bind(run_view, live["release"], "announce"), SIZE),
            ("run-100-steps-collapsed", bind(run_view, live["nightly"], "load_03"), SIZE),
            (
                "run-100-steps-expanded",
                bind(run_view, live["nightly"], "load_03", keys=("c",)),
                SIZE,
            ),
            ("run-failed-hostile-output", bind(run_view, failed, "lint"), SIZE),
            ("run-80x24", bind(run_view, live["release"], "announce"), (80, 24)),
            ("reviews", reviews, SIZE),
            ("history", history_, SIZE),
            ("history-undo-confirm", undo_confirm, SIZE),
            ("analytics", analytics, SIZE),
            ("help", help_, SIZE),
            ("command-palette", palette, SIZE),
        ]
        for name, shot, size in shots:
            await capture(store, engine, now, out, name, shot, size)
        for event in steps.HELD.values():
            event.set()
    finally:
        for run in list(engine.runs.values()):
            run.cancel()
        await engine.aclose()
        store.close()
        await svc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if shutil.which("rsvg-convert"):
        for svg in sorted(out.glob("*.svg")):
            to_png(svg)
        print(f"PNGs written next to the SVGs in {out}")
    else:
        print("rsvg-convert not found: SVGs only")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="directory for the SVG and PNG files")
    p.add_argument("--minutes", type=int, default=30, help="simulated minutes of history")
    a = p.parse_args()
    asyncio.run(main(a.out, a.minutes))
