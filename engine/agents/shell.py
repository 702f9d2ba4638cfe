"""The `shell` agent kind: run a command in a subprocess.

```yaml
agents: {sh: {kind: shell, env: {LANG: C.UTF-8}, cwd: /srv/app}}
steps:
  build:   {agent: sh, with: {run: "make -j4 all", env: {CI: "1"}}}
  version: {agent: sh, with: {argv: [git, describe, --tags]}}
```

`run` goes through `/bin/sh -c`; `argv` is executed directly (no shell, no expansion). The
environment is `os.environ` + the agent's `env` + the step's `env`, plus `FLOWDECK_RUN_ID`,
`FLOWDECK_STEP_ID`, `FLOWDECK_ATTEMPT` and `FLOWDECK_IDEMPOTENCY_KEY`. The step's `cwd` is taken
relative to the agent's `cwd`. stdin is /dev/null.

Output is `{stdout, stderr, exit_code}`. Each stream keeps its first `max_output` bytes (read in
chunks, the rest discarded as it arrives) followed by a `[... N bytes cut]` marker. A non-zero
exit raises `StepError(EXIT_CODE, exit_code=N, output=...)`, not retryable by itself: the retry
policy's `on_exit_codes` decides. A process killed by a signal has a negative exit code (-9 for
SIGKILL), as in Python's subprocess module.

The command runs in its own session and process group, which the step owns:

* when the command exits, anything it left running in the group (background jobs) is
  terminated, so a step never leaves processes behind (use `setsid`/a service manager for
  daemons);
* on cancellation (which is how the runner's timeout arrives) or any other error, the whole group
  gets SIGTERM, then SIGKILL after `KILL_GRACE` seconds, and the CancelledError is re-raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from typing import Any

from engine.agents.base import Agent, StepCall, register
from engine.errors import ErrorClass, StepError

_PARAMS = ("run", "argv", "env", "cwd")

KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL to the process group."""
DRAIN_GRACE = 0.5
"""Seconds to wait for stdout/stderr to close after the command exited before its leftover
background processes (which hold the pipes open) are terminated."""
_CHUNK = 65536
_POLL = 0.05


class _Capture:
    """Keeps the first `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.total = 0

    async def pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_CHUNK):
            self.total += len(chunk)
            room = self.cap - len(self.head)
            if room > 0:
                self.head += chunk[:room]

    def text(self) -> str:
        return cut_text(bytes(self.head), self.total)


def cut_text(head: bytes, total: int) -> str:
    """Decode `head` (the first bytes of `total`) as UTF-8, with a marker if bytes were cut.

    A multi-byte character split by the cut is dropped rather than shown as U+FFFD.
    """
    if total > len(head):
        head = _trim_partial_utf8(head)
        return head.decode("utf-8", errors="replace") + f"\n[... {total - len(head)} bytes cut]"
    return head.decode("utf-8", errors="replace")


def _trim_partial_utf8(data: bytes) -> bytes:
    """`data` without an incomplete UTF-8 sequence at its very end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xF0:
            need = 4
        elif byte >= 0xE0:
            need = 3
        elif byte >= 0xC0:
            need = 2
        else:
            need = 1
        return data[:-back] if need > back else data
    return data


def _last_line(text: str, limit: int = 200) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not (line.startswith("[... ") and line.endswith(" bytes cut]")):
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


# --------------------------------------------------------------------------- process groups


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials; nothing more we can do
        return True
    return True


def _group_has_live_members(pgid: int) -> bool:
    """Whether the group still has a process that is not a zombie.

    Orphaned members are re-parented to PID 1, which (in containers) does not always reap them,
    so "the group exists" is not enough: on Linux /proc tells zombies apart.
    """
    if not _signal_group(pgid, 0):
        return False
    if not sys.platform.startswith("linux"):
        return True
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def terminate_group(proc: asyncio.subprocess.Process, grace: float | None = None) -> None:
    """SIGTERM the process group of `proc`, wait up to `grace` s for it to end, then SIGKILL.

    SIGKILL is sent even if this coroutine is itself cancelled while waiting.
    """
    grace = KILL_GRACE if grace is None else grace
    pgid = proc.pid
    if not _signal_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        while loop.time() < deadline:
            await asyncio.sleep(_POLL)
            if proc.returncode is not None and not await asyncio.to_thread(
                _group_has_live_members, pgid
            ):
                return
    finally:
        if proc.returncode is None or _group_has_live_members(pgid):
            _signal_group(pgid, signal.SIGKILL)


async def _wait_exit(proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> int:
    """The exit code of `proc`, as soon as it exits.

    `Process.wait()` also waits for stdout/stderr to close, which a background child can delay
    forever; so while the pipes are open the return code is polled.
    """
    while proc.returncode is None:
        if all(t.done() for t in pumps):
            return await proc.wait()
        await asyncio.wait(pumps, timeout=_POLL)
    return proc.returncode


async def _drain(pumps: list[asyncio.Task[None]], timeout: float) -> bool:
    """Wait up to `timeout` s for both streams to reach EOF; True if they did."""
    if not all(t.done() for t in pumps):
        await asyncio.wait(pumps, timeout=timeout)
    return all(t.done() for t in pumps)


async def _start(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """`asyncio.create_subprocess_exec`, never cancelled half way: cancelled while it connects
    the new process's pipes, it waits for an exit it is never told of, for ever (CPython issues
    103847 and 125502). A cancel meanwhile lets the start finish, kills the new process group,
    then goes on."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **kwargs))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        while not starting.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(starting)
        if not starting.cancelled() and starting.exception() is None:
            proc = starting.result()
            _signal_group(proc.pid, signal.SIGKILL)  # it has not run long enough to clean up
            transport = getattr(proc, "_transport", None)
            if transport is not None:  # our ends of its pipes, now rather than at collection
                transport.close()
        raise


def _close_pipes(proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
    still_open = False
    for task in pumps:
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved, so it is never reported as unhandled
        else:
            still_open = True
            task.cancel()
    transport = getattr(proc, "_transport", None)
    if still_open and transport is not None:
        # A process outside our group (e.g. started with setsid) may still hold the pipes:
        # release our ends now rather than leave them to the garbage collector.
        transport.close()


# --------------------------------------------------------------------------- the agent


@register("shell")
class ShellAgent(Agent):
    """Runs `with.run` through /bin/sh or `with.argv` directly; output `{stdout, stderr, exit_code}`."""

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        return _problems(params, allow_expressions=True)

    def operation(self, params: dict[str, Any]) -> str:
        argv = params.get("argv")
        words: list[str] = []
        if isinstance(argv, list):
            words = [str(w) for w in argv[:1]]
        elif isinstance(params.get("run"), str):
            try:
                words = shlex.split(params["run"])
            except ValueError:
                words = params["run"].split()
            # skip leading `NAME=value` assignments
            while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
                words.pop(0)
        first = os.path.basename(words[0]) if words and words[0] else ""
        return first or self.kind

    async def call(self, call: StepCall) -> dict[str, Any]:
        params = call.params
        call.operation = self.operation(params)
        problems = _problems(params, allow_expressions=False)
        if problems:
            raise StepError("; ".join(problems), ErrorClass.VALIDATION)

        argv: list[str] = (
            ["/bin/sh", "-c", params["run"]] if params.get("run") is not None else params["argv"]
        )
        env = dict(os.environ)
        env.update(self.spec.env)
        env.update(params.get("env") or {})
        env.update(
            FLOWDECK_RUN_ID=call.run_id,
            FLOWDECK_STEP_ID=call.step_id,
            FLOWDECK_ATTEMPT=str(call.attempt),
            FLOWDECK_IDEMPOTENCY_KEY=call.idempotency_key,
        )
        cwd = self.spec.cwd
        if params.get("cwd"):
            cwd = os.path.join(cwd or os.getcwd(), os.path.expanduser(params["cwd"]))
        if cwd is not None and not os.path.isdir(cwd):
            raise StepError(f"cwd: directory not found: {cwd}", ErrorClass.VALIDATION)

        try:
            proc = await _start(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise StepError(f"command not found: {argv[0]}", ErrorClass.VALIDATION) from e
        except PermissionError as e:
            raise StepError(f"command not executable: {argv[0]}", ErrorClass.VALIDATION) from e
        except OSError as e:
            raise StepError(f"cannot start {argv[0]}: {e}", ErrorClass.VALIDATION) from e

        cap = self.spec.max_output
        out, err = _Capture(cap), _Capture(cap)
        pumps = [
            asyncio.create_task(out.pump(proc.stdout)),
            asyncio.create_task(err.pump(proc.stderr)),
        ]
        finished = False
        try:
            exit_code = await _wait_exit(proc, pumps)
            await _drain(pumps, DRAIN_GRACE)
            # The step owns its process group: end whatever the command left running.
            if _signal_group(proc.pid, 0) and await asyncio.to_thread(
                _group_has_live_members, proc.pid
            ):
                await terminate_group(proc)
            await _drain(pumps, 1.0)
            finished = True
        finally:
            try:
                if not finished:  # cancelled (timeout) or failed: kill the whole group
                    await terminate_group(proc)
            finally:
                _close_pipes(proc, pumps)

        output = {"stdout": out.text(), "stderr": err.text(), "exit_code": exit_code}
        if exit_code != 0:
            reason = (
                f"killed by {_signal_name(-exit_code)}"
                if exit_code < 0
                else f"exited with {exit_code}"
            )
            last = _last_line(output["stderr"]) or _last_line(output["stdout"])
            raise StepError(
                f"{call.operation} {reason}" + (f": {last}" if last else ""),
                ErrorClass.EXIT_CODE,
                exit_code=exit_code,
                output=output,
                retryable=False,
            )
        return output


def _signal_name(num: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(num).name
    return f"signal {num}"


def _problems(params: Any, *, allow_expressions: bool) -> list[str]:
    def is_expr(value: Any) -> bool:
        return allow_expressions and isinstance(value, str) and "${{" in value

    if not isinstance(params, dict):
        return ["with: must be a mapping with `run` or `argv`"]
    problems = [
        f"{key}: unknown parameter for a shell step (use run, argv, env, cwd)"
        for key in params
        if key not in _PARAMS
    ]
    run, argv = params.get("run"), params.get("argv")
    if (run is None) == (argv is None):
        problems.append("run: give exactly one of `run` (a shell command) or `argv` (a list)")
    if run is not None and not (isinstance(run, str) and run.strip()):
        problems.append("run: must be a non-empty string (a command for /bin/sh -c)")
    if argv is not None and not is_expr(argv):
        if not isinstance(argv, list) or not argv:
            problems.append("argv: must be a non-empty list of strings")
        elif not all(isinstance(a, str) for a in argv):
            problems.append("argv: every item must be a string")
        elif not argv[0]:
            problems.append("argv: the command (first item) is empty")
    env = params.get("env")
    if env is not None and not is_expr(env):
        if not isinstance(env, dict):
            problems.append("env: must be a mapping of names to strings")
        else:
            for name, value in env.items():
                if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                    problems.append(f"env: invalid variable name {name!r}")
                elif not isinstance(value, str):
                    problems.append(f"env.{name}: must be a string (quote it)")
    cwd = params.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        problems.append("cwd: must be a string (a directory)")
    return problems
