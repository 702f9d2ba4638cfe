"""The demo service in a thread of its own, for tests that drive CLI subprocesses with
blocking calls (the service keeps answering while the test waits)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from console.demo.service import DemoService, RunningService, ServiceConfig, start_service

T = TypeVar("T")


class ServiceThread:
    """`with ServiceThread(config) as svc:` -> `svc.url`; `svc.call(fn)` runs `fn(service)`
    in the service's loop (scripts, config, counters)."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = config or ServiceConfig(latency_scale=0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningService | None = None

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_service(self.config), self.loop)
        self.running = fut.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.running is not None
        asyncio.run_coroutine_threadsafe(self.running.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url

    def call(self, fn: Callable[[DemoService], T]) -> T:
        async def run() -> T:
            assert self.running is not None
            return fn(self.running.service)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def calls(self, key: str | None = None) -> dict[str, Any]:
        """`GET /admin/calls` (optionally for one Idempotency-Key)."""
        return self.call(lambda s: s.call_report(key))

    def script(self, path_prefix: str, *responses: dict, method: str | None = None) -> None:
        from console.demo.service import Script

        script = Script(path_prefix=path_prefix, method=method, responses=list(responses))
        self.call(lambda s: s.add_script(script))
