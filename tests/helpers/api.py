"""A real API server on an ephemeral 127.0.0.1 port for tests, with a real engine and store."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from engine.api import ApiServer, create_app
from engine.config import Settings
from engine.runner import Engine
from engine.sse import SseConfig
from engine.store import Store

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

STEPS = "tests.helpers.steps"
WORKFLOWS = {
    "hello.yaml": f"""
name: hello
description: greets someone in two steps
inputs:
  who: {{type: string, required: true}}
  times: {{type: integer, default: 1}}
agents:
  py: {{kind: python}}
steps:
  greet: {{agent: py, with: {{call: "{STEPS}:echo", args: {{value: "hello ${{{{ inputs.who }}}}"}}}}}}
  shout: {{agent: py, needs: [greet], with: {{call: "{STEPS}:echo", args: {{value: "${{{{ steps.greet.output.value }}}}!"}}}}}}
""",
    "quick.yaml": f"""
name: quick
agents:
  py: {{kind: python}}
steps:
  one: {{agent: py, with: {{call: "{STEPS}:noop"}}}}
""",
    "slow.yaml": f"""
name: slow
inputs:
  seconds: {{type: number, default: 30}}
agents:
  py: {{kind: python}}
steps:
  wait: {{agent: py, with: {{call: "{STEPS}:sleep", args: {{seconds: "${{{{ inputs.seconds }}}}"}}}}}}
  after: {{agent: py, needs: [wait], with: {{call: "{STEPS}:noop"}}}}
""",
    "flaky.yaml": f"""
name: flaky
agents:
  py: {{kind: python}}
steps:
  ok: {{agent: py, with: {{call: "{STEPS}:noop"}}}}
  bad: {{agent: py, retry: {{attempts: 3, backoff: immediate}}, with: {{call: "{STEPS}:boom"}}}}
""",
    "broken.yaml": "name: broken\nsteps:\n  a: {agent: nope}\n",
    "gated.yaml": f"""
name: gated
agents:
  py: {{kind: python}}
steps:
  ask:
    agent: py
    review: {{when: always, reason: "look before it runs"}}
    with: {{call: "{STEPS}:echo", args: {{value: "went ahead"}}}}
""",
    "rmfile.yaml": """
name: rmfile
inputs:
  path: {type: string, required: true}
agents:
  py: {kind: python}
steps:
  rm:
    agent: py
    destructive: true
    with: {call: "tests.helpers.undo_steps:remove_file", args: {path: "${{ inputs.path }}"}}
    undo: {handler: restore_file, description: "put ${{ output.path }} back"}
""",
}


def write_workflows(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in WORKFLOWS.items():
        (directory / name).write_text(text)
    return directory


def fan_workflow(width: int) -> dict[str, Any]:
    """A workflow document of `width` independent no-op python steps."""
    return {
        "name": "fan",
        "agents": {"py": {"kind": "python"}},
        "steps": {
            f"s{i}": {"agent": "py", "with": {"call": f"{STEPS}:noop"}} for i in range(width)
        },
    }


@dataclass
class Api:
    """A running server and a client session on it."""

    server: ApiServer
    session: aiohttp.ClientSession
    engine: Engine
    store: Store
    workflows: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> Any:
        return self.server.state

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as r:
            return r.status, await _body(r)

    async def post(self, path: str, *, auth: bool = True, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers.update(AUTH)
        async with self.session.post(self.url + path, headers=headers, **kw) as r:
            return r.status, await _body(r)

    async def start(self, workflow: str, **inputs: Any) -> str:
        status, body = await self.post("/api/runs", json={"workflow": workflow, "inputs": inputs})
        assert status == 201, body
        return body["id"]

    async def wait_run(self, run_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, run = await self.get(f"/api/runs/{run_id}")
            assert status == 200, run
            if run["status"] in ("succeeded", "failed", "cancelled"):
                return run
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} did not end in {timeout} s")


async def _body(r: aiohttp.ClientResponse) -> Any:
    text = await r.text()
    if r.content_type == "application/json":
        return json.loads(text)
    return text


@asynccontextmanager
async def running_api(db_path: Path, workflows: Path, *, sse: SseConfig | None = None, **kw: Any):
    store = Store.open(db_path)
    engine = Engine(store, max_concurrency=16)
    await engine.start()
    app = create_app(
        engine,
        Settings(db=db_path),
        token=TOKEN,
        workflows=workflows,
        sse=sse or SseConfig(poll_interval=0.02),
        **kw,
    )
    server = await ApiServer(app, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(server, session, engine, store, workflows)
    finally:
        await engine.shutdown(0)
        await server.stop()
        await engine.aclose()
        store.close()


# --------------------------------------------------------------------------- serve subprocess


@dataclass
class ServeProcess:
    """`flowdeck serve` as a real subprocess; stderr is collected by a thread."""

    proc: subprocess.Popen
    stdout: str = ""
    lines: list[str] = field(default_factory=list)
    url: str = ""
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.lines)):
                    raise AssertionError(
                        f"no line matching {pattern!r}; stderr so far:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.stdout += self.proc.stdout.read()
        return code


def start_serve(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> ServeProcess:
    from tests.conftest import cli_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=cli_env(**(env or {})),
        start_new_session=True,
    )
    sp = ServeProcess(proc)
    threading.Thread(target=sp._pump, daemon=True).start()
    return sp


def wait_listening(sp: ServeProcess, timeout: float = 30) -> str:
    m = sp.wait_line(r"listening on (http://[^\s\"]+)", timeout)
    sp.url = m.group(1)
    return sp.url


def kill_quietly(sp: ServeProcess) -> None:
    if sp.proc.poll() is None:
        os.killpg(sp.proc.pid, signal.SIGKILL)
        sp.proc.wait()
