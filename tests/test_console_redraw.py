"""What a live redraw and a keystroke repaint: only what changed, the keystroke's answer first.

The DAG view refreshes only the rows whose text or colour changed; opening a run the feed has
not read yet reads it and pushes the run screen holding it (never a "loading" screen first);
the reused run screen shows the second run opened, not the first; skipping the restyle of a
screen that is shown again still follows a theme change; a live snapshot waits behind a
keystroke while the answer to an action does not, and that answer holds the action's effect;
the run screen is laid out and drawn off screen before the first open; a focus move repaints
the panels it touches, not the whole screen; the event log renders each event once and
refreshes the rows that changed; Line API widgets work out their style once per restyle.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from dataclasses import replace

import pytest
from textual.app import App, ComposeResult
from textual.geometry import Region

from console.app import FlowdeckApp
from console.live import LiveFeed, SnapshotReady
from console.screens.run import RunScreen
from engine.models import WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from engine.views import Snapshot
from tests.helpers import console_data as data
from tests.helpers.console import screen_text, wait_for
from widgets.dag_view import DagView
from widgets.event_log import EventLog
from widgets.live_table import LiveTable
from widgets.review_panel import ReviewPanel
from widgets.run_header import RunHeader
from widgets.runs_table import RunsTable
from widgets.step_detail import StepDetail

NOW = data.NOW
H = "tests.helpers.console"


class DagApp(App[None]):
    def compose(self) -> ComposeResult:
        yield DagView()


def record_refreshes(widget) -> list[tuple[Region, ...]]:
    calls: list[tuple[Region, ...]] = []
    refresh = widget.refresh

    def recording(*regions, **kw):
        calls.append(regions)
        return refresh(*regions, **kw)

    widget.refresh = recording
    return calls


async def test_dag_live_update_refreshes_only_the_changed_step_rows():
    steps = data.release_steps()
    app = DagApp()
    async with app.run_test(size=(110, 20)) as pilot:
        dag = app.query_one(DagView)
        dag.show("r1", steps, NOW)
        await pilot.pause()
        assert "✓ ticket" in screen_text(app)
        calls = record_refreshes(dag)

        dag.show("r1", steps, NOW)  # the same data again: nothing to redraw
        assert calls == []

        changed = [replace(s, status="failed") if s.step_id == "ticket" else s for s in steps]
        dag.show("r1", changed, NOW)
        assert calls, "the changed step was not redrawn"
        assert all(regions for regions in calls), "the whole view was refreshed"
        rows = {y for regions in calls for r in regions for y in range(r.y, r.bottom)}
        slot = dag._lay.slots["ticket"]
        # Its label row (symbol and colour); its detail line reads the same, so stays.
        assert rows == {slot.entry_row}
        await pilot.pause()
        text = screen_text(app)
        assert "✗ ticket" in text and "✓ ticket" not in text


def wf(name: str, steps: dict) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": name, "agents": {"py": {"kind": "python"}}, "steps": steps}
    )


def py(fn: str, needs=(), **args):
    return {"agent": "py", "with": {"call": f"{H}:{fn}", "args": args}, "needs": list(needs)}


def flow(name: str, value: str) -> WorkflowSpec:
    return wf(name, {"first": py("echo", value=value), "second": py("echo", ["first"])})


async def finished_runs(store, *specs: WorkflowSpec) -> list:
    """Run each workflow to its end with a real engine on `store`."""
    engine = Engine(store, max_concurrency=4)
    await engine.start()
    try:
        return [await engine.run(spec) for spec in specs]
    finally:
        await engine.aclose()


def header_line(app: FlowdeckApp) -> str:
    return screen_text(app).splitlines()[1]


async def test_opening_an_unread_run_pushes_the_screen_holding_it(store, console_store):
    first, second = await finished_runs(store, flow("alpha", "one"), flow("beta", "two"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="runs listed")
        assert app.feed.request.run_id != first.run_id or app.snapshot.run is None

        # First open of an unread run: pushed once read, with the run's data.
        app.open_run(first.run_id)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        assert screen.view is not None and screen.view.run.id == first.run_id
        await pilot.pause()
        assert first.run_id in header_line(app) and "alpha" in header_line(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunScreen), what="back")

        # The reused screen, another unread run: its header never says "loading", and it
        # shows the second run, not the first.
        shown: list[str] = []
        header = screen.query_one(RunHeader)
        update = header.update

        def recording_update(content="", **kw):
            shown.append(str(content))
            return update(content, **kw)

        header.update = recording_update
        app.feed.update(run_id=None, urgent=False)  # the feed has not read the next run
        app.open_run(second.run_id)
        await wait_for(pilot, lambda: app.screen is screen, what="run screen again")
        assert screen.view is not None and screen.view.run.id == second.run_id
        await pilot.pause()
        assert shown and not any("loading" in s for s in shown), shown
        line = header_line(app)
        assert second.run_id in line and "beta" in line and first.run_id not in line
        dag = screen.query_one(DagView)
        assert dag.step_node("first").status == "succeeded"
        assert {s.step_id for s in screen.view.steps} == {"first", "second"}
        assert app.feed.request.run_id == second.run_id  # live updates follow this run


async def test_esc_while_a_run_is_being_opened_stays_on_the_overview(store, console_store):
    (run,) = await finished_runs(store, flow("alpha", "one"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="run listed")
        app.feed.update(run_id=None, urgent=False)
        app.open_run(run.run_id)
        app.back()  # the operator went back before the read came in
        drawn = app.redraws
        for _ in range(5):
            await pilot.pause()
            await asyncio.sleep(0.02)
        assert not isinstance(app.screen, RunScreen)
        app.feed.wake()  # snapshots are drawn again
        await wait_for(pilot, lambda: app.redraws > drawn, what="a redraw")


async def test_a_theme_change_while_the_run_screen_is_hidden_reaches_it(store, console_store):
    (run,) = await finished_runs(store, flow("alpha", "one"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: app.query_one(RunsTable).row_count == 1, what="listed")
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="run screen")
        screen = app.screen
        dag = screen.query_one(DagView)
        dark = dag.styles.background
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunScreen), what="back")
        app.theme = "textual-light"
        await pilot.pause()
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: app.screen is screen, what="run screen again")
        await pilot.pause()
        light = dag.styles.background
        assert light != dark
        assert light == app.get_css_variables()["surface"] or light.brightness > dark.brightness


async def test_a_live_snapshot_waits_behind_a_keystroke_and_an_answer_does_not(console_store):
    app = FlowdeckApp(console_store, analytics=None, live=False)
    async with app.run_test(size=(140, 40)) as pilot:
        app.key_quiet = app.live_wait = 60.0  # "right after the key" for the whole test
        first = Snapshot(now=NOW, version=1)
        app.show_snapshot(first)
        drawn = app.redraws
        await pilot.press("down")  # a keystroke (no rows: it changes nothing)
        live = Snapshot(now=NOW + 1, version=2)
        app.post_message(SnapshotReady(live))
        await pilot.pause()
        assert app.snapshot is live and app.redraws == drawn  # kept, not drawn yet
        answer = Snapshot(now=NOW + 2, version=3)
        app.post_message(SnapshotReady(answer, answer=True))
        await wait_for(pilot, lambda: app.redraws == drawn + 1, what="the answer drawn")
        assert app.snapshot is answer

        app.key_quiet = app.live_wait = 0.0  # keys long ago: live data is drawn at once
        app.post_message(SnapshotReady(Snapshot(now=NOW + 3, version=4)))
        await wait_for(pilot, lambda: app.redraws == drawn + 2, what="live data drawn")


def run_feed(feed: LiveFeed) -> tuple[list[SnapshotReady], threading.Thread]:
    posted: list[SnapshotReady] = []
    runner = threading.Thread(target=feed.run, args=(posted.append, lambda: False))
    runner.start()
    return posted, runner


def wait_posted(posted: list, predicate, what: str) -> SnapshotReady:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = next((m for m in posted if predicate(m)), None)
        if found is not None:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_urgent_wake_with_nothing_new_answers_with_the_last_snapshot(db_path):
    store = Store.open(db_path)
    feed = LiveFeed(store, interval=60, tick=60, analytics=None)
    posted, runner = run_feed(feed)
    try:
        first = wait_posted(posted, lambda m: True, "the first snapshot")
        feed.wake()  # an action that changed nothing this feed can see
        again = wait_posted(posted, lambda m: m is not first, "an answer")
        assert again.answer and again.snapshot is first.snapshot
    finally:
        feed.stop()
        runner.join(10)
        store.close()


def test_an_action_answered_after_a_run_only_read_shows_its_effect(db_path):
    """The run under the cursor is read on its own (a quick read keeps the rest of the last
    snapshot); the answer to a decision made meanwhile must still show the decision."""
    store = Store.open(db_path)
    store.run_sync(
        lambda db: db.execute(
            "INSERT INTO reviews(run_id, step_id, status, created_at, params, reason) "
            "VALUES ('r1', 'gate', 'pending', 1000, '{}', 'test')"
        )
    )
    feed = LiveFeed(store, interval=60, tick=60, analytics=None)
    posted, runner = run_feed(feed)
    try:
        wait_posted(posted, lambda m: m.snapshot.pending_count == 1, "the pending review")
        feed.update(run_id="r-other", urgent=False)  # highlighted: read along with the next poll
        store.run_sync(lambda db: db.execute("UPDATE reviews SET status = 'approved'"))
        feed.wake()
        answer = wait_posted(
            posted, lambda m: m.answer and m.snapshot.pending_count == 0, "the decision read"
        )
        assert answer.snapshot.pending_reviews == ()
    finally:
        feed.stop()
        runner.join(10)
        store.close()


def test_an_answer_does_not_wait_behind_analytics(db_path):
    """Analytics (tens of milliseconds) are computed in a thread of their own: a poll that
    answers an operator goes ahead while they are being computed."""
    release, started = threading.Event(), threading.Event()
    calls: list[float] = []

    def slow_analytics(db, now):
        calls.append(now)
        if len(calls) > 1:  # the first are read with the first snapshot
            started.set()
            release.wait(20)
        return {"computed": len(calls)}

    store = Store.open(db_path)
    feed = LiveFeed(store, interval=60, tick=60, analytics=slow_analytics)
    feed.analytics_every = 0.01
    posted, runner = run_feed(feed)
    try:
        first = wait_posted(posted, lambda m: True, "the first snapshot")
        assert first.snapshot.analytics == {"computed": 1}
        assert started.wait(20), "analytics were not computed again"
        store.run_sync(
            lambda db: db.execute(
                "INSERT INTO reviews(run_id, step_id, status, created_at, params, reason) "
                "VALUES ('r1', 'gate', 'pending', 1000, '{}', 'test')"
            )
        )
        feed.wake()  # an operator's action while the analytics are held
        answer = wait_posted(
            posted, lambda m: m.answer and m.snapshot.pending_count == 1, "the answer"
        )
        assert answer.snapshot.analytics == {"computed": 1}  # the last ones computed
        release.set()
        wait_posted(
            posted, lambda m: m.snapshot.analytics["computed"] >= 2, "the new analytics posted"
        )
    finally:
        release.set()
        feed.stop()
        runner.join(10)
        store.close()


async def test_the_run_screen_is_mounted_before_the_first_run_is_opened(store, console_store):
    (run,) = await finished_runs(store, flow("alpha", "one"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: app.redraws > 0, what="first snapshot drawn")
        await wait_for(
            pilot,
            lambda: app.is_screen_installed("run") and app.get_screen("run").ready,
            what="run screen mounted while idle",
        )
        screen = app.get_screen("run")
        assert not isinstance(app.screen, RunScreen)  # mounted, not shown
        app.open_run(run.run_id)
        await wait_for(pilot, lambda: app.screen is screen, what="run screen")
        await pilot.pause()
        assert run.run_id in header_line(app) and "alpha" in header_line(app)
        assert screen.query_one(DagView).step_node("second").status == "succeeded"


async def test_full_collections_run_between_keystrokes_and_thresholds_come_back(console_store):
    before = gc.get_threshold()
    app = FlowdeckApp(console_store, analytics=None, live=False)
    async with app.run_test(size=(140, 40)) as pilot:
        app.gc_every = 0.05
        app.show_snapshot(Snapshot(now=NOW, version=1))
        app.show_snapshot(Snapshot(now=NOW, version=2))  # the second one takes over
        assert gc.get_threshold()[2] > 100_000  # no automatic full collection meanwhile
        full = gc.get_stats()[2]["collections"]
        await wait_for(
            pilot, lambda: gc.get_stats()[2]["collections"] > full, what="a full collection"
        )
    assert gc.get_threshold() == before


@pytest.mark.parametrize("size", [(80, 24), (140, 40)])
async def test_the_run_screen_is_laid_out_off_screen_before_the_first_open(
    store, console_store, size
):
    """While idle, the mounted run screen is styled, laid out and drawn once holding the run
    under the cursor, without being shown; the first open then restyles nothing and draws
    the run opened (the one warmed with, or another) in the layout of the terminal's size."""
    first, second = await finished_runs(store, flow("alpha", "one"), flow("beta", "two"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=size) as pilot:
        table = app.query_one(RunsTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="runs listed")
        await wait_for(pilot, lambda: app.run_screen_warm, what="run screen warmed")
        screen = app.get_screen("run")
        assert isinstance(screen, RunScreen)
        assert not isinstance(app.screen, RunScreen) and len(app.screen_stack) == 1  # not shown
        dag = screen.query_one(DagView)
        assert dag.size.width > 0 and dag.size.height > 0  # laid out at the app's size
        assert screen.size == app.size
        warmed = screen.view.run.id
        assert warmed in (first.run_id, second.run_id)  # a run read by the feed
        assert dag.step_node("second").status == "succeeded"

        restyled: list[object] = []
        update_styles = screen.update_node_styles

        def recording(*a, **kw):
            restyled.append((a, screen.style_key(), screen._styled_for))
            return update_styles(*a, **kw)

        screen.update_node_styles = recording
        other = next(r.run_id for r in (first, second) if r.run_id != warmed)
        app.open_run(other)
        await wait_for(pilot, lambda: app.screen is screen, what="run screen")
        await pilot.pause()
        assert restyled == []  # styled while idle, not on the keystroke
        line = header_line(app)
        assert other in line and warmed not in line
        assert screen.view.run.id == other and dag._run_id == other
        detail = screen.query_one(StepDetail)
        if size[0] < 100:  # narrow: the details under the graph
            assert detail.region.y >= dag.region.bottom
        else:
            assert detail.region.x >= dag.region.right


async def test_a_focus_move_repaints_the_panels_it_touches_not_the_whole_screen(
    store, console_store
):
    """Moving the focus between the runs and the pending reviews repaints the two panels
    (border colour, cursor colour) and nothing else; Textual's screen would repaint all of
    itself, a full paint for every `tab`."""
    await finished_runs(store, flow("alpha", "one"))
    store.run_sync(
        lambda db: db.execute(
            "INSERT INTO reviews(run_id, step_id, status, created_at, params, reason) "
            "VALUES ('r1', 'gate', 'pending', 1000, '{}', 'test')"
        )
    )
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(140, 40)) as pilot:
        screen = app.screen
        runs = screen.query_one(RunsTable)
        reviews = screen.query_one(ReviewPanel).table
        await wait_for(pilot, lambda: runs.row_count == 1 and reviews.row_count == 1, what="data")
        await pilot.pause()
        assert app.focused is runs
        runs_panel, reviews_panel = (
            screen.query_one("#runs-panel"),
            screen.query_one("#reviews-panel"),
        )
        before = (runs_panel.styles.border_top, reviews_panel.styles.border_top)
        screen_calls = record_refreshes(screen)
        panel_calls = record_refreshes(reviews_panel)
        reviews.focus()
        await wait_for(pilot, lambda: app.focused is reviews, what="focus moved")
        await pilot.pause()
        assert screen_calls == []  # the screen as a whole was not repainted
        assert panel_calls  # the panel taking the focus was (its border colour)
        after = (runs_panel.styles.border_top, reviews_panel.styles.border_top)
        assert after[0] != before[0] and after[1] != before[1]  # borders swapped colours
        assert after[1] == before[0]


class EventApp(App[None]):
    def compose(self) -> ComposeResult:
        yield EventLog()


async def test_the_event_log_renders_each_event_once_and_refreshes_the_rows_that_changed(
    monkeypatch,
):
    """New events at the tail render their own lines only: the lines of events already shown
    are kept, and with room to spare only the new rows are refreshed."""
    import widgets.event_log as event_log

    rendered: list[int] = []
    line = event_log.event_line

    def counting(ev):
        rendered.append(ev.id)
        return line(ev)

    monkeypatch.setattr(event_log, "event_line", counting)
    events = data.events()
    app = EventApp()
    async with app.run_test(size=(100, 12)) as pilot:  # room for 12 lines, 7 events
        log = app.query_one(EventLog)
        log.show(events[:5])
        await pilot.pause()
        assert sorted(rendered) == [1, 2, 3, 4, 5]
        calls = record_refreshes(log)
        rendered.clear()
        log.show(events)  # two more
        await pilot.pause()
        assert sorted(rendered) == [6, 7]  # the five shown before were not rendered again
        rows = {y for regions in calls for r in regions for y in range(r.y, r.bottom)}
        assert calls and all(calls) and rows == {5, 6}  # their two rows, not the panel
        text = screen_text(app)
        assert "step.failed" in text and "review.decided" in text
        assert "[b]Service[/b]" in text  # data shown literally


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        table = LiveTable()
        table.add_column("id")
        table.add_column("what")
        yield table


async def test_line_widgets_work_out_their_style_once_per_restyle(monkeypatch):
    """A Line API widget asks for its rich style (a walk over every ancestor's styles) once,
    not once per line drawn; a restyle (here a theme change) is drawn in the new colours."""
    from textual.dom import DOMNode

    asked: list[object] = []
    rich_style = DOMNode.rich_style

    def counting(self):
        if isinstance(self, LiveTable):
            asked.append(self)
        return rich_style.fget(self)

    monkeypatch.setattr(DOMNode, "rich_style", property(counting))
    app = TableApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(LiveTable)
        table.set_rows([(str(i), (str(i), f"row {i}")) for i in range(8)])
        await pilot.pause()
        assert "row 7" in screen_text(app)
        assert 1 <= len(asked) <= 2, len(asked)  # not once per row
        dark = table.render_line(3)
        app.theme = "textual-light"
        await pilot.pause()
        light = table.render_line(3)
        assert table.base_style == rich_style.fget(table)
        assert list(light)[-1].style.bgcolor == table.base_style.bgcolor
        assert list(light)[-1].style.bgcolor != list(dark)[-1].style.bgcolor


async def test_no_full_collection_starts_while_a_key_waits_to_be_answered(console_store):
    """A full collection due while a keystroke is queued (not handled yet) waits: it would
    hold the key's answer back for tens of milliseconds. It runs once the queue is empty."""
    app = FlowdeckApp(console_store, analytics=None, live=False)
    async with app.run_test(size=(140, 40)) as pilot:
        app.show_snapshot(Snapshot(now=NOW, version=1))
        app.show_snapshot(Snapshot(now=NOW, version=2))  # full collections are the app's now
        app.key_quiet = 0.0
        app._gc_due = time.monotonic()  # due now (not yet late)
        full = gc.get_stats()[2]["collections"]
        app.simulate_key("down")  # queued, not yet handled
        app._collect()
        assert gc.get_stats()[2]["collections"] == full  # held back
        await pilot.pause()  # the key is handled
        app._collect()
        assert gc.get_stats()[2]["collections"] == full + 1


async def test_quitting_right_after_the_first_paint_mounts_no_run_screen(store, console_store):
    """The run screen is mounted once the first snapshot is on screen (after that refresh);
    when the app is quitting by then, it is not mounted (a screen mounted while the app
    closes gets no children, and its mount handler crashed the app on the way out, e.g. the
    console closed right after start on a large database)."""
    await finished_runs(store, flow("alpha", "one"))
    app = FlowdeckApp(console_store, analytics=None)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.redraws >= 1, what="first paint")
        if app.is_screen_installed("run"):  # mounted already: take it back to try again
            app.uninstall_screen("run")
        app.exit()
        app._prepare_run_screen()
        assert not app.is_screen_installed("run")
    assert app.return_code in (0, None)
    # and a run screen mounted with no children (as then) has nothing to focus, no crash
    RunScreen("").on_mount()
