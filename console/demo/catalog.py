"""The demo's workflows: the bundled `examples/*.yaml`, pointed at the running demo service, and
realistic inputs for each new run.

The example files name the demo service at its documented address (`http://127.0.0.1:8765`,
where `python -m console.demo.service` listens), so each one also runs on its own with
`flowdeck run`. The demo starts the service on free ports instead and `bind`s a loaded spec to
them: every agent `base_url` under that address is rewritten to the same path on the port of its
service. Rewriting the loaded spec (rather than an input such as `${{ inputs.base_url }}` in
`agents:`) keeps the files plain, valid and runnable as they stand, needs no expressions outside
`with`, and the run row's stored spec holds the URL each run really used.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from console.demo.service import RunningService, service_of
from engine.errors import InputError
from engine.loader import load_workflow
from engine.models import WorkflowSpec

DEMO_ORIGIN = "http://127.0.0.1:8765"
"""Where the example files expect the demo service (`python -m console.demo.service`)."""

Inputs = Callable[[random.Random, RunningService, int], dict[str, Any]]
"""Inputs of the n-th run (0-based) of a workflow, drawn from `rng` and the service's state."""


def examples_dir() -> Path:
    """`examples/` of the source tree, else the copy a wheel installs under `share/flowdeck`."""
    candidates = [
        Path(__file__).resolve().parents[2] / "examples",
        Path(sys.prefix) / "share" / "flowdeck" / "examples",
    ]
    for path in candidates:
        if path.is_dir():
            return path
    raise InputError(
        f"the bundled examples are missing (looked in {', '.join(map(str, candidates))})"
    )


# --------------------------------------------------------------------------- inputs

_PEOPLE = ("Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances")

_REPORTS = (
    # clear ones (the LLM is confident, the route goes through on its own) and vague ones (a low
    # score: a person picks the route), taken in this order first
    "Login page crashes with a 500 after the last deploy; regression, please file a bug",
    "The nightly export job is flaky again",
    "Can someone tell the team the standup moves to 10:30?",
    "Customers say pages are slow since this morning",
    "The release branch needs a revert of the analytics refactor",
    "Something feels off with the dashboard numbers",
    "Please announce the new on-call rotation in the channel",
    "Is the VPN down for anyone else?",
    "Merge the dependency bump PR once CI is green",
    "Checkout throws a crash report on every second order, regression since Tuesday",
)

_INCIDENTS = (
    ("checkout", "errors on every second order"),
    ("search", "slow pages since the last deploy"),
    ("login", "timeouts for users in Europe"),
    ("payments", "declined cards that should go through"),
    ("notifications", "emails arriving hours late"),
)


def _hello(rng: random.Random, service: RunningService, n: int) -> dict[str, Any]:
    return {"who": rng.choice(_PEOPLE)}


class _Release:
    """The lowest open pull request this demo has not released yet."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def __call__(self, rng: random.Random, running: RunningService, n: int) -> dict[str, Any]:
        pulls = running.service.state.pulls
        fresh = [
            k for k, p in sorted(pulls.items()) if p["state"] == "open" and k not in self.taken
        ]
        pr = fresh[0] if fresh else rng.choice(sorted(pulls) or [1])
        self.taken.add(pr)
        return {"pr": pr}


def _incident(rng: random.Random, service: RunningService, n: int) -> dict[str, Any]:
    name, symptom = rng.choice(_INCIDENTS)
    return {"service": name, "symptom": symptom}


def _triage(rng: random.Random, service: RunningService, n: int) -> dict[str, Any]:
    report = _REPORTS[n] if n < len(_REPORTS) else rng.choice(_REPORTS)
    return {"report": report, "reporter": rng.choice(_PEOPLE), "ref": f"{n + 1:04d}"}


WORKFLOWS: dict[str, tuple[Callable[[], Inputs], float]] = {
    "triage-incoming-issue.yaml": (lambda: _triage, 3.0),
    "release-cleanup.yaml": (_Release, 2.0),
    "incident-broadcast.yaml": (lambda: _incident, 2.0),
    "hello.yaml": (lambda: _hello, 1.0),
}
"""Example file -> (factory of the inputs of its new runs, relative share of the runs). The
first runs follow this order, so every example runs early."""


# --------------------------------------------------------------------------- binding


def bind(spec: WorkflowSpec, running: RunningService) -> WorkflowSpec:
    """A copy of `spec` whose agents under `DEMO_ORIGIN` call the running service instead."""
    agents = {}
    for agent_id, agent in spec.agents.items():
        url = agent.base_url
        if url and (url == DEMO_ORIGIN or url.startswith(DEMO_ORIGIN + "/")):
            path = urlsplit(url).path
            service = service_of(path.rstrip("/") + "/")
            origin = running.origins.get(service or "", running.url)
            agent = agent.model_copy(update={"base_url": origin + path})
        agents[agent_id] = agent
    return spec.model_copy(update={"agents": agents})


@dataclass
class Example:
    """One workflow the demo keeps running."""

    path: Path
    spec: WorkflowSpec
    """Bound to the running service; the same object for every run (its plan is cached)."""
    inputs: Inputs
    weight: float
    started: int = 0
    """Runs of it started so far."""

    @property
    def name(self) -> str:
        return self.spec.name

    def next_inputs(self, rng: random.Random, running: RunningService) -> dict[str, Any]:
        values = self.inputs(rng, running, self.started)
        self.started += 1
        return values


def load_examples(running: RunningService, directory: Path | None = None) -> list[Example]:
    """The demo workflows, loaded (and checked) from `directory` and bound to `running`."""
    directory = directory or examples_dir()
    out = []
    for filename, (inputs, weight) in WORKFLOWS.items():
        spec = load_workflow(directory / filename)
        out.append(Example(directory / filename, bind(spec, running), inputs(), weight))
    return out
