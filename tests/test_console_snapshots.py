"""SVG snapshots of every widget with fixed data: a tiny app per widget, a fixed size.

Update after a reviewed change with `pytest tests/test_console_snapshots.py --snapshot-update`
and look at the SVGs in `tests/__snapshots__/` before committing them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from textual.app import App, ComposeResult
from textual.widget import Widget

from tests.helpers import console_data as data
from widgets.breakers import BreakerList
from widgets.dag_view import DagView
from widgets.event_log import EventLog
from widgets.health import HealthScore
from widgets.latency_plot import LatencyPlot
from widgets.rankings import AgentRankings
from widgets.review_panel import ReviewPanel
from widgets.run_header import RunHeader
from widgets.runs_table import RunsTable
from widgets.status_line import StatusLine
from widgets.step_detail import StepDetail
from widgets.undo_panel import UndoHistory

NOW = data.NOW


@pytest.fixture(autouse=True)
def utc():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


class WidgetApp(App[None]):
    """One widget, fed fixed data once mounted."""

    CSS = "Screen { layout: vertical; }"

    def __init__(self, widget: Widget, feed: Callable[[Widget], None]):
        super().__init__()
        self.widget = widget
        self.feed = feed

    def compose(self) -> ComposeResult:
        yield self.widget

    def on_mount(self) -> None:
        self.feed(self.widget)


def check(snap_compare, widget: Widget, feed: Callable[[Widget], None], size=(100, 24), press=()):
    assert snap_compare(WidgetApp(widget, feed), terminal_size=size, press=press)


def test_dag_view(snap_compare):
    check(
        snap_compare, DagView(), lambda w: w.show("r1", data.release_steps(), NOW), size=(110, 20)
    )


def test_dag_view_selection_moves_and_highlights_edges(snap_compare):
    check(
        snap_compare, DagView(), lambda w: w.show("r1", data.release_steps(), NOW),
        size=(110, 20), press=("right", "right", "down"),
    )  # fmt: skip


def test_dag_view_hundred_steps_collapsed(snap_compare):
    check(snap_compare, DagView(), lambda w: w.show("r2", data.wide_steps(), NOW), size=(120, 30))


def test_dag_view_label_cut_at_the_right_edge_ends_with_an_ellipsis(snap_compare):
    # 119 columns cut the last column's member list right after "s72," (then a blank).
    check(snap_compare, DagView(), lambda w: w.show("r2", data.wide_steps(), NOW), size=(119, 30))


def test_dag_view_hundred_steps_expanded_scrolls_to_selection(snap_compare):
    check(
        snap_compare, DagView(), lambda w: w.show("r2", data.wide_steps(), NOW),
        size=(120, 30), press=("c", "right", "right", "right", "right", "down", "down", "down"),
    )  # fmt: skip


def test_step_detail(snap_compare):
    steps = data.release_steps()
    notify = next(s for s in steps if s.step_id == "notify")
    check(snap_compare, StepDetail(), lambda w: w.show(notify, ["announce"], NOW), size=(70, 24))


def test_runs_table(snap_compare):
    check(snap_compare, RunsTable(), lambda w: w.show(data.runs(), NOW), size=(100, 8))


def test_run_header(snap_compare):
    from engine.views import RunView

    view = RunView(data.runs()[2], {}, "", tuple(data.release_steps()), None, None)
    check(snap_compare, RunHeader(), lambda w: w.show(view, NOW, view.run.id), size=(150, 3))


def test_run_header_at_80_columns_keeps_every_count(snap_compare):
    from engine.views import RunView

    view = RunView(data.runs()[2], {}, "", tuple(data.release_steps()), None, None)
    check(snap_compare, RunHeader(), lambda w: w.show(view, NOW, view.run.id), size=(80, 3))


def test_review_panel(snap_compare):
    check(
        snap_compare, ReviewPanel(), lambda w: w.show(data.reviews(), data.decided(), NOW),
        size=(100, 30),
    )  # fmt: skip


def test_review_panel_compact(snap_compare):
    check(
        snap_compare, ReviewPanel(compact=True),
        lambda w: w.show(data.reviews(), data.decided(), NOW), size=(80, 6),
    )  # fmt: skip


def test_undo_history(snap_compare):
    check(snap_compare, UndoHistory(), lambda w: w.show(data.undo_entries(), NOW), size=(100, 20))


def test_undo_history_expired_entry_says_why(snap_compare):
    check(
        snap_compare, UndoHistory(), lambda w: w.show(data.undo_entries(), NOW),
        size=(100, 20), press=("down", "down"),
    )  # fmt: skip


def test_health_score(snap_compare):
    check(snap_compare, HealthScore(), lambda w: w.show(data.health()), size=(36, 7))


def test_agent_rankings(snap_compare):
    check(snap_compare, AgentRankings(), lambda w: w.show(data.rankings()), size=(40, 7))


def test_latency_plot(snap_compare):
    check(snap_compare, LatencyPlot(), lambda w: w.show(data.series()), size=(80, 16))


def test_breaker_list(snap_compare):
    check(snap_compare, BreakerList(), lambda w: w.show(data.breakers(), NOW), size=(80, 3))


def test_event_log(snap_compare):
    check(snap_compare, EventLog(), lambda w: w.show(data.events()), size=(100, 8))


def _status_snapshot():
    from types import SimpleNamespace

    from engine.views import Snapshot

    return Snapshot(
        now=NOW, version=1, run_counts={"running": 2, "succeeded": 40, "failed": 3},
        pending_reviews=tuple(data.reviews()), pending_count=2, breakers=tuple(data.breakers()),
        analytics=SimpleNamespace(health=data.health()),
    )  # fmt: skip


def test_status_line(snap_compare):
    snap = _status_snapshot()
    check(snap_compare, StatusLine("overview"), lambda w: w.show(snap, "demo.db"), size=(140, 2))


def test_status_line_at_80_columns_keeps_the_health_score(snap_compare):
    snap = _status_snapshot()
    check(snap_compare, StatusLine("overview"), lambda w: w.show(snap, "demo.db"), size=(80, 2))


def test_agent_rankings_empty_says_so_across_the_panel(snap_compare):
    check(snap_compare, AgentRankings(), lambda w: w.show([]), size=(34, 4))
