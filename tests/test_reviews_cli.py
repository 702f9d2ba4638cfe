"""Reviews across real OS processes: `flowdeck run` waits in one process while `flowdeck
approve/reject/reviews/prefs/routes` run in others against the same SQLite file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli

GATES = """\
name: three-gates
agents: {sh: {kind: shell}}
steps:
  a: {agent: sh, with: {run: "echo a"}, review: {when: always, reason: "[bold]first[/bold]"}}
  b: {agent: sh, with: {run: "echo b"}, review: {when: always}}
  c: {agent: sh, with: {run: "echo c"}, destructive: true, review: {when: destructive}}
  a2: {agent: sh, needs: [a], with: {run: "echo a2"}}
  b2: {agent: sh, needs: [b], with: {run: "echo b2"}}
  c2: {agent: sh, needs: [c], with: {run: "echo c2"}}
"""
DONE = {"approve": "approved", "reject": "rejected"}


def start_run(wf: Path, db: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "console", *args, *([str(wf)] if wf else []), "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(**env),
    )


def query(db: Path, sql: str, params=()) -> list[dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def wait_for(predicate, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pending(db: Path, n: int, proc=None) -> dict[str, int]:
    def ready():
        if not db.exists():
            return None
        rows = query(db, "SELECT id, step_id FROM reviews WHERE status='pending'")
        return {r["step_id"]: r["id"] for r in rows} if len(rows) >= n else None

    return wait_for(ready, f"{n} pending reviews", proc=proc)


def step_status(db: Path) -> dict[str, str]:
    return {r["step_id"]: r["status"] for r in query(db, "SELECT step_id, status FROM steps")}


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_gates_decided_from_other_processes_each_resume_only_their_step(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    wf.write_text(GATES)
    proc = start_run(wf, db, "run")
    ids = pending(db, 3, proc)
    listed = run_cli("reviews", "--db", str(db), COLUMNS="200")
    assert listed.code == 0 and "[bold]first[/bold]" in listed.stdout  # shown literally
    doc = run_cli("reviews", "--json", "--db", str(db)).json()
    assert [r["step_id"] for r in doc["reviews"]] == sorted(ids, key=ids.get)  # oldest first
    order = [("c", "approve"), ("a", "reject"), ("b", "approve")]
    for n, (step, decision) in enumerate(order):
        res = run_cli(decision, str(ids[step]), "--as", "zoe", "-m", f"{decision} {step}",
                      "--db", str(db))  # fmt: skip
        assert res.code == 0, res.stderr
        assert f"review {ids[step]} {DONE[decision]} by zoe" in res.stdout
        want = "succeeded" if decision == "approve" else "rejected"
        wait_for(lambda s=step, w=want: step_status(db).get(s) == w, f"{step} {want}", proc=proc)
        now = step_status(db)
        for later, _ in order[n + 1 :]:
            assert now[later] == "waiting_review", (step, later, now)
    code, _out, err = finish(proc)
    assert code == 1, err  # one gate was rejected: the run failed
    for step, review_id in ids.items():  # the waiting run told the operator what to type
        assert f"{step} waits for review {review_id}: flowdeck approve {review_id}" in err
    final = step_status(db)
    assert final == {"a": "rejected", "a2": "skipped", "b": "succeeded", "b2": "succeeded",
                     "c": "succeeded", "c2": "succeeded"}  # fmt: skip
    rows = query(db, "SELECT step_id, status, reviewer, comment FROM reviews ORDER BY step_id")
    assert [(r["step_id"], r["status"], r["reviewer"], r["comment"]) for r in rows] == [
        ("a", "rejected", "zoe", "reject a"), ("b", "approved", "zoe", "approve b"),
        ("c", "approved", "zoe", "approve c")]  # fmt: skip
    again = run_cli("approve", str(ids["a"]), "--as", "yan", "--db", str(db))
    assert again.code == 4
    assert f"review {ids['a']} already decided by zoe at " in again.stderr
    assert "(rejected)" in again.stderr and "Traceback" not in again.stderr


def test_restart_with_a_pending_review(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    wf.write_text(
        "name: restart\nagents: {sh: {kind: shell}}\nsteps:\n"
        "  first: {agent: sh, with: {run: 'echo 1'}}\n"
        "  gate: {agent: sh, needs: [first], with: {run: 'echo 2'}, review: {when: always}}\n"
        "  last: {agent: sh, needs: [gate], with: {run: 'echo 3'}}\n"
    )
    proc = start_run(wf, db, "run", FLOWDECK_GRACE="0")
    review_id = pending(db, 1, proc)["gate"]
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 130, err
    assert "flowdeck resume" in err
    run_id = query(db, "SELECT id FROM runs")[0]["id"]
    assert step_status(db)["gate"] == "pending"
    doc = run_cli("reviews", "--json", "--db", str(db)).json()
    assert [(r["id"], r["status"]) for r in doc["reviews"]] == [(review_id, "pending")]

    resumed = start_run(None, db, "resume", run_id)
    wait_for(lambda: step_status(db).get("gate") == "waiting_review", "waiting again", proc=resumed)
    res = run_cli("approve", str(review_id), "--as", "amy", "--json", "--db", str(db))
    assert res.code == 0 and res.json()["status"] == "approved"
    code, _, err = finish(resumed)
    assert code == 0, err
    assert set(step_status(db).values()) == {"succeeded"}
    assert query(db, "SELECT count(*) AS n FROM reviews")[0]["n"] == 1
    assert query(db, "SELECT count(*) AS n FROM attempts WHERE step_id='first'")[0]["n"] == 1


def test_cancelling_an_interrupted_run_closes_its_review(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    wf.write_text(
        "name: cancel\nagents: {sh: {kind: shell}}\nsteps:\n"
        "  gate: {agent: sh, with: {run: 'echo 2'}, review: {when: always, timeout: 600}}\n"
    )
    proc = start_run(wf, db, "run", FLOWDECK_GRACE="0")
    review_id = pending(db, 1, proc)["gate"]
    shown = run_cli("reviews", str(review_id), "--db", str(db), COLUMNS="200")
    assert shown.code == 0
    for text in (f"review {review_id}  gate  pending", "action: sh echo", "(on_timeout: reject)",
                 '"run": "echo 2"'):  # fmt: skip
        assert text in shown.stdout, shown.stdout
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 130
    run_id = query(db, "SELECT id FROM runs")[0]["id"]
    assert run_cli("cancel", run_id, "--db", str(db)).code == 0  # no engine: done in the DB
    assert run_cli("reviews", "--json", "--db", str(db)).json() == {"reviews": []}
    late = run_cli("approve", str(review_id), "--db", str(db))
    assert late.code == 4 and f"review {review_id} was cancelled at" in late.stderr
    detail = run_cli("reviews", str(review_id), "--json", "--db", str(db)).json()
    assert (detail["status"], detail["comment"]) == ("cancelled", "run cancelled")


def test_cli_errors_and_prefs(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    wf.write_text(GATES)
    missing = run_cli("approve", "1", "--db", str(tmp_path / "none.db"))
    assert missing.code == 3 and "no flowdeck database" in missing.stderr
    proc = start_run(wf, db, "run")
    ids = pending(db, 3, proc)
    for args, code, message in [
        (("approve", "abc"), 2, "'abc' is not a review id"),
        (("approve", "999"), 2, "no review 999"),
        (("approve", str(ids["a"]), "--as", "preference"), 2, "reserved for automatic"),
        (("approve", str(ids["a"]), "--choice", "x"), 2, "--choice is for routes"),
        (("reject", str(ids["a"]), "--choice", "x"), 2, "unrecognized arguments"),
        (("reviews", "--limit", "0"), 2, "--limit must be at least 1"),
        (("prefs", "reset", "nope:x"), 2, "no learned preference 'nope:x'"),
    ]:
        res = run_cli(*args, "--db", str(db))
        assert res.code == code, (args, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr
        assert res.stderr.count("\n") == 1, res.stderr
    for step in "abc":
        assert (
            run_cli("approve", str(ids[step]), "--db", str(db), FLOWDECK_REVIEWER="kim").code == 0
        )
    code, _, err = finish(proc)
    assert code == 0, err
    assert {r["reviewer"] for r in query(db, "SELECT reviewer FROM reviews")} == {"kim"}
    prefs = run_cli("prefs", "--json", "--db", str(db)).json()
    by = {p["pattern"]: p for p in prefs["patterns"]}
    assert by["sh:echo"]["approvals"] == 3 and by["sh:echo"]["state"] == "learning"
    assert prefs["rule"] == {"min_decisions": 10, "threshold": 0.9, "z": 1.96}
    human = run_cli("prefs", "--db", str(db))
    assert human.code == 0 and "sh:echo" in human.stdout and "learning" in human.stdout
    reset = run_cli("prefs", "reset", "sh:echo", "--db", str(db))
    assert reset.code == 0 and "forgot sh:echo" in reset.stdout
    assert run_cli("prefs", "--json", "--db", str(db)).json()["patterns"] == []
    assert run_cli("reviews", "--db", str(db)).stdout.strip() == "no pending reviews"
    done = run_cli("reviews", "--all", "--json", "--db", str(db)).json()["reviews"]
    assert len(done) == 3 and {r["status"] for r in done} == {"approved"}
    assert run_cli("routes", "--json", "--db", str(db)).json() == {"routes": []}


def test_route_review_choice_from_the_cli(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    wf.write_text(
        "name: routed\nagents: {sh: {kind: shell}}\nsteps:\n"
        "  dispatch:\n"
        "    route: {threshold: 0.8, candidates: [{name: fix, target: fix, confidence: 0.6},"
        " {name: chat, target: chat, confidence: 0.4}]}\n"
        "  fix: {agent: sh, needs: [dispatch], with: {run: 'echo fix'}}\n"
        "  chat: {agent: sh, needs: [dispatch], with: {run: 'echo chat'}}\n"
    )
    proc = start_run(wf, db, "run")
    review_id = pending(db, 1, proc)["dispatch"]
    listed = run_cli("reviews", "--db", str(db), COLUMNS="200")
    assert "fix 0.6, chat 0.4" in listed.stdout
    res = run_cli("approve", str(review_id), "--choice", "chat", "--as", "lou", "--db", str(db))
    assert res.code == 0 and "-> chat by lou" in res.stdout
    code, _, err = finish(proc)
    assert code == 0, err
    assert step_status(db) == {"dispatch": "succeeded", "fix": "skipped", "chat": "succeeded"}
    stats = run_cli("routes", "--json", "--db", str(db)).json()["routes"]
    assert [(r["route"], r["count"], r["overridden"]) for r in stats] == [
        ("chat", 1, 1), ("fix", 0, 0)]  # fmt: skip
    assert stats[1]["overridden_away"] == 1
    assert run_cli("routes", "--db", str(db)).code == 0


RACES = 50


@pytest.mark.slow
def test_fifty_races_of_approve_against_reject_from_two_processes(tmp_path):
    wf, db = tmp_path / "wf.yaml", tmp_path / "f.db"
    steps = "".join(
        f"  g{i}: {{agent: sh, with: {{run: 'echo {i}'}}, review: {{when: always}}}}\n"
        for i in range(RACES)
    )
    wf.write_text("name: races\nagents: {sh: {kind: shell}}\nsteps:\n" + steps)
    proc = start_run(wf, db, "run")
    ids = pending(db, RACES, proc)
    outcomes: dict[str, str] = {}
    items = sorted(ids.items())
    for start in range(0, RACES, 5):
        pairs = []
        for step, review_id in items[start : start + 5]:
            pair = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "console",
                        word,
                        str(review_id),
                        "--as",
                        word,
                        "--db",
                        str(db),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=cli_env(),
                )
                for word in ("approve", "reject")
            ]
            pairs.append((step, review_id, pair))
        for step, review_id, pair in pairs:
            results = [(p.wait(timeout=180), *p.communicate()) for p in pair]
            codes = sorted(r[0] for r in results)
            assert codes == [0, 4], (step, results)
            winner = "approve" if results[0][0] == 0 else "reject"
            loser = results[1] if winner == "approve" else results[0]
            assert f"review {review_id} already decided by {winner} at " in loser[2]
            outcomes[step] = winner
    code, _, err = finish(proc, timeout=120)
    assert code == (0 if set(outcomes.values()) == {"approve"} else 1), err
    rows = {r["step_id"]: r for r in query(db, "SELECT step_id, status, reviewer FROM reviews")}
    final = step_status(db)
    for step, winner in outcomes.items():
        assert rows[step]["reviewer"] == winner
        assert rows[step]["status"] == DONE[winner]
        assert final[step] == ("succeeded" if winner == "approve" else "rejected")
    decided = query(db, "SELECT data FROM events WHERE kind='review.decided'")
    assert len(decided) == RACES
    assert {json.loads(e["data"])["review_id"] for e in decided} == set(ids.values())
