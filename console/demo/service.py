"""The demo service: one aiohttp application standing in for the tools users automate.

Everything lives in memory, so an undo really restores what a step changed. Four services share
the application, each under its own path prefix, plus an admin surface for tests and the demo:

| prefix | stands in for | endpoints |
| --- | --- | --- |
| `/tracker` | an issue tracker | `GET/POST /issues`, `GET/PATCH/DELETE /issues/{id}`, `POST /issues/{id}/close`, `.../reopen`, `.../restore` |
| `/chat` | a team chat | `GET /channels`, `GET/POST /channels/{ch}/messages`, `POST /messages` (`{channel, text}`), `GET/DELETE /messages/{id}`, `POST /messages/{id}/restore` |
| `/code` | a code host | `GET /pulls`, `GET /pulls/{n}`, `POST /pulls/{n}/close`, `.../reopen`, `GET/POST /branches`, `GET/DELETE /branches/{name}`, `POST /branches/{name}/restore` |
| `/v1` | an OpenAI-compatible LLM | `POST /chat/completions`, `GET /models` |
| `/github` | alias: `/github/issues...` is the tracker, `/github/pulls...` and `/github/branches...` the code host (so the example in DESIGN.md runs as written) | |
| `/admin` | test and demo control | `GET /state`, `GET/POST /config`, `GET /calls`, `GET/POST/DELETE /script`, `POST /reset`, `GET /health` |

Every non-admin request goes through the same pipeline: record the call, wait a long-tailed
latency, consume a scripted response if one matches, else inject faults (forced `down`, scheduled
`outage` -> 503, `rate_limit_rate` -> 429 with `Retry-After`, `error_rate` -> 500), then run the
real handler. Mutating calls honour `Idempotency-Key`: a repeated key (same method and path)
returns the stored first response with `Idempotent-Replayed: true` and no second side effect.
Errors are JSON `{"error": ..., "detail": ...}` (OpenAI's `{"error": {"message", "type", "code"}}`
under `/v1`).

Python API: `create_app(config) -> web.Application` and `await start_service(config, host, port)
-> RunningService` (`.url`, `.port`, `.app`, `.service`, `await .stop()`). Manual runs:
`python -m console.demo.service --port 8765` (Ctrl-C or SIGTERM stops it, exit 130).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

log = logging.getLogger(__name__)

Service = Literal["tracker", "chat", "code", "llm"]
SERVICES: tuple[str, ...] = ("tracker", "chat", "code", "llm")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

DEFAULT_LATENCY_MS: dict[str, float] = {"tracker": 45.0, "chat": 25.0, "code": 55.0, "llm": 180.0}

_PR_SEED: list[tuple[str, str, str]] = [
    ("Fix login redirect loop", "fix/login-redirect", "ana"),
    ("Add retry budget to the HTTP client", "feature/retry-budget", "bo"),
    ("Bump aiohttp to 3.10", "deps/aiohttp-3.10", "renovate[bot]"),
    ("Release 1.4.0", "release/1.4", "cy"),
    ("Document the undo window", "docs/undo-window", "dee"),
    ("Speed up the analytics query", "perf/analytics", "eli"),
    ("Remove the dead feature flag", "chore/remove-flag", "fay"),
    ("Honour Retry-After on 429", "fix/retry-after", "gus"),
]
_CHANNELS = ("general", "releases", "alerts")

_ISSUE_ID_RE = re.compile(r"^(?:DEMO-)?([1-9][0-9]{0,8})$", re.IGNORECASE)
_CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
_BRANCH_RE = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}(?<!/)$")
_WORD_RE = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class OutageConfig(_Model):
    """A recurring outage of one service: inside each window every call to it answers 503."""

    service: Service
    """The service that goes down: tracker, chat, code or llm."""
    every: float = Field(default=60.0, gt=0)
    """Seconds between the starts of two outage windows."""
    duration: float = Field(default=15.0, ge=0)
    """Length of each window in seconds (at most `every`)."""
    offset: float | None = Field(default=None, ge=0)
    """Seconds after start (or `/admin/reset`) when the first window opens. Default
    `every - duration`: the service starts healthy and the first window ends at `every`."""

    @model_validator(mode="after")
    def _check_duration(self) -> OutageConfig:
        if self.duration > self.every:
            raise ValueError("duration must not exceed every")
        return self

    def first_window(self) -> float:
        return self.offset if self.offset is not None else self.every - self.duration


Rate = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveMs = Annotated[float, Field(gt=0)]


class ServiceConfig(_Model):
    """Behaviour of the demo service. Given to `create_app`; changeable at run time through
    `POST /admin/config` (a partial object; nested objects are replaced whole)."""

    seed: int = 7
    """Seed of the service's `random.Random` (latency and fault draws, LLM answers)."""
    latency_scale: float = Field(default=1.0, ge=0)
    """Multiplies every injected latency; 0 turns latency off (tests)."""
    latency_median_ms: dict[Service, PositiveMs] = Field(
        default_factory=lambda: dict(DEFAULT_LATENCY_MS)
    )
    """Median latency per service in ms; a service left out keeps its built-in median."""
    latency_sigma: float = Field(default=0.9, ge=0, le=3)
    """Shape of the lognormal latency: 0.9 puts p99 at about 8x the median."""
    latency_max_ms: float = Field(default=3000.0, gt=0)
    """Cap of one injected latency (before scaling)."""
    error_rate: Rate = 0.0
    """Probability that a call answers 500 without doing anything."""
    rate_limit_rate: Rate = 0.0
    """Probability that a call answers 429 with `Retry-After: retry_after`."""
    retry_after: float = Field(default=1.0, ge=0)
    """Seconds sent in `Retry-After` on injected 429s."""
    fault_services: list[Service] | None = None
    """Services that `error_rate` and `rate_limit_rate` apply to; None means all."""
    outage: OutageConfig | None = None
    """A scheduled recurring outage of one service (503 during each window)."""
    down: list[Service] = Field(default_factory=list)
    """Services that answer 503 to every call until removed from this list."""
    llm_malformed_rate: Rate = 0.0
    """Probability that a completion's content is not JSON (prose or truncated output)."""
    honor_idempotency: bool = True
    """Replay the first response for a repeated `Idempotency-Key`; False lets duplicates through
    (their second side effect shows in `/admin/calls` under `double_effects`)."""
    pull_requests: int = Field(default=12, ge=0, le=1000)
    """Open pull requests #1..N seeded at start and on reset."""
    branches: list[str] = Field(default_factory=lambda: ["main", "develop"])
    """Branches seeded at start and on reset, besides the head branch of every pull request."""
    protect_open_pr_branches: bool = True
    """Refuse (409) to delete the head branch of an open pull request, like many code hosts."""
    clock: SkipJsonSchema[Callable[[], float]] = Field(
        default=time.monotonic, exclude=True, repr=False
    )
    """Seconds clock of the outage schedule; tests inject a fake one. Python only."""


class ScriptedResponse(_Model):
    """One entry of `POST /admin/script`: how to answer the next matching request."""

    status: int | None = Field(default=None, ge=100, le=599)
    """Status to answer. None, or a 2xx/3xx without `body`, lets the request reach the real
    handler (after `delay`)."""
    body: Any = None
    """JSON body; an error status without one gets `{"error": ..., "detail": "scripted"}`."""
    retry_after: float | None = Field(default=None, ge=0)
    """Sent as the `Retry-After` header (seconds)."""
    delay: float = Field(default=0.0, ge=0, le=600)
    """Seconds to wait before answering (not scaled by `latency_scale`)."""
    effect: bool = False
    """Run the real handler first (its side effect happens and is stored for `Idempotency-Key`),
    then answer this status anyway: a response lost after the commit."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra response headers."""

    def passes_through(self) -> bool:
        return self.status is None or (self.status < 400 and "body" not in self.model_fields_set)


class Script(_Model):
    """Body of `POST /admin/script`: responses consumed in order by matching requests."""

    path_prefix: str = Field(pattern=r"^/")
    """Requests whose path starts with this match (admin paths never do)."""
    method: str | None = None
    """Only requests with this method match; None matches any."""
    responses: list[ScriptedResponse] = Field(min_length=1)
    """Consumed one per matching request, in order, before normal behaviour."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: turned into a JSON response by the middleware."""

    def __init__(
        self, status: int, error: str, detail: str = "", headers: dict[str, str] | None = None
    ):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _problems(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)


def service_of(path: str) -> str | None:
    """The service a request path belongs to (None for admin and unknown paths)."""
    if path.startswith("/tracker/") or path.startswith("/github/issues"):
        return "tracker"
    if path.startswith("/chat/"):
        return "chat"
    if path.startswith("/code/") or path.startswith("/github/"):
        return "code"
    if path.startswith("/v1/"):
        return "llm"
    return None


def _error_body(service: str | None, status: int, error: str, detail: str) -> dict[str, Any]:
    if service == "llm":
        return {
            "error": {
                "message": detail or error,
                "type": error.replace(" ", "_"),
                "code": status,
            }
        }
    return {"error": error, "detail": detail}


def _error_response(service: str | None, exc: ApiError) -> web.Response:
    return web.json_response(
        _error_body(service, exc.status, exc.error, exc.detail),
        status=exc.status,
        headers=exc.headers,
    )


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if not request.can_read_body:
        if optional:
            return {}
        raise ApiError(400, "bad request", "a JSON object body is required")
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "bad request", "a JSON object body is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad request", f"body is not valid JSON: {exc}") from None
    if data is None and optional:
        return {}
    if not isinstance(data, dict):
        raise ApiError(422, "unprocessable", "body must be a JSON object")
    return data


def _text_field(data: dict[str, Any], name: str, *, required: bool, max_len: int) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ApiError(422, "unprocessable", f"{name}: field required")
        return None
    if not isinstance(value, str):
        raise ApiError(422, "unprocessable", f"{name}: must be a string")
    if required and not value.strip():
        raise ApiError(422, "unprocessable", f"{name}: must not be empty")
    if len(value) > max_len:
        raise ApiError(422, "unprocessable", f"{name}: longer than {max_len} characters")
    return value


def _labels(data: dict[str, Any]) -> list[str] | None:
    labels = data.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ApiError(422, "unprocessable", "labels: must be a list of strings")
    return list(labels)


def _sha(name: str) -> str:
    return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    deleted_issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_issue: int = 1
    channels: set[str] = field(default_factory=set)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_message: int = 1
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    completions: int = 0
    malformed: int = 0
    tokens: int = 0
    requests: int = 0
    faults: int = 0


@dataclass
class _CallStats:
    method: str
    route: str
    idempotency_key: str | None
    mutating: bool
    count: int = 0
    effects: int = 0
    replays: int = 0
    faults: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "route": self.route,
            "idempotency_key": self.idempotency_key,
            "mutating": self.mutating,
            "count": self.count,
            "effects": self.effects,
            "replays": self.replays,
            "faults": self.faults,
            "statuses": dict(self.statuses),
        }


@dataclass(frozen=True)
class _Stored:
    status: int
    body: bytes
    content_type: str

    def response(self) -> web.Response:
        return web.Response(
            body=self.body,
            status=self.status,
            content_type=self.content_type,
            headers={"Idempotent-Replayed": "true"},
        )


@dataclass
class _ActiveScript:
    id: int
    path_prefix: str
    method: str | None
    responses: collections.deque[ScriptedResponse]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_IDEMPOTENCY_CAP = 50_000


class DemoService:
    """State, configuration and request handlers of one demo application."""

    def __init__(self, config: ServiceConfig | None = None):
        self.config = config or ServiceConfig()
        self.reset()

    # ---- lifecycle ------------------------------------------------------------------------

    def reset(self) -> None:
        """Fresh state from the configuration; forgets calls, replays and scripts."""
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        self.t0 = cfg.clock()
        self.state = _State()
        self.calls: dict[tuple[str, str, str | None], _CallStats] = {}
        self.idempotency: dict[tuple[str, str, str], _Stored] = {}
        self.locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self.scripts: list[_ActiveScript] = []
        self._script_ids = 0
        st = self.state
        st.channels.update(_CHANNELS)
        now = _now_iso()
        for name in cfg.branches:
            st.branches[name] = self._branch(name)
        for n in range(1, cfg.pull_requests + 1):
            title, head, author = _PR_SEED[(n - 1) % len(_PR_SEED)]
            lap = (n - 1) // len(_PR_SEED)
            if lap:
                title, head = f"{title} (part {lap + 1})", f"{head}-{lap + 1}"
            st.pulls[n] = {
                "number": n,
                "title": title,
                "state": "open",
                "head": head,
                "base": "main",
                "author": author,
                "merged": False,
                "created_at": now,
                "updated_at": now,
                "closed_at": None,
            }
            st.branches.setdefault(head, self._branch(head))

    def update_config(self, patch: dict[str, Any]) -> ServiceConfig:
        """Apply a partial configuration (raises ValidationError); reseeds when `seed` changes."""
        data = self.config.model_dump()
        data.update(patch)
        data["clock"] = self.config.clock
        new = ServiceConfig.model_validate(data)
        if new.seed != self.config.seed:
            self.rng = random.Random(new.seed)
        self.config = new
        return new

    @staticmethod
    def _branch(name: str) -> dict[str, Any]:
        return {"name": name, "sha": _sha(name), "protected": name == "main"}

    # ---- routing ---------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for p in ("/tracker", "/github"):
            router.add_get(f"{p}/issues", self.list_issues)
            router.add_post(f"{p}/issues", self.create_issue)
            router.add_get(f"{p}/issues/{{id}}", self.get_issue)
            router.add_patch(f"{p}/issues/{{id}}", self.edit_issue)
            router.add_delete(f"{p}/issues/{{id}}", self.delete_issue)
            router.add_post(f"{p}/issues/{{id}}/close", self.close_issue)
            router.add_post(f"{p}/issues/{{id}}/reopen", self.reopen_issue)
            router.add_post(f"{p}/issues/{{id}}/restore", self.restore_issue)
        router.add_get("/chat/channels", self.list_channels)
        router.add_get("/chat/channels/{ch}/messages", self.list_messages)
        router.add_post("/chat/channels/{ch}/messages", self.post_message)
        router.add_post("/chat/messages", self.post_message_to)
        router.add_get("/chat/messages/{id}", self.get_message)
        router.add_delete("/chat/messages/{id}", self.delete_message)
        router.add_post("/chat/messages/{id}/restore", self.restore_message)
        for p in ("/code", "/github"):
            router.add_get(f"{p}/pulls", self.list_pulls)
            router.add_get(f"{p}/pulls/{{n}}", self.get_pull)
            router.add_post(f"{p}/pulls/{{n}}/close", self.close_pull)
            router.add_post(f"{p}/pulls/{{n}}/reopen", self.reopen_pull)
            router.add_get(f"{p}/branches", self.list_branches)
            router.add_post(f"{p}/branches", self.create_branch)
            router.add_post(f"{p}/branches/{{name:.+}}/restore", self.restore_branch)
            router.add_get(f"{p}/branches/{{name:.+}}", self.get_branch)
            router.add_delete(f"{p}/branches/{{name:.+}}", self.delete_branch)
        router.add_post("/v1/chat/completions", self.chat_completion)
        router.add_get("/v1/models", self.list_models)
        router.add_get("/admin/health", self.admin_health)
        router.add_get("/admin/state", self.admin_state)
        router.add_get("/admin/config", self.admin_config)
        router.add_post("/admin/config", self.admin_set_config)
        router.add_get("/admin/calls", self.admin_calls)
        router.add_get("/admin/script", self.admin_scripts)
        router.add_post("/admin/script", self.admin_add_script)
        router.add_delete("/admin/script", self.admin_clear_scripts)
        router.add_post("/admin/reset", self.admin_reset)

    # ---- the request pipeline -------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        service = service_of(request.path)
        try:
            if service is None or request.match_info.http_exception is not None:
                return await handler(request)
            return await self._pipeline(request, handler, service)
        except web.HTTPException as exc:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response(
                _error_body(
                    service, exc.status, exc.reason.lower(), f"{request.method} {request.path}"
                ),
                status=exc.status,
                headers=headers,
            )
        except ApiError as exc:
            return _error_response(service, exc)
        except Exception:
            log.exception("demo service: %s %s failed", request.method, request.path)
            return web.json_response(
                _error_body(service, 500, "internal error", "unexpected error in the demo service"),
                status=500,
            )

    async def _pipeline(
        self, request: web.Request, handler: Handler, service: str
    ) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key") or None
        mutating = request.method in MUTATING and service != "llm"
        route = request.match_info.route.resource.canonical  # type: ignore[union-attr]
        stats = self.calls.get((request.method, route, key))
        if stats is None:
            stats = self.calls[(request.method, route, key)] = _CallStats(
                request.method, route, key, mutating
            )
        stats.count += 1
        self.state.requests += 1
        response = await self._answer(request, handler, service, stats)
        stats.statuses[str(response.status)] += 1
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, service: str, stats: _CallStats
    ) -> web.StreamResponse:
        await self._latency(service)
        scripted = self._take_script(request)
        if scripted is not None:
            if scripted.delay:
                await asyncio.sleep(scripted.delay)
            if scripted.passes_through():
                return await self._execute(request, handler, service, stats)
            if scripted.effect:
                await self._execute(request, handler, service, stats)
            return self._fault_response(service, stats, self._scripted(service, scripted))
        fault = self._fault(service)
        if fault is not None:
            return self._fault_response(service, stats, fault)
        return await self._execute(request, handler, service, stats)

    def _fault_response(self, service: str, stats: _CallStats, resp: web.Response) -> web.Response:
        stats.faults += 1
        self.state.faults += 1
        return resp

    async def _execute(
        self, request: web.Request, handler: Handler, service: str, stats: _CallStats
    ) -> web.StreamResponse:
        key = stats.idempotency_key
        if not (stats.mutating and key and self.config.honor_idempotency):
            return await self._run(request, handler, service, stats)
        store_key = (request.method, request.path, key)
        lock = self.locks.get(store_key)
        if lock is None:
            lock = self.locks[store_key] = asyncio.Lock()
        async with lock:
            stored = self.idempotency.get(store_key)
            if stored is not None:
                stats.replays += 1
                return stored.response()
            response = await self._run(request, handler, service, stats)
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                self.idempotency[store_key] = _Stored(
                    response.status, response.body, response.content_type
                )
                if len(self.idempotency) > _IDEMPOTENCY_CAP:
                    oldest = next(iter(self.idempotency))
                    del self.idempotency[oldest]
                    self.locks.pop(oldest, None)
            return response

    async def _run(
        self, request: web.Request, handler: Handler, service: str, stats: _CallStats
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _error_response(service, exc)
        if stats.mutating and 200 <= response.status < 300:
            stats.effects += 1
        return response

    async def _latency(self, service: str) -> None:
        cfg = self.config
        if cfg.latency_scale <= 0:
            return
        median = cfg.latency_median_ms.get(service) or DEFAULT_LATENCY_MS.get(service, 40.0)
        ms = min(self.rng.lognormvariate(math.log(median), cfg.latency_sigma), cfg.latency_max_ms)
        await asyncio.sleep(ms * cfg.latency_scale / 1000.0)

    def outage_remaining(self, service: str, now: float | None = None) -> float | None:
        """Seconds left of the scheduled outage window `service` is in, or None when it is up."""
        o = self.config.outage
        if o is None or o.service != service or o.duration <= 0:
            return None
        t = (self.config.clock() if now is None else now) - self.t0 - o.first_window()
        if t < 0:
            return None
        phase = t % o.every
        return o.duration - phase if phase < o.duration else None

    def _fault(self, service: str) -> web.Response | None:
        cfg = self.config
        if service in cfg.down:
            return self._error(
                service, 503, "service unavailable", f"{service} is down", cfg.retry_after
            )
        remaining = self.outage_remaining(service)
        if remaining is not None:
            return self._error(
                service,
                503,
                "service unavailable",
                f"{service} outage, back in {remaining:.1f}s",
                max(1, math.ceil(remaining)),
            )
        if cfg.fault_services is not None and service not in cfg.fault_services:
            return None
        if cfg.rate_limit_rate and self.rng.random() < cfg.rate_limit_rate:
            return self._error(
                service, 429, "rate limited", "too many requests, slow down", cfg.retry_after
            )
        if cfg.error_rate and self.rng.random() < cfg.error_rate:
            return self._error(service, 500, "internal error", "injected failure")
        return None

    @staticmethod
    def _error(
        service: str, status: int, error: str, detail: str, retry_after: float | None = None
    ) -> web.Response:
        headers = {"Retry-After": _seconds(retry_after)} if retry_after is not None else None
        return web.json_response(
            _error_body(service, status, error, detail), status=status, headers=headers
        )

    def _take_script(self, request: web.Request) -> ScriptedResponse | None:
        for script in self.scripts:
            if request.path.startswith(script.path_prefix) and (
                script.method is None or script.method == request.method
            ):
                entry = script.responses.popleft()
                if not script.responses:
                    self.scripts.remove(script)
                return entry
        return None

    @staticmethod
    def _scripted(service: str, entry: ScriptedResponse) -> web.Response:
        status = entry.status or 200
        headers = dict(entry.headers)
        if entry.retry_after is not None:
            headers["Retry-After"] = _seconds(entry.retry_after)
        if "body" in entry.model_fields_set:
            body = entry.body
        else:
            try:
                reason = HTTPStatus(status).phrase.lower()
            except ValueError:
                reason = "error"
            body = _error_body(service, status, reason, "scripted")
        return web.json_response(body, status=status, headers=headers)

    # ---- tracker ---------------------------------------------------------------------------

    def _issue_number(self, request: web.Request) -> int:
        m = _ISSUE_ID_RE.match(request.match_info["id"])
        if not m:
            raise ApiError(404, "not found", f"no issue {request.match_info['id']!r}")
        return int(m.group(1))

    def _issue(self, request: web.Request) -> dict[str, Any]:
        n = self._issue_number(request)
        issue = self.state.issues.get(n)
        if issue is None:
            deleted = " (deleted)" if n in self.state.deleted_issues else ""
            raise ApiError(404, "not found", f"no issue DEMO-{n}{deleted}")
        return issue

    async def list_issues(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "all")
        if state not in ("open", "closed", "all"):
            raise ApiError(400, "bad request", "state must be open, closed or all")
        issues = [i for i in self.state.issues.values() if state in ("all", i["state"])]
        issues.sort(key=lambda i: i["number"])
        return web.json_response({"issues": issues, "total": len(issues)})

    async def create_issue(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        title = _text_field(data, "title", required=True, max_len=256)
        body = _text_field(data, "body", required=False, max_len=65536) or ""
        labels = _labels(data) or []
        st = self.state
        n = st.next_issue
        st.next_issue += 1
        now = _now_iso()
        issue = {
            "id": f"DEMO-{n}",
            "number": n,
            "title": title,
            "body": body,
            "state": "open",
            "labels": labels,
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
        }
        st.issues[n] = issue
        return web.json_response(issue, status=201)

    async def get_issue(self, request: web.Request) -> web.Response:
        return web.json_response(self._issue(request))

    async def edit_issue(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        data = await _json_object(request)
        title = _text_field(data, "title", required=False, max_len=256)
        if title is not None and not title.strip():
            raise ApiError(422, "unprocessable", "title: must not be empty")
        body = _text_field(data, "body", required=False, max_len=65536)
        labels = _labels(data)
        for name, value in (("title", title), ("body", body), ("labels", labels)):
            if value is not None:
                issue[name] = value
        issue["updated_at"] = _now_iso()
        return web.json_response(issue)

    async def _set_issue_state(self, request: web.Request, state: str) -> web.Response:
        issue = self._issue(request)
        if issue["state"] != state:
            now = _now_iso()
            issue["state"] = state
            issue["updated_at"] = now
            issue["closed_at"] = now if state == "closed" else None
        return web.json_response(issue)

    async def close_issue(self, request: web.Request) -> web.Response:
        return await self._set_issue_state(request, "closed")

    async def reopen_issue(self, request: web.Request) -> web.Response:
        return await self._set_issue_state(request, "open")

    async def delete_issue(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        st = self.state
        del st.issues[issue["number"]]
        st.deleted_issues[issue["number"]] = issue
        return web.json_response(issue)

    async def restore_issue(self, request: web.Request) -> web.Response:
        n = self._issue_number(request)
        st = self.state
        if n in st.issues:
            raise ApiError(409, "conflict", f"issue DEMO-{n} exists")
        data = await _json_object(request, optional=True)
        if isinstance(data.get("issue"), dict):
            data = data["issue"]
        before = st.deleted_issues.get(n)
        if before is None and not data:
            raise ApiError(404, "not found", f"issue DEMO-{n} was never deleted here; send it")
        if "number" in data and data["number"] != n:
            raise ApiError(422, "unprocessable", f"number: {data['number']!r} is not {n}")
        if "id" in data and str(data["id"]).upper() != f"DEMO-{n}":
            raise ApiError(422, "unprocessable", f"id: {data['id']!r} is not DEMO-{n}")
        issue = dict(before or {})
        if data:
            title = _text_field(data, "title", required=before is None, max_len=256)
            body = _text_field(data, "body", required=False, max_len=65536)
            labels = _labels(data)
            state = data.get("state", issue.get("state", "open"))
            if state not in ("open", "closed"):
                raise ApiError(422, "unprocessable", "state: must be open or closed")
            for name, value in (("title", title), ("body", body), ("labels", labels)):
                if value is not None:
                    issue[name] = value
            issue["state"] = state
            for stamp in ("created_at", "updated_at", "closed_at"):
                if isinstance(data.get(stamp), str):
                    issue[stamp] = data[stamp]
        now = _now_iso()
        issue.setdefault("body", "")
        issue.setdefault("labels", [])
        issue.setdefault("state", "open")
        issue.setdefault("created_at", now)
        issue.setdefault("updated_at", now)
        issue.setdefault("closed_at", now if issue["state"] == "closed" else None)
        issue.update(id=f"DEMO-{n}", number=n)
        st.deleted_issues.pop(n, None)
        st.issues[n] = issue
        st.next_issue = max(st.next_issue, n + 1)
        return web.json_response(issue)

    # ---- chat ------------------------------------------------------------------------------

    def _channel(self, request: web.Request) -> str:
        ch = request.match_info["ch"]
        if not _CHANNEL_RE.match(ch):
            raise ApiError(404, "not found", f"channel {ch!r}: lowercase letters, digits, - _ .")
        return ch

    def _message(self, request: web.Request) -> dict[str, Any]:
        mid = request.match_info["id"]
        msg = self.state.messages.get(mid)
        if msg is None:
            deleted = " (deleted)" if mid in self.state.deleted_messages else ""
            raise ApiError(404, "not found", f"no message {mid!r}{deleted}")
        return msg

    async def list_channels(self, request: web.Request) -> web.Response:
        counts = collections.Counter(m["channel"] for m in self.state.messages.values())
        channels = [{"name": ch, "messages": counts[ch]} for ch in sorted(self.state.channels)]
        return web.json_response({"channels": channels, "total": len(channels)})

    async def list_messages(self, request: web.Request) -> web.Response:
        ch = self._channel(request)
        msgs = [m for m in self.state.messages.values() if m["channel"] == ch]
        msgs.sort(key=lambda m: m["seq"])
        out = [self._public_message(m) for m in msgs]
        return web.json_response({"channel": ch, "messages": out, "total": len(out)})

    @staticmethod
    def _public_message(msg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in msg.items() if k != "seq"}

    async def post_message(self, request: web.Request) -> web.Response:
        ch = self._channel(request)
        data = await _json_object(request)
        return self._post(ch, data)

    async def post_message_to(self, request: web.Request) -> web.Response:
        """`POST /chat/messages` with the channel in the body, like a chat API's postMessage."""
        data = await _json_object(request)
        ch = _text_field(data, "channel", required=True, max_len=80) or ""
        if not _CHANNEL_RE.match(ch):
            raise ApiError(
                422, "unprocessable", f"channel: {ch!r}: lowercase letters, digits, - _ ."
            )
        return self._post(ch, data)

    def _post(self, ch: str, data: dict[str, Any]) -> web.Response:
        text = _text_field(data, "text", required=True, max_len=40000)
        st = self.state
        seq = st.next_message
        st.next_message += 1
        msg = {
            "id": f"msg-{seq}",
            "ts": f"{int(time.time())}.{seq:06d}",
            "channel": ch,
            "text": text,
            "seq": seq,
        }
        st.channels.add(ch)
        st.messages[msg["id"]] = msg
        return web.json_response(self._public_message(msg), status=201)

    async def get_message(self, request: web.Request) -> web.Response:
        return web.json_response(self._public_message(self._message(request)))

    async def delete_message(self, request: web.Request) -> web.Response:
        msg = self._message(request)
        st = self.state
        del st.messages[msg["id"]]
        st.deleted_messages[msg["id"]] = msg
        return web.json_response(self._public_message(msg))

    async def restore_message(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        st = self.state
        if mid in st.messages:
            raise ApiError(409, "conflict", f"message {mid!r} exists")
        data = await _json_object(request, optional=True)
        if isinstance(data.get("message"), dict):
            data = data["message"]
        msg = st.deleted_messages.get(mid)
        if msg is None:
            if not data:
                raise ApiError(404, "not found", f"message {mid!r} was never deleted here; send it")
            m = re.fullmatch(r"msg-([1-9][0-9]{0,8})", mid)
            if not m:
                raise ApiError(422, "unprocessable", f"{mid!r} is not a message id")
            channel = _text_field(data, "channel", required=True, max_len=80)
            if not _CHANNEL_RE.match(channel or ""):
                raise ApiError(422, "unprocessable", f"channel: {channel!r} is not a channel")
            seq = int(m.group(1))
            ts = (
                data.get("ts")
                if isinstance(data.get("ts"), str)
                else f"{int(time.time())}.{seq:06d}"
            )
            msg = {
                "id": mid,
                "ts": ts,
                "channel": channel,
                "text": _text_field(data, "text", required=True, max_len=40000),
                "seq": seq,
            }
            st.next_message = max(st.next_message, seq + 1)
        else:
            msg = dict(msg)
            if data.get("text") is not None:
                msg["text"] = _text_field(data, "text", required=True, max_len=40000)
        st.deleted_messages.pop(mid, None)
        st.channels.add(msg["channel"])
        st.messages[mid] = msg
        return web.json_response(self._public_message(msg))

    # ---- code host -------------------------------------------------------------------------

    def _pull(self, request: web.Request) -> dict[str, Any]:
        raw = request.match_info["n"]
        pull = self.state.pulls.get(int(raw)) if raw.isdigit() else None
        if pull is None:
            raise ApiError(404, "not found", f"no pull request #{raw}")
        return pull

    async def list_pulls(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "all")
        if state not in ("open", "closed", "all"):
            raise ApiError(400, "bad request", "state must be open, closed or all")
        pulls = [p for p in self.state.pulls.values() if state in ("all", p["state"])]
        return web.json_response({"pulls": pulls, "total": len(pulls)})

    async def get_pull(self, request: web.Request) -> web.Response:
        return web.json_response(self._pull(request))

    async def _set_pull_state(self, request: web.Request, state: str) -> web.Response:
        pull = self._pull(request)
        if pull["state"] != state:
            if state == "open" and pull["head"] not in self.state.branches:
                raise ApiError(
                    409, "conflict", f"head branch {pull['head']!r} is deleted; restore it first"
                )
            now = _now_iso()
            pull["state"] = state
            pull["updated_at"] = now
            pull["closed_at"] = now if state == "closed" else None
        return web.json_response(pull)

    async def close_pull(self, request: web.Request) -> web.Response:
        return await self._set_pull_state(request, "closed")

    async def reopen_pull(self, request: web.Request) -> web.Response:
        return await self._set_pull_state(request, "open")

    async def list_branches(self, request: web.Request) -> web.Response:
        branches = sorted(self.state.branches.values(), key=lambda b: b["name"])
        return web.json_response({"branches": branches, "total": len(branches)})

    def _branch_of(self, request: web.Request) -> dict[str, Any]:
        name = request.match_info["name"]
        branch = self.state.branches.get(name)
        if branch is None:
            deleted = " (deleted)" if name in self.state.deleted_branches else ""
            raise ApiError(404, "not found", f"no branch {name!r}{deleted}")
        return branch

    async def get_branch(self, request: web.Request) -> web.Response:
        return web.json_response(self._branch_of(request))

    async def create_branch(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        name = _text_field(data, "name", required=True, max_len=200) or ""
        if not _BRANCH_RE.match(name):
            raise ApiError(422, "unprocessable", f"name: {name!r} is not a valid branch name")
        if name in self.state.branches:
            raise ApiError(409, "conflict", f"branch {name!r} exists")
        source = data.get("from", "main")
        if not isinstance(source, str) or source not in self.state.branches:
            raise ApiError(422, "unprocessable", f"from: no branch {source!r}")
        branch = {"name": name, "sha": self.state.branches[source]["sha"], "protected": False}
        self.state.branches[name] = branch
        self.state.deleted_branches.pop(name, None)
        return web.json_response(branch, status=201)

    async def delete_branch(self, request: web.Request) -> web.Response:
        branch = self._branch_of(request)
        name = branch["name"]
        if branch["protected"]:
            raise ApiError(409, "conflict", f"branch {name!r} is protected")
        if self.config.protect_open_pr_branches:
            for pull in self.state.pulls.values():
                if pull["head"] == name and pull["state"] == "open":
                    raise ApiError(
                        409, "conflict", f"branch {name!r} is the head of open #{pull['number']}"
                    )
        del self.state.branches[name]
        self.state.deleted_branches[name] = branch
        return web.json_response(branch)

    async def restore_branch(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        st = self.state
        if name in st.branches:
            raise ApiError(409, "conflict", f"branch {name!r} exists")
        data = await _json_object(request, optional=True)
        branch = st.deleted_branches.get(name)
        if branch is None:
            if not data:
                raise ApiError(404, "not found", f"branch {name!r} was never deleted here; send it")
            if not _BRANCH_RE.match(name):
                raise ApiError(422, "unprocessable", f"{name!r} is not a valid branch name")
            branch = {"name": name, "sha": _sha(name), "protected": False}
        branch = dict(branch)
        sha = data.get("sha")
        if sha is not None:
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{7,64}", sha):
                raise ApiError(422, "unprocessable", "sha: must be a hex commit id")
            branch["sha"] = sha
        st.deleted_branches.pop(name, None)
        st.branches[name] = branch
        return web.json_response(branch)

    # ---- LLM -------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        models = [
            {"id": m, "object": "model", "owned_by": "flowdeck-demo"}
            for m in ("demo-small", "demo-large")
        ]
        return web.json_response({"object": "list", "data": models})

    async def chat_completion(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "invalid request error", "model: required string")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid request error", "messages: required non-empty list")
        texts: list[str] = []
        last_user = ""
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
                raise ApiError(400, "invalid request error", f"messages.{i}: needs a role")
            text = _content_text(msg.get("content"))
            if text is None:
                raise ApiError(
                    400, "invalid request error", f"messages.{i}.content: string or text parts"
                )
            texts.append(text)
            if msg["role"] == "user":
                last_user = text
        temperature = data.get("temperature", 1.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise ApiError(400, "invalid request error", "temperature: number from 0 to 2")
        fmt = data.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)):
            raise ApiError(400, "invalid request error", "response_format: {type: ...}")

        prompt = "\n".join(texts)
        answer = llm_answer(prompt, last_user or prompt, seed=self.config.seed)
        content = json.dumps(answer)
        finish = "stop"
        st = self.state
        if self.config.llm_malformed_rate and self.rng.random() < self.config.llm_malformed_rate:
            content, finish = _malformed(content, self.rng)
            st.malformed += 1
        prompt_tokens = _tokens(prompt) + 3 * len(messages)
        completion_tokens = _tokens(content)
        st.completions += 1
        st.tokens += prompt_tokens + completion_tokens
        digest = hashlib.sha256(f"{st.completions}\x00{prompt}".encode()).hexdigest()
        return web.json_response(
            {
                "id": f"chatcmpl-{digest[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_flowdeck_demo",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    # ---- admin -----------------------------------------------------------------------------

    async def admin_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def snapshot(self) -> dict[str, Any]:
        """Counts of everything, as `GET /admin/state` shows them."""
        st = self.state
        issues = list(st.issues.values())
        pulls = list(st.pulls.values())
        now = self.config.clock()
        outage = None
        if (o := self.config.outage) is not None:
            remaining = self.outage_remaining(o.service, now)
            outage = {
                "service": o.service,
                "active": remaining is not None,
                "remaining": remaining,
            }
        return {
            "tracker": {
                "issues": len(issues),
                "open": sum(i["state"] == "open" for i in issues),
                "closed": sum(i["state"] == "closed" for i in issues),
                "deleted": len(st.deleted_issues),
            },
            "chat": {
                "channels": len(st.channels),
                "messages": len(st.messages),
                "deleted": len(st.deleted_messages),
            },
            "code": {
                "pulls": len(pulls),
                "open": sum(p["state"] == "open" for p in pulls),
                "closed": sum(p["state"] == "closed" for p in pulls),
                "branches": len(st.branches),
                "deleted_branches": len(st.deleted_branches),
            },
            "llm": {"completions": st.completions, "malformed": st.malformed, "tokens": st.tokens},
            "requests": st.requests,
            "faults": st.faults,
            "replays": sum(c.replays for c in self.calls.values()),
            "scripts_pending": sum(len(s.responses) for s in self.scripts),
            "down": [s for s in SERVICES if self._is_down(s, now)],
            "outage": outage,
        }

    def _is_down(self, service: str, now: float) -> bool:
        return service in self.config.down or self.outage_remaining(service, now) is not None

    async def admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def admin_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.model_dump(mode="json"))

    async def admin_set_config(self, request: web.Request) -> web.Response:
        patch = await _json_object(request)
        if "clock" in patch:
            raise ApiError(422, "unprocessable", "clock: can only be set from Python")
        try:
            self.update_config(patch)
        except ValidationError as exc:
            raise ApiError(422, "invalid config", _problems(exc)) from None
        return web.json_response(self.config.model_dump(mode="json"))

    def call_report(self, key: str | None = None) -> dict[str, Any]:
        """Per (method, route, Idempotency-Key) counters, as `GET /admin/calls` shows them."""
        calls = [
            c.as_dict() for c in self.calls.values() if key is None or c.idempotency_key == key
        ]
        return {
            "calls": calls,
            "duplicates": [c for c in calls if c["idempotency_key"] and c["count"] > 1],
            "double_effects": [c for c in calls if c["idempotency_key"] and c["effects"] > 1],
            "total": sum(c["count"] for c in calls),
        }

    async def admin_calls(self, request: web.Request) -> web.Response:
        return web.json_response(self.call_report(request.query.get("key")))

    def add_script(self, script: Script) -> int:
        """Queue scripted responses (as `POST /admin/script`); returns the script's id."""
        if script.path_prefix.startswith("/admin"):
            raise ValueError("admin paths cannot be scripted")
        self._script_ids += 1
        method = script.method.upper() if script.method else None
        self.scripts.append(
            _ActiveScript(
                self._script_ids, script.path_prefix, method, collections.deque(script.responses)
            )
        )
        return self._script_ids

    def _script_list(self) -> list[dict[str, Any]]:
        return [
            {
                "id": s.id,
                "path_prefix": s.path_prefix,
                "method": s.method,
                "responses": [r.model_dump(exclude_unset=True) for r in s.responses],
            }
            for s in self.scripts
        ]

    async def admin_scripts(self, request: web.Request) -> web.Response:
        return web.json_response({"scripts": self._script_list()})

    async def admin_add_script(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        try:
            script = Script.model_validate(data)
            script_id = self.add_script(script)
        except ValidationError as exc:
            raise ApiError(422, "invalid script", _problems(exc)) from None
        except ValueError as exc:
            raise ApiError(422, "invalid script", f"path_prefix: {exc}") from None
        return web.json_response({"id": script_id, "pending": len(script.responses)}, status=201)

    async def admin_clear_scripts(self, request: web.Request) -> web.Response:
        dropped = sum(len(s.responses) for s in self.scripts)
        self.scripts.clear()
        return web.json_response({"dropped": dropped})

    async def admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.snapshot())


# --------------------------------------------------------------------------------------------
# LLM answers
# --------------------------------------------------------------------------------------------


def _vocab(words: str) -> frozenset[str]:
    return frozenset(words.split())


_ROUTE_WORDS: dict[str, frozenset[str]] = {
    "tracker": _vocab(
        "ticket tickets issue issues bug bugs jira incident followup follow task backlog report "
        "regression crash triage"
    ),
    "chat": _vocab(
        "slack message messages announce announcement notify post channel team tell chat ping "
        "standup update everyone"
    ),
    "code": _vocab(
        "pr prs pull pulls branch branches merge commit commits code diff revert repo "
        "repository release refactor"
    ),
}
_ROUTE_LABELS: dict[str, tuple[str, ...]] = {
    "tracker": ("bug", "triage", "follow-up", "backlog"),
    "chat": ("announcement", "team", "fyi"),
    "code": ("pull-request", "cleanup", "release", "review"),
}
_KEYWORD_LABELS: dict[str, str] = {
    "urgent": "urgent",
    "asap": "urgent",
    "security": "security",
    "cve": "security",
    "docs": "docs",
    "documentation": "docs",
    "outage": "incident",
    "incident": "incident",
    "flaky": "flaky",
}
_QUALIFIERS = (
    "low risk",
    "needs a follow-up",
    "ready to close",
    "worth telling the team",
    "blocked on review",
    "safe to automate",
)


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                return None
        return "\n".join(parts)
    return None


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


def llm_answer(prompt: str, request_text: str, *, seed: int = 0) -> dict[str, Any]:
    """The demo LLM's answer: route by keywords, everything else from an RNG seeded by the
    prompt, so one prompt always gets one answer and different prompts vary."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    words = _WORD_RE.findall(prompt.lower())
    scores = {route: sum(w in vocab for w in words) for route, vocab in _ROUTE_WORDS.items()}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    (route, best), (_, second) = ranked[0], ranked[1]
    if best == 0:
        route = rng.choice(sorted(_ROUTE_WORDS))
        confidence = rng.uniform(0.3, 0.6)
    elif best == second:
        route = rng.choice([r for r, s in ranked if s == best])
        confidence = rng.uniform(0.45, 0.7)
    else:
        confidence = min(0.99, 0.62 + 0.08 * (best - second) + rng.uniform(0.0, 0.2))
    labels = [_KEYWORD_LABELS[w] for w in words if w in _KEYWORD_LABELS]
    labels += rng.sample(_ROUTE_LABELS[route], k=rng.randint(1, 2))
    head = " ".join(request_text.split())
    head = re.split(r"(?<=[.!?])\s", head, maxsplit=1)[0].rstrip(".!?") or "Empty request"
    if len(head) > 80:
        head = head[:79].rstrip() + "…"
    return {
        "summary": f"{head} ({rng.choice(_QUALIFIERS)})",
        "route": route,
        "confidence": round(confidence, 2),
        "labels": list(dict.fromkeys(labels)),
    }


def _malformed(content: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "Sure! Here is the JSON you asked for:\n" + content, "stop"
    return content[: max(1, len(content) // 2)], "length"


# --------------------------------------------------------------------------------------------
# Application and running it
# --------------------------------------------------------------------------------------------

SERVICE_KEY: web.AppKey[DemoService] = web.AppKey("flowdeck_demo_service", DemoService)


def create_app(config: ServiceConfig | None = None) -> web.Application:
    """The demo application; its `DemoService` is `app[SERVICE_KEY]`."""
    service = DemoService(config)
    app = web.Application(middlewares=[service.middleware])
    app[SERVICE_KEY] = service
    service.add_routes(app.router)
    return app


SERVICE_PREFIX: dict[str, str] = {
    "tracker": "/tracker",
    "chat": "/chat",
    "code": "/code",
    "llm": "/v1",
}
"""Path prefix of each service (the base URL of an agent is the service's origin + this)."""


@dataclass
class RunningService:
    """A demo service listening on `url`; `await stop()` (or `async with`) shuts it down."""

    url: str
    port: int
    app: web.Application
    runner: web.AppRunner = field(repr=False)
    origins: dict[str, str] = field(default_factory=dict)
    """Origin (`http://HOST:PORT`) of each service; every one is `url` unless the service was
    started with `separate_ports`, which gives each service its own port, as separate hosts
    would have (so a per-host circuit breaker of one service leaves the others alone)."""

    def base_url(self, service: str) -> str:
        """Base URL of `service` (tracker, chat, code, llm) for an agent's `base_url`."""
        return self.origins.get(service, self.url) + SERVICE_PREFIX[service]

    @property
    def service(self) -> DemoService:
        """State and configuration, for direct access in the same process."""
        return self.app[SERVICE_KEY]

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_service(
    config: ServiceConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    separate_ports: bool = False,
) -> RunningService:
    """Start the demo service in this event loop (port 0 picks a free port).

    `separate_ports` also listens on one more free port per service (every port serves every
    path; `RunningService.base_url(service)` names the service's own one)."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    url_host = f"[{host}]" if ":" in host else host
    origins: dict[str, str] = {}
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        for service in SERVICES if separate_ports else ():
            extra = web.TCPSite(runner, host, 0)
            await extra.start()
            origins[service] = f"http://{url_host}:{runner.addresses[-1][1]}"
    except BaseException:
        await runner.cleanup()
        raise
    return RunningService(
        url=f"http://{url_host}:{bound}", port=bound, app=app, runner=runner, origins=origins
    )


def _parse_outage(text: str) -> OutageConfig:
    parts = text.split(":")
    if len(parts) not in (1, 2, 3):
        raise argparse.ArgumentTypeError("expected SERVICE[:EVERY[:DURATION]]")
    try:
        values: dict[str, Any] = {"service": parts[0]}
        if len(parts) > 1:
            values["every"] = float(parts[1])
        if len(parts) > 2:
            values["duration"] = float(parts[2])
        return OutageConfig.model_validate(values)
    except (ValueError, ValidationError) as exc:
        raise argparse.ArgumentTypeError(f"bad outage {text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m console.demo.service",
        description="Serve the flowdeck demo service (tracker, chat, code host, LLM) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--rate-limit-rate", type=float, default=0.0)
    parser.add_argument("--llm-malformed-rate", type=float, default=0.0)
    parser.add_argument(
        "--outage", type=_parse_outage, default=None, metavar="SERVICE[:EVERY[:DURATION]]"
    )
    args = parser.parse_args(argv)
    try:
        config = ServiceConfig(
            seed=args.seed,
            latency_scale=args.latency_scale,
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            llm_malformed_rate=args.llm_malformed_rate,
            outage=args.outage,
        )
    except ValidationError as exc:
        for err in exc.errors():
            print(f"error: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2

    async def serve() -> int:
        running = await start_service(config, args.host, args.port)
        # Our own handlers, like every flowdeck command: a process started in the background
        # by a shell without job control inherits SIGINT ignored, and Python then never
        # raises KeyboardInterrupt; SIGTERM would kill it without stopping the service.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        print(f"flowdeck demo service on {running.url} (Ctrl-C stops)", flush=True)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await running.stop()
        return 130

    try:
        return asyncio.run(serve())
    except KeyboardInterrupt:  # before the handlers are in place
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
