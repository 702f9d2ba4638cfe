"""The HTTP API: runs, workflows, events (SSE), metrics and the OpenAPI document.

`create_app(engine, settings, token=...)` builds the aiohttp application; `ApiServer` embeds it
with `AppRunner`/`TCPSite` (`flowdeck serve` and `flowdeck demo` both use it). Routes are
declared once in `ROUTES` with their pydantic models; the same table registers the handlers and
generates `GET /api/openapi.json`.

Every answer to a bad request is JSON `{"error", "detail"}`: 400 body not JSON, 401 missing or
wrong token (mutations; reads too with `reads_need_auth`), 404 unknown id or route, 409
conflict, 413 body over 1 MiB, 422 schema errors naming the field. A bug is a 500 with a
generic detail; the traceback goes to the log, never into a response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from engine import __version__, control, openapi, queries, tokens
from engine.analytics import AnalyticsSnapshot
from engine.api_models import (
    AnalyticsQuery,
    Decision,
    EventsQuery,
    Health,
    Review,
    ReviewList,
    ReviewsQuery,
    RunCancelled,
    RunDetail,
    RunList,
    RunsQuery,
    RunStarted,
    StartRun,
    UndoList,
    UndoOutcome,
    UndoQuery,
    UndoRequest,
    WorkflowInfo,
    WorkflowInput,
    WorkflowList,
)
from engine.config import Settings
from engine.errors import (
    Conflict,
    DatabaseError,
    FlowdeckError,
    InputError,
    NotFound,
    WorkflowError,
)
from engine.metrics import StoreCollector
from engine.runner import Engine
from engine.sse import EventHub, SseConfig
from engine.workflows import WorkflowLibrary

log = logging.getLogger("flowdeck.api")

MAX_BODY = 1024 * 1024
"""Largest request body accepted (413 above)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting accepted in a JSON body (400 above)."""
RUN_ID = re.compile(r"[0-9a-f]{1,64}")

ERROR_KIND = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: status, one-line detail, optional problem lines and headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        problems: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = problems or []
        self.headers = headers or {}


@dataclass(slots=True)
class ApiState:
    """Everything the handlers share (`app[API]`)."""

    engine: Engine
    token: str
    """The bearer token mutations need."""
    hub: EventHub
    collector: StoreCollector
    registry: CollectorRegistry
    workflows: WorkflowLibrary | None = None
    """Workflows startable by name (`--workflows DIR`)."""
    reads_need_auth: bool = False
    """Reads need the token too (serve turns it on when bound beyond loopback)."""
    cancel_wait: float = 10.0
    """Seconds `POST /api/runs/{id}/cancel` waits for the run to end (then 202)."""
    stopping: bool = False
    """Set while the server shuts down: new runs are refused with 503."""
    requests: Any = None
    latency: Any = None
    openapi_doc: bytes = b""
    extra_gauges: list[Callable[[], dict[str, tuple[str, float]]]] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.engine.store


API = web.AppKey("flowdeck_api", ApiState)


@dataclass(slots=True)
class Call:
    """What a handler gets: the request, the shared state and the validated inputs."""

    request: web.Request
    state: ApiState
    body: Any = None
    query: Any = None

    def path(self, name: str) -> str:
        return self.request.match_info[name]


table = openapi.RouteTable()
route = table.route


# --------------------------------------------------------------------------- runs


def _run_links(pointer: str) -> dict[str, dict[str, Any]]:
    param = {"id": f"$response.body#{pointer}"}
    return {
        "GetRun": {"operationId": "get_run", "parameters": param},
        "CancelRun": {"operationId": "cancel_run", "parameters": param},
    }


@route(
    "GET",
    "/api/runs",
    summary="List runs, newest first",
    query=RunsQuery,
    response=RunList,
    links=_run_links("/runs/0/id"),
)
async def list_runs(call: Call) -> RunList:
    q: RunsQuery = call.query
    rows = await call.state.store.aread(
        lambda db: queries.list_runs(db, limit=q.limit, status=q.status)
    )
    return RunList.model_validate({"runs": rows})


@route("GET", "/api/runs/{id}", summary="One run with its steps and attempts", response=RunDetail)
async def get_run(call: Call) -> RunDetail:
    run_id = _run_id(call.path("id"))

    def read(db: Any) -> dict[str, Any]:
        if db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
            raise NotFound(f"no run '{run_id}'")
        return queries.get_run(db, run_id)

    return RunDetail.model_validate(await call.state.store.aread(read))


@route(
    "POST",
    "/api/runs",
    summary="Start a workflow of the --workflows directory by name",
    body=StartRun,
    response=RunStarted,
    status=201,
    mutating=True,
    errors=(404, 409, 503),
    links=_run_links("/id"),
)
async def start_run(call: Call) -> tuple[RunStarted, int]:
    from engine.loader import parse_inputs

    body: StartRun = call.body
    state = call.state
    if state.workflows is None:
        raise NotFound(f"no workflow '{body.workflow}': the server has no --workflows directory")
    wf = await asyncio.to_thread(state.workflows.get, body.workflow)
    if wf.spec is None:
        raise ApiError(
            409,
            f"workflow '{body.workflow}' ({wf.path.name}) cannot be started: {wf.problems[0]}",
            problems=wf.problems,
        )
    try:
        inputs = parse_inputs(wf.spec, body.inputs, from_cli=False)
    except InputError as e:
        problems = [f"body.inputs: {p}" for p in getattr(e, "problems", str(e).splitlines())]
        raise ApiError(422, "; ".join(problems), problems=problems) from None
    if state.stopping:
        raise ApiError(503, "the server is shutting down")
    run = await state.engine.submit(wf.spec, inputs, source=str(wf.path))
    started = RunStarted(
        id=run.run_id, workflow=wf.spec.name, status=run.status.value, url=f"/api/runs/{run.run_id}"
    )
    return started, 201


@route(
    "POST",
    "/api/runs/{id}/cancel",
    summary="Cancel a run (through the engine owning it, or in the database if none does)",
    response=RunCancelled,
    mutating=True,
    errors=(409,),
    extra={202: ("The owning engine has not confirmed yet", RunCancelled)},
)
async def cancel_run(call: Call) -> tuple[RunCancelled, int]:
    state = call.state
    store = state.store
    run_id = _run_id(call.path("id"))
    local = state.engine.runs.get(run_id)
    if local is not None and not local.done.done():
        local.cancel("cancelled by operator")
        try:
            status = await asyncio.wait_for(local.wait(), state.cancel_wait)
        except TimeoutError:
            return RunCancelled(id=run_id, status="cancelling"), 202
        return _cancelled(run_id, status.value)
    row = await store.aread(
        lambda db: next(
            iter(db.query("SELECT status, owner, lease_until FROM runs WHERE id=?", [run_id])), None
        )
    )
    if row is None:
        raise NotFound(f"no run '{run_id}'")
    if row["status"] in control.ENDED_RUN:
        raise Conflict(f"run {run_id} already ended ({row['status']})")
    now = time.time()
    if not control.lease_alive(row, now):
        if await store.run(lambda db: control.cancel_abandoned(db, run_id, now)) != 1:
            raise Conflict(f"run {run_id} changed while cancelling; try again")
        return RunCancelled(id=run_id, status="cancelled"), 200
    await store.run(lambda db: control.request_cancel(db, run_id, now))
    deadline = time.monotonic() + state.cancel_wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status = await store.aread(
            lambda db: db.execute("SELECT status FROM runs WHERE id=?", [run_id]).fetchone()[0]
        )
        if status in control.ENDED_RUN:
            return _cancelled(run_id, status)
    return RunCancelled(id=run_id, status="cancelling"), 202


def _cancelled(run_id: str, status: str) -> tuple[RunCancelled, int]:
    if status != "cancelled":
        raise Conflict(f"run {run_id} ended {status} before the cancel took effect")
    return RunCancelled(id=run_id, status=status), 200


def _run_id(value: str) -> str:
    if not RUN_ID.fullmatch(value):
        raise NotFound(f"no run '{value[:80]}'")
    return value


# --------------------------------------------------------------------------- workflows


@route(
    "GET",
    "/api/workflows",
    summary="Workflows of the --workflows directory",
    response=WorkflowList,
)
async def list_workflows(call: Call) -> WorkflowList:
    lib = call.state.workflows
    if lib is None:
        return WorkflowList(workflows=[])
    files = await asyncio.to_thread(lib.files)
    out = []
    for wf in files:
        spec = wf.spec
        inputs = (
            {k: WorkflowInput.model_validate(v.model_dump()) for k, v in spec.inputs.items()}
            if spec
            else {}
        )
        out.append(
            WorkflowInfo(
                name=wf.name,
                file=wf.path.name,
                description=spec.description if spec else "",
                inputs=inputs,
                problems=wf.problems,
            )
        )
    return WorkflowList(workflows=out)


# --------------------------------------------------------------------------- reviews


@route(
    "GET",
    "/api/reviews",
    summary="Reviews: pending ones (oldest first) or of any status",
    query=ReviewsQuery,
    response=ReviewList,
    links={
        "DecideReview": {
            "operationId": "decide_review",
            "parameters": {"id": "$response.body#/reviews/0/id"},
        }
    },
)
async def list_reviews(call: Call) -> ReviewList:
    from engine import reviews

    q: ReviewsQuery = call.query

    def read(db: Any) -> list[dict[str, Any]]:
        if q.status == "pending":
            return reviews.pending_reviews(db, run_id=q.run_id, limit=q.limit)
        status = None if q.status == "all" else q.status
        return reviews.list_reviews(db, status=status, run_id=q.run_id, limit=q.limit)

    return ReviewList.model_validate({"reviews": await call.state.store.aread(read)})


@route(
    "POST",
    "/api/reviews/{id}/decision",
    summary="Approve or reject a pending review (compare-and-set: one decision wins)",
    body=Decision,
    response=Review,
    mutating=True,
    errors=(409,),
    path_params={"id": {"type": "integer", "minimum": 1}},
)
async def decide_review(call: Call) -> Review:
    raw = call.path("id")
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 18 and int(raw) > 0):
        raise NotFound(f"no review '{raw[:80]}'")
    body: Decision = call.body
    try:
        row = await call.state.engine.decide(
            int(raw), body.decision, body.reviewer, body.comment, choice=body.choice
        )
    except InputError as e:  # worded for the CLI: name the body fields instead
        text = str(e).replace("--choice", "choice")
        raise ApiError(422, text if text.startswith("review ") else f"body.{text}") from None
    return Review.model_validate(row)


# --------------------------------------------------------------------------- undo


@route("GET", "/api/undo", summary="The undo log, newest first", query=UndoQuery, response=UndoList)
async def list_undo(call: Call) -> UndoList:
    q: UndoQuery = call.query
    try:
        entries = await call.state.engine.undo.history(
            limit=q.limit, run_id=q.run_id, status=q.status
        )
    except InputError as e:
        raise ApiError(422, f"query.status: {str(e).removeprefix('--status ')}") from None
    return UndoList(entries=entries)


@route(
    "POST",
    "/api/undo/{id}",
    summary="Undo one destructive operation (compare-and-set: at most once)",
    body=UndoRequest,
    body_optional=True,
    response=UndoOutcome,
    mutating=True,
    errors=(409,),
    path_params={"id": {"type": "integer", "minimum": 1}},
)
async def undo(call: Call) -> UndoOutcome:
    raw = call.path("id")
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 18 and int(raw) > 0):
        raise NotFound(f"no undo entry '{raw[:80]}'")
    body: UndoRequest = call.body
    result = await call.state.engine.undo.undo(
        int(raw), actor=body.actor, retry=body.retry, force=body.force
    )
    if not result.ok:  # the compensation ran and failed: the CLI's exit 4
        raise Conflict(f"undo entry {result.entry_id} {result.outcome}: {result.message}")
    return UndoOutcome.model_validate(result.to_dict())


# --------------------------------------------------------------------------- analytics


@route(
    "GET",
    "/api/analytics",
    summary="Analytics of a time window: health score, agents, latency, errors, usage",
    query=AnalyticsQuery,
    response=AnalyticsSnapshot,
)
async def get_analytics(call: Call) -> AnalyticsSnapshot:
    from engine import analytics

    q: AnalyticsQuery = call.query
    now = time.time()
    try:
        since = analytics.since_for(q.since, now)
    except InputError as e:
        raise ApiError(422, f"query.since: {e}") from None
    return await call.state.store.aread(
        lambda db: analytics.compute(
            db, since=since, now=now, default_slo_ms=q.slo_ms, min_calls=q.min_calls, top=q.top
        )
    )


# --------------------------------------------------------------------------- events, health


@route(
    "GET",
    "/api/events",
    summary="Server-sent events of the events table; resumes from Last-Event-ID",
    query=EventsQuery,
    response=None,
    content_type="text/event-stream",
    headers={"Last-Event-ID": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
)
async def events(call: Call) -> web.StreamResponse:
    q: EventsQuery = call.query
    after = q.after
    header = call.request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        value = header.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise ApiError(422, "header Last-Event-ID: must be an event id (a whole number)")
        after = int(value)
    return await call.state.hub.stream(call.request, after, q.run_id)


@route("GET", "/api/health", summary="Liveness and the newest event id", response=Health)
async def health(call: Call) -> Health:
    hub = call.state.hub
    return Health(
        ok=not call.state.stopping,
        version=__version__,
        events_last_id=hub.head,
        sse_clients=len(hub.clients),
    )


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    response=None,
    content_type=CONTENT_TYPE_LATEST,
)
async def metrics(call: Call) -> web.Response:
    text = await call.state.collector.scrape(call.state.registry)
    resp = web.Response(body=text)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


@route(
    "GET", "/api/openapi.json", summary="This document", response=None, schema={"type": "object"}
)
async def openapi_json(call: Call) -> web.Response:
    return web.Response(body=call.state.openapi_doc, content_type="application/json")


ROUTES = table.routes
"""Every route of the API, in the order of the OpenAPI document."""


# --------------------------------------------------------------------------- plumbing


def _problem_lines(where: str, e: ValidationError) -> list[str]:
    lines = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{loc}: {msg}")
    return lines


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _parse_body(
    model: type[BaseModel], request: web.Request, *, optional: bool = False
) -> BaseModel:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return model()
        raise ApiError(400, "the request body is empty; expected a JSON object")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {str(e).splitlines()[0]}") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = _problem_lines("body", e)
        raise ApiError(422, "; ".join(lines), problems=lines) from None


def _parse_query(model: type[BaseModel], request: web.Request) -> BaseModel:
    q = request.query
    try:
        return model.model_validate({k: q.getall(k)[-1] for k in q})
    except ValidationError as e:
        lines = _problem_lines("query", e)
        raise ApiError(422, "; ".join(lines), problems=lines) from None


def _authorize(state: ApiState, request: web.Request) -> None:
    if not tokens.matches(state.token, request.headers.get("Authorization")):
        given = "Authorization" in request.headers
        raise ApiError(
            401,
            "wrong token" if given else "this needs `Authorization: Bearer TOKEN`",
            headers={"WWW-Authenticate": 'Bearer realm="flowdeck"'},
        )


def _handler(r: openapi.Route) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[API]
        if r.mutating or state.reads_need_auth:
            _authorize(state, request)
        call = Call(request, state)
        if r.query is not None:
            call.query = _parse_query(r.query, request)
        if r.body is not None:
            call.body = await _parse_body(r.body, request, optional=r.body_optional)
        result = await r.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        status = r.status
        if isinstance(result, tuple):
            result, status = result
        return web.Response(
            body=result.model_dump_json().encode(), status=status, content_type="application/json"
        )

    handle.__name__ = r.handler.__name__
    return handle


def error_response(
    status: int,
    detail: str,
    problems: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": ERROR_KIND.get(status, "internal"), "detail": detail}
    if problems and len(problems) > 1:
        body["problems"] = problems
    return web.Response(
        text=json.dumps(body, ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error becomes JSON `{error, detail}`; counts and times each request."""
    state = request.app[API]
    started = time.perf_counter()
    resource = request.match_info.route.resource
    name = resource.canonical if resource is not None else "unmatched"
    try:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise ApiError(413, f"the body is {length} bytes; the limit is {MAX_BODY} (1 MiB)")
        resp = await handler(request)
    except ApiError as e:
        resp = error_response(e.status, e.detail, e.problems, e.headers)
    except NotFound as e:
        resp = error_response(404, str(e))
    except Conflict as e:
        resp = error_response(409, str(e))
    except WorkflowError as e:
        resp = error_response(422, "; ".join(e.problems), e.problems)
    except InputError as e:
        lines = str(e).splitlines() or [str(e)]
        resp = error_response(422, "; ".join(lines), lines)
    except DatabaseError as e:
        log.error("database error on %s %s: %s", request.method, request.path, e)
        resp = error_response(503, f"database unavailable: {e}")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        if e.status == 413:
            detail = f"the body is larger than the limit of {MAX_BODY} bytes (1 MiB)"
        elif e.status == 404:
            detail = f"no route {request.path[:200]}"
        elif e.status == 405:
            detail = f"{request.method} is not allowed on {request.path[:200]}"
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow",)}
        resp = error_response(e.status, detail, headers=headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except FlowdeckError as e:
        log.exception("unexpected %s on %s %s", type(e).__name__, request.method, request.path)
        resp = error_response(500, "internal error (see the server log)")
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        resp = error_response(500, "internal error (see the server log)")
    if state.requests is not None:
        state.requests.labels(request.method, name, str(resp.status)).inc()
        state.latency.labels(name).observe(time.perf_counter() - started)
    return resp


# --------------------------------------------------------------------------- the app


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    token: str | None = None,
    workflows: str | Path | None = None,
    reads_need_auth: bool = False,
    sse: SseConfig | None = None,
    cancel_wait: float = 10.0,
) -> web.Application:
    """The API application for `engine`. `token` defaults to FLOWDECK_TOKEN or the token file
    beside the database (created if missing)."""
    if token is None:
        token = tokens.resolve(settings.db, settings.token).value
    library = None
    if workflows is not None:
        library = WorkflowLibrary(workflows)
        library.check()
    store = engine.store
    hub = EventHub(store, sse)
    registry = CollectorRegistry(auto_describe=True)
    state = ApiState(
        engine=engine,
        token=token,
        hub=hub,
        collector=StoreCollector(store),
        registry=registry,
        workflows=library,
        reads_need_auth=reads_need_auth,
        cancel_wait=cancel_wait,
    )
    state.collector.gauges = lambda: _process_gauges(state)
    registry.register(state.collector)
    state.requests = Counter(
        "flowdeck_http_requests",
        "HTTP requests by method, route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    state.latency = Histogram(
        "flowdeck_http_request_duration_seconds",
        "Time to answer an HTTP request (SSE: the whole stream)",
        ["route"],
        registry=registry,
    )
    state.openapi_doc = json.dumps(
        openapi.build(
            ROUTES, title="flowdeck", version=__version__, reads_need_auth=reads_need_auth
        ),
        indent=1,
    ).encode()
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware])
    app[API] = state
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _handler(r), name=r.handler.__name__)
    app.cleanup_ctx.append(_hub_ctx)
    app.on_shutdown.append(_on_shutdown)
    return app


def _process_gauges(state: ApiState) -> dict[str, tuple[str, float]]:
    hub = state.hub
    gauges = {
        "flowdeck_sse_clients": ("Connected SSE clients", float(len(hub.clients))),
        "flowdeck_sse_dropped": ("SSE clients dropped for being slow", float(hub.dropped)),
        "flowdeck_events_last_id": ("Newest event id seen", float(hub.head)),
        "flowdeck_engine_runs_active": ("Runs executing in this engine", len(state.engine.runs)),
    }
    for extra in state.extra_gauges:
        gauges.update(extra())
    return gauges


async def _hub_ctx(app: web.Application) -> Any:
    hub = app[API].hub
    await hub.start()
    yield
    await hub.close()


async def _on_shutdown(app: web.Application) -> None:
    app[API].stopping = True
    await app[API].hub.close()


class ApiServer:
    """The API embedded in a running event loop (AppRunner + TCPSite)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 8765):
        self.app = app
        self.host = host
        self.port = port
        """Bound port once started (port 0 picks a free one)."""
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> ApiState:
        return self.app[API]

    async def start(self, access_log: logging.Logger | None = None, **kw: Any) -> ApiServer:
        self.runner = web.AppRunner(
            self.app, access_log=access_log, handle_signals=False, shutdown_timeout=5.0, **kw
        )
        await self.runner.setup()
        try:
            site = web.TCPSite(self.runner, self.host, self.port)
            await site.start()
            self.port = self.runner.addresses[0][1]
        except BaseException:
            await self.runner.cleanup()
            raise
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
