"""Console flows under Pilot against a real SQLite file written by a real engine.

The console attaches with its own `Store` on the same file, as `flowdeck console --db` does
from another process; one test drives a real `flowdeck run` subprocess instead.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from console.app import FlowdeckApp
from console.config import ConsoleConfig
from console.screens.dialogs import ConfirmScreen
from console.screens.help import HelpScreen
from console.screens.run import RunScreen
from engine.models import WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.conftest import ROOT, cli_env
from tests.helpers.console import GATES, screen_text, wait_for
from widgets.dag_view import DagView
from widgets.runs_table import RunsTable

H = "tests.helpers.console"
SIZE = (140, 40)


def wf(name: str, steps: dict, **extra) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "agents": {"py": {"kind": "python"}}, "steps": steps, **extra}
    )


def py(fn: str, needs=(), **kw):
    args = kw.pop("args", {})
    return {"agent": "py", "with": {"call": f"{H}:{fn}", "args": args}, "needs": list(needs), **kw}


@pytest.fixture
async def engine(store):
    eng = Engine(store, max_concurrency=16)
    await eng.start()
    yield eng
    for run in list(eng.runs.values()):
        run.cancel()
    for event in GATES.values():
        event.set()
    await asyncio.sleep(0)
    await eng.aclose()


def make_app(store: Store, **kw) -> FlowdeckApp:
    kw.setdefault("analytics", None)
    return FlowdeckApp(store, clock=kw.pop("clock", None) or __import__("time").time, **kw)


def step_status(app: FlowdeckApp, step_id: str) -> str | None:
    snap = app.snapshot
    if snap is None or snap.run is None:
        return None
    step = snap.run.step(step_id)
    return step.status if step else None


async def test_live_update_of_a_step_status(engine, store, console_store):
    GATES.pop("slow", None)
    run = await engine.submit(
        wf("live", {"fast": py("echo"), "slow": py("gate", ["fast"], args={"name": "slow"})})
    )
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot, lambda: app.query_one(RunsTable).current_key == run.run_id, what="run listed"
        )
        await pilot.press("enter")
        assert isinstance(app.screen, RunScreen)
        await wait_for(pilot, lambda: step_status(app, "slow") == "running", what="slow running")
        dag = app.screen.query_one(DagView)
        await wait_for(pilot, lambda: "● slow" in screen_text(app), what="running symbol drawn")
        GATES["slow"].set()
        await wait_for(
            pilot, lambda: step_status(app, "slow") == "succeeded", what="slow succeeded"
        )
        await wait_for(pilot, lambda: "✓ slow" in screen_text(app), what="succeeded symbol drawn")
        await wait_for(
            pilot,
            lambda: any(
                line.startswith(f" run {run.run_id}") and "✓ succeeded" in line
                for line in screen_text(app).splitlines()
            ),
            what="run header says succeeded",
        )
        assert dag.step_node("slow").status == "succeeded"


HOSTILE = "[red]x[/red] [bold]b[/] \x1b[31mred\x1b[0m \x07bell"


async def test_hostile_strings_are_shown_literally(engine, store, console_store):
    spec = wf(
        "hostile",
        {
            "out": py("echo", args={"value": HOSTILE}),
            "raw": py("text", args={"value": HOSTILE}),
            "bad": py("fail", ["out"], args={"message": "[blink]boom[/blink] \x1b[2J"}),
        },
    )
    run = await engine.run(spec)
    app = make_app(console_store)
    async with app.run_test(size=(220, 50)) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.runs, what="runs")
        text = screen_text(app)
        assert "[blink]boom[/blink] \\x1b[2J" in text  # runs table error column + event log
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: step_status(app, "out") == "succeeded", what="run view")
        app.screen.query_one(DagView).select("out")
        await pilot.pause()
        text = screen_text(app)
        assert '"value": "[red]x[/red] [bold]b[/]' in text  # JSON output: markup literal
        assert "\\u001b[31mred\\u001b[0m \\u0007bell" in text  # escapes as JSON escapes
        app.screen.query_one(DagView).select("raw")
        await pilot.pause()
        assert "[red]x[/red] [bold]b[/] \\x1b[31mred\\x1b[0m \\x07bell" in screen_text(app)
        app.screen.query_one(DagView).select("bad")
        await pilot.pause()
        assert "[blink]boom[/blink] \\x1b[2J" in screen_text(app)


async def test_a_second_process_writing_the_db_shows_live(db_path, console_store, tmp_path):
    """`flowdeck run` in a subprocess writes; the console follows the events table."""
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console", "run", str(ROOT / "examples" / "hello.yaml"),
            "--input", "who=Ada", "--db", str(db_path),
            env=cli_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_for(
                pilot,
                lambda: any(
                    r.workflow == "hello" for r in (app.snapshot.runs if app.snapshot else ())
                ),
                timeout=60,
                what="the other process's run",
            )
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await wait_for(
            pilot,
            lambda: (
                app.snapshot.runs[0].status == "succeeded" and "run.succeeded" in screen_text(app)
            ),
            what="run succeeded live",
        )
        assert app.snapshot.runs[0].steps_done == app.snapshot.runs[0].steps_total == 6


async def test_cancel_run_asks_first_and_goes_through_the_commands_table(
    engine, store, console_store
):
    GATES.pop("hold", None)
    run = await engine.submit(wf("held", {"hold": py("gate", args={"name": "hold"})}))
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot, lambda: app.query_one(RunsTable).current_key == run.run_id, what="run"
        )
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("n")  # declined: nothing happens
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="closed")
        assert console_store.query("SELECT count(*) AS n FROM commands")[0]["n"] == 0
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await asyncio.wait_for(run.wait(), 20)
        await wait_for(pilot, lambda: app.snapshot.runs[0].status == "cancelled", what="cancelled")
    cmd = store.query("SELECT kind, status, handled_by FROM commands")
    assert cmd == [{"kind": "cancel_run", "status": "done", "handled_by": engine.owner}]


async def test_retry_now_with_n_on_a_step_waiting_out_its_backoff(engine, store, console_store):
    from tests.helpers.console import FLAKY

    FLAKY.pop("n", None)
    retry = {"attempts": 3, "backoff": "fixed", "initial": 600, "max": 600, "jitter": False}
    run = await engine.submit(wf("backoff", {"try": py("flaky", args={"name": "n"}, retry=retry)}))
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: step_status(app, "try") == "retrying", what="retrying")
        await wait_for(pilot, lambda: "in 9m" in screen_text(app), what="countdown drawn")
        await pilot.press("n")
        await asyncio.wait_for(run.wait(), 20)
        await wait_for(pilot, lambda: step_status(app, "try") == "succeeded", what="succeeded")
    assert FLAKY["n"] == 2
    assert store.query("SELECT kind, step_id, status FROM commands") == [
        {"kind": "retry_now", "step_id": "try", "status": "done"}
    ]


async def test_cancel_step_with_x_after_confirm(engine, store, console_store):
    GATES.pop("stuck", None)
    run = await engine.submit(
        wf("steps", {"stuck": py("gate", args={"name": "stuck"}), "after": py("echo", ["stuck"])})
    )
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: step_status(app, "stuck") == "running", what="running")
        app.screen.query_one(DagView).select("stuck")
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await asyncio.wait_for(run.wait(), 20)
        await wait_for(pilot, lambda: step_status(app, "after") == "skipped", what="skipped")
    assert store.query(
        "SELECT status FROM steps WHERE run_id=? ORDER BY step_id", [run.run_id]
    ) == [
        {"status": "skipped"},
        {"status": "cancelled"},
    ]


def insert_review(store: Store, run_id: str, step_id: str, **cols) -> int:
    row = {"run_id": run_id, "step_id": step_id, "created_at": 1000.0, "status": "pending", **cols}
    keys = ",".join(row)
    marks = ",".join("?" * len(row))
    return store.run_sync(
        lambda db: (
            db.execute(
                f"INSERT INTO reviews({keys}) VALUES ({marks})", list(row.values())
            ).lastrowid
        )
    )


async def test_help_lists_bindings_with_ids_and_keymap_remaps(console_store):
    app = make_app(console_store, config=ConsoleConfig(keymap={"app.reviews": "v"}))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = screen_text(app)
        assert "app.quit" in text and "screen.filter" in text and "overview.cancel_run" in text
        await pilot.press("escape")
        await pilot.press("v")
        await wait_for(pilot, lambda: app.current_mode == "reviews", what="remapped key")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.current_mode == "overview", what="back")


async def test_filter_runs_with_slash_reads_the_db(engine, store, console_store):
    for name in ("alpha", "beta", "beta"):
        await engine.run(wf(name, {"s": py("echo")}))
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot, lambda: app.snapshot is not None and len(app.snapshot.runs) == 3, what="runs"
        )
        await pilot.press("slash", "b", "e", "t", "a")
        await wait_for(pilot, lambda: len(app.snapshot.runs) == 2, what="filtered")
        assert {r.workflow for r in app.snapshot.runs} == {"beta"}
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(app.snapshot.runs) == 3, what="cleared")


async def test_command_palette_opens_a_run(engine, store, console_store):
    run = await engine.run(wf("palette", {"s": py("echo")}))
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.runs, what="runs")
        await pilot.press("colon")
        await pilot.pause()
        for ch in f"open run {run.run_id[:6]}":
            await pilot.press("space" if ch == " " else ch)
        await asyncio.sleep(0.3)
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        assert app.screen.run_id == run.run_id


async def test_cancel_of_a_run_no_engine_holds_happens_in_the_db(store, console_store):
    store.run_sync(
        lambda db: db.execute(
            "INSERT INTO runs(id, workflow, spec, status, created_at, started_at, steps_total, "
            "owner, lease_until) VALUES ('deadbeef0001', 'orphan', '{}', 'running', 1, 1, 1, "
            "'gone:1', 2)"
        )
    )
    store.run_sync(
        lambda db: db.execute(
            "INSERT INTO steps(run_id, step_id, status) VALUES ('deadbeef0001', 's', 'running')"
        )
    )
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.query_one(RunsTable).current_key == "deadbeef0001")
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.snapshot.runs[0].status == "cancelled", what="cancelled")
    assert store.query("SELECT status FROM steps") == [{"status": "cancelled"}]
    assert store.query("SELECT count(*) AS n FROM commands") == [{"n": 0}]


@pytest.mark.parametrize(
    ("size", "side_column", "plot"), [((80, 24), False, False), ((200, 60), True, True)]
)
async def test_overview_fits_80x24_and_uses_200x60(
    engine, store, console_store, size, side_column, plot
):
    await engine.run(wf("sized", {"s": py("echo")}))
    app = make_app(console_store, analytics="default")
    async with app.run_test(size=size) as pilot:
        await wait_for(
            pilot, lambda: app.snapshot is not None and app.snapshot.analytics, what="analytics"
        )
        screen = app.screen
        table = screen.query_one(RunsTable)
        assert table.region.height >= 4 and table.region.width >= 60
        assert screen.query_one("#events-panel").region.height >= 4
        assert screen.query_one("#reviews-panel").region.height >= 4
        assert screen.query_one("#ov-left").display is side_column
        assert screen.query_one("#plot-panel").display is plot
        if plot:
            assert screen.query_one("#plot-panel").region.height >= 12
        text = screen_text(app)
        assert "sized" in text and "health" in text


async def test_at_80x24_many_pending_reviews_leave_room_for_the_runs(engine, store, console_store):
    review = {"when": "always", "reason": "check it", "timeout": 600}
    for i in range(3):
        await engine.run(wf(f"done{i}", {"s": py("echo")}))
    for i in range(8):
        await engine.submit(wf(f"gated{i}", {"s": {**py("echo"), "review": review}}))
    app = make_app(console_store)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot,
            lambda: app.snapshot is not None and len(app.snapshot.pending_reviews) == 8,
            what="eight pending reviews",
        )
        await pilot.pause()
        screen = app.screen
        assert screen.query_one(RunsTable).region.height >= 4  # header + at least 3 runs
        reviews = screen.query_one("#reviews-panel")
        assert reviews.region.height >= 7  # borders, header and at least four reviews
        assert reviews.border_subtitle == "8 pending"


@pytest.mark.parametrize("size", [(80, 24), (160, 48), (200, 60)])
async def test_health_score_and_run_header_fit_every_size(engine, store, console_store, size):
    """The health score is on screen at every size (first in the status line; the health
    panel too from 100 columns), and the run header keeps every step count: nothing cut."""
    import re

    GATES.pop("held", None)
    await engine.run(wf("fine", {"s": py("echo")}))
    await engine.run(wf("broken", {"s": py("fail")}))
    steps = {
        "a": py("gate", args={"name": "held"}), "b": py("echo", ["a"]),
        "c": py("echo", review={"when": "always", "reason": "asks"}),
        "d": py("fail"), "e": py("echo", ["d"]),
    }  # fmt: skip
    held = await engine.submit(wf("held", steps))
    app = make_app(console_store, analytics="default")
    async with app.run_test(size=size) as pilot:
        await wait_for(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.analytics
            and app.snapshot.pending_count == 1 and app.snapshot.run_counts.get("failed"),
            what="analytics, a review and a failed run",
        )  # fmt: skip
        score = f"{app.snapshot.analytics.health.score:.0f}"
        await wait_for(
            pilot,
            lambda: re.search(rf"\bhealth {score}\b", screen_text(app).splitlines()[0]),
            what="health score in the status line",
        )
        if size[0] >= 100:
            assert app.screen.query_one("#health-panel").region.height >= 3
            assert f"{score}/100" in screen_text(app)
        app.open_run(held.run_id)
        await wait_for(
            pilot,
            lambda: "skipped" in str(step_status(app, "e")) and "○" in screen_text(app),
            what="run shown",
        )

        def header() -> str:
            return screen_text(app).splitlines()[1]

        await wait_for(pilot, lambda: held.run_id in header(), what="run header")
        line = header()
        assert "…" not in line, line
        for symbol in ("●", "◇", "✗", "–", "○"):
            assert symbol in line, line


async def test_opening_a_run_already_read_draws_it_with_the_push(engine, store, console_store):
    """The run under the cursor is read while it is highlighted; `enter` then fills the run
    screen before pushing it, so the push's one layout draws the run (no "loading" state and
    no second full redraw when it resumes)."""
    older = await engine.run(wf("older", {"s": py("echo")}))
    newer = await engine.run(wf("newer", {"s": py("echo")}))
    app = make_app(console_store)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="runs listed")
        app.open_run(newer.run_id)  # installs the run screen
        await wait_for(pilot, lambda: app.screen.view is not None, what="newer run shown")
        await pilot.press("escape")
        screen = app.get_screen("run")
        header = screen.query_one("RunHeader")
        shown: list[str] = []
        update = header.update

        def recording_update(content="", **kw):
            shown.append(str(content))
            return update(content, **kw)

        header.update = recording_update
        await pilot.press("down")  # the older run, read while highlighted
        assert table.current_key == older.run_id
        await wait_for(
            pilot,
            lambda: app.snapshot.run is not None and app.snapshot.run.run.id == older.run_id,
            what="highlighted run read",
        )
        await pilot.press("enter")
        assert app.screen is screen and screen.view.run.id == older.run_id
        await pilot.pause()
        assert shown and not any("loading" in s for s in shown), shown
        assert older.run_id in screen_text(app).splitlines()[1]
