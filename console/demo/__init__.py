"""The bundled demo service: in-memory stand-ins for an issue tracker, a chat, a code host and an
OpenAI-compatible LLM, used by `flowdeck demo` and by tests of retries, breakers and undo.

The names below are imported lazily so that `python -m console.demo.service` does not import the
module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from console.demo.service import (
        DemoService,
        OutageConfig,
        RunningService,
        ServiceConfig,
        create_app,
        start_service,
    )

__all__ = [
    "DemoService",
    "OutageConfig",
    "RunningService",
    "ServiceConfig",
    "create_app",
    "start_service",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from console.demo import service

        return getattr(service, name)
    raise AttributeError(f"module 'console.demo' has no attribute {name!r}")
