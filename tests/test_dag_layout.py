"""widgets/dag_layout.py: layered layout and edge routing on a character grid."""

from __future__ import annotations

import random

from widgets.dag_layout import ARROW, ROW_H, GraphNode, draw, layout


def grid(lay, cells) -> list[str]:
    rows = [[" "] * lay.width for _ in range(lay.height)]
    for (x, y), (ch, _) in cells.items():
        rows[y][x] = ch
    return ["".join(r) for r in rows]


def test_columns_by_depth_and_every_edge_arrives():
    nodes = [
        GraphNode("greet", 0), GraphNode("host", 0),
        GraphNode("shout", 1, ("greet",)), GraphNode("count", 1, ("greet",)),
        GraphNode("pause", 1, ("greet",)),
        GraphNode("summary", 2, ("shout", "count", "pause", "host")),
    ]  # fmt: skip
    lay = layout(nodes, {n.key: 10 for n in nodes})
    assert [len([s for s in layer if not s.dummy]) for layer in lay.layers] == [2, 3, 1]
    assert lay.slots["summary"].layer == 2
    # host -> summary skips a column: one pass-through slot in column 1.
    assert [s.key for s in lay.layers[1] if s.dummy] != []
    cells = draw(lay)
    rows = grid(lay, cells)
    for key in ("shout", "count", "pause", "summary"):
        slot = lay.slots[key]
        assert rows[slot.entry_row][lay.col_x[slot.layer] - 1] == ARROW, key
    for key in ("greet", "host"):
        slot = lay.slots[key]
        assert rows[slot.exit_row][lay.gutter_x[0]] != " ", key


def test_selected_node_edges_are_marked():
    nodes = [GraphNode("a", 0), GraphNode("b", 1, ("a",)), GraphNode("c", 2, ("b",))]
    lay = layout(nodes, {})
    roles = {role for _, role in draw(lay, "b").values()}
    assert roles == {"edge-in", "edge-out"}
    assert {role for _, role in draw(lay, None).values()} == {"edge"}


def test_a_straight_crossing_never_draws_a_junction():
    # a -> d crosses the entry line of c (b -> c) in the same gutter.
    nodes = [
        GraphNode("a", 0), GraphNode("b", 0),
        GraphNode("c", 1, ("b",)), GraphNode("d", 1, ("a",)),
    ]  # fmt: skip
    lay = layout(nodes, {}, sweeps=0)
    rows = grid(lay, draw(lay))
    assert "┼" not in "".join(rows)


def test_hundred_step_workflow_stays_compact():
    rng = random.Random(3)
    nodes = []
    for i in range(100):
        depth = i // 10
        needs = (
            tuple(f"s{j}" for j in rng.sample(range(depth * 10 - 10, depth * 10), 2))
            if depth
            else ()
        )
        nodes.append(GraphNode(f"s{i}", depth, needs))
    lay = layout(nodes, {n.key: 12 for n in nodes})
    assert len(lay.layers) == 10
    assert lay.height <= 10 * ROW_H * 2  # pass-through slots stay few
    cells = draw(lay, "s55")
    assert all(0 <= x < lay.width and 0 <= y < lay.height for x, y in cells)
    for n in nodes:
        if n.needs:
            slot = lay.slots[n.key]
            assert cells[(lay.col_x[slot.layer] - 1, slot.entry_row)][0] == ARROW
