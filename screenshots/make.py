"""Regenerate screenshots/: an SVG and a PNG of every console screen on the demo's data.

The demo's own workflows (`examples/*.yaml`, bound to the bundled demo service: real HTTP,
long-tailed latency, injected 500s and 429s) run through the real engine for 30 simulated
minutes, with the demo's simulated operator deciding reviews and undoing now and then. The
process clock (`time.time`) is replaced by a clock that starts at a fixed date and jumps a
minute between batches, so every timestamp (runs, decisions, undo windows) lives in the same
simulated morning and the latency plot has history. A few more runs fail, retry or leave
hostile output; at the end the operator steps away, leaving reviews pending, a release waiting
out a retry backoff and a 100-step nightly job half done. Then the console (the real app on
that database, clock frozen, fixed terminal size) is driven with Pilot; each screen is saved as
SVG and converted to PNG with `rsvg-convert` (SVG spaces preserved).

    python screenshots/make.py [--out screenshots] [--minutes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

START = 1_767_261_600.0  # 2026-01-01 10:00:00 UTC: the simulated morning begins here
_real_time = time.time


class SimClock:
    """Wall time shifted to START; `jump()` moves it forward (time between batches)."""

    def __init__(self, start: float):
        self.offset = start - _real_time()

    def __call__(self) -> float:
        return _real_time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


CLOCK = SimClock(START)
time.time = CLOCK  # every timestamp of this process is simulated time (see the docstring)

import steps  # noqa: E402

from console.app import FlowdeckApp  # noqa: E402
from console.demo.autopilot import Autopilot, Habits  # noqa: E402
from console.demo.catalog import load_examples  # noqa: E402
from console.demo.service import start_service  # noqa: E402
from console.demo.session import OPENING_HICCUPS, DemoOptions  # noqa: E402
from engine.models import WorkflowSpec  # noqa: E402
from engine.runner import Engine  # noqa: E402
from engine.store import Store  # noqa: E402

SIZE = (160, 48)


# --------------------------------------------------------------------------- workflows


def agents(svc: Any) -> dict:
    return {
        "llm": {"kind": "http", "base_url": svc.base_url("llm"), "timeout": 10},
        "tracker": {"kind": "http", "base_url": svc.base_url("tracker"), "timeout": 5},
        "chat": {"kind": "http", "base_url": svc.base_url("chat"), "timeout": 5},
        "code": {"kind": "http", "base_url": svc.base_url("code"), "timeout": 5},
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


def deploy_notice(svc: Any) -> WorkflowSpec:
    """A deploy announcement whose chat call is failing: the run waits out a long backoff."""
    slow = {"attempts": 5, "backoff": "exponential", "initial": 20, "max": 60, "jitter": False}
    return spec(svc, "deploy-notice", "Tag the release, write the notes, tell the team", {
        "tag": {"agent": "code", "description": "Read the release pull request",
                "with": {"method": "GET", "path": "/pulls/1"}},
        "notes": {"agent": "llm", "needs": ["tag"], "description": "Release notes from the title",
                  "with": {"method": "POST", "path": "/chat/completions", "json": {
                      "model": "demo-small", "messages": [{"role": "user", "content":
                          "Release notes for ${{ steps.tag.output.title }}"}]}}},
        "ticket": {"agent": "tracker", "needs": ["tag"],
                   "with": {"method": "POST", "path": "/issues", "json": {
                       "title": "Verify release ${{ steps.tag.output.head }}"}}},
        "announce": {"agent": "chat", "needs": ["notes", "ticket"], "retry": slow,
                     "description": "Tell #releases (the chat is having a bad minute)",
                     "with": {"method": "POST", "path": "/messages", "json": {
                         "channel": "releases", "text": "released ${{ steps.tag.output.head }}"}}},
    })  # fmt: skip


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


async def history(engine: Engine, svc: Any, minutes: int) -> asyncio.Task[None]:
    """The demo's workflows over `minutes` simulated minutes, decided by its operator."""
    rng = random.Random(4)
    examples = load_examples(svc)
    operator = Autopilot(
        engine,
        random.Random(5),
        Habits(delay=(0.1, 0.6), undo_every=3, undo_delay=(0.1, 0.4), poll=0.1),
    )
    watcher = asyncio.create_task(operator.run())
    weights = [e.weight for e in examples]

    async def one(example: Any) -> None:
        run = await engine.submit(example.spec, example.next_inputs(rng, svc))
        status = await run.wait()
        operator.on_run_end(example, run, status)

    for minute in range(minutes):
        started = _real_time()
        jobs = [one(e) for e in examples] if minute == 0 else []
        jobs += [one(rng.choices(examples, weights)[0]) for _ in range(rng.randint(2, 4))]
        if minute in (3, 24):
            jobs.append(engine.run(lint(svc)))
        await asyncio.gather(*jobs)
        await operator.settle()
        CLOCK.jump(max(0.0, 60 - (_real_time() - started)))
    return watcher


async def in_progress(engine: Engine, svc: Any, operator: asyncio.Task[None]) -> dict[str, str]:
    """The operator steps away: reviews stay pending, a release waits out a retry backoff
    and the 100-step nightly job is half done."""
    operator.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await operator
    rng = random.Random(9)
    examples = {e.name: e for e in load_examples(svc)}
    for name in ("release-cleanup", "triage-incoming-issue", "release-cleanup"):
        example = examples[name]
        run = await engine.submit(example.spec, example.next_inputs(rng, svc))
        for _ in range(300):  # until it waits for a person, with nothing else in flight
            statuses = {st.status.value for st in run.steps.values()}
            if "waiting_review" in statuses and "running" not in statuses:
                break
            await asyncio.sleep(0.05)
        CLOCK.jump(35)
    for name in ("transform_17", "transform_29", "load_03", "load_11"):
        steps.HELD[name] = asyncio.Event()
    nightly_run = await engine.submit(nightly(svc))
    svc.service.update_config({"error_rate": 0.0, "rate_limit_rate": 0.0})
    await post(svc, "/admin/script", {
        "path_prefix": "/chat/messages", "method": "POST",
        "responses": [{"status": 503}, {"status": 503}],
    })  # fmt: skip
    notice = await engine.submit(deploy_notice(svc))
    deadline = _real_time() + 60
    while _real_time() < deadline:
        st = notice.steps["announce"]
        held = [nightly_run.steps[n].status.value for n in ("transform_17", "load_03")]
        pending = engine.store.query("SELECT count(*) AS n FROM reviews WHERE status='pending'")
        if (st.status.value == "retrying" and st.attempt >= 2 and "running" in held
                and pending[0]["n"] >= 2):  # fmt: skip
            break
        await asyncio.sleep(0.1)
    await engine.store.flush()
    return {"notice": notice.run_id, "nightly": nightly_run.run_id}


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
    config = DemoOptions(seed=11, outage=False).service_config()
    svc = await start_service(config, separate_ports=True)
    for script in OPENING_HICCUPS:
        svc.service.add_script(script)
    store = Store.open(tmp / "demo.db")
    engine = Engine(store, clock=CLOCK, max_concurrency=32)
    await engine.start()
    try:
        print(f"running {minutes} simulated minutes of the demo's workflows…")
        operator = await history(engine, svc, minutes)
        live = await in_progress(engine, svc, operator)
        now = CLOCK()
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
            ("run-retrying", bind(run_view, live["notice"], "announce"), SIZE),
            ("run-100-steps-collapsed", bind(run_view, live["nightly"], "load_03"), SIZE),
            (
                "run-100-steps-expanded",
                bind(run_view, live["nightly"], "load_03", keys=("c",)),
                SIZE,
            ),
            ("run-failed-hostile-output", bind(run_view, failed, "lint"), SIZE),
            ("run-80x24", bind(run_view, live["notice"], "announce"), (80, 24)),
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
