"""Pieces shared by subcommands."""

from __future__ import annotations

from engine.config import Settings
from engine.errors import DatabaseError
from engine.store import Store


def open_store(settings: Settings, *, must_exist: bool = True) -> Store:
    """Open the settings' database. Reading commands refuse to create an empty one."""
    if must_exist and not settings.db.exists():
        raise DatabaseError(
            f"{settings.db}: no flowdeck database here (run a workflow first, or pass --db)"
        )
    return Store.open(
        settings.db,
        busy_timeout=settings.busy_timeout,
        synchronous=settings.synchronous,
        bulk_process=settings.writer == "process",
    )
