"""The shell agent, with real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from engine.agents import shell
from engine.agents.base import AgentResources, StepCall, create
from engine.errors import ErrorClass, StepError
from engine.models import AgentSpec


def make_agent(**spec) -> shell.ShellAgent:
    agent = create("sh", AgentSpec(kind="shell", **spec), AgentResources())
    assert isinstance(agent, shell.ShellAgent)
    return agent


def step(**params) -> StepCall:
    return StepCall(
        run_id="run1", step_id="build", attempt=2, params=params, timeout=30, idempotency_key="k-1"
    )


def gone(proc: psutil.Process) -> bool:
    """The process no longer runs (a zombie waiting for an absent reaper counts as gone)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not gone(psutil.Process(pid))


async def descendants_named(name: str, count: int) -> list[psutil.Process]:
    """Wait (bounded) until this process has `count` descendants called `name`."""
    for _ in range(400):
        found = [
            p for p in psutil.Process().children(recursive=True) if _name(p) == name and not gone(p)
        ]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.025)
    raise AssertionError(f"{count} '{name}' processes never appeared")


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


async def wait_gone(procs: list[psutil.Process]) -> None:
    for _ in range(200):  # generous: up to 5 s
        if all(gone(p) for p in procs):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"still alive: {[p.pid for p in procs if not gone(p)]}")


# --------------------------------------------------------------------------- output


async def test_run_captures_stdout_stderr_and_exit_code():
    agent = make_agent()
    call = step(run="echo hello; echo oops >&2")
    assert await agent.call(call) == {"stdout": "hello\n", "stderr": "oops\n", "exit_code": 0}
    assert call.operation == "echo"


async def test_argv_is_not_interpreted_by_a_shell():
    agent = make_agent()
    out = await agent.call(step(argv=["printf", "%s|", "a b", "$HOME", "*"]))
    assert out["stdout"] == "a b|$HOME|*|"


async def test_streams_are_read_concurrently_and_capped():
    # 300 kB to stderr first: reading stdout alone would deadlock on a full stderr pipe.
    agent = make_agent(max_output=1024)
    out = await agent.call(step(run="yes e | head -c 300000 >&2; yes o | head -c 300000"))
    for name, letter in (("stdout", "o"), ("stderr", "e")):
        text = out[name]
        head, marker = text.rsplit("\n[... ", 1)
        assert len(head) == 1024
        assert set(head) == {letter, "\n"}
        assert marker == f"{300000 - 1024} bytes cut]"
    assert out["exit_code"] == 0


async def test_cut_never_splits_a_utf8_character():
    agent = make_agent(max_output=1024)
    # 'a' + 1000 x 'é' (2 bytes each): byte 1024 falls in the middle of a character
    out = await agent.call(step(argv=["printf", "%s", "a" + "é" * 1000]))
    assert out["stdout"] == "a" + "é" * 511 + "\n[... 978 bytes cut]"
    assert "\ufffd" not in out["stdout"]


async def test_invalid_utf8_is_replaced():
    out = await make_agent().call(step(run=r"printf 'ok \377\n'"))
    assert out["stdout"] == "ok \ufffd\n"


def test_cut_text_without_cut_has_no_marker():
    assert shell.cut_text(b"abc", 3) == "abc"
    assert shell.cut_text(b"abc", 10) == "abc\n[... 7 bytes cut]"


# --------------------------------------------------------------------------- failures


async def test_non_zero_exit_is_an_exit_code_error_with_output():
    agent = make_agent()
    with pytest.raises(StepError) as info:
        await agent.call(step(run="echo partial; echo first >&2; echo 'disk full' >&2; exit 3"))
    err = info.value
    assert err.error_class is ErrorClass.EXIT_CODE
    assert err.exit_code == 3
    assert err.retryable is False
    assert err.output == {"stdout": "partial\n", "stderr": "first\ndisk full\n", "exit_code": 3}
    assert "exited with 3" in err.message
    assert err.message.endswith("disk full")


async def test_killed_by_signal_has_negative_exit_code():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(run="kill -KILL $$"))
    assert info.value.exit_code == -signal.SIGKILL
    assert "SIGKILL" in info.value.message


async def test_argv_command_not_found_is_validation():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(argv=["definitely-not-a-command-xyz", "--help"]))
    assert info.value.error_class is ErrorClass.VALIDATION
    assert "definitely-not-a-command-xyz" in info.value.message


async def test_missing_cwd_is_validation(tmp_path):
    with pytest.raises(StepError) as info:
        await make_agent().call(step(run="pwd", cwd=str(tmp_path / "nope")))
    assert info.value.error_class is ErrorClass.VALIDATION


async def test_bad_params_at_call_time_are_validation():
    with pytest.raises(StepError) as info:
        await make_agent().call(step(run="echo", argv=["echo"]))
    assert info.value.error_class is ErrorClass.VALIDATION


# --------------------------------------------------------------------------- env and cwd


async def test_env_layers_and_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_OS", "os")
    monkeypatch.setenv("OVERRIDDEN", "os")
    (tmp_path / "sub").mkdir()
    agent = make_agent(env={"FROM_SPEC": "spec", "OVERRIDDEN": "spec"}, cwd=str(tmp_path))
    out = await agent.call(
        step(
            run='echo "$FROM_OS $FROM_SPEC $FROM_STEP $OVERRIDDEN"; pwd; '
            'echo "$FLOWDECK_RUN_ID $FLOWDECK_STEP_ID $FLOWDECK_ATTEMPT $FLOWDECK_IDEMPOTENCY_KEY"',
            env={"FROM_STEP": "step", "OVERRIDDEN": "step"},
            cwd="sub",
        )
    )
    lines = out["stdout"].splitlines()
    assert lines[0] == "os spec step step"
    assert os.path.realpath(lines[1]) == os.path.realpath(tmp_path / "sub")
    assert lines[2] == "run1 build 2 k-1"


async def test_spec_cwd_is_used_and_absolute_step_cwd_wins(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    agent = make_agent(cwd=str(tmp_path))
    out = await agent.call(step(argv=["pwd"]))
    assert os.path.realpath(out["stdout"].strip()) == os.path.realpath(tmp_path)
    out = await agent.call(step(argv=["pwd"], cwd=str(other)))
    assert os.path.realpath(out["stdout"].strip()) == os.path.realpath(other)


# --------------------------------------------------------------------------- process groups


async def test_cancel_kills_the_whole_process_group():
    agent = make_agent()
    task = asyncio.create_task(agent.call(step(run="sleep 30 & sleep 30")))
    sleeps = await descendants_named("sleep", 2)
    pids = [p.pid for p in sleeps]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(sleeps)
    assert not any(alive(pid) for pid in pids)


async def test_runner_style_timeout_kills_the_group():
    agent = make_agent()
    task = asyncio.create_task(asyncio.wait_for(agent.call(step(run="sleep 30 & sleep 30")), 60))
    sleeps = await descendants_named("sleep", 2)
    # what the runner does on timeout: the wait_for cancels the agent's call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(sleeps)


async def test_sigterm_ignored_escalates_to_sigkill(monkeypatch):
    monkeypatch.setattr(shell, "KILL_GRACE", 0.3)
    agent = make_agent()
    # `trap '' TERM` makes the shell and the sleep it starts ignore SIGTERM
    task = asyncio.create_task(agent.call(step(run="trap '' TERM; sleep 30; sleep 30")))
    sleeps = await descendants_named("sleep", 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(sleeps)


async def test_background_job_holding_the_pipe_does_not_hang_the_step():
    agent = make_agent()
    out = await asyncio.wait_for(agent.call(step(run="sleep 30 & echo $!")), 20)
    assert out["exit_code"] == 0
    pid = int(out["stdout"])
    for _ in range(200):
        if not alive(pid):
            break
        await asyncio.sleep(0.025)
    assert not alive(pid)


async def test_detached_background_job_is_ended_with_the_step():
    agent = make_agent()
    out = await agent.call(step(run="sleep 30 >/dev/null 2>&1 & echo $!"))
    pid = int(out["stdout"])
    for _ in range(200):
        if not alive(pid):
            break
        await asyncio.sleep(0.025)
    assert not alive(pid)


# --------------------------------------------------------------------------- params, operation


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"run": "git status"}, "git"),
        ({"run": "FOO=1 BAR=2 /usr/bin/make -j4"}, "make"),
        ({"run": "echo 'unbalanced"}, "echo"),
        ({"argv": ["/bin/ls", "-l"]}, "ls"),
        ({"argv": []}, "shell"),
        ({}, "shell"),
    ],
)
def test_operation_is_the_first_word(params, expected):
    assert make_agent().operation(params) == expected


def test_shell_steps_are_idempotent_by_default():
    assert make_agent().is_idempotent({"run": "rm -rf build"}) is True


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "run:"),
        ({"run": "a", "argv": ["a"]}, "run:"),
        ({"run": 3}, "run:"),
        ({"run": "  "}, "run:"),
        ({"argv": []}, "argv:"),
        ({"argv": "ls -l"}, "argv:"),
        ({"argv": ["ls", 3]}, "argv:"),
        ({"run": "ls", "env": ["A=1"]}, "env:"),
        ({"run": "ls", "env": {"A": 1}}, "env.A:"),
        ({"run": "ls", "env": {"A=B": "1"}}, "env:"),
        ({"run": "ls", "cwd": 5}, "cwd:"),
        ({"run": "ls", "shell": "bash"}, "shell:"),
    ],
)
def test_validate_params_problems(params, problem):
    problems = shell.ShellAgent.validate_params(params)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "params",
    [
        {"run": "echo hi"},
        {"argv": ["echo", "hi"], "env": {"A": "1"}, "cwd": "/tmp"},
        {"run": "echo ${{ inputs.pr }}", "env": {"PR": "${{ inputs.pr }}"}},
        {"argv": "${{ steps.plan.output.argv }}"},
    ],
)
def test_validate_params_accepts(params):
    assert shell.ShellAgent.validate_params(params) == []


async def test_a_cancel_while_the_process_starts_ends_it_instead_of_hanging():
    """Cancelled while asyncio connects the new process's pipes (the first turn of the loop
    after the fork), a bare `create_subprocess_exec` waits for ever: the step must end, and
    its process with it."""
    agent = make_agent()
    task = asyncio.create_task(agent.call(step(run="echo $$; sleep 30")))
    children: list[psutil.Process] = []
    for _ in range(1000):  # a turn of the loop at a time: the process is forked, its pipes not
        await asyncio.sleep(0)  # yet connected (that takes asyncio further turns)
        children = [p for p in psutil.Process().children(recursive=True) if _name(p) == "sh"]
        if children:
            break
    assert children
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await wait_gone(children)
