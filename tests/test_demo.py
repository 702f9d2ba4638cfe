"""`flowdeck demo`: the examples, their binding to the demo service, and headless runs as real
subprocesses checked through the demo DB and the process table."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

from console.demo.catalog import DEMO_ORIGIN, WORKFLOWS, bind, examples_dir
from console.demo.service import ServiceConfig, start_service
from engine.loader import load_workflow
from tests.conftest import ROOT, cli_env

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_every_example_is_valid_and_in_the_demo(cli) -> None:
    result = cli("validate", *map(str, EXAMPLES))
    assert result.code == 0, result.stderr
    assert examples_dir() == ROOT / "examples"
    assert sorted(WORKFLOWS) == [p.name for p in EXAMPLES]
    # a channel name in a description survives YAML (an unquoted " #" starts a comment)
    spec = load_workflow(ROOT / "examples" / "incident-broadcast.yaml")
    assert spec.steps["post_alerts"].description == "Post the update to #alerts"
    assert spec.steps["post_alerts"].undo.description == "Delete the update in #alerts"


async def test_bind_points_demo_agents_at_the_running_service() -> None:
    spec = load_workflow(ROOT / "examples" / "release-cleanup.yaml")
    spec.agents["elsewhere"] = spec.agents["code"].model_copy(
        update={"base_url": "http://example.invalid/code"}
    )
    running = await start_service(ServiceConfig(latency_scale=0), separate_ports=True)
    try:
        bound = bind(spec, running)
    finally:
        await running.stop()
    assert bound.agents["code"].base_url == running.base_url("code")
    assert bound.agents["tracker"].base_url == running.base_url("tracker")
    assert bound.agents["chat"].base_url == running.base_url("chat")
    assert bound.agents["llm"].base_url == running.base_url("llm")
    assert bound.agents["elsewhere"].base_url == "http://example.invalid/code"
    assert bound.agents["chat"].breaker == spec.agents["chat"].breaker
    # the loaded spec is left as the file says
    assert spec.agents["code"].base_url == f"{DEMO_ORIGIN}/code"


def test_demo_argument_errors(cli) -> None:
    for args in (["--headless", "--runs", "0"], ["--runs", "3"], ["--json"], []):
        result = cli("demo", *args)  # [] : the console needs a terminal, stdout is a pipe
        assert result.code == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--headless" in result.stderr


# ------------------------------------------------------------------ headless, as a subprocess


class Watched:
    """A `flowdeck` subprocess and every process it ever had below it."""

    def __init__(self, *args: str, cwd: Path, tty: int | None = None):
        pipe = subprocess.PIPE if tty is None else tty
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "console", *args],
            stdin=subprocess.DEVNULL if tty is None else tty,
            stdout=pipe,
            stderr=pipe,
            text=True,
            cwd=cwd,
            env=cli_env(TERM="xterm-256color"),
            start_new_session=tty is not None,
        )
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {}

    def poll_children(self) -> None:
        try:
            for child in self.root.children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float) -> tuple[int, str, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.poll_children()
            time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, out, err

    def leftovers(self) -> list[psutil.Process]:
        alive = []
        for p in self.seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive


def _query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_headless_demo_runs_every_example_and_exits_clean(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    watched = Watched(
        "demo", "--headless", "--runs", "5", "--fast", "--json", "--db", str(db), cwd=tmp_path
    )
    code, out, err = watched.wait(timeout=120)
    assert code == 0, err
    summary = json.loads(out)
    assert "Traceback" not in err

    names = {load_workflow(p).name for p in EXAMPLES}
    rows = _query(db, "SELECT workflow, status FROM runs")
    assert len(rows) == 5
    assert {w for w, _ in rows} == names
    assert all(s in ("succeeded", "failed") for _, s in rows), rows
    assert sum(sum(by_status.values()) for by_status in summary["runs"].values()) == 5

    retries = _query(db, "SELECT count(*) FROM attempts WHERE number > 1")[0][0]
    assert retries >= 1 and summary["retries"] == retries
    decided = _query(db, "SELECT count(*) FROM reviews WHERE status IN ('approved','rejected')")
    assert decided[0][0] >= 1
    assert _query(db, "SELECT count(*) FROM reviews WHERE status = 'pending'")[0][0] == 0
    assert _query(db, "SELECT count(*) FROM undo_log")[0][0] >= 1
    # the simulated operator undid a whole run (newest entry first) and decided by name
    assert _query(db, "SELECT count(*) FROM undo_log WHERE status = 'undone'")[0][0] >= 1
    assert summary["operator"]["undo"].get("undone", 0) >= 1
    assert {r for (r,) in _query(db, "SELECT DISTINCT reviewer FROM reviews")} == {"demo-operator"}
    assert watched.leftovers() == []


def test_headless_demo_stops_on_sigterm_and_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    watched = Watched(
        "demo", "--headless", "--runs", "500", "--fast", "--db", str(db), cwd=tmp_path
    )
    deadline = time.monotonic() + 60
    started = 0
    while time.monotonic() < deadline and watched.proc.poll() is None:
        watched.poll_children()
        if db.exists():
            try:
                started = _query(db, "SELECT count(*) FROM runs")[0][0]
            except sqlite3.Error:
                started = 0
            if started >= 4:
                break
        time.sleep(0.05)
    assert started >= 4, watched.proc.stderr.read() if watched.proc.poll() is not None else ""
    watched.proc.send_signal(signal.SIGTERM)
    code, _, err = watched.wait(timeout=60)
    assert code == 130, err
    assert "Traceback" not in err
    assert _query(db, "SELECT count(*) FROM runs WHERE status IN ('pending','running')") == [(0,)]
    assert watched.leftovers() == []


@pytest.mark.parametrize("keep", [False, True])
def test_demo_db_is_temporary_unless_given(tmp_path: Path, keep: bool) -> None:
    args = ["demo", "--headless", "--runs", "1", "--fast"]
    if keep:
        args += ["--db", str(tmp_path / "kept.db")]
    watched = Watched(*args, cwd=tmp_path)
    code, out, err = watched.wait(timeout=60)
    assert code == 0, err
    db = Path(err.split("database ", 1)[1].split(",", 1)[0])
    assert db.exists() is keep
    assert ("database:" in out) is keep
    assert watched.leftovers() == []


# ------------------------------------------------------------------ the console on a demo


async def test_demo_console_starts_on_a_live_session(tmp_path: Path) -> None:
    from console.demo.autopilot import Habits
    from console.demo.session import DemoOptions, DemoSession
    from console.demo.tui import DemoApp
    from tests.helpers.console import screen_text, wait_for

    options = DemoOptions(fast=True, habits=Habits(delay=(600.0, 600.0), undo_every=0))
    async with DemoSession(options, tmp_path / "demo.db") as session:
        app = DemoApp(session)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(
                pilot,
                lambda: app.snapshot is not None and len(app.snapshot.runs) >= 4,
                timeout=60,
                what="four demo runs on screen",
            )
            text = screen_text(app)
            assert "health" in text.lower()
            assert str(session.db_path) in text or "demo ·" in text
            shown = {r.workflow for r in app.snapshot.runs}
            assert shown == {e.name for e in session.examples}
            await wait_for(
                pilot,
                lambda: bool(app.snapshot and app.snapshot.pending_reviews),
                timeout=60,
                what="a pending review",
            )
            pending = app.snapshot.pending_reviews[0]
            await wait_for(
                pilot,
                lambda: pending.step_id in screen_text(app),
                timeout=30,
                what="the pending review on the overview",
            )
            assert any("flowdeck demo" in n.title for n in app._notifications)
            await pilot.press("q")
        assert session.pacer is not None and session.pacer.started >= 4
    assert session.engine is not None and session.engine.runs == {}


def test_console_demo_quits_on_q_and_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))
    watched = Watched("demo", "--fast", "--db", str(db), cwd=tmp_path, tty=slave)
    os.close(slave)
    screen = b""

    def drain() -> None:
        nonlocal screen
        while select.select([master], [], [], 0.05)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen = (screen + chunk)[-200_000:]

    try:
        deadline = time.monotonic() + 60
        runs = 0
        while time.monotonic() < deadline and watched.proc.poll() is None:
            drain()
            watched.poll_children()
            if db.exists() and b"release-cleanup" in screen:
                runs = _query(db, "SELECT count(*) FROM runs")[0][0]
                if runs >= 4:
                    break
        assert runs >= 4, screen[-2000:]
        os.write(master, b"q")
        deadline = time.monotonic() + 30
        while watched.proc.poll() is None and time.monotonic() < deadline:
            drain()
            watched.poll_children()
        assert watched.proc.poll() == 0, screen[-2000:]
    finally:
        if watched.proc.poll() is None:
            watched.proc.kill()
        watched.proc.wait(10)
        os.close(master)
    assert _query(db, "SELECT count(*) FROM runs WHERE status IN ('pending','running')") == [(0,)]
    assert (tmp_path / "demo.db.log").exists()
    assert watched.leftovers() == []


async def test_a_chat_outage_trips_the_chat_breakers_only(tmp_path: Path) -> None:
    """The demo's services listen on separate ports, so a chat outage opens the breakers of the
    chat agent and the chat host and leaves the tracker, code host and LLM alone."""
    from console.demo.session import DemoOptions, DemoSession

    async def breaker_events(session: DemoSession) -> list[tuple[str, str]]:
        await session.store.flush()
        rows = await session.store.aread(
            lambda db: list(
                db.query("SELECT kind, data FROM events WHERE kind LIKE 'breaker.%' ORDER BY id")
            )
        )
        return [(r["kind"], json.loads(r["data"])["key"]) for r in rows]

    options = DemoOptions(fast=True, runs=6, outage=False)
    async with DemoSession(options, tmp_path / "demo.db") as session:
        service = session.running.service
        service.update_config({"down": ["chat"]})
        deadline = time.monotonic() + 60
        while not any(k == "breaker.opened" for k, _ in await breaker_events(session)):
            assert time.monotonic() < deadline, "no breaker opened while chat was down"
            await asyncio.sleep(0.1)
        service.update_config({"down": []})
        await asyncio.wait_for(session.wait(), 120)
        events = await breaker_events(session)
    chat_host = "host:" + session.running.origins["chat"].removeprefix("http://")
    opened = {key for kind, key in events if kind == "breaker.opened"}
    assert opened == {"agent:chat", chat_host}
    closed = [key for kind, key in events if kind == "breaker.closed"]
    assert set(closed) == opened  # recovered once chat was back
