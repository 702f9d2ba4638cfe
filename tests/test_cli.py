"""The command line as a real subprocess: stdout, stderr and exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

HELLO = str(ROOT / "examples" / "hello.yaml")


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_validate_ok_and_bad(cli, tmp_path):
    ok = cli("validate", HELLO)
    assert ok.code == 0 and "ok" in ok.stdout
    bad = write(
        tmp_path / "bad.yaml",
        "name: bad\nagents: {sh: {kind: shell}}\nsteps:\n  a: {agent: sh, neds: [b]}\n",
    )
    res = cli("validate", bad)
    assert res.code == 2
    assert f"{bad}:4:" in res.stderr and "did you mean 'needs'" in res.stderr
    no_traceback(res)


def test_run_hello_prints_progress_and_summary(cli, tmp_path):
    db = tmp_path / "f.db"
    res = cli("run", HELLO, "--input", "who=Ada", "--db", str(db))
    assert res.code == 0, res.stderr
    assert "succeeded" in res.stdout
    assert "✓ summary" in res.stderr  # progress goes to stderr
    lines = res.stderr.splitlines()  # its header first, even for steps done before it came up
    assert lines[0].startswith("run ") and lines[0].endswith("(6 steps)"), lines
    steps = ("greet", "host", "count", "shout", "pause", "summary")
    assert sorted(line.strip() for line in lines[1:7]) == sorted(f"✓ {s}" for s in steps)
    runs = cli("runs", "--json", "--db", str(db)).json()["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    assert runs[0]["steps_done"] == runs[0]["steps_total"] == 6
    shown = cli("show", runs[0]["id"][:6], "--json", "--db", str(db)).json()
    greet = next(s for s in shown["steps"] if s["step_id"] == "greet")
    assert greet["output"]["stdout"] == "Hello, Ada!"
    assert greet["attempts"][0]["status"] == "succeeded"
    human = cli("show", runs[0]["id"], "--db", str(db))
    assert human.code == 0 and "summary" in human.stdout


def test_run_json_is_one_document(cli, tmp_path):
    res = cli("run", HELLO, "--json", "--db", str(tmp_path / "f.db"))
    assert res.code == 0
    doc = json.loads(res.stdout)
    assert doc["status"] == "succeeded" and len(doc["steps"]) == 6


def test_failed_run_exits_1(cli, tmp_path):
    wf = write(
        tmp_path / "fail.yaml",
        "name: fail\nagents: {sh: {kind: shell}}\nsteps:\n"
        "  a: {agent: sh, with: {run: 'echo broken >&2; exit 4'}}\n"
        "  b: {agent: sh, needs: [a], with: {run: 'true'}}\n",
    )
    res = cli("run", wf, "--db", str(tmp_path / "f.db"))
    assert res.code == 1
    assert "failed" in res.stdout and "broken" in res.stdout
    no_traceback(res)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "who"], "expected KEY=VALUE"),
        (["--input", "nobody=1"], "nobody"),
        (["--concurrency", "0"], "at least 1"),
        (["--concurrency", "x"], "invalid int"),
    ],
)
def test_bad_arguments_exit_2(cli, tmp_path, args, message):
    res = cli("run", HELLO, *args, "--db", str(tmp_path / "f.db"))
    assert res.code == 2
    assert message in res.stderr
    no_traceback(res)


def test_unknown_command_and_missing_file(cli, tmp_path):
    assert cli("frobnicate").code == 2
    res = cli("run", str(tmp_path / "nope.yaml"), "--db", str(tmp_path / "f.db"))
    assert res.code == 2 and "nope.yaml" in res.stderr
    no_traceback(res)


def test_unknown_run_is_bad_input(cli, tmp_path):
    db = str(tmp_path / "f.db")
    assert cli("run", HELLO, "--db", db).code == 0
    res = cli("show", "ffffffffffff", "--db", db)
    assert res.code == 2 and "no run" in res.stderr


def test_bad_database_exit_3_and_file_untouched(cli, tmp_path):
    db = tmp_path / "f.db"
    db.write_bytes(b"not a database at all\n" * 100)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for args in (["run", HELLO], ["runs"], ["show", "abc"]):
        res = cli(*args, "--db", str(db))
        assert res.code == 3, (args, res.stderr)
        assert "not a SQLite database" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        no_traceback(res)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_newer_schema_exit_3(cli, tmp_path):
    db = tmp_path / "f.db"
    assert cli("run", HELLO, "--db", str(db)).code == 0
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 999")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    res = cli("runs", "--db", str(db))
    assert res.code == 3 and "newer flowdeck" in res.stderr


def test_db_from_environment(cli, tmp_path):
    db = tmp_path / "env.db"
    assert cli("run", HELLO, FLOWDECK_DB=str(db)).code == 0
    assert db.exists()
    assert len(cli("runs", "--json", FLOWDECK_DB=str(db)).json()["runs"]) == 1


def test_missing_db_for_listing_exit_3(cli, tmp_path):
    res = cli("runs", "--db", str(tmp_path / "none.db"))
    assert res.code == 3 and "no flowdeck database" in res.stderr
    assert not (tmp_path / "none.db").exists()


def test_cancel_ended_run_is_a_conflict(cli, tmp_path):
    db = str(tmp_path / "f.db")
    cli("run", HELLO, "--db", db)
    run_id = cli("runs", "--json", "--db", db).json()["runs"][0]["id"]
    res = cli("cancel", run_id, "--db", db)
    assert res.code == 4 and "already ended" in res.stderr


def _start(args, tmp_path):
    return subprocess.Popen(
        [sys.executable, "-m", "console", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
    )


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _step_status(db: Path, step: str):
    try:
        con = sqlite3.connect(db)
        row = con.execute("SELECT run_id, status FROM steps WHERE step_id=?", [step]).fetchone()
        con.close()
        return row
    except sqlite3.Error:
        return None


def test_ctrl_c_interrupts_then_resume_finishes(cli, tmp_path):
    marker = tmp_path / "first-count"
    wf = write(
        tmp_path / "long.yaml",
        "name: long\nagents: {sh: {kind: shell}}\nsteps:\n"
        f"  first: {{agent: sh, with: {{run: 'echo x >> {marker}'}}}}\n"
        "  slow: {agent: sh, needs: [first], with: {run: 'sleep ${SLEEP:-30}'}}\n"
        "  last: {agent: sh, needs: [slow], with: {run: 'echo done'}}\n",
    )
    db = tmp_path / "f.db"
    proc = _start(["run", wf, "--db", str(db)], tmp_path)
    run_id, _ = _wait_for(lambda: (r := _step_status(db, "slow")) and r[1] == "running" and r)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # second one: stop now
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"flowdeck resume {run_id}" in err
    assert "Traceback" not in err
    assert cli("show", run_id, "--json", "--db", str(db)).json()["status"] == "interrupted"

    res = cli("resume", run_id, "--db", str(db), SLEEP="0")
    assert res.code == 0, res.stderr
    shown = cli("show", run_id, "--json", "--db", str(db)).json()
    assert shown["status"] == "succeeded"
    assert marker.read_text().count("x") == 1  # `first` ran once, before the interrupt


def test_cancel_from_another_process(cli, tmp_path):
    wf = write(
        tmp_path / "long.yaml",
        "name: long\nagents: {sh: {kind: shell}}\nsteps:\n  slow: {agent: sh, with: {run: 'sleep 30'}}\n",
    )
    db = tmp_path / "f.db"
    proc = _start(["run", wf, "--db", str(db)], tmp_path)
    run_id, _ = _wait_for(lambda: (r := _step_status(db, "slow")) and r[1] == "running" and r)
    res = cli("cancel", run_id, "--db", str(db))
    assert res.code == 0 and "cancelled" in res.stdout
    proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert cli("show", run_id, "--json", "--db", str(db)).json()["status"] == "cancelled"


def test_command_table_names_what_each_module_registers():
    """`flowdeck X` loads only X's module, found through `COMMANDS`: it must stay true."""
    import argparse
    import importlib

    from console import cli

    for module, names in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(module).register(sub, cli.common_options())
        assert tuple(sub.choices) == names, module


def test_only_the_named_commands_module_is_loaded():
    code = (
        "import sys; from console import cli\n"
        "cli.build_parser(['--db', 'x.db', 'run', 'wf.yaml'])\n"
        "print(' '.join(m for m in sys.modules if m.startswith(('console.commands.', 'rich', "
        "'aiohttp', 'textual'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    ).stdout.split()
    assert "console.commands.workflows" in out
    assert not [m for m in out if m.startswith(("rich", "aiohttp", "textual"))], out
    assert "console.commands.serve" not in out and "console.commands.stats" not in out


def test_run_reaches_its_first_step_without_sqlite_utils_or_rich(cli, tmp_path):
    """Start-up: sqlite-utils and rich (a third of `flowdeck run`'s start-up), tenacity (needed
    once an attempt fails) and the undoing code (needed to undo) are not imported before the
    first step. The step is async, so it runs on the loop at the moment it starts. Its writer
    process is the one started ahead, before the imports (it got its file by message, not on
    its command line)."""
    (tmp_path / "probe_mods.py").write_text(
        "import os, sys, psutil\n"
        "async def probe(path):\n"
        "    heavy = [m for m in ('sqlite_utils', 'rich', 'click', 'tenacity',\n"
        "                         'engine.undo.execute') if m in sys.modules]\n"
        "    writers = [p.cmdline() for p in psutil.Process().children()\n"
        "               if 'engine.writer' in ' '.join(p.cmdline())]\n"
        "    ahead = [c for c in writers if c[-1].endswith('main(sys.argv[1:]))')]\n"
        "    open(path, 'w').write((' '.join(heavy) or '-') + f' ahead={len(ahead)}/{len(writers)}')\n"
        "    return {}\n"
    )
    out = tmp_path / "mods.txt"
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: probe\nagents: {py: {kind: python}}\n"
        f"steps:\n  first: {{agent: py, with: {{call: 'probe_mods:probe', args: {{path: '{out}'}}}}}}\n"
    )
    r = cli("run", str(wf), "--db", str(tmp_path / "p.db"), cwd=tmp_path,
            PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")  # fmt: skip
    assert r.code == 0, r.stderr
    assert out.read_text() == "- ahead=1/1"
