"""The agent interface, shared resources and the registry of kinds."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import aiohttp

    from engine.models import AgentSpec


@dataclass(slots=True)
class StepCall:
    """Everything an agent needs for one attempt."""

    run_id: str
    step_id: str
    attempt: int
    params: dict[str, Any]
    """The step's `with`, expressions already rendered."""
    timeout: float
    """Seconds for this attempt (the runner enforces it too)."""
    idempotency_key: str
    """Stable across retries and resume of the same step of the same run."""
    destructive: bool = False
    usage: dict[str, Any] = field(default_factory=dict)
    """Filled by agents that consume tokens: `prompt_tokens`, `completion_tokens`."""
    operation: str | None = None
    """Set by the agent: a short name of the action, e.g. `POST /issues` (for analytics)."""


class AgentResources:
    """Things agents share within one engine: one aiohttp ClientSession, created lazily."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp  # imported on first use: keeps engine start-up fast

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class Agent:
    """Base class of agent kinds."""

    kind: ClassVar[str] = ""
    sync: ClassVar[bool] = False
    network: ClassVar[bool] = False
    """Calls a service over the network: gets a circuit breaker by default."""

    def __init__(self, agent_id: str, spec: AgentSpec, resources: AgentResources):
        self.agent_id = agent_id
        self.spec = spec
        self.resources = resources

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> list[str]:
        """Problems with a step's `with` for this kind, as `field: message` (checked at load)."""
        return []

    def operation(self, params: dict[str, Any]) -> str:
        """Short name of the action for analytics and approval patterns."""
        return self.kind

    def is_idempotent(self, params: dict[str, Any]) -> bool:
        """Whether repeating this call after a crash is safe by default."""
        return True

    def endpoint(self) -> str | None:
        """`HOST:PORT` of the service this agent calls (keys its per-host circuit breaker)."""
        return None

    async def call(self, call: StepCall) -> Any:
        raise NotImplementedError


_REGISTRY: dict[str, type[Agent]] = {}
_BUILTIN = {
    "python": "engine.agents.python",
    "shell": "engine.agents.shell",
    "http": "engine.agents.http",
    "llm": "engine.agents.llm",
}


def register(kind: str):
    """Class decorator: make `cls` the implementation of agent `kind`."""

    def deco(cls: type[Agent]) -> type[Agent]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def known_kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def agent_class(kind: str) -> type[Agent]:
    if kind not in _REGISTRY and kind in _BUILTIN:
        importlib.import_module(_BUILTIN[kind])
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown agent kind '{kind}' (known: {', '.join(known_kinds())})") from None


def create(agent_id: str, spec: AgentSpec, resources: AgentResources) -> Agent:
    return agent_class(spec.kind)(agent_id, spec, resources)
