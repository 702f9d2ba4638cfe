"""The bearer token of the HTTP API.

`FLOWDECK_TOKEN` wins; otherwise the token lives in a file beside the database
(`<db>.token`, e.g. `flowdeck.db.token`), created once with mode 0600 and reused after. A token
file that others may read is refused rather than trusted. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError

MIN_LENGTH = 16
"""Shorter tokens from FLOWDECK_TOKEN are accepted with a warning."""


@dataclass(frozen=True, slots=True)
class Token:
    """The API token and where it came from."""

    value: str
    source: str
    """`env` (FLOWDECK_TOKEN) or the token file's path."""
    created: bool = False
    """True when this call created the token file (the one time it is shown)."""


def token_path(db: Path) -> Path:
    """The token file of a database: beside it, named after it."""
    return db.with_name(db.name + ".token")


def resolve(db: Path, configured: str | None) -> Token:
    """The token to require: `configured` (FLOWDECK_TOKEN) or the token file's, made if needed."""
    if configured is not None:
        value = configured.strip()
        if not value:
            raise InputError("FLOWDECK_TOKEN is set but empty")
        return Token(value, "env")
    return _from_file(token_path(db))


def _from_file(path: Path) -> Token:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Token(_read(path), str(path))
    except OSError as e:
        raise InputError(f"{path}: cannot create the token file ({e.strerror})") from None
    value = secrets.token_urlsafe(32)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
    except OSError as e:
        path.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write the token file ({e.strerror})") from None
    return Token(value, str(path), created=True)


def _read(path: Path) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: token file is not a regular file")
        if info.st_mode & 0o077:
            raise InputError(
                f"{path}: token file is readable by others (mode {stat.S_IMODE(info.st_mode):04o});"
                f" run `chmod 600 {path}` or delete it to get a new token"
            )
        value = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise InputError(f"{path}: cannot read the token file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: token file is not text; delete it to get a new token") from None
    if not value:
        raise InputError(f"{path}: token file is empty; delete it to get a new token")
    return value


def matches(expected: str, authorization: str | None) -> bool:
    """Does an `Authorization` header carry `Bearer <expected>`? Constant time in the token."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())
