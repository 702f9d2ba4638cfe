"""Agent kinds and their registry.

An agent performs one attempt of a step: it gets the rendered `with` parameters and returns the
step output (JSON), or raises `StepError` with an error class. Kinds register themselves with
`@register("kind")`; `create()` builds an agent for an `AgentSpec`.
"""

from engine.agents.base import Agent, AgentResources, StepCall, create, known_kinds, register

__all__ = ["Agent", "AgentResources", "StepCall", "create", "known_kinds", "register"]
