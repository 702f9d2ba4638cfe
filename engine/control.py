"""Acting on runs from outside the engine that owns them (CLI, HTTP API).

A run whose engine is alive (lease not expired) is controlled through a row in `commands`,
which that engine picks up within a poll; a run nobody holds is changed directly in the
database with a compare-and-set, so two processes acting at once cannot both win.
"""

from __future__ import annotations

from typing import Any

ENDED_RUN = ("succeeded", "failed", "cancelled")
ENDED_STEP_SQL = "('succeeded','failed','skipped','cancelled','rejected')"


def lease_alive(run: dict[str, Any], now: float) -> bool:
    """True when an engine holds the run (its lease has not expired)."""
    return bool(run.get("owner") and run.get("lease_until") and run["lease_until"] > now)


def request_cancel(db: Any, run_id: str, now: float) -> int:
    """Queue a `cancel_run` command for the engine owning the run; returns the command id."""
    cur = db.execute(
        "INSERT INTO commands(created_at, run_id, kind) VALUES (?, ?, 'cancel_run')",
        (now, run_id),
    )
    return int(cur.lastrowid)


def cancel_abandoned(db: Any, run_id: str, now: float) -> int:
    """Cancel a run no engine holds, in the database (run in the writer thread).

    Compare-and-set: only a run that has not ended and whose lease expired changes; returns
    1 when it was cancelled here, 0 when it ended or an engine took it meanwhile.
    """
    n = db.execute(
        "UPDATE runs SET status='cancelled', ended_at=?, error='cancelled by operator', "
        "owner=NULL, lease_until=NULL WHERE id=? AND status NOT IN "
        "('succeeded','failed','cancelled') AND (lease_until IS NULL OR lease_until < ?)",
        (now, run_id, now),
    ).rowcount
    if n:
        steps = [
            r[0]
            for r in db.execute(
                f"SELECT step_id FROM steps WHERE run_id=? AND status NOT IN {ENDED_STEP_SQL}",
                [run_id],
            )
        ]
        db.execute(
            "UPDATE steps SET status='cancelled', ended_at=?, error='cancelled by operator', "
            f"error_class='cancelled' WHERE run_id=? AND status NOT IN {ENDED_STEP_SQL}",
            (now, run_id),
        )
        db.execute(  # its pending reviews can no longer be decided
            "UPDATE reviews SET status='cancelled', reviewer='engine', comment='run cancelled', "
            "decided_at=?, auto=1 WHERE run_id=? AND status='pending'",
            (now, run_id),
        )
        db.conn.executemany(
            "INSERT INTO events(ts, run_id, step_id, kind, data) VALUES (?,?,?,?,'{}')",
            [(now, run_id, s, "step.cancelled") for s in steps]
            + [(now, run_id, None, "run.cancelled")],
        )
    return n
