"""engine/ is a library: importing it must not pull in the UI (textual, rich, console, widgets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, cli_env

ENGINE_MODULES = [
    "engine",
    "engine.models",
    "engine.loader",
    "engine.dag",
    "engine.store",
    "engine.events",
    "engine.runner",
    "engine.retries",
    "engine.queries",
    "engine.views",
    "engine.config",
    "engine.agents.python",
    "engine.agents.shell",
    "engine.agents.http",
    "engine.api",
    "engine.api_models",
    "engine.control",
    "engine.metrics",
    "engine.openapi",
    "engine.sse",
    "engine.tokens",
    "engine.workflows",
    "engine.undo",
    "engine.undo.hook",
    "engine.agents.llm",
    "engine.reviews",
    "engine.gates",
    "engine.routing",
    "engine.preferences",
]
FORBIDDEN = ("textual", "rich", "console", "widgets")


def test_engine_imports_no_ui_modules():
    code = (
        "import importlib, sys\n"
        f"for m in {ENGINE_MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if not e.name.startswith('engine'): raise\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"engine imported UI modules: {out.stdout.strip()}"


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "BROKEN" not in out.stdout
    assert "2 kept, 0 broken" in out.stdout
