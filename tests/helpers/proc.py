"""`flowdeck` as a real subprocess that a test starts, watches through the DB, and kills."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import cli_env

T = TypeVar("T")


def start(*args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """Start `python -m console ARGS` (stdout/stderr captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "console", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(**env),
        cwd=cwd,
    )


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy (a generous timeout, never a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what}: not met within {timeout:g} s")


def query(db: Path, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    """Rows from the DB through a fresh connection (what another process sees); [] while the
    file or table does not exist yet."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, params)]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def step_status(db: Path, step: str) -> tuple[str, str] | None:
    rows = query(db, "SELECT run_id, status FROM steps WHERE step_id=?", (step,))
    return (rows[0]["run_id"], rows[0]["status"]) if rows else None
