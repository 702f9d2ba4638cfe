"""Layered layout of a DAG for a character grid (pure Python: no Textual, no Rich).

Nodes sit in columns by depth (left to right). A node is two lines tall (`ROW_H` rows with
the blank line between nodes); edges leave a node on its second line and enter the next node
on its first line, through a gutter between two columns in which every target has a vertical
track. Sources and targets therefore never share a row, so two horizontal lines never overlap;
targets whose vertical spans do not overlap share a track, which keeps gutters narrow. An edge
that skips columns goes through pass-through slots ("dummies"), one per source and column,
shared by every long edge of that source. Slots in a column are ordered by a few barycenter
sweeps to reduce crossings.

A pass-through slot level with its source is entered straight on the exit row; otherwise it is
entered on its first row and steps down a row at its left edge.

`layout(nodes, widths)` computes positions once per graph shape; `draw(layout, selected)` routes
the edges into a grid of (char, role) cells, where role is `edge`, `edge-in` (an edge into the
selected node) or `edge-out` (out of it); where two lines only cross, the horizontal one is
drawn whole (the vertical one jumps it) so that a crossing never looks like a junction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ROW_H = 3
"""Rows per node slot: label line, detail line, blank line."""

U, D, L, R = 1, 2, 4, 8
BOX = {
    L | R: "─",
    L: "─",
    R: "─",
    U | D: "│",
    U: "│",
    D: "│",
    D | R: "╭",
    D | L: "╮",
    U | R: "╰",
    U | L: "╯",
    U | D | R: "├",
    U | D | L: "┤",
    L | R | D: "┬",
    L | R | U: "┴",
    U | D | L | R: "┼",
}
ARROW = "▶"
ROLE_RANK = {"edge": 0, "edge-out": 1, "edge-in": 2}


@dataclass(frozen=True, slots=True)
class GraphNode:
    """A node as the layout sees it."""

    key: str
    depth: int
    needs: tuple[str, ...] = ()


@dataclass(slots=True)
class Slot:
    """A place in a column: a node, or a pass-through of the long edges of `source`."""

    key: str
    layer: int
    dummy: bool = False
    index: int = 0

    @property
    def entry_row(self) -> int:
        return self.index * ROW_H

    @property
    def exit_row(self) -> int:
        return self.index * ROW_H + 1


@dataclass(slots=True)
class Segment:
    """An edge piece between two adjacent columns."""

    src: Slot
    dst: Slot
    edges: set[tuple[str, str]] = field(default_factory=set)
    """The (need, step) edges of the graph that run through this piece."""


@dataclass(slots=True)
class Layout:
    """Positions of every slot and the gutters' tracks."""

    layers: list[list[Slot]]
    slots: dict[str, Slot]
    segments: list[Segment]
    col_x: list[int]
    col_w: list[int]
    gutter_x: list[int]
    """x of the first column of the gutter after each layer (the last one has none)."""
    tracks: dict[tuple[int, str], int]
    """(layer of the target, target slot key) -> x of its vertical track."""
    width: int
    height: int

    def slot_at(self, x: int, y: int) -> Slot | None:
        """The node slot whose label or detail line covers (x, y)."""
        for layer, x0 in enumerate(self.col_x):
            if x0 <= x < x0 + self.col_w[layer]:
                index, within = divmod(y, ROW_H)
                if within < 2 and 0 <= index < len(self.layers[layer]):
                    slot = self.layers[layer][index]
                    return None if slot.dummy else slot
        return None


def _dummy_key(source: str, layer: int) -> str:
    return f"\x00{source}\x00{layer}"


def layout(
    nodes: Sequence[GraphNode],
    widths: Mapping[str, int],
    *,
    sweeps: int = 4,
    min_width: int = 8,
) -> Layout:
    """Place `nodes` (in their given order within a depth) and route their edges' slots.

    `widths[key]` is the label width a node needs. Needs naming unknown nodes, or nodes that
    are not deeper than their need (inconsistent data), are not drawn.
    """
    by_key = {n.key: n for n in nodes}
    depth_of = {n.key: max(0, n.depth) for n in nodes}
    n_layers = (max(depth_of.values()) + 1) if nodes else 0
    layers: list[list[Slot]] = [[] for _ in range(n_layers)]
    slots: dict[str, Slot] = {}
    for n in nodes:
        slot = Slot(n.key, depth_of[n.key])
        slots[n.key] = slot
        layers[slot.layer].append(slot)

    segs: dict[tuple[str, str], Segment] = {}

    def link(a: Slot, b: Slot, edge: tuple[str, str]) -> None:
        seg = segs.get((a.key, b.key))
        if seg is None:
            seg = segs[(a.key, b.key)] = Segment(a, b)
        seg.edges.add(edge)

    for n in nodes:
        target = slots[n.key]
        for need in dict.fromkeys(n.needs):
            if need not in by_key or depth_of[need] >= target.layer:
                continue
            prev = slots[need]
            for layer in range(prev.layer + 1, target.layer):
                key = _dummy_key(need, layer)
                dummy = slots.get(key)
                if dummy is None:
                    dummy = slots[key] = Slot(key, layer, dummy=True)
                    layers[layer].append(dummy)
                link(prev, dummy, (need, n.key))
                prev = dummy
            link(prev, target, (need, n.key))
    segments = list(segs.values())
    _order(layers, segments, sweeps)

    col_w = [
        max([min_width, *(widths.get(s.key, min_width) for s in layer if not s.dummy)])
        for layer in layers
    ]
    tracks: dict[tuple[int, str], int] = {}
    col_x: list[int] = []
    gutter_x: list[int] = []
    x = 0
    for layer in range(n_layers):
        col_x.append(x)
        x += col_w[layer]
        if layer == n_layers - 1:
            break
        gutter_x.append(x)
        assigned = _assign_tracks([s for s in segments if s.src.layer == layer], first_x=x + 1)
        tracks.update({(layer + 1, key): tx for key, tx in assigned.items()})
        used = max(assigned.values(), default=x) - x
        x += max(used + 3, 4)
    height = max((len(layer) * ROW_H - 1 for layer in layers), default=0)
    return Layout(layers, slots, segments, col_x, col_w, gutter_x, tracks, x, height)


def _order(layers: list[list[Slot]], segments: list[Segment], sweeps: int) -> None:
    preds: dict[str, list[Slot]] = {}
    succs: dict[str, list[Slot]] = {}
    for seg in segments:
        preds.setdefault(seg.dst.key, []).append(seg.src)
        succs.setdefault(seg.src.key, []).append(seg.dst)

    def renumber(layer: list[Slot]) -> None:
        for i, slot in enumerate(layer):
            slot.index = i

    for layer in layers:
        renumber(layer)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        order = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        near = preds if down else succs
        for li in order:
            layer = layers[li]

            def bary(slot: Slot, near=near) -> float:
                others = near.get(slot.key)
                if not others:
                    return float(slot.index)
                return sum(o.index for o in others) / len(others)

            layer.sort(key=bary)
            renumber(layer)


def straight(seg: Segment) -> bool:
    """A piece into a pass-through slot level with its source runs as one horizontal line."""
    return seg.dst.dummy and seg.dst.index == seg.src.index


def _assign_tracks(segments: Iterable[Segment], *, first_x: int) -> dict[str, int]:
    """One track per target; targets whose row spans are apart share a track."""
    spans: dict[str, list[int]] = {}
    for seg in segments:
        if straight(seg):
            continue
        rows = spans.setdefault(seg.dst.key, [seg.dst.entry_row, seg.dst.entry_row])
        rows[0] = min(rows[0], seg.src.exit_row)
        rows[1] = max(rows[1], seg.src.exit_row)
    result: dict[str, int] = {}
    # Longer spans go left: a short span's entry line then rarely crosses a longer track.
    used: list[list[tuple[int, int]]] = []  # per track: row spans on it
    for key, (top, bottom) in sorted(spans.items(), key=lambda kv: (kv[1][0] - kv[1][1], kv[1][0])):
        for t, taken in enumerate(used):
            if all(bottom < a - 1 or top > b + 1 for a, b in taken):
                taken.append((top, bottom))
                result[key] = first_x + t
                break
        else:
            used.append([(top, bottom)])
            result[key] = first_x + len(used) - 1
    return result


# --------------------------------------------------------------------------- routing


@dataclass(slots=True)
class _Cell:
    bits: int = 0
    role: str = "edge"
    parts: dict[tuple[str, str], int] = field(default_factory=dict)
    """(source slot, target slot) -> bits that segment contributes here."""


Cells = dict[tuple[int, int], _Cell]


def _add(cells: Cells, x: int, y: int, bits: int, seg: Segment, role: str) -> None:
    cell = cells.get((x, y))
    if cell is None:
        cell = cells[(x, y)] = _Cell()
    cell.bits |= bits
    key = (seg.src.key, seg.dst.key)
    cell.parts[key] = cell.parts.get(key, 0) | bits
    if ROLE_RANK[role] > ROLE_RANK[cell.role]:
        cell.role = role


def _hline(cells: Cells, y: int, x0: int, x1: int, seg: Segment, role: str) -> None:
    """Horizontal line from x0 to x1 (inclusive ends get only the inward half)."""
    for x in range(x0, x1):
        _add(cells, x, y, R, seg, role)
        _add(cells, x + 1, y, L, seg, role)


def _vline(cells: Cells, x: int, y0: int, y1: int, seg: Segment, role: str) -> None:
    top, bottom = min(y0, y1), max(y0, y1)
    for y in range(top, bottom):
        _add(cells, x, y, D, seg, role)
        _add(cells, x, y + 1, U, seg, role)


def draw(lay: Layout, selected: str | None = None) -> dict[tuple[int, int], tuple[str, str]]:
    """Edge cells: (x, y) -> (character, role). Node labels are drawn over this by the caller."""
    cells: Cells = {}
    for seg in lay.segments:
        role = "edge"
        if selected is not None:
            if any(v == selected for _, v in seg.edges):
                role = "edge-in"
            elif any(u == selected for u, _ in seg.edges):
                role = "edge-out"
        src, dst = seg.src, seg.dst
        gx = lay.gutter_x[src.layer]
        arrow_x = lay.col_x[dst.layer] - 1
        if straight(seg):
            _hline(cells, src.exit_row, gx, arrow_x + 1, seg, role)
            continue
        tx = lay.tracks[(dst.layer, dst.key)]
        _hline(cells, src.exit_row, gx, tx, seg, role)
        _vline(cells, tx, src.exit_row, dst.entry_row, seg, role)
        _hline(cells, dst.entry_row, tx, arrow_x, seg, role)
    # Pass-through slots: in on their first row, down a row at the left edge, out on the second.
    for layer in lay.layers:
        for slot in layer:
            if not slot.dummy:
                continue
            segs_in = [s for s in lay.segments if s.dst is slot]
            segs_out = [s for s in lay.segments if s.src is slot]
            seg = (segs_out or segs_in)[0]
            role = max(
                (_role_of(s, selected) for s in segs_in + segs_out),
                key=ROLE_RANK.__getitem__,
                default="edge",
            )
            x0 = lay.col_x[slot.layer]
            x1 = x0 + lay.col_w[slot.layer]
            if not (segs_in and straight(segs_in[0])):
                _add(cells, x0, slot.entry_row, L | D, seg, role)
                _add(cells, x0, slot.exit_row, U | R, seg, role)
            _hline(cells, slot.exit_row, x0, x1, seg, role)
    out = {xy: (_char(cell), cell.role) for xy, cell in cells.items()}
    for layer_index, layer in enumerate(lay.layers):
        x = lay.col_x[layer_index] - 1
        for slot in layer:
            if not slot.dummy and (layer_index, slot.key) in lay.tracks:
                out[(x, slot.entry_row)] = (ARROW, out[(x, slot.entry_row)][1])
    return out


def _role_of(seg: Segment, selected: str | None) -> str:
    if selected is None:
        return "edge"
    if any(v == selected for _, v in seg.edges):
        return "edge-in"
    if any(u == selected for u, _ in seg.edges):
        return "edge-out"
    return "edge"


def _char(cell: _Cell) -> str:
    bits = cell.bits
    if bits == U | D | L | R and all(b in (L | R, U | D) for b in cell.parts.values()):
        return "─"  # lines only cross here (no line turns): keep the horizontal whole
    return BOX.get(bits, "┼")
