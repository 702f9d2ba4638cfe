"""The crash loop: SIGKILL `flowdeck run` at a random moment, `flowdeck resume`, check the world.

Each iteration starts `python -m console run` (a real subprocess) on a workflow whose steps call
the demo service on 127.0.0.1 (with realistic latency, so the kill lands anywhere: during start
up, between steps, with calls in flight), kills it with SIGKILL after a random delay, then runs
`python -m console resume RUN_ID`, answering the crash_check reviews it opens the way an operator
would: look at the service (`/admin/calls`) and say whether the destructive call happened.

Then: the run succeeded; every mutating step's side effect happened exactly once (per
Idempotency-Key and in the service's state); no destructive call was sent twice; a step that had
succeeded before the kill was not called again.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from console.demo.service import ServiceConfig
from tests.conftest import run_cli
from tests.helpers.proc import query, start, wait_for
from tests.helpers.service import ServiceThread

pytestmark = pytest.mark.slow

ITERATIONS = 20
SEED = 20261123

WORKFLOW = """\
name: crashy
agents:
  code: {{kind: http, base_url: '{url}/code', timeout: 30}}
  tracker: {{kind: http, base_url: '{url}/tracker', timeout: 30}}
  chat: {{kind: http, base_url: '{url}/chat', timeout: 30}}
defaults:
  retry: {{attempts: 3, backoff: fixed, initial: 0.05}}
steps:
  pulls: {{agent: code, with: {{path: /pulls}}}}
  ticket: {{agent: tracker, needs: [pulls],
           with: {{method: POST, path: /issues, json: {{title: follow-up}}}}}}
  close: {{agent: code, needs: [pulls], destructive: true,
          with: {{method: POST, path: /pulls/3/close}}}}
  prune: {{agent: code, needs: [close], destructive: true,
          with: {{method: DELETE, path: /branches/develop}}}}
  comment: {{agent: chat, needs: [ticket],
            with: {{method: POST, path: /channels/general/messages, json: {{text: filed}}}}}}
  announce: {{agent: chat, needs: [prune, comment],
             with: {{method: POST, path: /channels/releases/messages, json: {{text: done}}}}}}
  verify: {{agent: tracker, needs: [announce], with: {{path: /issues}}}}
"""
LATENCY_MAX_MS = 500
MUTATING = ("ticket", "close", "prune", "comment", "announce")
DESTRUCTIVE = ("close", "prune")


def per_key(service: ServiceThread) -> dict[str, dict]:
    return {c["idempotency_key"]: c for c in service.calls()["calls"] if c["idempotency_key"]}


def settle(service: ServiceThread) -> None:
    """Wait until the service's counters stop moving for longer than its largest latency: a
    request of the killed engine still runs to its end on the server (or fails reading a body
    that never fully arrived), so only then is what it reports final."""
    quiet_for = LATENCY_MAX_MS / 1000 + 0.3
    last = json.dumps(service.calls(), sort_keys=True)
    since = time.monotonic()
    deadline = since + 60
    while time.monotonic() - since < quiet_for:
        assert time.monotonic() < deadline, "the demo service never settled"
        time.sleep(0.1)
        now = json.dumps(service.calls(), sort_keys=True)
        if now != last:
            last, since = now, time.monotonic()


def answer_crash_checks(db: Path, run_id: str, service: ServiceThread, log: list[str]) -> None:
    """The operator: for each pending crash_check, look whether the call reached the service."""
    pending = query(
        db, "SELECT * FROM reviews WHERE run_id=? AND kind='crash_check' AND status='pending'",
        (run_id,),
    )  # fmt: skip
    if pending:
        settle(service)
    for review in pending:
        stats = per_key(service).get(f"{run_id}:{review['step_id']}")
        happened = bool(stats and stats["effects"])
        decide(db, review["id"], choice="done" if happened else None)
        log.append(f"{review['step_id']}:{'done' if happened else 'rerun'}")


def decide(db: Path, review_id: int, *, choice: str | None) -> None:
    """`python -m console approve ID [--choice done]`, as an operator would."""
    args = ["approve", str(review_id), "--as", "crash-test", "--db", str(db)]
    if choice is not None:
        args += ["--choice", choice]
    res = run_cli(*args)
    assert res.code == 0, res.stderr


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_then_resume(tmp_path):
    rng = random.Random(SEED)
    config = ServiceConfig(
        latency_scale=1.0,
        latency_median_ms={"tracker": 150, "chat": 120, "code": 180},
        latency_max_ms=LATENCY_MAX_MS,
    )
    outcomes: list[str] = []
    with ServiceThread(config) as service:
        wf = tmp_path / "crashy.yaml"
        wf.write_text(WORKFLOW.format(url=service.url))
        for i in range(ITERATIONS):
            service.call(lambda s, i=i: (s.update_config({"seed": i}), s.reset()))
            db = tmp_path / f"crash-{i}.db"
            proc = start("run", str(wf), "--db", str(db), cwd=tmp_path)
            if i % 10 == 0:  # any moment from process start (start-up included)
                delay = rng.uniform(0.2, 1.5)
                when = f"{delay:.2f}s after start"
            else:  # a moment while the run executes (about 1 s of calls)
                wait_for(lambda db=db: query(db, "SELECT id FROM runs"), what="run created")
                delay = rng.uniform(0.0, 1.1)
                when = f"{delay:.2f}s into the run"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)

            runs = query(db, "SELECT id, status FROM runs")
            if not runs:
                settle(service)
                assert service.calls()["total"] == 0
                outcomes.append(f"#{i} killed {when}: before the run existed")
                continue
            run_id = runs[0]["id"]
            at_kill = {
                r["step_id"]: r["status"]
                for r in query(db, "SELECT step_id, status FROM steps WHERE run_id=?", (run_id,))
            }
            # calls of steps that had succeeded are complete: their counts are final already
            counts_at_kill = {k: c["count"] for k, c in per_key(service).items()}
            in_flight = sorted(s for s, st in at_kill.items() if st in ("running", "retrying"))
            done_before = sorted(s for s, st in at_kill.items() if st == "succeeded")

            decisions: list[str] = []
            if runs[0]["status"] != "succeeded":
                resume = start("resume", run_id, "--db", str(db), cwd=tmp_path)
                try:
                    deadline = time.monotonic() + 120
                    while resume.poll() is None and time.monotonic() < deadline:
                        answer_crash_checks(db, run_id, service, decisions)
                        time.sleep(0.05)
                    _, err = resume.communicate(timeout=30)
                finally:
                    if resume.poll() is None:
                        resume.kill()
                        resume.communicate()
                assert resume.returncode == 0, f"iteration {i}: resume failed: {err}"

            (final,) = query(db, "SELECT status, error FROM runs WHERE id=?", (run_id,))
            assert final["status"] == "succeeded", f"iteration {i}: {final['error']}"
            settle(service)
            calls = per_key(service)
            for step in MUTATING:
                stats = calls.get(f"{run_id}:{step}")
                assert stats is not None and stats["effects"] == 1, (i, step, stats)
            for step in DESTRUCTIVE:
                assert calls[f"{run_id}:{step}"]["count"] == 1, (i, step, calls)
            for step in done_before:  # succeeded before the kill: never called again
                key = f"{run_id}:{step}"
                assert calls[key]["count"] == counts_at_kill[key], (i, step)
            state = service.call(lambda s: s.state)
            assert len(state.issues) == 1
            assert state.pulls[3]["state"] == "closed" and "develop" not in state.branches
            channels = [m["channel"] for m in state.messages.values()]
            assert sorted(channels) == ["general", "releases"]
            outcomes.append(
                f"#{i} killed {when}: run {runs[0]['status']}, "
                f"{len(done_before)} steps done before, in flight {in_flight or '-'}, "
                f"crash checks {decisions or '-'} -> succeeded"
            )
    report = "\n".join(outcomes)
    print(f"\ncrash loop: {ITERATIONS} iterations, all passed\n{report}")
    (tmp_path / "crash-report.txt").write_text(report)
    assert len(outcomes) == ITERATIONS
    assert json.dumps(outcomes)  # the report is plain data
