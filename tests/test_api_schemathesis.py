"""Property-based run of schemathesis against the OpenAPI document `flowdeck serve` serves.

Every check schemathesis has (no 5xx, status codes / content types / bodies conform to the
document, unsupported methods, missing auth, stateful sequences through the documented links)
except `positive_data_acceptance`: a schema-valid `POST /api/runs` may rightly be refused
(404 unknown workflow name, 422 inputs the named workflow does not declare), which the static
schema cannot express. `GET /api/events` is excluded: it streams until the client leaves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import cli_env
from tests.helpers.api import kill_quietly, start_serve, wait_listening, write_workflows

TOKEN = "schemathesis-token-0123456789"
MIN_REQUESTS = 500

CONFIG = """
[dictionaries.workflows]
values = ["quick", "hello", "flaky", "gated", "broken", "nope"]

[[operations]]
include-operation-id = "start_run"
parameters = { "body.workflow" = { dictionary = "workflows", probability = 0.8 } }
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_against_the_served_openapi(tmp_path):
    workflows = write_workflows(tmp_path / "workflows")
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    sp = start_serve(
        "--db", str(tmp_path / "st.db"), "--port", "0", "--workflows", str(workflows),
        cwd=tmp_path, env={"FLOWDECK_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        url = wait_listening(sp)
        reports = tmp_path / "reports"
        out = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli",
                "--config-file", str(tmp_path / "schemathesis.toml"),
                "run", f"{url}/api/openapi.json",
                "--header", f"Authorization: Bearer {TOKEN}",
                "--exclude-path", "/api/events",
                "--checks", "all",
                "--exclude-checks", "positive_data_acceptance",
                "--max-examples", "60",
                "--seed", "7",
                "--workers", "1",
                "--report", "har,json",
                "--report-dir", str(reports),
            ],
            capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=540,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    finally:
        assert sp.stop() == 0, "\n".join(sp.lines[-20:])
        kill_quietly(sp)
    report = json.loads(next(reports.glob("json-*.json")).read_text())
    har = json.loads(next(reports.glob("har-*.json")).read_text())
    entries = har["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    print(
        f"schemathesis: {report['test_cases']['generated']} test cases, {len(entries)} requests, "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    assert report["test_cases"]["generated"] >= MIN_REQUESTS
    assert len(entries) >= MIN_REQUESTS
    assert report["failures"] == [] and report["errors"] == []
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[201] > 0, "no run was ever started: the fuzzing stayed at the surface"
    bad = [i for i, line in enumerate(sp.lines) if "Traceback" in line or "internal error" in line]
    assert not bad, "\n".join(sp.lines[bad[0] - 3 : bad[0] + 30])
