"""FlowdeckApp: the Textual console operators live in.

It attaches to a flowdeck SQLite file that another process writes (`flowdeck console --db`),
or shares its process with the engine (`flowdeck demo`, pass `engine=`). One thread worker
(`console.live.LiveFeed`) follows the database and posts coalesced snapshots; screens draw them
and turn keystrokes into operator actions (`console.operator.Operator`).

Sections are Textual modes: `1` overview, `2` reviews, `3` undo history, `4` analytics; a run
opens on top of the current section and `esc` goes back. `?` lists the keys with their ids
(remappable in the console config file), `/` filters, `:` or `ctrl+p` opens the command palette,
`q` quits.
"""

from __future__ import annotations

import asyncio
import gc
import getpass
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import get_current_worker

from console.config import ConsoleConfig, default_path
from console.live import FeedFailed, LiveFeed, SnapshotReady
from console.operator import Operator
from console.screens.analytics import AnalyticsScreen
from console.screens.base import FlowdeckScreen
from console.screens.help import HelpScreen
from console.screens.history import HistoryScreen
from console.screens.overview import OverviewScreen
from console.screens.reviews import ReviewsScreen
from console.screens.run import RunScreen
from engine.store import Store
from engine.views import RunView, Snapshot, run_view


class RunsProvider(Provider):
    """Command palette: open one of the listed runs."""

    async def search(self, query: str) -> Hits:
        app = self.app
        assert isinstance(app, FlowdeckApp)
        snap = app.snapshot
        if snap is None:
            return
        matcher = self.matcher(query)
        for run in snap.runs:
            text = f"open run {run.id} {run.workflow} ({run.status})"
            score = matcher.match(text)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(text),
                    partial(app.open_run, run.id),
                    help=f"{run.steps_done}/{run.steps_total} steps",
                )


class FlowdeckApp(App[None]):
    """The flowdeck console."""

    TITLE = "flowdeck"
    CSS = """
    Screen { layout: vertical; }
    """

    MODES = {
        "overview": OverviewScreen,
        "reviews": ReviewsScreen,
        "history": HistoryScreen,
        "analytics": AnalyticsScreen,
    }
    DEFAULT_MODE = "overview"
    COMMANDS = App.COMMANDS | {RunsProvider}

    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("colon", "command_palette", "Commands", show=False, id="app.palette"),
        Binding("1", "section('overview')", "Overview", id="app.overview"),
        Binding("2", "section('reviews')", "Reviews", id="app.reviews"),
        Binding("3", "section('history')", "History", id="app.history"),
        Binding("4", "section('analytics')", "Analytics", id="app.analytics"),
    ]

    def __init__(
        self,
        store: Store,
        *,
        engine: Any = None,
        config: ConsoleConfig | None = None,
        clock: Callable[[], float] = time.time,
        source_label: str | None = None,
        analytics: Any = "default",
        live: bool = True,
    ):
        super().__init__()
        self.config = config or ConsoleConfig()
        """Keymap, theme, poll interval."""
        self.store = store
        self.clock = clock
        self.source_label = source_label if source_label is not None else str(store.path)
        """Shown in the status line (the DB path)."""
        self.feed = LiveFeed(
            store,
            clock=clock,
            interval=self.config.poll_interval,
            max_rate=self.config.max_redraws,
            analytics=analytics,
        )
        """Follows the database (one thread worker)."""
        self.operator = Operator(
            store, engine=engine, reviewer=self.config.reviewer or _user(), clock=clock
        )
        """Carries out decisions, undos and commands."""
        self.snapshot: Snapshot | None = None
        """The newest snapshot drawn."""
        self.redraws = 0
        """Snapshots drawn so far (for benchmarks)."""
        self.drawn_at: float = 0.0
        """`time.monotonic()` when the last snapshot was drawn."""
        self._live = live
        self._opening: str | None = None
        self.key_quiet = 0.15
        """Seconds after a keystroke during which live snapshots wait (its answer first)."""
        self.live_wait = 0.25
        """Longest a live snapshot waits for the keystrokes to stop."""
        self._key_at = float("-inf")
        self._waiting_since: float | None = None
        self._calm_timer: Timer | None = None
        self._feed_error: str | None = None
        self.gc_every = 2.5
        """Seconds between two full collections of the garbage collector. A collection holds
        the loop for ~40 ms plus the freeing of what became garbage since the last one
        (Textual's rendered lines end in reference cycles: ~3,500 objects a second while an
        engine is busy); every 2.5 s that is 50-70 ms, every 10 s it was 100-180 ms."""
        self._gc_threshold: tuple[int, int, int] | None = None
        self._gc_due = float("inf")
        self.run_screen_warm = False
        """The run screen has been laid out and drawn once off screen (`_warm_run_screen`)."""
        self.theme = self.config.theme
        self.set_keymap(self.config.keymap)

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        if self._live:
            self.start_feed()

    def start_feed(self) -> None:
        self._run_feed()

    @work(thread=True, exclusive=True, group="feed", name="live feed", exit_on_error=False)
    def _run_feed(self) -> None:
        worker = get_current_worker()
        self.feed.run(self.post_message, lambda: worker.is_cancelled)

    async def on_unmount(self) -> None:
        self.feed.stop()
        if self.feed.started.is_set():  # (stopped before it began, it never reads)
            # The feed thread reads through the store: let it end before the store's owner
            # closes it (a read on a closed SQLite connection can crash the process).
            await asyncio.to_thread(self.feed.finished.wait, 10)
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None

    def _take_over_full_collections(self) -> None:
        """Run the collector's full collections when no keystroke is being answered instead of
        whenever allocations trigger one: the automatic ones are turned off while the app
        runs, and `_collect` runs one every `gc_every` seconds, as soon as `key_quiet` has
        passed since the last key and no input waits (at most `gc_every` late)."""
        if self._gc_threshold is None:
            self._gc_threshold = gc.get_threshold()
            young, middle, _ = self._gc_threshold
            gc.set_threshold(young, middle, 1_000_000)
            self._gc_due = time.monotonic() + self.gc_every
            self.set_interval(0.1, self._collect)

    def _collect(self) -> None:
        now = time.monotonic()
        if now < self._gc_due:
            return
        late = now >= self._gc_due + self.gc_every
        if not late and (now - self._key_at < self.key_quiet or self._input_pending()):
            return
        gc.collect()
        self._gc_due = time.monotonic() + self.gc_every

    def _input_pending(self) -> bool:
        """A key (or another message) is waiting for this loop: a collection now would hold
        its answer back."""
        return not self._message_queue.empty()

    def now(self) -> float:
        return self.clock()

    # ------------------------------------------------------------------ snapshots

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            # A keystroke's answer is drawn before live data: see `on_snapshot_ready`.
            self._key_at = time.monotonic()
            self.feed.hold_analytics(self.key_quiet)
        await super().on_event(event)

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        """Draw a snapshot. A live one (not the answer to an operator's action) that arrives
        while a keystroke is being answered waits until `key_quiet` after the key, at most
        `live_wait`: drawing it would hold the loop for tens of milliseconds in front of the
        key's own update. A newer snapshot replaces a waiting one."""
        self.snapshot = message.snapshot
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        if message.answer:
            self._draw_waiting()
        else:
            self._draw_when_calm()

    def _draw_when_calm(self) -> None:
        now = time.monotonic()
        calm_in = self._key_at + self.key_quiet - now
        if calm_in > 0 and self._waiting_since is not None:
            left = self.live_wait - (now - self._waiting_since)
            if left > 0:
                if self._calm_timer is None:
                    self._calm_timer = self.set_timer(min(calm_in, left), self._calm)
                return
        self._draw_waiting()

    def _calm(self) -> None:
        self._calm_timer = None
        if self._waiting_since is not None:
            self._draw_when_calm()

    def _draw_waiting(self) -> None:
        """Draw the newest snapshot if it has not been drawn (nor a run is being opened)."""
        if self._waiting_since is not None and self._opening is None and self.snapshot:
            self.show_snapshot(self.snapshot)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Draw a snapshot on the visible section (tests and screenshots call it directly).
        While a run is being opened it is kept, not drawn (`open_run`)."""
        self.snapshot = snapshot
        if self._opening is not None:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()
            return
        self._waiting_since = None
        self.redraws += 1
        if self.redraws == 1:
            self.call_after_refresh(self._prepare_run_screen)
        if self.redraws == 2:
            # Everything built so far lives as long as the app: keep the collector from
            # walking it again and again (a full collection costs ~50 ms here).
            gc.freeze()
            self._take_over_full_collections()
        if self._feed_error is not None:
            self._feed_error = None
            self.notify("database readable again", markup=False)
        screen = self._data_screen()
        if screen is not None and screen.ready:
            try:
                screen.show(snapshot)
            except NoMatches:  # the app is closing and the screen lost its widgets
                pass
        self.drawn_at = time.monotonic()
        if not self.run_screen_warm and snapshot.run is not None:
            self.call_after_refresh(self._warm_run_screen)

    def on_feed_failed(self, message: FeedFailed) -> None:
        if message.error != self._feed_error:
            self._feed_error = message.error
            self.notify(message.error, severity="error", title="database", markup=False)

    def _data_screen(self) -> FlowdeckScreen | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, FlowdeckScreen):
                return screen
        return None

    def screen_shown(self, screen: FlowdeckScreen) -> None:
        """A section or run became visible: point the feed at its data and draw at once."""
        run_id = screen.run_id if isinstance(screen, RunScreen) else None
        if run_id is not None and run_id != self.feed.request.run_id:
            self.feed.update(run_id=run_id)
        if self.snapshot is not None and screen.ready:
            self._waiting_since = None
            screen.show(self.snapshot)

    # ------------------------------------------------------------------ navigation

    def open_run(self, run_id: str) -> None:
        """Show one run's DAG on top of the current section.

        One run screen is mounted once and reused. It is pushed holding the run's data: when
        the feed has read that run already (the run under the cursor is read while it is
        highlighted) at once, else after one read of that run alone (a few milliseconds), so
        opening a run costs one layout and paint, never a "loading" one first. Snapshots that
        arrive meanwhile are kept, not drawn: the screen they would draw is about to be covered.
        """
        snap = self.snapshot
        if snap is not None and snap.run is not None and snap.run.run.id == run_id:
            self.feed.update(run_id=run_id)
            self._opening = None
            self._push_run(run_id, snap)
            return
        # The feed follows this run from its next turn; the first read is this one.
        self.feed.update(run_id=run_id, urgent=False)
        self._opening = run_id
        self._read_and_open(run_id)

    @work(group="open", exclusive=True, exit_on_error=False)
    async def _read_and_open(self, run_id: str) -> None:
        view: RunView | None = None
        try:
            view = await self.store.aread(lambda db: run_view(db, run_id))
        except Exception as e:  # the feed reports a database it cannot read; open anyway
            self.log.warning(f"reading run {run_id}: {e}")
        finally:
            mine = self._opening == run_id
            if mine:
                self._opening = None
            else:  # another run was asked for, or the operator went elsewhere
                self._draw_waiting()
        if not mine:
            return
        snap = self.snapshot
        if view is not None:
            now = self.now()
            snap = (
                replace(snap, run=view, now=now) if snap else Snapshot(now=now, version=0, run=view)
            )
            self.snapshot = snap
        elif snap is not None and snap.run is not None and snap.run.run.id == run_id:
            pass  # the feed read it meanwhile
        else:
            self.feed.wake()  # not found or not readable: the screen says "loading" until it is
        self._push_run(run_id, snap)

    def _prepare_run_screen(self) -> None:
        """Compose and mount the run screen once the first snapshot is on screen, so the first
        run opened costs what the next ones do. (Textual mounts a screen when it is first
        pushed; registering it is that step without showing it.)"""
        register = getattr(self, "_register", None)
        if (
            self.is_screen_installed("run")
            or register is None
            or not self.is_running
            or getattr(self, "_exit", False)  # quitting: a screen mounted now has no children
            or self._closing
        ):
            return
        screen = RunScreen("")
        self.install_screen(screen, "run")
        register(self, screen)

    def _warm_run_screen(self) -> None:
        """Lay out and draw the mounted run screen once off screen, holding the run under the
        cursor, while no keystroke is being answered. A screen's first layout and paint cost
        three times a later one (styles resolved, scrollbars made, every line rendered the
        first time): done here, the first run opened costs what the next ones do. Nothing is
        shown: the screen is not the current one, and what it draws is thrown away."""
        snap = self.snapshot
        if (
            self.run_screen_warm
            or snap is None
            or snap.run is None
            or not self.is_running
            or not self.is_screen_installed("run")
        ):
            return
        screen = self.get_screen("run")
        assert isinstance(screen, RunScreen)
        if not screen.ready or screen.is_current or screen in self.screen_stack:
            return
        if time.monotonic() - self._key_at < self.key_quiet:
            self.set_timer(self.key_quiet, self._warm_run_screen)  # a key first
            return
        self.run_screen_warm = True
        screen.warm(snap, self.size)

    def _push_run(self, run_id: str, snap: Snapshot | None) -> None:
        if not self.is_screen_installed("run"):
            self.install_screen(RunScreen(run_id), "run")
        screen = self.get_screen("run")
        assert isinstance(screen, RunScreen)
        read = snap is not None and snap.run is not None and snap.run.run.id == run_id
        screen.set_run(run_id, loading=not read)
        if read and screen.ready:
            # Fill it before it is pushed: the push's layout and paint then draw the run, and
            # showing the same snapshot again when it resumes changes nothing.
            assert snap is not None
            screen.show(snap)
        if self.screen is not screen:
            self.push_screen(screen)

    def action_section(self, mode: str) -> None:
        self._opening = None  # a run being opened stays closed
        while len(self.screen_stack) > 1:  # close dialogs and the run view first
            self.pop_screen()
        self.switch_mode(mode)

    def back(self) -> None:
        """`esc`: close the run, else go back to the overview."""
        self._opening = None
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.current_mode != "overview":
            self.switch_mode("overview")

    def action_help(self) -> None:
        rows: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for key, active in self.active_bindings.items():
            b = active.binding
            ident = b.id or ""
            if (ident or key) in seen or b.action in ("", "noop"):
                continue
            seen.add(ident or key)
            rows.append((self.get_key_display(b), b.description or b.action, ident or "-"))
        rows.sort(key=lambda r: (r[2] == "-", r[2].startswith("app."), r[2]))
        self.push_screen(HelpScreen(rows, str(default_path())))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Overview",
            "Health, runs, reviews, events (1)",
            partial(self.action_section, "overview"),
        )
        yield SystemCommand(
            "Reviews", "Pending reviews, oldest first (2)", partial(self.action_section, "reviews")
        )
        yield SystemCommand(
            "Undo history", "Undo log with time left (3)", partial(self.action_section, "history")
        )
        yield SystemCommand(
            "Analytics",
            "Health components, agents, latency (4)",
            partial(self.action_section, "analytics"),
        )
        yield SystemCommand("Help", "Key bindings and their ids (?)", self.action_help)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "console"


def binding_ids() -> set[str]:
    """Every binding id the console knows (for validating a keymap)."""
    from console.screens.dialogs import ChoiceScreen, CommentScreen, ConfirmScreen, DetailScreen
    from widgets.dag_view import DagView
    from widgets.filter_bar import FilterBar
    from widgets.live_table import LiveTable
    from widgets.review_panel import ReviewPanel
    from widgets.runs_table import RunsTable
    from widgets.undo_panel import UndoHistory

    classes: list[Any] = [
        FlowdeckApp, FlowdeckScreen, OverviewScreen, ReviewsScreen, HistoryScreen,
        AnalyticsScreen, RunScreen, HelpScreen, ConfirmScreen, CommentScreen, DetailScreen,
        ChoiceScreen, DagView, FilterBar, LiveTable, ReviewPanel, RunsTable, UndoHistory,
    ]  # fmt: skip
    ids: set[str] = set()
    for cls in classes:
        for b in cls.BINDINGS:
            if isinstance(b, Binding) and b.id:
                ids.add(b.id)
    return ids
