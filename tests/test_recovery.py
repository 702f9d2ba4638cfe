"""Crash-safe resume and graceful stop.

The engine is a real `flowdeck run` subprocess killed with SIGKILL while a step is in flight;
`flowdeck resume` finishes the run. Side effects are counted by the demo service on 127.0.0.1
(per Idempotency-Key) or by lines appended to a file. A few checks run the engine in process
where the moment of the stop must be exact.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

import pytest

from console.demo.service import ServiceConfig
from engine import recovery, reviews
from engine.agents.base import AgentResources, create
from engine.models import AgentSpec, RunStatus, StepSpec, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.conftest import run_cli
from tests.helpers.proc import query, start, step_status, wait_for
from tests.helpers.service import ServiceThread

STEPS = "tests.helpers.steps"


@pytest.fixture
def service():
    with ServiceThread(ServiceConfig(latency_scale=0)) as svc:
        yield svc


def write_workflow(path: Path, url: str, steps: str, name: str = "crash") -> str:
    path.write_text(
        f"name: {name}\n"
        "agents:\n"
        f"  api: {{kind: http, base_url: '{url}', timeout: 60}}\n"
        "  py: {kind: python}\n"
        "steps:\n" + steps
    )
    return str(path)


def run_and_kill(wf: str, db: Path, step: str, cwd: Path, until=None) -> str:
    """`flowdeck run WF`, SIGKILLed once `step` is in flight (and `until(run_id)` is true);
    returns the run id."""
    proc = start("run", wf, "--db", str(db), cwd=cwd)
    try:
        run_id, _ = wait_for(
            lambda: (r := step_status(db, step)) and r[1] == "running" and r,
            what=f"step {step} running",
        )
        if until is not None:
            wait_for(lambda: until(run_id), what="kill condition")
    except AssertionError:
        proc.kill()
        _out, err = proc.communicate()
        raise AssertionError(f"run did not reach {step}: {err}") from None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return run_id


def show(db: Path, run_id: str) -> dict:
    res = run_cli("show", run_id, "--json", "--db", str(db))
    assert res.code == 0, res.stderr
    return res.json()


def step_of(shown: dict, step_id: str) -> dict:
    return next(s for s in shown["steps"] if s["step_id"] == step_id)


def events(db: Path, run_id: str, kind: str) -> list[dict]:
    rows = query(db, "SELECT step_id, data FROM events WHERE run_id=? AND kind=? ORDER BY id",
                 (run_id, kind))  # fmt: skip
    return [{"step_id": r["step_id"], **json.loads(r["data"])} for r in rows]


def pending_crash_check(db: Path, run_id: str) -> dict | None:
    rows = query(
        db,
        "SELECT * FROM reviews WHERE run_id=? AND kind='crash_check' AND status='pending'",
        (run_id,),
    )
    return rows[0] if rows else None


def decide(db: Path, review_id: int, *, approve: bool, choice: str | None = None):
    """The operator's decision: `flowdeck approve|reject ID` in another process."""
    args = ["approve" if approve else "reject", str(review_id), "--as", "ana", "--db", str(db)]
    if choice is not None:
        args += ["--choice", choice]
    return run_cli(*args)


# --------------------------------------------------------------------------- the rules


def test_what_resume_does_with_a_step_in_flight():
    res = AgentResources()
    http = create("api", AgentSpec(kind="http", base_url="http://x"), res)
    py = create("py", AgentSpec(kind="python"), res)
    sh = create("sh", AgentSpec(kind="shell"), res)

    def action(agent, **step):
        with_ = step.pop("with", {})
        return recovery.crash_action(StepSpec(agent="a", **step), agent, with_)[0]

    assert action(py) == recovery.RERUN
    assert action(sh) == recovery.RERUN
    assert action(http, **{"with": {"method": "GET"}}) == recovery.RERUN
    assert action(http, **{"with": {"method": "DELETE"}}) == recovery.RERUN
    assert action(http, **{"with": {"method": "POST"}}) == recovery.REPEAT
    assert action(http, idempotent=True, **{"with": {"method": "POST"}}) == recovery.RERUN
    assert action(py, idempotent=False) == recovery.ASK
    assert action(http, destructive=True, **{"with": {"method": "GET"}}) == recovery.ASK
    assert action(py, destructive=True, idempotent=True) == recovery.ASK  # never blindly
    assert action(None) == recovery.RERUN


async def test_destructive_start_is_committed_before_the_call(store, db_path):
    seen: dict[str, tuple] = {}

    class Peek:
        """Looks at the file from another connection at the moment of the call."""

        async def execute(self, agent, call):
            con = sqlite3.connect(db_path)
            step = con.execute(
                "SELECT status FROM steps WHERE step_id=?", [call.step_id]
            ).fetchone()
            att = con.execute(
                "SELECT status FROM attempts WHERE step_id=? AND number=?",
                [call.step_id, call.attempt],
            ).fetchone()
            con.close()
            seen[call.step_id] = (step[0], att[0] if att else None)
            return {}

    spec = WorkflowSpec.model_validate(
        {"name": "d", "agents": {"py": {"kind": "python"}},
         "steps": {"close": {"agent": "py", "destructive": True, "with": {"call": "x:y"}},
                   "careful": {"agent": "py", "idempotent": False, "with": {"call": "x:y"}}}}
    )  # fmt: skip
    async with Engine(store, executor=Peek()) as eng:
        run = await eng.run(spec)
    assert run.status is RunStatus.SUCCEEDED
    assert seen == {"close": ("running", "running"), "careful": ("running", "running")}


# --------------------------------------------------------------------------- SIGKILL + resume


def test_killed_idempotent_step_runs_again(service, tmp_path):
    service.script("/tracker/issues", {"delay": 30})  # b's first GET hangs
    wf = write_workflow(
        tmp_path / "wf.yaml",
        service.url,
        "  a: {agent: api, with: {path: /code/pulls}}\n"
        "  b: {agent: api, needs: [a], with: {path: /tracker/issues}}\n"
        "  c: {agent: api, needs: [b], with: {path: /chat/channels}}\n",
    )
    db = tmp_path / "f.db"
    run_id = run_and_kill(wf, db, "b", tmp_path)

    res = run_cli("resume", run_id, "--db", str(db))  # at once: the killed owner is dead
    assert res.code == 0, res.stderr
    shown = show(db, run_id)
    assert shown["status"] == "succeeded"
    assert [a["status"] for a in step_of(shown, "a")["attempts"]] == ["succeeded"]  # kept
    b = step_of(shown, "b")["attempts"]
    assert [(a["number"], a["status"], a["error_class"]) for a in b] == [
        (1, "interrupted", "interrupted"),
        (2, "succeeded", None),
    ]
    rec = events(db, run_id, "step.recovered")
    assert [(e["step_id"], e["action"]) for e in rec] == [("b", "rerun")]
    report = service.calls()
    assert sum(c["count"] for c in report["calls"] if c["route"] == "/code/pulls") == 1


def test_killed_non_destructive_post_is_repeated_with_the_same_key(service, tmp_path):
    service.script("/tracker/issues", {"delay": 1.5}, method="POST")  # in flight for a while
    wf = write_workflow(
        tmp_path / "wf.yaml",
        service.url,
        "  file: {agent: api, with: {method: POST, path: /tracker/issues, json: {title: t}}}\n",
    )
    db = tmp_path / "f.db"

    def received(run_id: str) -> bool:  # the POST reached the server: its outcome is unknown
        return bool(service.calls(f"{run_id}:file")["calls"])

    run_id = run_and_kill(wf, db, "file", tmp_path, until=received)
    res = run_cli("resume", run_id, "--db", str(db))
    assert res.code == 0, res.stderr
    assert events(db, run_id, "step.recovered")[0]["action"] == "repeat"
    (posted,) = service.calls(f"{run_id}:file")["calls"]  # one key for both sends
    assert posted["count"] == 2  # sent again after the crash, with the same Idempotency-Key
    assert posted["effects"] == 1  # and done once (the lost call never committed, or the
    # server replayed the stored answer)
    assert show(db, run_id)["status"] == "succeeded"


def destructive_workflow(tmp_path: Path, url: str, marker: Path) -> str:
    """`close` is destructive and in flight for a while; `after` depends on it."""
    return write_workflow(
        tmp_path / "wf.yaml",
        url,
        f"  close: {{agent: py, destructive: true, with: {{call: '{STEPS}:append_line',\n"
        f"          args: {{path: '{marker}', text: closed, delay: 30}}}}}}\n"
        f"  after: {{agent: py, needs: [close], with: {{call: '{STEPS}:noop'}}}}\n",
    )


def test_killed_destructive_step_asks_and_rerun_does_it_once(service, tmp_path):
    marker = tmp_path / "effects"
    db = tmp_path / "f.db"
    run_id = run_and_kill(destructive_workflow(tmp_path, service.url, marker), db, "close",
                          tmp_path)  # fmt: skip
    assert not marker.exists()  # it died before the effect
    _retune_delay(db, run_id)  # so that the repeat does not wait 30 s again

    resume = start("resume", run_id, "--db", str(db), cwd=tmp_path)
    try:
        review = wait_for(lambda: pending_crash_check(db, run_id), what="crash check")
        assert review["step_id"] == "close"
        assert "was in flight (attempt 1)" in review["reason"]
        assert "destructive" in review["reason"]
        wait_for(lambda: step_status(db, "close")[1] == "waiting_review", what="waiting")
        listed = run_cli("reviews", "--json", "--db", str(db)).json()
        assert [(r["id"], r["kind"]) for r in listed["reviews"]] == [(review["id"], "crash_check")]
        # one owner at a time: a second resume while this one is alive is refused
        second = run_cli("resume", run_id, "--db", str(db))
        assert second.code == 4 and "alive" in second.stderr
        # not repeated while nobody answered
        assert not marker.exists()
        assert decide(db, review["id"], approve=True).code == 0
        _out, err = resume.communicate(timeout=60)
    finally:
        if resume.poll() is None:
            resume.kill()
    assert resume.returncode == 0, err
    assert marker.read_text() == "closed\n"
    shown = show(db, run_id)
    assert shown["status"] == "succeeded"
    close = step_of(shown, "close")["attempts"]
    assert [(a["number"], a["status"]) for a in close] == [(1, "interrupted"), (2, "succeeded")]


def _retune_delay(db: Path, run_id: str) -> None:
    """Edit the stored spec so the repeated step does not wait 30 s again (test speed only)."""
    con = sqlite3.connect(db)
    spec = json.loads(con.execute("SELECT spec FROM runs WHERE id=?", [run_id]).fetchone()[0])
    spec["steps"]["close"]["with"]["args"]["delay"] = 0
    con.execute("UPDATE runs SET spec=? WHERE id=?", [json.dumps(spec), run_id])
    con.commit()
    con.close()


def test_killed_destructive_step_marked_done_is_not_repeated(service, tmp_path):
    """The operator checked: it happened. The step succeeds without a second call."""
    service.script("/code/pulls/3/close", {"delay": 1.0})
    wf = write_workflow(
        tmp_path / "wf.yaml",
        service.url,
        "  close: {agent: api, destructive: true, with: {method: POST, path: /code/pulls/3/close}}\n"
        "  note: {agent: api, needs: [close], with: {method: POST, path: /chat/channels/general/messages,\n"
        "         json: {text: closed}}}\n",
    )
    db = tmp_path / "f.db"

    def received(run_id: str) -> bool:  # the close reached the server (killed while in flight)
        return bool(service.calls(f"{run_id}:close")["calls"])

    run_id = run_and_kill(wf, db, "close", tmp_path, until=received)
    key = f"{run_id}:close"
    wait_for(lambda: service.calls(key)["calls"] and service.calls(key)["calls"][0]["effects"],
             what="the close landed on the server")  # fmt: skip

    resume = start("resume", run_id, "--db", str(db), cwd=tmp_path)
    try:
        review = wait_for(lambda: pending_crash_check(db, run_id), what="crash check")
        res = decide(db, review["id"], approve=True, choice="done")
        assert res.code == 0, res.stderr
        _, err = resume.communicate(timeout=60)
    finally:
        if resume.poll() is None:
            resume.kill()
    assert resume.returncode == 0, err
    (closed,) = service.calls(key)["calls"]
    assert closed["count"] == 1 and closed["effects"] == 1  # never sent twice
    shown = show(db, run_id)
    assert shown["status"] == "succeeded"
    assert step_of(shown, "close")["output"] == {}
    assert step_of(shown, "note")["status"] == "succeeded"
    assert [e["action"] for e in events(db, run_id, "step.recovered")] == ["ask", "done"]


def test_rejected_crash_check_fails_the_run_and_decisions_survive_restarts(service, tmp_path):
    marker = tmp_path / "effects"
    db = tmp_path / "f.db"
    run_id = run_and_kill(destructive_workflow(tmp_path, service.url, marker), db, "close",
                          tmp_path)  # fmt: skip

    # the first resume asks, then is stopped (Ctrl-C twice) before anyone answers
    resume = start("resume", run_id, "--db", str(db), cwd=tmp_path)
    review = wait_for(lambda: pending_crash_check(db, run_id), what="crash check")
    resume.send_signal(signal.SIGINT)
    resume.send_signal(signal.SIGINT)
    _, err = resume.communicate(timeout=30)
    assert resume.returncode == 130, err
    assert pending_crash_check(db, run_id)["id"] == review["id"]  # still the same question

    res = decide(db, review["id"], approve=False)  # answered while no engine holds the run
    assert res.code == 0, res.stderr
    again = decide(db, review["id"], approve=True)
    assert again.code == 4 and "already decided by ana" in again.stderr

    res = run_cli("resume", run_id, "--db", str(db))
    assert res.code == 1, res.stderr
    shown = show(db, run_id)
    assert shown["status"] == "failed"
    assert step_of(shown, "close")["status"] == "rejected"
    assert "crash check rejected by ana" in step_of(shown, "close")["error"]
    assert step_of(shown, "after")["status"] == "skipped"
    assert not marker.exists()


def test_crash_check_choice_is_checked(service, tmp_path):
    marker = tmp_path / "effects"
    db = tmp_path / "f.db"
    run_id = run_and_kill(destructive_workflow(tmp_path, service.url, marker), db, "close",
                          tmp_path)  # fmt: skip
    resume = start("resume", run_id, "--db", str(db), cwd=tmp_path)
    try:
        review = wait_for(lambda: pending_crash_check(db, run_id), what="crash check")
        bad = decide(db, review["id"], approve=True, choice="maybe")
        assert bad.code == 2 and "choose from rerun, done" in bad.stderr
        assert pending_crash_check(db, run_id) is not None
        res = run_cli("cancel", run_id, "--db", str(db))
        assert res.code == 0, res.stderr
        resume.communicate(timeout=30)
    finally:
        if resume.poll() is None:
            resume.kill()
    assert resume.returncode == 1
    assert query(db, "SELECT status FROM reviews WHERE id=?", (review["id"],)) == [
        {"status": "cancelled"}
    ]
    assert show(db, run_id)["status"] == "cancelled"


# --------------------------------------------------------------------------- in process


def py_step(fn: str, **kw) -> dict:
    args = kw.pop("args", {})
    return {"agent": "py", "with": {"call": f"{STEPS}:{fn}", "args": args}, **kw}


def spec_of(steps: dict) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"name": "p", "agents": {"py": {"kind": "python"}}, "steps": steps}
    )


async def test_forced_stop_with_destructive_step_in_flight_asks_on_resume(store, db_path, tmp_path):
    release = tmp_path / "release"
    spec = spec_of({"close": py_step("until_file", destructive=True,
                                     args={"path": str(release)})})  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.submit(spec)
        while not run.steps["close"].in_flight:
            await asyncio.sleep(0.01)
        await eng.shutdown(grace=0)
    assert run.done.result() is RunStatus.INTERRUPTED
    store.flush_sync()
    assert store.query("SELECT status FROM steps")[0]["status"] == "running"  # unknown outcome
    assert store.query("SELECT status, error_class FROM attempts") == [
        {"status": "interrupted", "error_class": "interrupted"}
    ]
    release.touch()
    async with Engine(store) as eng:
        resumed = await eng.resume(run.run_id)
        while resumed.steps["close"].status.value != "waiting_review":
            await asyncio.sleep(0.01)
        [review] = await store.aread(
            lambda db: list(db.query("SELECT id, kind FROM reviews WHERE status='pending'"))
        )
        assert review["kind"] == "crash_check"
        other = Store.open(db_path)  # the decision comes through the file
        try:
            await asyncio.to_thread(reviews.decide, other, review["id"], "approve", "bo", "go")
        finally:
            other.close()
        assert await asyncio.wait_for(resumed.wait(), 10) is RunStatus.SUCCEEDED
    att = store.query("SELECT number, status FROM attempts ORDER BY number")
    assert [(a["number"], a["status"]) for a in att] == [(1, "interrupted"), (2, "succeeded")]


async def test_graceful_stop_starts_no_new_attempt_after_a_backoff(store, tmp_path):
    counter = tmp_path / "n"
    script = f"echo x >> {counter}; exit 75"
    spec = WorkflowSpec.model_validate(
        {"name": "g", "agents": {"sh": {"kind": "shell"}},
         "steps": {"flaky": {"agent": "sh", "with": {"run": script},
                             "retry": {"attempts": 5, "backoff": "fixed", "initial": 0.3,
                                       "on_exit_codes": [75]}}}}
    )  # fmt: skip
    async with Engine(store) as eng:
        run = await eng.submit(spec)
        while run.steps["flaky"].status.value != "retrying":
            await asyncio.sleep(0.01)
        await eng.shutdown(grace=5)  # longer than the backoff
    assert run.done.result() is RunStatus.INTERRUPTED
    assert counter.read_text().count("x") == 1  # the wait ended during the grace: no attempt 2
    store.flush_sync()
    assert store.query("SELECT status FROM steps")[0]["status"] == "pending"


async def test_resume_owned_picks_up_only_this_owners_runs(store, db_path, tmp_path):
    release = tmp_path / "release"
    spec = spec_of({"wait": py_step("until_file", args={"path": str(release)}),
                    "then": py_step("noop", needs=["wait"])})  # fmt: skip
    async with Engine(store, owner="serve-a") as a, Engine(store, owner="serve-b") as b:
        mine = [await a.submit(spec), await a.submit(spec)]
        theirs = await b.submit(spec)
        await asyncio.sleep(0.05)
        await a.shutdown(grace=0)
        await b.shutdown(grace=0)
    release.touch()
    async with Engine(store, owner="serve-a") as again:
        resumed = await again.resume_owned()
        assert sorted(r.run_id for r in resumed) == sorted(r.run_id for r in mine)
        for r in resumed:
            assert await asyncio.wait_for(r.wait(), 10) is RunStatus.SUCCEEDED
    store.flush_sync()
    status = store.query("SELECT status FROM runs WHERE id=?", [theirs.run_id])[0]["status"]
    assert status == "interrupted"


# --------------------------------------------------------------------------- graceful stop


def test_sigterm_lets_the_running_step_finish_then_exits_130(tmp_path):
    marker = tmp_path / "done"
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: g\nagents: {sh: {kind: shell}}\nsteps:\n"
        f"  slow: {{agent: sh, with: {{run: 'sleep 1; echo ok > {marker}'}}}}\n"
        "  later: {agent: sh, needs: [slow], with: {run: 'echo later'}}\n"
    )
    db = tmp_path / "f.db"
    proc = start("run", str(wf), "--db", str(db), cwd=tmp_path, FLOWDECK_GRACE="30")
    run_id, _ = wait_for(lambda: (r := step_status(db, "slow")) and r[1] == "running" and r)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGTERM: stopping" in err and "Traceback" not in err
    shown = show(db, run_id)
    assert shown["status"] == "interrupted"
    assert step_of(shown, "slow")["status"] == "succeeded"  # it was given time to finish
    assert step_of(shown, "later")["status"] == "pending"  # nothing new started
    assert marker.exists()
    res = run_cli("resume", run_id, "--db", str(db))
    assert res.code == 0, res.stderr
    assert [a["number"] for a in step_of(show(db, run_id), "slow")["attempts"]] == [1]
