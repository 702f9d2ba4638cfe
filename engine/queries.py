"""Read queries shared by the CLI, the console and the HTTP API (plain dicts out)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from engine.errors import InputError, NotFound

if TYPE_CHECKING:
    import sqlite_utils


def _json(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


STEPS_DONE_SQL = (
    "CASE WHEN r.status IN ('succeeded','failed','cancelled') THEN r.steps_total "
    "ELSE (SELECT count(*) FROM steps s WHERE s.run_id = r.id AND s.status IN "
    "('succeeded','failed','skipped','cancelled','rejected')) END"
)
"""`steps_done` of the run `r`: steps ended. A run ends only once every step has (the engine
ends it then; a cancel without an engine ends its steps in the same transaction), so an ended
run is not counted row by row: listing runs costs the same for 5-step and 1,000-step runs."""


def list_runs(
    db: sqlite_utils.Database, *, limit: int = 50, status: str | None = None
) -> list[dict[str, Any]]:
    """Newest runs first with their progress (steps ended / total)."""
    where = "WHERE r.status = :status" if status else ""
    rows = list(
        db.query(
            f"""
            SELECT r.id, r.workflow, r.status, r.created_at, r.started_at, r.ended_at, r.error,
                   r.steps_total, {STEPS_DONE_SQL} AS steps_done
            FROM runs r {where}
            ORDER BY r.created_at DESC, r.id DESC
            LIMIT :limit
            """,
            {"status": status, "limit": limit},
        )
    )
    return rows


def resolve_run_id(db: sqlite_utils.Database, run_id: str) -> str:
    """Accept a full id or a unique prefix."""
    if not run_id or any(c in run_id for c in "%_"):
        raise InputError(f"'{run_id}' is not a run id")
    rows = [
        r["id"] for r in db.query("SELECT id FROM runs WHERE id LIKE ? LIMIT 2", [run_id + "%"])
    ]
    if not rows:
        raise NotFound(f"no run '{run_id}'")
    if len(rows) > 1 and run_id not in rows:
        raise InputError(f"run id '{run_id}' is ambiguous; give more characters")
    return run_id if run_id in rows else rows[0]


def get_run(db: sqlite_utils.Database, run_id: str) -> dict[str, Any]:
    """One run with its steps (in dependency order) and every attempt of each step."""
    run_id = resolve_run_id(db, run_id)
    run = next(iter(db.query("SELECT * FROM runs WHERE id = ?", [run_id])))
    run["inputs"] = _json(run["inputs"])
    run.pop("spec", None)
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY depth, step_id", [run_id]))
    attempts: dict[str, list[dict[str, Any]]] = {}
    for a in db.query(
        "SELECT step_id, number, status, started_at, ended_at, duration_ms, error_class, error, "
        "next_retry_at, prompt_tokens, completion_tokens FROM attempts WHERE run_id = ? "
        "ORDER BY step_id, number",
        [run_id],
    ):
        attempts.setdefault(a.pop("step_id"), []).append(a)
    for s in steps:
        s.pop("run_id", None)
        s["needs"] = _json(s["needs"])
        s["output"] = _json(s["output"])
        s["destructive"] = bool(s["destructive"])
        s["attempts"] = attempts.get(s["step_id"], [])
    run["steps"] = steps
    return run


def get_spec_json(db: sqlite_utils.Database, run_id: str) -> str:
    return next(iter(db.query("SELECT spec FROM runs WHERE id = ?", [run_id])))["spec"]
