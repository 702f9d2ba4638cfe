"""engine/dag.py: cycles, order, depths, upstream/downstream, ready sets, semantic validation."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import dag
from engine.models import WorkflowSpec


def make(needs: dict[str, list[str]], **steps_extra: dict) -> WorkflowSpec:
    """A workflow whose steps have the given needs (all on one shell agent)."""
    steps = {
        sid: {"agent": "sh", "needs": ns, "with": {"run": "true"}, **steps_extra.get(sid, {})}
        for sid, ns in needs.items()
    }
    return WorkflowSpec.model_validate(
        {"name": "t", "agents": {"sh": {"kind": "shell"}}, "steps": steps}
    )


DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}


# --------------------------------------------------------------------------- find_cycle


def test_find_cycle_none_for_a_dag():
    assert dag.find_cycle(DIAMOND) is None
    assert dag.find_cycle({}) is None


def test_find_cycle_returns_a_closed_path():
    assert dag.find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_find_cycle_self_loop():
    assert dag.find_cycle({"x": [], "a": ["a"]}) == ["a", "a"]


def test_find_cycle_is_rotated_to_the_first_node_in_graph_order():
    # DFS from z enters the cycle at c, but a comes first in the mapping.
    graph = {"z": ["c"], "a": ["b"], "b": ["c"], "c": ["a"]}
    assert dag.find_cycle(graph) == ["a", "b", "c", "a"]
    assert dag.find_cycle(dict(graph)) == dag.find_cycle(graph)


def test_find_cycle_ignores_unknown_nodes_and_finds_late_cycles():
    graph = {"a": ["ghost"], "b": ["a"], "c": ["d"], "d": ["c"]}
    assert dag.find_cycle(graph) == ["c", "d", "c"]


def test_find_cycle_on_a_long_chain_does_not_recurse():
    n = 20_000
    graph = {f"s{i}": [f"s{i + 1}"] if i + 1 < n else [] for i in range(n)}
    assert dag.find_cycle(graph) is None
    graph[f"s{n - 1}"] = ["s0"]
    cycle = dag.find_cycle(graph)
    assert cycle is not None and len(cycle) == n + 1 and cycle[0] == cycle[-1] == "s0"


# --------------------------------------------------------------------------- order and shape


def test_topo_order_respects_needs_with_file_order_ties():
    assert dag.topo_order(make(DIAMOND)) == ["a", "b", "c", "d", "e"]
    spec = make({"late": ["early"], "early": [], "mid": []})
    assert dag.topo_order(spec) == ["early", "late", "mid"]


def test_topo_order_names_the_cycle():
    with pytest.raises(ValueError, match=r"dependency cycle: b -> c -> b"):
        dag.topo_order(make({"a": [], "b": ["c"], "c": ["b"]}))


def test_depths_are_longest_paths():
    spec = make({"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"], "e": []})
    assert dag.depths(spec) == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 0}


def test_depths_survive_cycles():
    spec = make({"a": [], "b": ["a", "c"], "c": ["b"], "d": ["c"]})
    assert dag.depths(spec) == {"a": 0, "b": 1, "c": 1, "d": 2}


def test_upstream_is_transitive():
    up = dag.upstream(make(DIAMOND))
    assert up == {
        "a": frozenset(),
        "b": frozenset({"a"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a", "b", "c"}),
        "e": frozenset(),
    }


def test_upstream_with_cycles_and_unknown_needs():
    spec = make({"a": ["ghost"], "b": ["a", "c"], "c": ["b"], "d": ["c"]})
    up = dag.upstream(spec)
    assert up["a"] == frozenset()
    assert up["b"] == up["c"] == frozenset({"a", "b", "c"})
    assert up["d"] == frozenset({"a", "b", "c"})


def test_dependents_and_descendants():
    spec = make({**DIAMOND, "f": ["d", "d"]})
    assert dag.dependents(spec) == {
        "a": ["b", "c"],
        "b": ["d"],
        "c": ["d"],
        "d": ["f"],
        "e": [],
        "f": [],
    }
    assert dag.descendants(spec, "a") == {"b", "c", "d", "f"}
    assert dag.descendants(spec, "e") == set()
    assert dag.descendants(spec, "nope") == set()


# --------------------------------------------------------------------------- ready sets


def test_ready_steps():
    spec = make(DIAMOND)
    assert dag.ready_steps(spec, {}) == ["a", "e"]
    assert dag.ready_steps(spec, {"a": "succeeded", "e": "running"}) == ["b", "c"]
    assert dag.ready_steps(spec, {"a": "succeeded", "b": "succeeded", "c": "failed"}) == ["e"]
    done = {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert dag.ready_steps(spec, {**done, "e": "succeeded"}) == ["d"]
    assert dag.ready_steps(spec, {**done, "d": "running", "e": "skipped"}) == []


def test_initial_waiting_counts_count_distinct_needs():
    spec = make({"a": [], "b": ["a", "a"], "c": ["a", "b"]})
    assert dag.initial_waiting_counts(spec) == {"a": 0, "b": 1, "c": 2}


@st.composite
def random_dags(draw):
    n = draw(st.integers(1, 25))
    needs = {}
    for i in range(n):
        earlier = [f"s{j}" for j in range(i)]
        needs[f"s{i}"] = draw(st.lists(st.sampled_from(earlier), max_size=4)) if earlier else []
    order = draw(st.permutations(list(needs)))  # file order is not topological order
    return {sid: needs[sid] for sid in order}


@settings(max_examples=150, deadline=None, database=None)
@given(random_dags(), st.randoms(use_true_random=False))
def test_incremental_counters_match_ready_steps(needs, rnd: random.Random):
    spec = make(needs)
    waiting = dag.initial_waiting_counts(spec)
    deps = dag.dependents(spec)
    statuses = {sid: "pending" for sid in spec.steps}
    ready = {sid for sid, n in waiting.items() if n == 0}
    finished = []
    while ready:
        assert ready == set(dag.ready_steps(spec, statuses))
        sid = rnd.choice(sorted(ready))
        ready.discard(sid)
        statuses[sid] = "succeeded"
        finished.append(sid)
        for child in deps[sid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.add(child)
    assert len(finished) == len(spec.steps)
    position = {sid: i for i, sid in enumerate(finished)}
    assert all(position[n] < position[s] for s, ns in needs.items() for n in ns)
    topo = dag.topo_order(spec)
    assert sorted(topo) == sorted(spec.steps)
    assert all(topo.index(n) < topo.index(s) for s, ns in needs.items() for n in ns)
    up = dag.upstream(spec)
    depth = dag.depths(spec)
    for s, ns in needs.items():
        assert set(ns) <= up[s]
        assert all(depth[s] > depth[n] for n in ns)
        assert all(s in dag.descendants(spec, n) for n in up[s])


def test_big_graph_functions_are_fast():
    n = 10_000
    spec = make({f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)})
    start = time.perf_counter()
    dag.topo_order(spec)
    dag.depths(spec)
    dag.dependents(spec)
    dag.ready_steps(spec, {})
    dag.initial_waiting_counts(spec)
    dag.validate(spec)
    assert time.perf_counter() - start < 3


# --------------------------------------------------------------------------- validate


def test_validate_returns_paths_and_messages():
    spec = make(
        {"a": ["b"], "b": ["a"], "c": ["nope"], "d": []},
        d={"with": {"run": "${{ steps.c.output.stdout }}"}},
    )
    assert dag.validate(spec) == [
        (("steps", "c", "needs", 0), "unknown step 'nope' (known: a, b, c, d)"),
        (("steps", "a", "needs"), "dependency cycle: a -> b -> a"),
        (
            ("steps", "d", "with", "run"),
            "${{ steps.c.output.stdout }}: step 'c' is not in the needs of 'd' "
            "(directly or transitively); add it to needs",
        ),
    ]


def test_validate_undo_may_use_output_before_and_itself():
    spec = make(
        {"a": [], "b": ["a"]},
        b={
            "destructive": True,
            "undo": {
                "with": {
                    "run": "${{ output.x }} ${{ before.y }} ${{ steps.b.output }} ${{ steps.a.output }}"
                },
                "capture": {"with": {"run": "${{ output.x }}"}},
            },
        },
    )
    assert dag.validate(spec) == [
        (
            ("steps", "b", "undo", "capture", "with", "run"),
            "${{ output.x }}: 'output' is only available in `undo.with` and `undo.description`",
        )
    ]


def test_validate_review_when_destructive_on_a_plain_step_is_fine():
    spec = make({"a": []}, a={"review": {"when": "destructive"}})
    assert dag.validate(spec) == []


def test_suggest():
    assert dag.suggest("neds", ["needs", "agent"]) == "; did you mean 'needs'?"
    assert dag.suggest("zzz", ["needs"]) == ""
