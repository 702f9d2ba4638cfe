"""`flowdeck console` as a real process: bad input exits cleanly, a real terminal works."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from engine.store import Store
from tests.conftest import cli_env


def test_console_needs_an_existing_db(cli, tmp_path):
    r = cli("console", "--db", str(tmp_path / "none.db"))
    assert r.code == 3
    assert "no flowdeck database" in r.stderr and "Traceback" not in r.stderr


def test_console_rejects_a_bad_config_with_one_line(cli, tmp_path, db_path):
    Store.open(db_path).close()
    bad = tmp_path / "console.yaml"
    bad.write_text("keymap:\n  no.such.binding: x\n")
    r = cli("console", "--db", str(db_path), "--config", str(bad))
    assert r.code == 2
    assert r.stderr.strip() == (
        f"flowdeck: {bad}: keymap.no.such.binding: unknown binding id "
        "(press ? in the console to list them)"
    )
    bad.write_text("poll_interval: -1\n")
    r = cli("console", "--db", str(db_path), "--config", str(bad))
    assert r.code == 2 and "poll_interval" in r.stderr and len(r.stderr.splitlines()) == 1
    bad.write_text("keymap: [1\n")
    r = cli("console", "--db", str(db_path), "--config", str(bad))
    assert r.code == 2 and f"{bad}:" in r.stderr and "not valid YAML" in r.stderr


def test_console_without_a_terminal_says_so(cli, db_path):
    Store.open(db_path).close()
    r = cli("console", "--db", str(db_path))
    assert r.code == 2
    assert "needs a terminal" in r.stderr


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_console_runs_in_a_real_terminal_and_quits_with_q(db_path: Path):
    Store.open(db_path).close()
    master, slave = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="100", LINES="30")
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "console", "--db", str(db_path)],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    try:
        out = _read_until(master, b"overview", 30)
        assert b"overview" in out
        os.write(master, b"q")
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            _read_until(master, b"\x00never", 0.2)  # keep draining: a full pty blocks the app
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_every_binding_has_an_id_to_remap_it():
    from console.app import binding_ids

    ids = binding_ids()
    assert {"app.quit", "reviews.approve", "reviews.reject", "history.undo", "run.retry_now",
            "run.cancel_step", "run.cancel_run", "overview.cancel_run", "dag.collapse",
            "screen.filter", "screen.back", "app.help", "app.palette", "table.down"} <= ids  # fmt: skip
