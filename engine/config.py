"""Settings: the one documented place. Flags win over `FLOWDECK_*` environment variables,
which win over these defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """flowdeck settings. Every field can be set as `FLOWDECK_<NAME>` (e.g. FLOWDECK_DB)."""

    model_config = SettingsConfigDict(env_prefix="FLOWDECK_", extra="ignore")

    db: Path = Path("flowdeck.db")
    """The SQLite file (`--db`)."""
    busy_timeout: float = Field(default=5.0, gt=0)
    """Seconds to wait for a lock held by another process before giving up (exit 3)."""
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    """`PRAGMA synchronous` for every connection."""
    writer: Literal["process", "thread"] = "process"
    """Who writes the engine's rows: a writer process beside the event loop (its own GIL), or
    the store's writer thread (`engine/writer.py`)."""
    max_concurrency: int = Field(default=64, ge=1)
    """Steps running at once across all runs of one engine."""
    grace: float = Field(default=5.0, ge=0)
    """Seconds running steps get to finish on SIGTERM/SIGINT before they are interrupted."""
    token: str | None = None
    """Bearer token of the HTTP API (else a token file beside the DB)."""
    host: str = "127.0.0.1"
    """HTTP API address (`flowdeck serve --host`)."""
    port: int = Field(default=8765, ge=0, le=65535)
    """HTTP API port (`flowdeck serve --port`)."""
    history_cap: int = Field(default=1000, ge=1)
    """Undo entries kept per DB; only expired ones are pruned beyond it."""
    debug: bool = False
    """Show tracebacks of unexpected errors."""
    reviewer: str | None = None
    """Name recorded on review decisions when `--as` is not given (default: the OS user)."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment with `overrides` (flags) on top; None means "not given"."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
