"""The `llm` agent kind: one OpenAI-compatible chat completion per attempt.

```yaml
agents:
  llm: {kind: llm, base_url: "http://127.0.0.1:8765/v1", model: demo-small,
        api_key_env: OPENAI_API_KEY, temperature: 0}
steps:
  triage:
    agent: llm
    with:
      system: "Answer with JSON: {route, confidence, summary}."
      prompt: "Summarise PR ${{ inputs.pr }}"
      require: [route, confidence]
```

Sends `POST {base_url}/chat/completions` through the engine's shared aiohttp session with the
agent's `headers`, `Authorization: Bearer $<api_key_env>` (the variable must be set when
`api_key_env` is given) and `Idempotency-Key`. `with` takes `prompt` (the user message) and/or
`messages` (a list of `{role, content}` sent before it), `system`, `json` (default true:
JSON mode, `response_format: {type: json_object}`, and the answer is parsed), `require` (keys
the JSON answer must have), and per-step `model`, `temperature`, `max_tokens`.

The output is the parsed JSON object (`json: false`: `{"text": answer}`). Token usage from the
response goes to `call.usage` (`prompt_tokens`, `completion_tokens`), which the runner stores
with the attempt, also when the answer is unusable. Failures:

| what | error class | retried by default |
| --- | --- | --- |
| answer not JSON, not an object, cut off (`finish_reason: length`), a required key missing, a response without `choices` | `validation` | no (add `retry: {on_error: [validation]}`) |
| status >= 400 (message from the `{"error": {...}}` body) | `http` | 408, 429, 5xx (`Retry-After` honoured) |
| connection refused/reset | `connection` | yes |
| no answer within the step timeout | `timeout` | yes |
| `api_key_env` variable unset, no model, bad `with` | `validation` | no |
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import aiohttp

from engine import __version__
from engine.agents.base import Agent, StepCall, register
from engine.agents.http import (
    RETRYABLE_STATUS,
    _decode,
    _read_body,
    _short,
    endpoint_of,
    parse_retry_after,
)
from engine.errors import ErrorClass, StepError

_PARAMS = ("prompt", "system", "messages", "json", "require", "model", "temperature", "max_tokens")
_ROLES = ("system", "user", "assistant", "tool", "developer")
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _is_expr(value: Any) -> bool:
    return isinstance(value, str) and "${{" in value


def _problems(params: Any, *, allow_expressions: bool) -> list[str]:
    def expr(value: Any) -> bool:
        return allow_expressions and _is_expr(value)

    if not isinstance(params, dict):
        return ["with: must be a mapping with `prompt` or `messages`"]
    problems = [
        f"{key}: unknown parameter for an llm step (use {', '.join(_PARAMS)})"
        for key in params
        if key not in _PARAMS
    ]
    prompt, messages = params.get("prompt"), params.get("messages")
    if prompt is None and messages is None:
        problems.append("prompt: required (or `messages`)")
    if prompt is not None and not isinstance(prompt, str):
        problems.append("prompt: must be a string")
    for key in ("system", "model"):
        value = params.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key}: must be a string")
    if messages is not None and not expr(messages):
        if not isinstance(messages, list):
            problems.append("messages: must be a list of {role, content}")
        else:
            for i, msg in enumerate(messages):
                if (
                    not isinstance(msg, dict)
                    or msg.get("role") not in _ROLES
                    or not isinstance(msg.get("content"), str)
                ):
                    problems.append(
                        f"messages.{i}: must be {{role: {'|'.join(_ROLES)}, content: string}}"
                    )
    if "json" in params and not isinstance(params["json"], bool) and not expr(params["json"]):
        problems.append("json: must be true or false")
    require = params.get("require")
    if (
        require is not None
        and not expr(require)
        and (not isinstance(require, list) or not all(isinstance(k, str) for k in require))
    ):
        problems.append("require: must be a list of key names")
    temp = params.get("temperature")
    if (
        temp is not None
        and not expr(temp)
        and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0 <= temp <= 2)
    ):
        problems.append("temperature: must be a number from 0 to 2")
    tokens = params.get("max_tokens")
    if (
        tokens is not None
        and not expr(tokens)
        and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1)
    ):
        problems.append("max_tokens: must be a positive integer")
    return problems


def parse_answer(content: str) -> Any:
    """The JSON in an answer: the whole text, or the inside of one ```json fence```."""
    try:
        return json.loads(content)
    except ValueError:
        m = _FENCE_RE.match(content)
        if m is None:
            raise
        return json.loads(m.group(1))


@register("llm")
class LlmAgent(Agent):
    """Asks an OpenAI-compatible `/chat/completions` endpoint; the JSON answer is the output."""

    network = True

    def endpoint(self) -> str | None:
        return endpoint_of(self.spec.base_url)

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        return _problems(params, allow_expressions=True)

    def _model(self, params: dict[str, Any]) -> str | None:
        model = params.get("model") or self.spec.model
        return model if isinstance(model, str) and model else None

    def operation(self, params: dict[str, Any]) -> str:
        return f"chat {self._model(params) or '?'}"

    def is_idempotent(self, params: dict[str, Any]) -> bool:
        return True

    def _headers(self, call: StepCall) -> dict[str, str]:
        headers = {"User-Agent": f"flowdeck/{__version__}", "Content-Type": "application/json"}
        headers.update(self.spec.headers)
        if self.spec.api_key_env:
            token = os.environ.get(self.spec.api_key_env)
            if not token:
                raise StepError(
                    f"agent '{self.agent_id}': environment variable {self.spec.api_key_env} "
                    "(api_key_env) is not set",
                    ErrorClass.VALIDATION,
                )
            headers["Authorization"] = f"Bearer {token}"
        headers["Idempotency-Key"] = call.idempotency_key
        return headers

    def _body(self, params: dict[str, Any], model: str) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if params.get("system"):
            messages.append({"role": "system", "content": params["system"]})
        messages.extend(params.get("messages") or [])
        if params.get("prompt") is not None:
            messages.append({"role": "user", "content": params["prompt"]})
        body: dict[str, Any] = {"model": model, "messages": messages}
        temperature = params.get("temperature", self.spec.temperature)
        if temperature is not None:
            body["temperature"] = temperature
        if params.get("max_tokens") is not None:
            body["max_tokens"] = params["max_tokens"]
        if params.get("json", True):
            body["response_format"] = {"type": "json_object"}
        return body

    async def call(self, call: StepCall) -> Any:
        params = call.params
        call.operation = self.operation(params)
        problems = _problems(params, allow_expressions=False)
        if problems:
            raise StepError("; ".join(problems), ErrorClass.VALIDATION)
        model = self._model(params)
        if model is None:
            raise StepError(
                f"agent '{self.agent_id}': no model (set `model` on the agent or the step)",
                ErrorClass.VALIDATION,
            )
        if not self.spec.base_url:
            raise StepError(
                f"agent '{self.agent_id}' has no base_url (e.g. http://127.0.0.1:8765/v1)",
                ErrorClass.VALIDATION,
            )
        url = self.spec.base_url.rstrip("/") + "/chat/completions"
        what = f"POST {url}"
        headers = self._headers(call)
        data = json.dumps(self._body(params, model)).encode()
        timeout = aiohttp.ClientTimeout(total=call.timeout if call.timeout > 0 else None)
        session = await self.resources.http()
        try:
            async with session.post(url, data=data, headers=headers, timeout=timeout) as resp:
                raw = await _read_body(resp, what)
                status, charset = resp.status, resp.charset
                retry_after = resp.headers.get("Retry-After")
        except StepError:
            raise
        except TimeoutError as e:
            raise StepError(
                f"{what}: no answer within {call.timeout:g} s", ErrorClass.TIMEOUT, retryable=True
            ) from e
        except aiohttp.InvalidURL as e:
            raise StepError(f"{what}: invalid URL", ErrorClass.VALIDATION) from e
        except (aiohttp.ClientError, OSError) as e:
            raise StepError(
                f"{what}: {type(e).__name__}: {e}", ErrorClass.CONNECTION, retryable=True
            ) from e
        text = _decode(raw, charset)
        try:
            doc = json.loads(text) if text.strip() else None
        except ValueError:
            doc = None
        if status >= 400:
            detail = text
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                detail = str(doc["error"].get("message") or text)
            raise StepError(
                f"HTTP {status} from {what}: {_short(detail)}",
                ErrorClass.HTTP,
                status=status,
                retryable=status in RETRYABLE_STATUS,
                retry_after=parse_retry_after(retry_after),
            )
        return self._answer(call, params, doc, text)

    def _answer(self, call: StepCall, params: dict[str, Any], doc: Any, text: str) -> Any:
        if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
            usage = doc["usage"]
            for key in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(key), int):
                    call.usage[key] = usage[key]
        try:
            choice = doc["choices"][0]
            content = choice["message"]["content"]
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise StepError(
                f"malformed response (no choices[0].message.content): {_short(text, 120)}",
                ErrorClass.VALIDATION,
            ) from None
        if not isinstance(content, str):
            raise StepError(
                "malformed response: message content is not text", ErrorClass.VALIDATION
            )
        if not params.get("json", True):
            return {"text": content}
        cut = " (cut off: finish_reason=length)" if finish == "length" else ""
        try:
            answer = parse_answer(content)
        except ValueError:
            raise StepError(
                f"answer is not JSON{cut}: {_short(content, 120)!r}",
                ErrorClass.VALIDATION,
                output={"text": content},
            ) from None
        if not isinstance(answer, dict):
            raise StepError(
                f"answer is JSON but not an object: {_short(content, 120)!r}",
                ErrorClass.VALIDATION,
                output={"text": content},
            )
        missing = [k for k in params.get("require") or [] if k not in answer]
        if missing:
            raise StepError(
                f"answer lacks {', '.join(repr(k) for k in missing)} "
                f"(has: {', '.join(map(str, answer)) or 'nothing'})",
                ErrorClass.VALIDATION,
                output=answer,
            )
        return answer
