"""`flowdeck serve` as a real subprocess: token file, binding, JSON logs, resume, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import cli_env
from tests.helpers.api import kill_quietly, start_serve, wait_listening, write_workflows


@pytest.fixture
def workflows(tmp_path):
    return write_workflows(tmp_path / "workflows")


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(*args, **env):
        sp = start_serve(*args, cwd=tmp_path, env=env)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        kill_quietly(sp)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_status(url: str, run_id: str, wanted: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = requests.get(f"{url}/api/runs/{run_id}", timeout=10).json()
        if run["status"] in wanted:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not in {wanted}: {run['status']}")


def db_status(db, run_id: str) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status FROM runs WHERE id=?", [run_id]).fetchone()[0]


def test_token_file_is_created_0600_and_printed_once(serve, tmp_path, workflows):
    db = tmp_path / "flowdeck.db"
    sp = serve("--db", str(db), "--port", "0", "--workflows", str(workflows))
    url = wait_listening(sp)
    token_file = tmp_path / "flowdeck.db.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    r = requests.post(f"{url}/api/runs", json={"workflow": "quick"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = requests.post(
        f"{url}/api/runs", json={"workflow": "quick"}, headers=bearer(token), timeout=10
    )
    assert r.status_code == 201, r.text
    assert wait_status(url, r.json()["id"], {"succeeded"})
    assert sp.stop() == 0
    assert token in sp.stdout and "shown only this once" in sp.stdout
    assert token not in "\n".join(sp.lines)  # never in the log

    again = serve("--db", str(db), "--port", "0")
    url = wait_listening(again)
    r = requests.post(f"{url}/api/runs/abc/cancel", headers=bearer(token), timeout=10)
    assert r.status_code == 404  # same token still accepted
    assert again.stop() == 0
    assert again.stdout == ""


def test_flowdeck_token_from_the_environment(serve, tmp_path, workflows):
    sp = serve(
        "--port", "0", "--workflows", str(workflows), FLOWDECK_TOKEN="env-token-abcdef0123456789"
    )
    url = wait_listening(sp)
    r = requests.post(
        f"{url}/api/runs", json={"workflow": "quick"}, headers=bearer("env-token-abcdef0123456789"),
        timeout=10,
    )  # fmt: skip
    assert r.status_code == 201
    assert not (tmp_path / "flowdeck.db.token").exists()
    assert sp.stop() == 0 and sp.stdout == ""


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token_file = tmp_path / "flowdeck.db.token"
    token_file.write_text("some-token-value-1234567890\n")
    token_file.chmod(0o644)
    out = subprocess.run(
        [sys.executable, "-m", "console", "serve", "--port", "0"],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "readable by others" in out.stderr and "chmod 600" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_arguments_exit_2(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        for args, words in [
            (["--port", str(port)], "cannot listen"),
            (["--port", "70000"], "--port"),
            (["--workflows", str(tmp_path / "missing")], "not a directory"),
        ]:
            out = subprocess.run(
                [sys.executable, "-m", "console", "serve", *args],
                capture_output=True, text=True, cwd=tmp_path, env=cli_env(FLOWDECK_TOKEN="x" * 20),
                timeout=60,
            )  # fmt: skip
            assert out.returncode == 2, (args, out.stderr)
            assert words in out.stderr and "Traceback" not in out.stderr
    finally:
        busy.close()


def test_host_beyond_loopback_warns_and_reads_need_the_token(serve, tmp_path):
    token = "host-token-abcdef0123456789"
    sp = serve("--host", "0.0.0.0", "--port", "0", FLOWDECK_TOKEN=token)
    url = wait_listening(sp).replace("0.0.0.0", "127.0.0.1")
    assert sp.wait_line(r"WARNING .*beyond this machine")
    assert requests.get(f"{url}/api/runs", timeout=10).status_code == 401
    assert requests.get(f"{url}/api/runs", headers=bearer(token), timeout=10).status_code == 200
    assert sp.stop() == 0


def test_default_bind_is_loopback(serve):
    sp = serve("--port", "0", FLOWDECK_TOKEN="t" * 20)
    assert wait_listening(sp).startswith("http://127.0.0.1:")
    assert requests.get(f"{sp.url}/api/runs", timeout=10).status_code == 200
    assert sp.stop() == 0


def test_log_json_lines(serve, tmp_path, workflows):
    token = "json-token-abcdef0123456789"
    sp = serve(
        "--port", "0", "--workflows", str(workflows), "--log-json", FLOWDECK_TOKEN=token
    )  # fmt: skip
    url = wait_listening(sp)
    r = requests.post(
        f"{url}/api/runs", json={"workflow": "hello", "inputs": {"who": "log"}},
        headers=bearer(token), timeout=10,
    )  # fmt: skip
    run_id = r.json()["id"]
    wait_status(url, run_id, {"succeeded"})
    sp.wait_line(r'"event": "run.succeeded"')
    assert sp.stop() == 0
    records = [json.loads(line) for line in sp.lines]  # every line is one JSON object
    assert all({"time", "level", "message"} <= rec.keys() for rec in records)
    events = [rec for rec in records if rec.get("run") == run_id and "event" in rec]
    assert {"run.created", "step.succeeded", "run.succeeded"} <= {e["event"] for e in events}
    step = next(e for e in events if e["event"] == "step.succeeded")
    assert step["step"] in ("greet", "shout") and step["level"] == "info"
    access = [rec for rec in records if rec.get("path") == "/api/runs" and rec.get("method")]
    assert access and access[0]["status"] == 201


def test_sigterm_interrupts_then_serve_resumes_on_start(serve, tmp_path, workflows):
    token = "resume-token-abcdef0123456789"
    db = tmp_path / "flowdeck.db"
    sp = serve(
        "--db", str(db), "--port", "0", "--workflows", str(workflows),
        FLOWDECK_TOKEN=token, FLOWDECK_GRACE="0.2",
    )  # fmt: skip
    url = wait_listening(sp)
    r = requests.post(
        f"{url}/api/runs", json={"workflow": "slow", "inputs": {"seconds": 2}},
        headers=bearer(token), timeout=10,
    )  # fmt: skip
    run_id = r.json()["id"]
    wait_status(url, run_id, {"running"})
    assert sp.stop(signal.SIGTERM) == 0
    assert db_status(db, run_id) == "interrupted"

    again = serve("--db", str(db), "--port", "0", FLOWDECK_TOKEN=token)
    url = wait_listening(again)
    again.wait_line(rf"resumed run {run_id}")
    run = wait_status(url, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded"
    assert again.stop() == 0


def test_serve_resumes_a_run_whose_engine_was_killed(serve, tmp_path, workflows):
    db = tmp_path / "flowdeck.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "run", str(workflows / "slow.yaml"), "--db", str(db),
         "--input", "seconds=1.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=cli_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        run_id = None
        while time.monotonic() < deadline and run_id is None:
            time.sleep(0.05)
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    row = conn.execute(
                        "SELECT run_id FROM steps WHERE status='running' LIMIT 1"
                    ).fetchone()
            except sqlite3.OperationalError:  # not created or not migrated yet
                continue
            run_id = row[0] if row else None
        assert run_id, "the run never started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # its lease still runs for up to 15 s, but its owner is a process of this host that is gone
    sp = serve("--db", str(db), "--port", "0", FLOWDECK_TOKEN="k" * 20)
    url = wait_listening(sp)
    sp.wait_line(rf"resumed run {run_id}")
    assert wait_status(url, run_id, {"succeeded", "failed"})["status"] == "succeeded"
    assert sp.stop() == 0


def test_retain_days_prunes_old_runs_on_start(serve, tmp_path, workflows, cli):
    db = tmp_path / "flowdeck.db"
    old = cli("run", str(workflows / "quick.yaml"), "--db", str(db), "--json")
    new = cli("run", str(workflows / "quick.yaml"), "--db", str(db), "--json")
    assert old.code == new.code == 0
    old_id, new_id = old.json()["id"], new.json()["id"]
    long_ago = time.time() - 40 * 86400
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE runs SET created_at=?, started_at=?, ended_at=? WHERE id=?",
            [long_ago, long_ago, long_ago + 1, old_id],
        )
    bad = subprocess.run(
        [sys.executable, "-m", "console", "serve", "--db", str(db), "--retain-days", "0"],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--retain-days 0: must be more than 0" in bad.stderr
    sp = serve("--db", str(db), "--port", "0", "--retain-days", "30", FLOWDECK_TOKEN="r" * 20)
    url = wait_listening(sp)
    sp.wait_line(r"retention: pruned 1 runs")
    assert requests.get(f"{url}/api/runs/{old_id}", timeout=10).status_code == 404
    assert requests.get(f"{url}/api/runs/{new_id}", timeout=10).status_code == 200
    assert sp.stop() == 0
