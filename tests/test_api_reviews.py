"""Reviews over HTTP: listing, deciding, and a decision racing `flowdeck reject` in another
process (the same compare-and-set: exactly one wins)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli_env
from tests.helpers.api import running_api, write_workflows
from tests.test_api import assert_error


@pytest.fixture
async def api(tmp_path, db_path):
    async with running_api(db_path, write_workflows(tmp_path / "workflows")) as a:
        yield a


async def pending_review(api, run_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await api.get("/api/reviews", params={"run_id": run_id})
        assert status == 200, body
        if body["reviews"]:
            return body["reviews"][0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} opened no review")


async def test_reviews_listed_and_decided_over_http(api):
    run_id = await api.start("gated")
    review = await pending_review(api, run_id)
    assert review["status"] == "pending" and review["step_id"] == "ask"
    assert review["reason"] == "look before it runs" and review["overdue"] is False
    assert review["params"]["args"] == {"value": "went ahead"}
    path = f"/api/reviews/{review['id']}/decision"

    status, body = await api.post(path, auth=False, json={"decision": "approve"})
    assert_error(status, body, 401)
    for payload, words in [
        ({"decision": "maybe"}, ["body.decision"]),
        ({}, ["body.decision"]),
        ({"decision": "approve", "reviewer": "timeout"}, ["body.reviewer", "reserved"]),
        ({"decision": "approve", "reviewer": ""}, ["body.reviewer"]),
        ({"decision": "approve", "choice": "x"}, ["choice is for routes"]),
        ({"decision": "approve", "comment": "x" * 5000}, ["body.comment"]),
    ]:
        status, body = await api.post(path, json=payload)
        assert_error(status, body, 422, *words)
    for missing in ("999", "abc", "0"):
        status, body = await api.post(
            f"/api/reviews/{missing}/decision", json={"decision": "approve"}
        )
        assert_error(status, body, 404, "no review")
    assert (await pending_review(api, run_id))["status"] == "pending"  # nothing was decided

    status, body = await api.post(
        path, json={"decision": "approve", "reviewer": "ada", "comment": "fine"}
    )
    assert status == 200, body
    assert (body["status"], body["reviewer"], body["comment"]) == ("approved", "ada", "fine")
    run = await api.wait_run(run_id)
    assert run["status"] == "succeeded"

    status, body = await api.post(path, json={"decision": "reject", "reviewer": "bob"})
    assert_error(status, body, 409, "already decided by ada")
    status, body = await api.get("/api/reviews")
    assert body["reviews"] == []
    status, body = await api.get("/api/reviews", params={"status": "approved"})
    assert [r["id"] for r in body["reviews"]] == [review["id"]]
    status, body = await api.get("/api/reviews", params={"status": "bogus"})
    assert_error(status, body, 422, "query.status")


RACER = (
    "import sys\n"
    "from console.cli import main\n"
    "from console.cli import build_parser\n"
    "build_parser()\n"  # every import done before the go
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "sys.stdin.readline()\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


async def test_decision_over_http_races_a_cli_decision(api, db_path):
    """Each round a pending review gets `approve` over HTTP and `flowdeck reject` from another
    process at the same moment: exactly one wins, the loser is told who won (409 / exit 4),
    and the run follows the winner."""
    winners = {"http": 0, "cli": 0}
    rng = random.Random(7)
    for _ in range(8):
        run_id = await api.start("gated")
        review = await pending_review(api, run_id)
        racer = subprocess.Popen(
            [sys.executable, "-c", RACER, "reject", str(review["id"]), "--db", str(db_path),
             "--as", "cli", "--comment", "from the shell"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT, env=cli_env(),
        )  # fmt: skip
        assert (await asyncio.to_thread(racer.stdout.readline)).strip() == "ready"
        racer.stdin.write("go\n")
        racer.stdin.flush()
        await asyncio.sleep(rng.uniform(0, 0.1))  # the CLI still opens the database
        status, body = await api.post(
            f"/api/reviews/{review['id']}/decision",
            json={"decision": "approve", "reviewer": "web"},
        )
        _, err = await asyncio.to_thread(racer.communicate, None, 60)
        code = racer.returncode
        assert (status, code) in ((200, 4), (409, 0)), (status, body, code, err)
        if status == 200:
            winners["http"] += 1
            assert "already decided by web" in err
            expected = ("approved", "web", "succeeded")
        else:
            winners["cli"] += 1
            assert "already decided by cli" in body["detail"]
            expected = ("rejected", "cli", "failed")
        run = await api.wait_run(run_id)
        row = api.store.query("SELECT status, reviewer FROM reviews WHERE id=?", [review["id"]])[0]
        assert (row["status"], row["reviewer"], run["status"]) == expected
        decided = api.store.query(
            "SELECT count(*) AS n FROM events WHERE kind='review.decided' AND run_id=?", [run_id]
        )[0]["n"]
        assert decided == 1
    print(f"race winners: {winners}")
