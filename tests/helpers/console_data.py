"""Fixed view-model data for widget snapshot tests and screenshots (no clock, no DB)."""

from __future__ import annotations

from types import SimpleNamespace

from engine.views import (
    AttemptView,
    BreakerRow,
    EventRow,
    ReviewRow,
    RunRow,
    StepView,
    UndoRow,
)

NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def step(step_id: str, depth: int, needs=(), status="succeeded", **kw) -> StepView:
    started = kw.pop("started_at", NOW - 60 + depth * 5)
    ended = kw.pop(
        "ended_at", None if status in ("running", "retrying", "pending") else started + 2.5
    )
    values = dict(
        step_id=step_id,
        agent="py",
        kind="python",
        status=status,
        depth=depth,
        needs=tuple(needs),
        attempt=0 if status == "pending" else 1,
        max_attempts=3,
        started_at=None if status == "pending" else started,
        ended_at=ended,
        duration_ms=(ended - started) * 1000 if ended else None,
        next_retry_at=None,
        error=None,
        error_class=None,
        output=None,
        destructive=False,
        operation=None,
    )
    values.update(kw)
    return StepView(**values)


def release_steps() -> list[StepView]:
    return [
        step("triage", 0, output={"summary": "[red]Fix[/red] login loop", "confidence": 0.91}),
        step("fetch_pr", 0, operation="GET /pulls/7"),
        step("ticket", 1, ["triage"], operation="POST /issues"),
        step(
            "notify",
            1,
            ["triage"],
            status="retrying",
            attempt=2,
            next_retry_at=NOW + 4.2,
            error="503 Service Unavailable",
            error_class="http",
            attempts=(
                AttemptView(
                    1,
                    "failed",
                    NOW - 50,
                    NOW - 49.5,
                    500.0,
                    "http",
                    "503 Service Unavailable",
                    NOW + 4.2,
                ),
            ),
        ),
        step(
            "close_pr",
            2,
            ["ticket", "fetch_pr"],
            status="waiting_review",
            destructive=True,
            attempt=0,
        ),
        step(
            "lint",
            1,
            ["fetch_pr"],
            status="failed",
            error="exit 2: \x1b[31mE501\x1b[0m",
            error_class="exit_code",
        ),
        step("announce", 3, ["close_pr", "notify"], status="pending"),
        step("archive", 2, ["lint"], status="skipped", attempt=0),
    ]


def wide_steps(n: int = 100) -> list[StepView]:
    """A 100-step workflow: 10 layers of 10, each step needing two of the layer before."""
    steps = []
    for i in range(n):
        depth = i // 10
        needs = () if depth == 0 else (f"s{(i - 10)}", f"s{(i - 10) // 10 * 10 + (i + 3) % 10}")
        status = "succeeded" if depth < 6 else "running" if depth == 6 and i % 3 == 0 else "pending"
        if depth == 6 and i % 3 == 1:
            status = "succeeded"
        steps.append(step(f"s{i}", depth, needs, status=status))
    return steps


def runs() -> list[RunRow]:
    return [
        RunRow("a1b2c3d4e5f6", "release-cleanup", "running", NOW - 90, NOW - 89, None, 5, 8, None),
        RunRow(
            "0f9e8d7c6b5a", "triage-inbox", "succeeded", NOW - 400, NOW - 399, NOW - 380, 4, 4, None
        ),
        RunRow(
            "77aa88bb99cc",
            "branch-sweep",
            "failed",
            NOW - 900,
            NOW - 899,
            NOW - 860,
            3,
            6,
            "step lint failed: exit 2: [bold]E501[/bold]",
        ),
        RunRow("5566778899aa", "release-cleanup", "pending", NOW - 5, None, None, 0, 8, None),
    ]


def review(review_id: int, age: float, **kw) -> ReviewRow:
    values = dict(
        id=review_id,
        run_id="a1b2c3d4e5f6",
        step_id="close_pr",
        workflow="release-cleanup",
        kind="gate",
        status="pending",
        created_at=NOW - age,
        expires_at=NOW - age + 3600,
        on_timeout="reject",
        agent="github",
        operation="POST /pulls/7/close",
        params={"method": "POST", "path": "/pulls/7/close", "json": {"comment": "[b]done[/b]"}},
        reason="destructive: closes a pull request",
        confidence=0.62,
        candidates=None,
        decided_at=None,
        reviewer=None,
        comment=None,
        auto=False,
    )
    values.update(kw)
    return ReviewRow(**values)


def reviews() -> list[ReviewRow]:
    return [
        review(3, 420),
        review(
            5,
            95,
            step_id="route",
            kind="route",
            operation=None,
            agent="llm",
            confidence=0.41,
            reason="low confidence: 0.41 < 0.70",
            candidates=[
                {"target": "escalate", "confidence": 0.41},
                {"target": "auto_reply", "confidence": 0.38},
            ],
        ),
    ]


def decided() -> list[ReviewRow]:
    return [
        review(
            4,
            300,
            status="approved",
            auto=True,
            decided_at=NOW - 299,
            reason="learned: 5 approvals of POST /pulls/*/close",
            step_id="close_old",
        ),
        review(
            2,
            800,
            status="rejected",
            decided_at=NOW - 700,
            reviewer="ana",
            comment="wrong PR",
            step_id="close_pr",
        ),
    ]


def undo_entries() -> list[UndoRow]:
    return [
        UndoRow(
            9,
            "a1b2c3d4e5f6",
            "delete_branch",
            "code",
            "DELETE /branches/old",
            "restore branch old",
            NOW - 120,
            NOW + 3480,
            "done",
            None,
            None,
            None,
            None,
        ),
        UndoRow(
            8,
            "0f9e8d7c6b5a",
            "close_issue",
            "tracker",
            "POST /issues/12/close",
            "reopen issue DEMO-12",
            NOW - 500,
            NOW + 3100,
            "undone",
            NOW - 200,
            "ana",
            {"state": "open"},
            None,
        ),
        UndoRow(
            7,
            "77aa88bb99cc",
            "delete_msg",
            "chat",
            "DELETE /messages/3",
            "restore message 3",
            NOW - 7300,
            NOW - 3700,
            "done",
            None,
            None,
            None,
            None,
        ),
        UndoRow(
            6,
            "77aa88bb99cc",
            "post_msg",
            "chat",
            "POST /channels/general/messages",
            None,
            NOW - 7400,
            None,
            "void",
            None,
            None,
            None,
            "503 from chat",
        ),
    ]


def breakers() -> list[BreakerRow]:
    return [BreakerRow("chat", "chat", "open", 5, NOW - 12, NOW - 12, "503 Service Unavailable")]


def events() -> list[EventRow]:
    kinds = [
        ("run.created", None, {"workflow": "release-cleanup"}),
        ("step.running", "triage", {"attempt": 1}),
        ("step.succeeded", "triage", {}),
        ("step.retrying", "notify", {"attempt": 1, "wait": 4.2, "error": "503 [b]Service[/b]"}),
        ("step.waiting_review", "close_pr", {"reason": "destructive"}),
        ("step.failed", "lint", {"error": "exit 2: \x1b[31mE501"}),
        ("review.decided", "close_old", {"decision": "approved"}),
    ]
    return [
        EventRow(i + 1, NOW - 60 + i * 7, kind, "a1b2c3d4e5f6", sid, data)
        for i, (kind, sid, data) in enumerate(kinds)
    ]


def component(name: str, weight: float, value: float, detail: str) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, weight=weight, value=value, points=round(weight * value, 2), detail=detail
    )


def health() -> SimpleNamespace:
    comps = [
        component("success", 40, 0.86, "error rate 3.5% over 412 calls"),
        component("latency", 30, 0.95, "P95 within SLO for 3 of 4 agents"),
        component("breakers", 20, 0.75, "1 of 4 breakers open (chat)"),
        component("reviews", 10, 1.0, "no review overdue"),
    ]
    return SimpleNamespace(
        score=round(sum(c.points for c in comps), 1),
        status="healthy" if False else "degraded",
        components=comps,
    )


def rankings() -> list[SimpleNamespace]:
    rows = [
        ("tracker", 120, 0.992, 61.0),
        ("code", 88, 0.977, 83.0),
        ("llm", 140, 0.943, 1420.0),
        ("chat", 64, 0.781, 212.0),
    ]
    return [
        SimpleNamespace(rank=i + 1, agent=a, calls=c, success_rate=s, p95_ms=p)
        for i, (a, c, s, p) in enumerate(rows)
    ]


def series(minutes: int = 30) -> list[SimpleNamespace]:
    out = []
    for m in range(minutes):
        base = 80 + 30 * ((m * 7) % 5)
        out.append(
            SimpleNamespace(
                t=NOW - (minutes - m) * 60,
                calls=10 + m % 4,
                errors=m % 3,
                error_rate=None,
                p50_ms=base,
                p95_ms=base * 3 + (200 if m in (12, 13) else 0),
                p99_ms=base * 5 + (900 if m in (12, 13, 14) else 0),
            )
        )
    return out
