"""The route table of the HTTP API and the OpenAPI document generated from it.

Each route is declared once, with its pydantic models (query, body, response); the server
registers handlers from the same table, so `GET /api/openapi.json` cannot drift from what is
served. Schemas come from pydantic (JSON Schema 2020-12, hence OpenAPI 3.1).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine.api_models import ErrorBody

REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "The body is not valid JSON",
    401: "Missing or wrong `Authorization: Bearer TOKEN`",
    404: "No such object",
    409: "Conflict: already ended, decided, undone or expired",
    413: "Body larger than 1 MiB",
    422: "The request does not match the schema (the detail names the field)",
    503: "The server is shutting down or its database is unusable",
}


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    """aiohttp path, `{name}` for a path parameter."""
    handler: Callable[..., Awaitable[Any]]
    summary: str
    response: type[BaseModel] | None
    """Model of the success body; None for a non-JSON body (`content_type`)."""
    status: int = 200
    body: type[BaseModel] | None = None
    body_optional: bool = False
    """An empty body means the body model's defaults."""
    query: type[BaseModel] | None = None
    mutating: bool = False
    """Needs the bearer token."""
    errors: tuple[int, ...] = ()
    """Error statuses the operation may answer besides 401/413/422 (implied by the above)."""
    content_type: str = "application/json"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    """Schema of a body that has no model (`response` is None)."""
    extra: dict[int, tuple[str, type[BaseModel]]] = field(default_factory=dict)
    """Other success statuses: status -> (description, model)."""
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Schema of each path parameter (default: a string)."""
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Request headers the operation reads: name -> schema."""
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    """OpenAPI links of the success response: name -> (operationId, parameters)."""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


class RouteTable:
    """Routes in declaration order; `@table.route(...)` declares a handler."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(self, method: str, path: str, **kw: Any) -> Callable[[Any], Any]:
        def decorate(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.routes.append(Route(method, path, fn, **kw))
            return fn

        return decorate


def statuses(route: Route, *, reads_need_auth: bool = False) -> list[int]:
    """Every error status `route` can answer."""
    found = set(route.errors)
    if route.mutating or reads_need_auth:
        found.add(401)
    if route.body is not None:
        found |= {400, 413, 422}
    if route.query is not None or route.headers:
        found.add(422)
    if re.search(r"\{\w+", route.path):
        found.add(404)
    return sorted(found)


def build(
    routes: list[Route], *, title: str, version: str, reads_need_auth: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    models: list[tuple[type[BaseModel], Any]] = [(ErrorBody, "serialization")]
    for r in routes:
        if r.body is not None:
            models.append((r.body, "validation"))
        if r.response is not None:
            models.append((r.response, "serialization"))
        models += [(m, "serialization") for _, m in r.extra.values()]
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary}
        params = _parameters(r)
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": not r.body_optional,
                "content": {"application/json": {"schema": refs[(r.body, "validation")]}},
            }
        responses: dict[str, Any] = {}
        if r.response is not None:
            body = {"application/json": {"schema": refs[(r.response, "serialization")]}}
        else:
            body = {r.content_type: {"schema": r.schema}}
        responses[str(r.status)] = {"description": r.summary, "content": body}
        if r.links:
            responses[str(r.status)]["links"] = r.links
        for status, (text, model) in r.extra.items():
            responses[str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": refs[(model, "serialization")]}},
            }
        error_ref = {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}
        for status in statuses(r, reads_need_auth=reads_need_auth):
            responses[str(status)] = {"description": ERROR_TEXT[status], "content": error_ref}
        op["responses"] = responses
        if r.mutating or reads_need_auth:
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Remote control of a flowdeck engine. Mutations need "
            "`Authorization: Bearer TOKEN`. Errors are `{error, detail}`.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in re.findall(r"\{(\w+)", route.path):
        schema = route.path_params.get(name, {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.query is not None:
        schema = route.query.model_json_schema()
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            prop = _not_null(prop)
            prop.pop("title", None)
            description = prop.pop("description", None)
            p = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                p["description"] = description
            params.append(p)
    for name, schema in route.headers.items():
        params.append({"name": name, "in": "header", "required": False, "schema": schema})
    return params


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the `null` branch pydantic adds."""
    schema = dict(schema)
    branches = schema.get("anyOf")
    if branches:
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema
