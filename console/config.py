"""Console settings from a YAML file: key remapping by binding id, theme, poll interval.

The file is `--config PATH`, else `$FLOWDECK_CONSOLE_CONFIG`, else
`$XDG_CONFIG_HOME/flowdeck/console.yaml` (`~/.config/flowdeck/console.yaml`); a missing
default file means defaults. Example::

    keymap:
      reviews.approve: ctrl+a      # binding id -> key(s), comma separated
      app.quit: ctrl+q
    theme: textual-light
    poll_interval: 0.5

`?` in the console lists every binding id. A bad file is one line naming the file and the
field (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import InputError


class ConsoleConfig(BaseModel):
    """What a user can set for the console."""

    model_config = ConfigDict(extra="forbid")

    keymap: dict[str, str] = Field(default_factory=dict)
    """Binding id -> keys (comma separated), e.g. `reviews.approve: ctrl+a`."""
    theme: str = "textual-dark"
    """Textual theme name."""
    poll_interval: float = Field(default=0.25, gt=0, le=10)
    """Seconds between two looks at the database."""
    max_redraws: float = Field(default=10.0, gt=0, le=60)
    """Most snapshots drawn per second."""
    reviewer: str | None = None
    """Name recorded with decisions and undos (default: $USER)."""


def default_path() -> Path:
    env = os.environ.get("FLOWDECK_CONSOLE_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flowdeck" / "console.yaml"


def load_config(path: Path | None = None, *, known_ids: set[str] | None = None) -> ConsoleConfig:
    """Read the console config; a missing default file gives the defaults."""
    explicit = path is not None or "FLOWDECK_CONSOLE_CONFIG" in os.environ
    path = path or default_path()
    if not path.exists():
        if explicit:
            raise InputError(f"{path}: console config file not found")
        return ConsoleConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read console config ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: console config must be a mapping")
    try:
        config = ConsoleConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InputError(f"{path}: {field}: {err['msg']}") from None
    if known_ids is not None:
        for binding_id, keys in config.keymap.items():
            if binding_id not in known_ids:
                raise InputError(
                    f"{path}: keymap.{binding_id}: unknown binding id "
                    f"(press ? in the console to list them)"
                )
            if not keys.strip():
                raise InputError(f"{path}: keymap.{binding_id}: no key given")
    return config
