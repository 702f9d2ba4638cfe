"""What a demo session did, read back from its database: the short report of headless mode."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from console import output


def collect(db: Any) -> dict[str, Any]:
    """Counts from the demo DB (a sqlite_utils Database, read in a reader thread)."""

    def rows(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in db.query(sql)]

    def counts(sql: str) -> dict[str, int]:
        return {str(r["k"]): r["n"] for r in rows(sql)}

    runs: dict[str, dict[str, int]] = {}
    for r in rows("SELECT workflow, status, count(*) AS n FROM runs GROUP BY workflow, status"):
        runs.setdefault(r["workflow"], {})[r["status"]] = r["n"]
    attempts = rows(
        "SELECT count(*) AS attempts, coalesce(sum(number > 1), 0) AS retries, "
        "coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens "
        "FROM attempts"
    )[0]
    return {
        "runs": runs,
        "attempts": attempts["attempts"],
        "retries": attempts["retries"],
        "errors": counts(
            "SELECT error_class AS k, count(*) AS n FROM attempts "
            "WHERE error_class IS NOT NULL GROUP BY error_class"
        ),
        "reviews": counts("SELECT status AS k, count(*) AS n FROM reviews GROUP BY status"),
        "reviews_by_kind": counts("SELECT kind AS k, count(*) AS n FROM reviews GROUP BY kind"),
        "auto_approved": rows("SELECT count(*) AS n FROM reviews WHERE auto = 1")[0]["n"],
        "undo": counts("SELECT status AS k, count(*) AS n FROM undo_log GROUP BY status"),
        "breakers": counts(
            "SELECT kind AS k, count(*) AS n FROM events WHERE kind LIKE 'breaker.%' GROUP BY kind"
        ),
        "preferences": rows(
            "SELECT pattern, approvals, rejections, state FROM preferences "
            "ORDER BY approvals + rejections DESC LIMIT 5"
        ),
    }


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def render(summary: dict[str, Any], out: Console) -> None:
    """The summary as a few lines, unwrapped (data shown as text, never as markup)."""

    def line(text: str) -> None:
        out.print(output.safe(text), soft_wrap=True)

    total = sum(sum(s.values()) for s in summary["runs"].values())
    line(f"{total} runs")
    for workflow, statuses in sorted(summary["runs"].items()):
        line(f"  {workflow:<24} {_pairs(statuses)}")
    line(
        f"attempts: {summary['attempts']} ({summary['retries']} retries; "
        f"errors: {_pairs(summary['errors'])})"
    )
    line(
        f"reviews: {_pairs(summary['reviews'])} ({summary['auto_approved']} auto-approved; "
        f"kinds: {_pairs(summary['reviews_by_kind'])})"
    )
    line(f"undo log: {_pairs(summary['undo'])}")
    line(f"circuit breakers: {_pairs(summary['breakers'])}")
    for p in summary["preferences"]:
        line(
            f"learning {p['pattern']}: {p['approvals']} approved, "
            f"{p['rejections']} rejected ({p['state']})"
        )
    if summary.get("operator"):
        op = summary["operator"]
        line(f"simulated operator: {_pairs(op['decisions'])}; undo: {_pairs(op['undo'])}")
    if "service" in summary:
        s = summary["service"]
        line(
            f"demo service: {s['requests']} requests, {s['faults']} injected faults, "
            f"{s['replays']} idempotent replays"
        )
    if summary.get("db"):
        line(f"database: {summary['db']}")
