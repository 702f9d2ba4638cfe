"""`flowdeck history` and `flowdeck undo` as real processes: exit codes, undo from a second
process while the engine runs, and crashes (SIGKILL) between an action and its log update.

The demo service runs in the test's event loop on 127.0.0.1; CLI processes are started with
asyncio so the service keeps answering while they run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.models import RunStatus, WorkflowSpec
from engine.runner import Engine
from engine.store import Store
from tests.conftest import CliResult, cli_env


async def acli(*args: str, timeout: float = 60, **env: str) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "console",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(**env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode, out.decode(), err.decode())


async def api(service, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, service.url + path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def new_issue(service, title: str) -> int:
    status, body = await api(service, "POST", "/tracker/issues", {"title": title})
    assert status == 201
    return body["number"]


async def issue_status(service, n: int) -> int:
    return (await api(service, "GET", f"/tracker/issues/{n}"))[0]


def restore_undo(capture: bool = True) -> dict:
    undo: dict[str, Any] = {
        "agent": "tracker",
        "with": {"method": "POST", "path": "/issues/${{ inputs.issue }}/restore"},
        "description": "restore issue ${{ inputs.issue }}",
    }
    if capture:
        undo["capture"] = {"with": {"method": "GET", "path": "/issues/${{ inputs.issue }}"}}
        undo["capture"]["agent"] = "tracker"
        undo["with"]["json"] = {"issue": "${{ before }}"}
    return undo


def write_wf(path: Path, service, steps: dict, inputs: dict | None = None) -> Path:
    doc = {
        "name": "cleanup",
        "inputs": inputs or {"issue": {"type": "integer", "required": True}},
        "agents": {
            "tracker": {"kind": "http", "base_url": service.url + "/tracker"},
            "py": {"kind": "python"},
        },
        "steps": steps,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def delete_step() -> dict:
    return {
        "agent": "tracker",
        "destructive": True,
        "with": {"method": "DELETE", "path": "/issues/${{ inputs.issue }}"},
        "undo": restore_undo(),
    }


def entries(db: Path) -> list[dict]:
    with Store.open(db) as s:
        return s.query("SELECT * FROM undo_log ORDER BY id")


# --------------------------------------------------------------------------- the commands


async def test_run_history_undo_and_exit_codes(service, tmp_path):
    db = str(tmp_path / "f.db")
    n = await new_issue(service, "CLI [bold]markup[/bold] stays text")
    wf = write_wf(tmp_path / "wf.yaml", service, {"delete": delete_step()})
    res = await acli("run", str(wf), "--input", f"issue={n}", "--db", db)
    assert res.code == 0, res.stderr
    assert await issue_status(service, n) == 404

    res = await acli("history", "--db", db, "--json")
    assert res.code == 0 and res.stderr == ""
    [e] = res.json()["entries"]
    assert e["status"] == "done" and e["state"] == "done" and e["step_id"] == "delete"
    assert 3500 < e["seconds_left"] <= 3600 and e["description"] == f"restore issue {n}"
    assert e["before"]["title"] == "CLI [bold]markup[/bold] stays text"
    res = await acli("history", "--db", db, COLUMNS="200")
    assert res.code == 0 and "DELETE /issues/*" in res.stdout and "restore issue" in res.stdout
    assert "59m" in res.stdout

    res = await acli("undo", str(e["id"]), "--db", db, "--as", "ana", "--json")
    assert res.code == 0, res.stderr
    doc = res.json()
    assert doc["ok"] is True and doc["results"][0]["outcome"] == "undone"
    assert doc["results"][0]["entry"]["undone_by"] == "ana"
    assert await issue_status(service, n) == 200

    # refusals: exit 4, one line on stderr, nothing on stdout
    refusals = [
        (["undo", str(e["id"])], "was already undone at"),
        (["undo", "--last"], "was already undone at"),
        (["undo", "--run", e["run_id"]], "nothing left to undo in run"),
    ]
    results = await asyncio.gather(*(acli(*args, "--db", db) for args, _ in refusals))
    for (args, msg), res in zip(refusals, results, strict=True):
        assert res.code == 4 and msg in res.stderr, (args, res)
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1

    # bad input: exit 2
    cases = [
        (["undo", "77"], "no undo entry 77"),
        (["undo", "abc"], "not an undo entry id"),
        (["undo"], "one of the arguments"),
        (["undo", "1", "--last"], "not allowed with"),
        (["undo", "1", "--keep-going"], "--keep-going only applies to --run"),
        (["history", "--status", "bogus"], "not a status"),
        (["history", "--run", "zzzz"], "no run 'zzzz'"),
    ]
    results = await asyncio.gather(*(acli(*args, "--db", db) for args, _ in cases))
    for (args, msg), res in zip(cases, results, strict=True):
        assert res.code == 2 and msg in res.stderr, (args, res)
        assert "Traceback" not in res.stderr
    res = await acli("history", "--db", str(tmp_path / "none.db"))
    assert res.code == 3 and "no flowdeck database" in res.stderr


async def test_expired_entry_refused_from_the_cli(service, tmp_path, db_path):
    n = await new_issue(service, "too late")
    store = Store.open(db_path)
    engine = Engine(store, clock=lambda: time.time() - 7200)  # the run happened 2 hours ago
    spec = WorkflowSpec.model_validate(
        yaml.safe_load(
            write_wf(tmp_path / "wf.yaml", service, {"delete": delete_step()}).read_text()
        )
    )
    async with engine:
        run = await engine.run(spec, {"issue": n})
    store.close()
    assert run.status is RunStatus.SUCCEEDED
    [e] = entries(db_path)
    res = await acli("history", "--db", str(db_path), "--json")
    assert res.json()["entries"][0]["state"] == "expired"
    assert "expired" in (await acli("history", "--db", str(db_path), COLUMNS="200")).stdout
    res = await acli("undo", str(e["id"]), "--db", str(db_path))
    assert res.code == 4 and "expired at" in res.stderr and "undo window 3600 s" in res.stderr
    assert await issue_status(service, n) == 404
    assert entries(db_path)[0]["status"] == "done"


# --------------------------------------------------------------------------- another process


async def test_undo_from_a_second_process_while_the_engine_runs(service, tmp_path, db_path):
    a = await new_issue(service, "undone while the run goes on")
    b = await new_issue(service, "deleted by a step still in flight")
    gate = tmp_path / "gate"
    held_undo = restore_undo(capture=False)
    held_undo["with"]["path"] = f"/issues/{b}/restore"
    spec = WorkflowSpec.model_validate(
        yaml.safe_load(
            write_wf(
                tmp_path / "wf.yaml",
                service,
                {
                    "gone": delete_step(),
                    "held": {
                        "agent": "py",
                        "needs": ["gone"],
                        "destructive": True,
                        "with": {
                            "call": "tests.helpers.undo_steps:delete_then_wait",
                            "args": {"url": f"{service.url}/tracker/issues/{b}", "gate": str(gate)},
                        },
                        "undo": held_undo,
                    },
                },
            ).read_text()
        )
    )
    store = Store.open(db_path)
    db = str(db_path)
    try:
        async with Engine(store) as engine:
            run = await engine.submit(spec, {"issue": a})
            for _ in range(500):
                rows = entries(db_path)
                if len(rows) == 2 and await issue_status(service, b) == 404:
                    break
                await asyncio.sleep(0.02)
            gone, held = entries(db_path)
            assert (gone["status"], held["status"]) == ("done", "prepared")

            # the action of `held` is still running in this engine: refused
            res = await acli("undo", str(held["id"]), "--db", db)
            assert res.code == 4 and "its action is still running" in res.stderr

            # two processes race to undo `gone`: exactly one wins
            await api(
                service,
                "POST",
                "/admin/script",
                {"path_prefix": f"/tracker/issues/{a}/restore", "responses": [{"delay": 0.5}]},
            )
            r1, r2 = await asyncio.gather(
                acli("undo", str(gone["id"]), "--db", db, "--as", "one"),
                acli("undo", str(gone["id"]), "--db", db, "--as", "two"),
            )
            assert sorted([r1.code, r2.code]) == [0, 4], (r1, r2)
            loser = r1 if r1.code == 4 else r2
            assert "being undone right now" in loser.stderr or "already undone" in loser.stderr
            assert await issue_status(service, a) == 200
            calls = (await api(service, "GET", "/admin/calls"))[1]["calls"]
            assert sum(c["count"] for c in calls if c["route"].endswith("/restore")) == 1
            assert not run.done.done()  # the engine kept running all along

            gate.write_text("go")
            assert await asyncio.wait_for(run.wait(), 30) is RunStatus.SUCCEEDED
    finally:
        store.close()
    held = entries(db_path)[1]
    assert held["status"] == "done"
    res = await acli("undo", "--last", "--db", db, "--json")
    assert res.code == 0 and res.json()["results"][0]["id"] == held["id"]
    assert await issue_status(service, b) == 200


async def test_python_undo_handler_found_by_another_process(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("remember")
    wf = tmp_path / "rm.yaml"
    wf.write_text(
        yaml.safe_dump(
            {
                "name": "rm",
                "agents": {"py": {"kind": "python"}},
                "steps": {
                    "rm": {
                        "agent": "py",
                        "destructive": True,
                        "with": {
                            "call": "tests.helpers.undo_steps:remove_file",
                            "args": {"path": str(f)},
                        },
                        "undo": {"handler": "restore_file"},
                    }
                },
            }
        )
    )
    db = str(tmp_path / "f.db")
    assert (await acli("run", str(wf), "--db", db)).code == 0
    assert not f.exists()
    res = await acli("undo", "--last", "--db", db)
    assert res.code == 0, res.stderr
    assert f.read_text() == "remember"


# --------------------------------------------------------------------------- crashes


async def run_and_kill(tmp_path: Path, service, db: Path, n: int, undo: dict) -> str:
    """`flowdeck run` in a subprocess; SIGKILL it after its destructive action happened but
    before the step finished. Returns the run id."""
    marker = tmp_path / f"marker-{n}"
    wf = write_wf(
        tmp_path / f"crash-{n}.yaml",
        service,
        {
            "delete": {
                "agent": "py",
                "destructive": True,
                "with": {
                    "call": "tests.helpers.undo_steps:delete_then_hang",
                    "args": {"url": f"{service.url}/tracker/issues/{n}", "marker": str(marker)},
                },
                "undo": undo,
            }
        },
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "console",
        "run",
        str(wf),
        "--input",
        f"issue={n}",
        "--db",
        str(db),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=cli_env(),
    )
    for _ in range(1500):
        if marker.exists():
            break
        await asyncio.sleep(0.02)
    assert marker.exists(), "the step never ran"
    os.kill(proc.pid, signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    assert await issue_status(service, n) == 404  # the action happened
    [row] = [r for r in entries(db) if r["params"] and str(n) in r["params"]]
    assert row["status"] == "prepared"  # ... but the log never heard of it
    with Store.open(db) as s:
        return s.query("SELECT run_id FROM undo_log WHERE id = ?", [row["id"]])[0]["run_id"]


async def test_sigkill_between_action_and_log_update_then_undo_rechecks(service, tmp_path):
    db = tmp_path / "f.db"
    n = await new_issue(service, "deleted, then the engine died")
    await run_and_kill(tmp_path, service, db, n, restore_undo(capture=True))
    [e] = entries(db)

    res = await acli("history", "--db", str(db), "--json")
    assert res.json()["entries"][0]["state"] == "prepared"
    # a new process: the capture is read again (404: the issue is gone, so the action
    # happened) and the compensation runs with the before-state captured before the crash
    res = await acli("undo", str(e["id"]), "--db", str(db), "--json")
    assert res.code == 0, res.stderr
    assert res.json()["results"][0]["outcome"] == "undone"
    status, issue = await api(service, "GET", f"/tracker/issues/{n}")
    assert status == 200 and issue["title"] == "deleted, then the engine died"
    with Store.open(db) as s:
        caps = s.query(
            "SELECT number, status, error FROM attempts WHERE step_id = 'delete.capture' "
            "ORDER BY number"
        )
    assert [(c["number"], c["status"]) for c in caps] == [(1, "succeeded"), (2, "failed")]
    assert "404" in caps[1]["error"]


async def test_sigkill_without_capture_needs_resume_or_force(service, tmp_path):
    db = tmp_path / "f.db"
    n = await new_issue(service, "no capture")
    run_id = await run_and_kill(tmp_path, service, db, n, restore_undo(capture=False))
    [e] = entries(db)
    res = await acli("undo", str(e["id"]), "--db", str(db))
    assert res.code == 4
    assert "unresolved" in res.stderr and f"flowdeck resume {run_id}" in res.stderr
    assert "--force" in res.stderr
    res = await acli("undo", "--run", run_id, "--db", str(db))
    assert res.code == 4 and "unresolved after a crash" in res.stderr
    res = await acli("undo", str(e["id"]), "--force", "--db", str(db))
    assert res.code == 0, res.stderr
    assert await issue_status(service, n) == 200


@pytest.mark.slow
async def test_sigkill_then_resume_takes_the_entry_over(service, tmp_path):
    db = tmp_path / "f.db"
    n = await new_issue(service, "resumed")
    run_id = await run_and_kill(tmp_path, service, db, n, restore_undo(capture=True))
    [before_crash] = entries(db)
    # the destructive step was in flight: resume asks whether to run it again (a crash_check
    # review, engine/crash_check.py); the operator says yes (the step tolerates a repeat)
    resume = asyncio.ensure_future(acli("resume", run_id, "--db", str(db)))
    review_id = None
    for _ in range(1500):
        with Store.open(db) as s:
            rows = s.query(
                "SELECT id FROM reviews WHERE run_id=? AND kind='crash_check' AND status='pending'",
                [run_id],
            )
        if rows:
            review_id = rows[0]["id"]
            break
        await asyncio.sleep(0.02)
    assert review_id is not None, "resume did not ask about the step in flight"
    res = await acli("approve", str(review_id), "--as", "ana", "--db", str(db))
    assert res.code == 0, res.stderr
    res = await resume
    assert res.code == 0, res.stderr
    [e] = entries(db)  # the same entry, taken over, now done
    assert e["id"] == before_crash["id"] and e["status"] == "done"
    assert json.loads(e["before"])["title"] == "resumed"  # captured before the first attempt
    res = await acli("undo", "--run", run_id, "--db", str(db))
    assert res.code == 0, res.stderr
    status, issue = await api(service, "GET", f"/tracker/issues/{n}")
    assert status == 200 and issue["title"] == "resumed"


async def test_sigkill_during_an_undo_then_retry(service, tmp_path):
    db = tmp_path / "f.db"
    n = await new_issue(service, "undo interrupted")
    wf = write_wf(tmp_path / "wf.yaml", service, {"delete": delete_step()})
    assert (await acli("run", str(wf), "--input", f"issue={n}", "--db", str(db))).code == 0
    [e] = entries(db)
    await api(
        service,
        "POST",
        "/admin/script",  # the first restore hangs
        {
            "path_prefix": f"/tracker/issues/{n}/restore",
            "responses": [{"delay": 30, "status": 503}],
        },
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "console",
        "undo",
        str(e["id"]),
        "--db",
        str(db),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=cli_env(),
    )
    for _ in range(1500):
        if entries(db)[0]["status"] == "undoing":
            break
        await asyncio.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert entries(db)[0]["status"] == "undoing"

    res = await acli("undo", str(e["id"]), "--db", str(db))
    assert res.code == 4 and "--retry" in res.stderr
    row = entries(db)[0]
    assert row["status"] == "failed" and "stopped before recording" in row["error"]
    res = await acli("undo", str(e["id"]), "--retry", "--db", str(db))
    assert res.code == 0, res.stderr
    assert await issue_status(service, n) == 200


async def test_history_cap_from_the_environment(tmp_path):
    wf = tmp_path / "rm.yaml"
    wf.write_text(
        yaml.safe_dump(
            {
                "name": "rm",
                "inputs": {"path": {}},
                "agents": {"py": {"kind": "python"}},
                "steps": {
                    "rm": {
                        "agent": "py",
                        "destructive": True,
                        "with": {
                            "call": "tests.helpers.undo_steps:remove_file",
                            "args": {"path": "${{ inputs.path }}"},
                        },
                        "undo": {"handler": "restore_file", "ttl": 0.001},
                    }
                },
            }
        )
    )
    db = str(tmp_path / "f.db")
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
        path = f"path={tmp_path / name}"
        res = await acli("run", str(wf), "-i", path, "--db", db, FLOWDECK_HISTORY_CAP="2")
        assert res.code == 0, res.stderr
    res = await acli("history", "--db", db, "--json")
    assert [e["id"] for e in res.json()["entries"]] == [3, 2]
    assert {e["state"] for e in res.json()["entries"]} == {"expired"}
