"""Shared fixtures: a real SQLite store in a temp dir, the CLI as a real subprocess, the demo
service on a free 127.0.0.1 port, a fake clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flowdeck.db"


@pytest.fixture
def store(db_path: Path):
    from engine.store import Store

    s = Store.open(db_path)
    yield s
    s.close()


@pytest.fixture
def console_store(db_path: Path):
    """A second store on the same file: the console's own connection, as another process has."""
    from engine.store import Store

    s = Store.open(db_path)
    yield s
    s.close()


@pytest.fixture
async def service():
    """The bundled demo service (tracker, chat, code host, llm) with no added latency."""
    from console.demo.service import ServiceConfig, start_service

    running = await start_service(ServiceConfig(latency_scale=0))
    yield running
    await running.stop()


@pytest.fixture
def clock():
    """A fake clock for `Engine(clock=clock, sleep=clock.sleep)` (tests/helpers/clock.py)."""
    from tests.helpers.clock import FakeClock

    return FakeClock()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FLOWDECK_DB", None)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60, **env: str) -> CliResult:
    """Run `flowdeck ARGS` as a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "console", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(**env),
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli
