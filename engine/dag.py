"""Pure graph code over a workflow's `needs`: cycles, order, depths, ready sets, validation.

Edges point from a step to the steps it needs (`a -> b` means *a needs b*). Functions that take
a `WorkflowSpec` ignore `needs` entries naming unknown steps (`validate` reports those), never
recurse (a 10,000-step chain is fine) and are deterministic: ties follow the order of the steps
in the file. No I/O here; `validate` returns `(field path, message)` pairs that the loader turns
into positioned `FILE:LINE:COL: path: message` lines.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Iterator, Mapping
from typing import Any

from engine.expressions import EXPR_RE, ExpressionError, parse
from engine.models import NAME_RE, AgentSpec, StepSpec, WorkflowSpec

Path = tuple[str | int, ...]
"""A field path inside the workflow document, e.g. `("steps", "ticket", "needs", 0)`."""

Problem = tuple[Path, str]


# --------------------------------------------------------------------------- graph primitives


def _graph(spec: WorkflowSpec) -> dict[str, list[str]]:
    """step -> distinct known needs, in file order."""
    steps = spec.steps
    return {
        sid: list(dict.fromkeys(n for n in step.needs if n in steps)) for sid, step in steps.items()
    }


def find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends with the same node, or None.

    Nodes are visited in the mapping's order and edges in list order, so the answer is the same
    for the same graph; the cycle is rotated to start at its node that comes first in `graph`.
    Edges to nodes that are not keys of `graph` are ignored.
    """
    order = {node: i for i, node in enumerate(graph)}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    for root in graph:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        stack: list[Iterator[str]] = [iter(graph[root])]
        while stack:
            for nxt in stack[-1]:
                if nxt not in order:
                    continue
                seen = state.get(nxt)
                if seen == 1:
                    cycle = path[path.index(nxt) :]
                    start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                    cycle = cycle[start:] + cycle[:start]
                    return [*cycle, cycle[0]]
                if seen is None:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(graph[nxt]))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return None


def _components(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (iterative Tarjan), dependencies before dependents."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    out.append(comp)
    return out


def _cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in file order."""
    order = {node: i for i, node in enumerate(graph)}
    found = []
    for comp in _components(graph):
        members = set(comp)
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        ordered = sorted(comp, key=order.__getitem__)
        sub = {n: [m for m in graph[n] if m in members] for n in ordered}
        cycle = find_cycle(sub)
        if cycle:
            found.append(cycle)
    found.sort(key=lambda c: order[c[0]])
    return found


def topo_order(spec: WorkflowSpec) -> list[str]:
    """Steps so that every step comes after its needs; ties in file order.

    Raises ValueError naming a cycle when there is one.
    """
    graph = _graph(spec)
    order = {sid: i for i, sid in enumerate(graph)}
    waiting = {sid: len(needs) for sid, needs in graph.items()}
    deps = _dependents(graph)
    heap = [order[sid] for sid, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    names = list(graph)
    out: list[str] = []
    while heap:
        sid = names[heapq.heappop(heap)]
        out.append(sid)
        for dep in deps[sid]:
            waiting[dep] -= 1
            if waiting[dep] == 0:
                heapq.heappush(heap, order[dep])
    if len(out) != len(graph):
        cycle = find_cycle(graph) or []
        raise ValueError(f"dependency cycle: {' -> '.join(cycle)}")
    return out


def _dependents(graph: Mapping[str, list[str]]) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {sid: [] for sid in graph}
    for sid, needs in graph.items():
        for need in needs:
            deps[need].append(sid)
    return deps


def dependents(spec: WorkflowSpec) -> dict[str, list[str]]:
    """step -> the steps that directly need it (each once, in file order)."""
    return _dependents(_graph(spec))


def descendants(spec: WorkflowSpec, step: str) -> set[str]:
    """Every step that needs `step` directly or transitively (`step` itself only in a cycle)."""
    deps = dependents(spec)
    seen: set[str] = set()
    todo = list(deps.get(step, ()))
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo.extend(deps[sid])
    return seen


def upstream(spec: WorkflowSpec) -> dict[str, frozenset[str]]:
    """step -> every step it needs directly or transitively (itself only when in a cycle)."""
    graph = _graph(spec)
    result: dict[str, frozenset[str]] = {}
    for comp in _components(graph):  # dependencies come first
        members = set(comp)
        acc: set[str] = set()
        cyclic = len(comp) > 1 or comp[0] in graph[comp[0]]
        if cyclic:
            acc |= members
        for node in comp:
            for need in graph[node]:
                if need not in members:
                    acc.add(need)
                    acc |= result[need]
        frozen = frozenset(acc)
        for node in comp:
            result[node] = frozen
    return {sid: result[sid] for sid in graph}


def _upstream_bits(graph: Mapping[str, list[str]]) -> dict[str, int]:
    """Like `upstream`, as bit sets over the position of each step in `graph` (fast to build)."""
    bit = {node: 1 << i for i, node in enumerate(graph)}
    result: dict[str, int] = {}
    for comp in _components(graph):
        members = set(comp)
        acc = 0
        if len(comp) > 1 or comp[0] in graph[comp[0]]:
            for node in comp:
                acc |= bit[node]
        for node in comp:
            for need in graph[node]:
                if need not in members:
                    acc |= bit[need] | result[need]
        for node in comp:
            result[node] = acc
    return result


def depths(spec: WorkflowSpec) -> dict[str, int]:
    """step -> length of the longest `needs` chain below it (roots are 0); for layout.

    Steps of one cycle share a depth, so this never fails.
    """
    graph = _graph(spec)
    depth: dict[str, int] = {}
    for comp in _components(graph):
        members = set(comp)
        d = 0
        for node in comp:
            for need in graph[node]:
                if need not in members:
                    d = max(d, depth[need] + 1)
        for node in comp:
            depth[node] = d
    return {sid: depth[sid] for sid in graph}


# --------------------------------------------------------------------------- ready sets


def initial_waiting_counts(spec: WorkflowSpec) -> dict[str, int]:
    """step -> number of distinct `needs` not yet succeeded at the start of a run.

    A runner keeps these counters and decrements them along `dependents(spec)` when a step
    succeeds; a step is ready when its counter reaches 0. Unknown needs are counted, so such a
    step never becomes ready (the loader rejects them anyway), matching `ready_steps`.
    """
    return {sid: len(set(step.needs)) for sid, step in spec.steps.items()}


def ready_steps(spec: WorkflowSpec, statuses: Mapping[str, str]) -> list[str]:
    """Steps whose status is "pending" (or not given) and whose needs all "succeeded".

    O(steps + edges); file order.
    """
    out = []
    for sid, step in spec.steps.items():
        if statuses.get(sid, "pending") != "pending":
            continue
        if all(statuses.get(n) == "succeeded" for n in step.needs):
            out.append(sid)
    return out


# --------------------------------------------------------------------------- validation


def suggest(word: str, choices: Iterator[str] | list[str] | Mapping[str, Any]) -> str:
    """`; did you mean 'x'?` for the closest choice, else ``."""
    names = [c for c in choices if isinstance(c, str)]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown(what: str, word: str, choices: list[str] | Mapping[str, Any]) -> str:
    hint = suggest(word, list(choices))
    word = _short(word)
    if not hint:
        names = sorted(c for c in choices if isinstance(c, str))
        if len(names) > 12:
            names = [*names[:12], "..."]
        hint = f" (known: {', '.join(names)})" if names else f" (no {what}s are declared)"
    return f"unknown {what} '{word}'{hint}"


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    """Every string (keys included) inside `value` with its path; iterative."""
    todo: list[tuple[Path, Any]] = [(path, value)]
    while todo:
        p, v = todo.pop()
        if isinstance(v, str):
            yield p, v
        elif isinstance(v, Mapping):
            for k, item in reversed(list(v.items())):
                todo.append(((*p, k), item))
                if isinstance(k, str):
                    todo.append(((*p, k), k))
        elif isinstance(v, (list, tuple)):
            for i in range(len(v) - 1, -1, -1):
                todo.append(((*p, i), v[i]))


class _Upstream:
    """`step in ups` over a bit set from `_upstream_bits`."""

    __slots__ = ("bits", "position")

    def __init__(self, bits: int, position: Mapping[str, int]):
        self.bits = bits
        self.position = position

    def __contains__(self, step: object) -> bool:
        i = self.position.get(step) if isinstance(step, str) else None
        return i is not None and bool(self.bits >> i & 1)


def _check_expressions(
    spec: WorkflowSpec,
    sid: str,
    value: Any,
    path: Path,
    ups: _Upstream,
    *,
    roots: frozenset[str] = frozenset({"inputs", "steps"}),
    self_ok: bool = False,
) -> Iterator[Problem]:
    for p, text in _strings(value, path):
        if "${{" not in text:
            continue
        matches = list(EXPR_RE.finditer(text))
        if len(matches) < text.count("${{"):
            yield p, f"unclosed expression in '{_short(text)}': write ${{{{ ... }}}}"
        for m in matches:
            try:
                ref = parse(m.group(1))
            except ExpressionError as e:
                reason = str(e).removeprefix(f"'{m.group(1)}': ")
                yield p, f"bad expression {_short(m.group(0))}: {reason}"
                continue
            if ref.root not in roots:
                yield p, f"{m.group(0)}: '{ref.root}' is only available in {UNDO_ONLY}"
            elif ref.root == "inputs":
                if ref.parts[0] not in spec.inputs:
                    yield p, f"{m.group(0)}: " + _unknown("input", ref.parts[0], spec.inputs)
            elif ref.root == "steps":
                target = ref.parts[0]
                if target not in spec.steps:
                    yield p, f"{m.group(0)}: " + _unknown("step", target, spec.steps)
                elif target == sid and not self_ok:
                    yield p, f"{m.group(0)}: a step cannot use its own output"
                elif target not in ups and target != sid:
                    yield (
                        p,
                        f"{m.group(0)}: step '{target}' is not in the needs of '{sid}' "
                        f"(directly or transitively); add it to needs",
                    )


UNDO_ONLY = "`undo.with` and `undo.description`"
"""Where the roots `output` (the action's output) and `before` (the captured state) exist."""
UNDO_ROOTS = frozenset({"inputs", "steps", "output", "before"})


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _params_problems(kind: str, params: dict[str, Any], path: Path) -> list[Problem]:
    """The agent kind's own `validate_params`, skipped when the kind cannot be loaded."""
    from engine.agents import base

    try:
        cls = base.agent_class(kind)
        found = cls.validate_params(params)
    except Exception:  # missing module, unknown kind or a bug there: not the file's problem
        return []
    out: list[Problem] = []
    for line in found or []:
        line = str(line)
        field, sep, message = line.partition(": ")
        if not sep or not field or " " in field.strip():
            out.append((path, line))
            continue
        sub: list[str | int] = []
        for part in field.strip().replace("]", "").replace("[", ".").split("."):
            if part:
                sub.append(int(part) if part.isdigit() else part)
        if sub[:1] == ["with"]:  # `with: must be a mapping` is about `with` itself
            sub = sub[1:]
        out.append(((*path, *sub), message))
    return out


def _undo_problems(
    spec: WorkflowSpec,
    sid: str,
    step: StepSpec,
    agent: AgentSpec | None,
    ups: _Upstream,
    kinds: list[str],
) -> Iterator[Problem]:
    """`undo:` of one step: where it may appear, its agents, parameters and expressions."""
    undo = step.undo
    assert undo is not None
    base: Path = ("steps", sid, "undo")
    if not step.destructive:
        yield base, "undo is only for destructive steps; add `destructive: true`"
    undo_agent = agent
    if undo.agent is not None:
        undo_agent = spec.agents.get(undo.agent)
        if undo_agent is None:
            yield (*base, "agent"), _unknown("agent", undo.agent, spec.agents)
    if undo.handler is not None:
        if undo.with_ is not None:
            yield (*base, "handler"), "give either `with` (a compensating action) or `handler`"
        if undo_agent is not None and undo_agent.kind != "python":
            yield (
                (*base, "handler"),
                f"undo handlers are for python agents; agent "
                f"'{undo.agent or step.agent}' is {undo_agent.kind}: use `with`",
            )
    if undo.with_ is not None:
        yield from _check_expressions(
            spec, sid, undo.with_, (*base, "with"), ups, roots=UNDO_ROOTS, self_ok=True
        )
        if undo_agent is not None and undo_agent.kind in kinds:
            yield from _params_problems(undo_agent.kind, undo.with_, (*base, "with"))
    if undo.description is not None:
        yield from _check_expressions(
            spec, sid, undo.description, (*base, "description"), ups, roots=UNDO_ROOTS, self_ok=True
        )
    if undo.capture is not None:
        cap = undo.capture
        cap_agent = agent
        if cap.agent is not None:
            cap_agent = spec.agents.get(cap.agent)
            if cap_agent is None:
                yield (*base, "capture", "agent"), _unknown("agent", cap.agent, spec.agents)
        yield from _check_expressions(spec, sid, cap.with_, (*base, "capture", "with"), ups)
        if cap_agent is not None and cap_agent.kind in kinds:
            yield from _params_problems(cap_agent.kind, cap.with_, (*base, "capture", "with"))


def validate(spec: WorkflowSpec) -> list[Problem]:
    """Semantic problems of a schema-valid workflow, as `(field path, message)`."""
    from engine.agents.base import known_kinds

    problems: list[Problem] = []
    kinds = known_kinds()

    for what, table in (("input", spec.inputs), ("agent", spec.agents), ("step", spec.steps)):
        for key in table:
            if not NAME_RE.fullmatch(key):
                problems.append(
                    (
                        (f"{what}s", key),
                        f"{what} id '{_short(key)}': use only letters, digits, '-' and '_'",
                    )
                )

    for aid, agent in spec.agents.items():
        if isinstance(agent.kind, str) and agent.kind not in kinds:
            problems.append((("agents", aid, "kind"), _unknown("agent kind", agent.kind, kinds)))

    steps = spec.steps
    for sid, step in steps.items():
        for i, need in enumerate(step.needs):
            if need not in steps:
                problems.append((("steps", sid, "needs", i), _unknown("step", need, steps)))

    graph = _graph(spec)
    for cycle in _cycles(graph):
        problems.append(((("steps", cycle[0], "needs")), f"dependency cycle: {' -> '.join(cycle)}"))

    bits = _upstream_bits(graph)
    position = {sid: i for i, sid in enumerate(graph)}
    for sid, step in steps.items():
        ups = _Upstream(bits[sid], position)
        base: Path = ("steps", sid)
        agent = None
        if step.agent is not None:
            agent = spec.agents.get(step.agent)
            if agent is None:
                problems.append(((*base, "agent"), _unknown("agent", step.agent, spec.agents)))
        elif step.route is None:
            problems.append(((*base, "agent"), "missing: a step needs `agent` (or `route`)"))

        problems.extend(_check_expressions(spec, sid, step.with_, (*base, "with"), ups))
        if agent is not None and isinstance(agent.kind, str) and agent.kind in kinds:
            problems.extend(_params_problems(agent.kind, step.with_, (*base, "with")))

        if step.review is not None and step.review.confidence is not None:
            problems.extend(
                _check_expressions(
                    spec, sid, step.review.confidence, (*base, "review", "confidence"), ups
                )
            )
        if (
            step.review is not None
            and step.route is None
            and isinstance(step.review.when, str)
            and step.review.when.strip().startswith("confidence")
            and step.review.confidence is None
        ):
            problems.append(
                (
                    (*base, "review", "when"),
                    f"'{step.review.when}' needs `review.confidence` "
                    "(e.g. ${{ steps.ID.output.confidence }})",
                )
            )

        if step.undo is not None:
            problems.extend(_undo_problems(spec, sid, step, agent, ups, kinds))

        if step.route is not None:
            route = step.route
            if step.agent is not None:
                problems.append(
                    ((*base, "agent"), "a route step has no `agent`: its candidates name targets")
                )
            for name in ("pick", "confidence"):
                value = getattr(route, name, None)
                if isinstance(value, str):
                    problems.extend(
                        _check_expressions(spec, sid, value, (*base, "route", name), ups)
                    )
            target_kinds: dict[str, None] = {}
            for i, cand in enumerate(route.candidates):
                cpath: Path = (*base, "route", "candidates", i)
                target_step = steps.get(cand.target)
                if target_step is not None and sid not in target_step.needs:
                    problems.append(
                        (
                            (*cpath, "target"),
                            f"step '{cand.target}' must list '{sid}' in its needs "
                            "(a route target runs only when chosen)",
                        )
                    )
                elif target_step is None and cand.target in spec.agents:
                    kind = spec.agents[cand.target].kind
                    if isinstance(kind, str) and kind in kinds:
                        target_kinds[kind] = None
                if cand.target not in steps and cand.target not in spec.agents:
                    hint = suggest(cand.target, [*steps, *spec.agents])
                    problems.append(
                        (
                            (*cpath, "target"),
                            f"unknown route target '{cand.target}': not a step or agent id{hint}",
                        )
                    )
                if isinstance(cand.confidence, str):
                    problems.extend(
                        _check_expressions(spec, sid, cand.confidence, (*cpath, "confidence"), ups)
                    )
            for kind in target_kinds:  # an agent target performs the route step's `with`
                problems.extend(_params_problems(kind, step.with_, (*base, "with")))
    return problems
