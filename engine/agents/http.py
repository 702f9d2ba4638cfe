"""The `http` agent kind: one HTTP request per attempt, through the engine's shared ClientSession.

```yaml
agents: {github: {kind: http, base_url: "http://127.0.0.1:8765/github", api_key_env: GH_TOKEN}}
steps:
  ticket: {agent: github, with: {method: POST, path: /issues, json: {title: "..."}}}
```

`with` takes `method` (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; default GET), `path`
(appended to the agent's `base_url`), `json` (request body), `headers` and `query`. Every
request carries the agent's `headers`, `Authorization: Bearer <$api_key_env>` when that variable
is set, and `Idempotency-Key: <call.idempotency_key>` (stable across retries of the step).

The output is the JSON response body; an empty body gives `{}` and a body that is not JSON gives
`{"text": ...}` (cut at the agent's `max_output` bytes). Failures:

| what | error class | retryable |
| --- | --- | --- |
| status >= 400 | `http` (`status`, `retry_after` from Retry-After) | 408, 429, 500, 502, 503, 504 |
| connection refused/reset, DNS, broken body | `connection` | yes |
| no answer within `call.timeout` | `timeout` | yes |
| bad URL, header or body | `validation` | no |
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from engine import __version__
from engine.agents.base import Agent, StepCall, register
from engine.errors import ErrorClass, StepError

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BODY = 32 * 1024 * 1024
"""Largest response body read; a bigger one fails the attempt (VALIDATION)."""

_PARAMS = ("method", "path", "json", "headers", "query")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HEX_RE = re.compile(r"^[0-9a-fA-F]{8,}$")
_NUMERIC_RE = re.compile(r"^[0-9][0-9._:-]*$")


def normalize_path(path: str) -> str:
    """`path` with ids replaced by `*`: numbers, UUIDs, hex strings of 8+ characters with a
    digit (hashes), and `${{ ... }}` expressions. The query string is dropped.

    `/pulls/42/close` -> `/pulls/*/close`; `/runs/3f2a9c1e77/logs` -> `/runs/*/logs`.
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    parts = []
    for seg in path.split("/"):
        if "${{" in seg or (
            seg
            and (
                _NUMERIC_RE.match(seg)
                or _UUID_RE.match(seg)
                or (_HEX_RE.match(seg) and any(c.isdigit() for c in seg))
            )
        ):
            parts.append("*")
        else:
            parts.append(seg)
    return "/".join(parts)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def endpoint_of(base_url: str | None) -> str | None:
    """`host:port` of a base URL (the default port of its scheme when none is given)."""
    if not base_url:
        return None
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cut(data: bytes, cap: int) -> str:
    """`data` decoded as UTF-8, its first `cap` bytes plus a marker if it was longer."""
    if len(data) <= cap:
        return data.decode("utf-8", errors="replace")
    head = data[:cap]
    # drop a multi-byte character split by the cut
    for back in range(1, min(4, len(head)) + 1):
        byte = head[-back]
        if byte & 0xC0 != 0x80:
            need = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2 if byte >= 0xC0 else 1
            if need > back:
                head = head[:-back]
            break
    return head.decode("utf-8", errors="replace") + f"\n[... {len(data) - len(head)} bytes cut]"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _query_items(query: dict[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in query.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool):
                items.append((key, "true" if v else "false"))
            elif v is not None:
                items.append((key, str(v)))
    return items


# --------------------------------------------------------------------------- the agent


@register("http")
class HttpAgent(Agent):
    """Sends `with.method` `base_url + with.path`; the JSON response body is the output."""

    network = True

    def endpoint(self) -> str | None:
        return endpoint_of(self.spec.base_url)

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        return _problems(params, allow_expressions=True)

    def operation(self, params: dict[str, Any]) -> str:
        method = params.get("method") or "GET"
        path = params.get("path")
        method = method.upper() if isinstance(method, str) else "?"
        return f"{method} {normalize_path(path) if isinstance(path, str) else '?'}"

    def is_idempotent(self, params: dict[str, Any]) -> bool:
        method = params.get("method") or "GET"
        return isinstance(method, str) and method.upper() in IDEMPOTENT_METHODS

    def _headers(self, call: StepCall) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict({"User-Agent": f"flowdeck/{__version__}"})
        headers.update(self.spec.headers)
        if self.spec.api_key_env:
            token = os.environ.get(self.spec.api_key_env)
            if token:
                headers["Authorization"] = f"Bearer {token}"
        for key, value in (call.params.get("headers") or {}).items():
            headers[key] = str(value)
        headers["Idempotency-Key"] = call.idempotency_key
        return headers

    async def call(self, call: StepCall) -> Any:
        params = call.params
        call.operation = self.operation(params)
        problems = _problems(params, allow_expressions=False)
        if problems:
            raise StepError("; ".join(problems), ErrorClass.VALIDATION)
        if not self.spec.base_url:
            raise StepError(
                f"agent '{self.agent_id}' has no base_url (needed by http steps)",
                ErrorClass.VALIDATION,
            )
        method = (params.get("method") or "GET").upper()
        path: str = params["path"]
        url = self.spec.base_url.rstrip("/") + path
        what = f"{method} {path.split('?', 1)[0]}"

        headers = self._headers(call)
        body: bytes | None = None
        if params.get("json") is not None:
            try:
                body = json.dumps(params["json"], allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise StepError(f"json: not JSON-serialisable: {e}", ErrorClass.VALIDATION) from e
            headers.setdefault("Content-Type", "application/json")
        timeout = aiohttp.ClientTimeout(total=call.timeout if call.timeout > 0 else None)

        session = await self.resources.http()
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                params=_query_items(params.get("query") or {}),
                data=body,
                timeout=timeout,
            ) as resp:
                raw = await _read_body(resp, what)
                status = resp.status
                charset = resp.charset
                retry_after = resp.headers.get("Retry-After")
        except StepError:
            raise
        except TimeoutError as e:  # asyncio.TimeoutError and aiohttp's timeout errors
            raise StepError(
                f"{what}: no response within {call.timeout:g} s",
                ErrorClass.TIMEOUT,
                retryable=True,
            ) from e
        except aiohttp.InvalidURL as e:
            raise StepError(f"{what}: invalid URL {url}", ErrorClass.VALIDATION) from e
        except aiohttp.TooManyRedirects as e:
            raise StepError(f"{what}: too many redirects", ErrorClass.HTTP) from e
        except (aiohttp.ClientError, OSError) as e:
            raise StepError(
                f"{what}: {type(e).__name__}: {e}", ErrorClass.CONNECTION, retryable=True
            ) from e
        except ValueError as e:  # e.g. a header value with a newline
            raise StepError(f"{what}: bad request: {e}", ErrorClass.VALIDATION) from e

        output = _parse_body(raw, charset, self.spec.max_output)
        if status >= 400:
            text = _decode(raw, charset)
            detail = _short(text)
            raise StepError(
                f"HTTP {status} from {what}" + (f": {detail}" if detail else ""),
                ErrorClass.HTTP,
                status=status,
                retryable=status in RETRYABLE_STATUS,
                retry_after=parse_retry_after(retry_after),
                output=output,
            )
        return output


async def _read_body(resp: aiohttp.ClientResponse, what: str) -> bytes:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > MAX_BODY:
            raise StepError(
                f"{what}: response body larger than {MAX_BODY} bytes", ErrorClass.VALIDATION
            )
    return bytes(data)


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # unknown charset name
        return raw.decode("utf-8", errors="replace")


def _parse_body(raw: bytes, charset: str | None, cap: int) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(_decode(raw, charset))
    except ValueError:
        pass
    if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8", "ascii", "us-ascii"):
        raw = _decode(raw, charset).encode("utf-8")
    return {"text": _cut(raw, cap)}


def _problems(params: Any, *, allow_expressions: bool) -> list[str]:
    def is_expr(value: Any) -> bool:
        return allow_expressions and isinstance(value, str) and "${{" in value

    if not isinstance(params, dict):
        return ["with: must be a mapping with `method` and `path`"]
    problems = [
        f"{key}: unknown parameter for an http step (use {', '.join(_PARAMS)})"
        for key in params
        if key not in _PARAMS
    ]
    method = params.get("method")
    if (
        method is not None
        and not is_expr(method)
        and (not isinstance(method, str) or method.upper() not in METHODS)
    ):
        problems.append(f"method: must be one of {', '.join(METHODS)}")
    path = params.get("path")
    if path is None:
        problems.append("path: required, e.g. /issues")
    elif not is_expr(path) and not (isinstance(path, str) and path.startswith("/")):
        problems.append("path: must be a string starting with '/'")
    headers = params.get("headers")
    if headers is not None and not is_expr(headers):
        if not isinstance(headers, dict):
            problems.append("headers: must be a mapping of header names to strings")
        else:
            for name, value in headers.items():
                if not isinstance(name, str) or not name:
                    problems.append(f"headers: invalid header name {name!r}")
                elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    problems.append(f"headers.{name}: must be a string")
    query = params.get("query")
    if query is not None and not is_expr(query):
        if not isinstance(query, dict):
            problems.append("query: must be a mapping of names to values")
        else:
            scalar = (str, int, float, bool)
            for name, value in query.items():
                values = value if isinstance(value, list) else [value]
                if not isinstance(name, str) or not all(
                    v is None or isinstance(v, scalar) for v in values
                ):
                    problems.append(f"query.{name}: must be a string, number, boolean or a list")
    return problems
