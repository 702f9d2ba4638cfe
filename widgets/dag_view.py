"""DagView: a run's steps drawn as a graph, live.

Steps sit in columns by dependency depth with their edges drawn between columns (see
`widgets.dag_layout`); each step shows its status symbol and colour, its attempt n/m, its
duration or retry countdown. Arrow keys (or h/j/k/l) move the selection and the view scrolls
to keep it visible; the edges into the selected step are highlighted. `c` collapses finished
and pending steps of each column into one node per status, which keeps a 100-step workflow
readable; it starts collapsed for large runs.

Fed plain data (`engine.views.StepView`) through `show()`; posts `DagView.StepSelected`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.views import StepView
from widgets.base_style import BaseStyle
from widgets.dag_layout import ROW_H, GraphNode, Layout, draw, layout
from widgets.text import STATUS_CLASS, SYMBOLS, duration

GROUPABLE = ("succeeded", "skipped", "pending")
"""Statuses whose steps collapse into one node per column."""
AUTO_COLLAPSE = 40
"""Runs with more steps than this start collapsed."""
MAX_LABEL = 30


@dataclass(frozen=True, slots=True)
class _Node:
    key: str
    depth: int
    needs: tuple[str, ...]
    status: str
    step: StepView | None
    members: tuple[str, ...] = ()


class DagView(BaseStyle, ScrollView, can_focus=True):
    """The live DAG of one run."""

    DEFAULT_CSS = """
    DagView {
        height: 1fr;
        background: $surface;
        scrollbar-size: 1 1;
    }
    DagView > .dag--edge { color: $foreground 35%; }
    DagView > .dag--edge-in { color: $warning; text-style: bold; }
    DagView > .dag--edge-out { color: $accent; text-style: bold; }
    DagView > .dag--success { color: $success; }
    DagView > .dag--error { color: $error; text-style: bold; }
    DagView > .dag--warning { color: $warning; }
    DagView > .dag--accent { color: $accent; text-style: bold; }
    DagView > .dag--muted { color: $foreground 50%; }
    DagView > .dag--label { color: $foreground; }
    DagView > .dag--detail { color: $foreground 60%; }
    DagView > .dag--selected { background: $primary 40%; }
    DagView:focus > .dag--selected { background: $primary 70%; }
    """

    COMPONENT_CLASSES = {
        "dag--edge",
        "dag--edge-in",
        "dag--edge-out",
        "dag--success",
        "dag--error",
        "dag--warning",
        "dag--accent",
        "dag--muted",
        "dag--label",
        "dag--detail",
        "dag--selected",
    }

    BINDINGS = [
        Binding("up,k", "move(0, -1)", "Up", show=False, id="dag.up"),
        Binding("down,j", "move(0, 1)", "Down", show=False, id="dag.down"),
        Binding("left,h", "move(-1, 0)", "Left", show=False, id="dag.left"),
        Binding("right,l", "move(1, 0)", "Right", show=False, id="dag.right"),
        Binding("home", "first", "First", show=False, id="dag.first"),
        Binding("c", "toggle_collapse", "Collapse", id="dag.collapse"),
    ]

    selected: reactive[str | None] = reactive(None, layout=False, init=False)
    """Key of the selected node (a step id, or a group key when collapsed)."""
    collapsed: reactive[bool] = reactive(False, init=False)
    """Finished and pending steps are shown as one node per column and status."""

    class StepSelected(Message):
        """The selection moved to another node."""

        def __init__(self, dag: DagView, step_id: str | None, members: tuple[str, ...]):
            super().__init__()
            self.dag = dag
            self.step_id = step_id
            """The selected step (None when a collapsed group is selected)."""
            self.members = members
            """The steps of the selected group (empty for a single step)."""

        @property
        def control(self) -> DagView:
            return self.dag

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ):
        super().__init__(name=name, id=id, classes=classes)
        self._step_views: tuple[StepView, ...] = ()
        self._at = 0.0
        self._graph: dict[str, _Node] = {}
        self._graph_shape: tuple | None = None
        self._lay: Layout | None = None
        self._strips: list[Strip] = []
        self._texts: list[str] = []
        self._run_id: str | None = None
        self._dirty = False
        self._labels_now: dict[str, tuple[str, str]] = {}
        self._edges_key: tuple | None = None
        self._edges_cache: dict[tuple[int, int], tuple[str, str]] = {}

    # ------------------------------------------------------------------ data in

    def show(self, run_id: str, steps: Sequence[StepView], now: float) -> None:
        """Show these steps of run `run_id` at time `now` (cheap when nothing changed)."""
        steps = tuple(steps)
        if run_id == self._run_id and now == self._at and steps == self._step_views:
            return  # the same snapshot again
        if run_id != self._run_id:
            self._run_id = run_id
            self.set_reactive(DagView.collapsed, len(steps) > AUTO_COLLAPSE)
            self.set_reactive(DagView.selected, None)
        self._step_views = steps
        self._at = now
        self._rebuild()

    def step_node(self, key: str | None) -> StepView | None:
        node = self._graph.get(key or "")
        return node.step if node else None

    def members(self, key: str | None) -> tuple[str, ...]:
        node = self._graph.get(key or "")
        return node.members if node else ()

    # ------------------------------------------------------------------ model

    def _group_nodes(self) -> dict[str, _Node]:
        steps = self._step_views
        group_of: dict[str, str] = {}
        if self.collapsed:
            buckets: dict[tuple[int, str], list[str]] = {}
            for s in steps:
                if s.status in GROUPABLE:
                    buckets.setdefault((s.depth, s.status), []).append(s.step_id)
            for (depth, status), ids in buckets.items():
                if len(ids) > 1:
                    for sid in ids:
                        group_of[sid] = f"\x01{depth}:{status}"
        nodes: dict[str, _Node] = {}
        members: dict[str, list[str]] = {}
        needs: dict[str, dict[str, None]] = {}
        for s in steps:
            key = group_of.get(s.step_id, s.step_id)
            mapped = {group_of.get(n, n): None for n in s.needs}
            if key in nodes:
                members[key].append(s.step_id)
                needs[key].update(mapped)
                continue
            members[key] = [s.step_id]
            needs[key] = mapped
            nodes[key] = _Node(key, s.depth, (), s.status, None if key != s.step_id else s)
        return {
            key: _Node(
                key,
                n.depth,
                tuple(k for k in needs[key] if k != key),
                n.status,
                n.step,
                tuple(members[key]) if n.step is None else (),
            )
            for key, n in nodes.items()
        }

    def _labels(self, node: _Node) -> tuple[str, str]:
        sym = SYMBOLS.get(node.status, "?")
        if node.step is None:
            n = len(node.members)
            return f" {sym} {n} {node.status.replace('_', ' ')}", "   " + _shorten(
                ", ".join(node.members), MAX_LABEL - 3
            )
        s = node.step
        line1 = f" {sym} {s.step_id}"
        attempt = f"{s.attempt}/{s.max_attempts}" if s.attempt else f"0/{s.max_attempts}"
        retry_in = s.retry_in(self._at)
        if retry_in is not None:
            line2 = f"   ↻ {attempt} in {duration(retry_in)}"
        elif s.status == "waiting_review":
            line2 = "   awaiting review"
        elif s.status in ("pending", "ready"):
            line2 = "   waiting for needs" if s.needs else "   ready"
        elif s.status == "skipped":
            line2 = "   skipped"
        else:
            line2 = f"   {attempt} · {duration(s.duration(self._at))}"
        return line1, line2

    def _rebuild(self) -> None:
        self._graph = nodes = self._group_nodes()
        shape = tuple((n.key, n.depth, n.needs) for n in nodes.values())
        labels = {key: self._labels(n) for key, n in nodes.items()}
        previous_lay = self._lay
        if shape != self._graph_shape or self._lay is None:
            widths = {
                key: min(MAX_LABEL, max(len(a), len(b)) + 2) for key, (a, b) in labels.items()
            }
            self._lay = layout([GraphNode(n.key, n.depth, n.needs) for n in nodes.values()], widths)
            self._graph_shape = shape
        if self.selected not in nodes:
            first = next(iter(nodes), None)
            active = next(
                (
                    k
                    for k, n in nodes.items()
                    if n.status in ("running", "retrying", "waiting_review", "failed")
                ),
                first,
            )
            self.set_reactive(DagView.selected, active)
            self._announce()
        same_layout = self._lay is previous_lay
        self._labels_now = labels
        self.virtual_size = Size(self._lay.width, self._lay.height)
        if same_layout and not self._dirty and self._strips and self.is_mounted:
            # Live data on the same graph: repaint now and refresh only the rows that differ
            # (a snapshot that moves two steps on redraws four lines, not the whole view).
            before = self._strips
            self._paint(labels)
            changed = [
                y
                for y, (old, new) in enumerate(zip(before, self._strips, strict=True))
                if old != new
            ]
            start = 0
            for i, y in enumerate(changed):  # one refresh per run of adjacent rows
                if i + 1 == len(changed) or changed[i + 1] != y + 1:
                    self.refresh_lines(changed[start], y - changed[start] + 1)
                    start = i + 1
            return
        self._dirty = True
        self.refresh()

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"dag--{name}")

    def _edges(self) -> dict[tuple[int, int], tuple[str, str]]:
        key = (id(self._lay), self.selected)
        if self._edges_key != key:
            assert self._lay is not None
            self._edges_cache = draw(self._lay, self.selected)
            self._edges_key = key
        return self._edges_cache

    def _paint(self, labels: dict[str, tuple[str, str]]) -> None:
        lay = self._lay
        assert lay is not None
        self._dirty = False
        base = self.base_style
        width, height = lay.width, lay.height
        chars = [[" "] * width for _ in range(height)]
        styles: list[list[Style | None]] = [[None] * width for _ in range(height)]
        edge_styles = {name: self._style(name) for name in ("edge", "edge-in", "edge-out")}
        for (x, y), (ch, role) in self._edges().items():
            if 0 <= x < width and 0 <= y < height:
                chars[y][x] = ch
                styles[y][x] = edge_styles[role]
        label_style = self._style("label")
        detail_style = self._style("detail")
        selected_style = Style(bgcolor=self._style("selected").bgcolor)
        for li, column in enumerate(lay.layers):
            x0, w = lay.col_x[li], lay.col_w[li]
            for slot in column:
                if slot.dummy:
                    continue
                node = self._graph[slot.key]
                line1, line2 = labels[slot.key]
                status_style = self._style(STATUS_CLASS.get(node.status, "muted"))
                y = slot.entry_row
                text1 = _shorten(line1, w - 1).ljust(w - 1)
                text2 = _shorten(line2, w - 1)
                sel = slot.key == self.selected
                for i, ch in enumerate(text1):
                    style = status_style if i < 3 else label_style
                    if node.step is None:
                        style = status_style
                    chars[y][x0 + i] = ch
                    styles[y][x0 + i] = style + selected_style if sel else style
                if sel:
                    chars[y][x0 + w - 1] = " "
                    styles[y][x0 + w - 1] = label_style + selected_style
                for i, ch in enumerate(text2):
                    chars[y + 1][x0 + i] = ch
                    style = (
                        status_style
                        if node.status in ("retrying", "waiting_review")
                        else detail_style
                    )
                    styles[y + 1][x0 + i] = style
                # Join the detail line to the edge leaving this node.
                if li < len(lay.gutter_x) and chars[y + 1][lay.gutter_x[li]] != " ":
                    edge_style = styles[y + 1][lay.gutter_x[li]]
                    for x in range(x0 + len(text2) + 1, lay.gutter_x[li]):
                        chars[y + 1][x] = "─"
                        styles[y + 1][x] = edge_style
        self._strips = []
        self._texts = ["".join(row) for row in chars]
        for row_chars, row_styles in zip(chars, styles, strict=True):
            segments: list[Segment] = []
            run: list[str] = []
            current: Style | None = None
            for ch, st in zip(row_chars, row_styles, strict=True):
                st = st or base
                if st is not current and run:
                    segments.append(Segment("".join(run), current))
                    run = []
                current = st
                run.append(ch)
            if run:
                segments.append(Segment("".join(run), current))
            self._strips.append(Strip(segments, width))

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        if self._dirty and self._lay is not None:
            self._paint(self._labels_now)
        scroll_x, scroll_y = self.scroll_offset
        row = y + scroll_y
        width = self.scrollable_content_region.width
        if row >= len(self._strips):
            return Strip.blank(width, self.base_style)
        strip = self._strips[row].crop_extend(scroll_x, scroll_x + width, self.base_style)
        text, end = self._texts[row], scroll_x + width
        if width > 1 and end < len(text) and _is_label(text[end - 1]) and _goes_on(text, end):
            # A label goes on past the right edge: say so rather than cut it silently.
            style = next((seg.style for seg in strip.crop(width - 1, width)), None)
            strip = Strip.join([strip.crop(0, width - 1), Strip([Segment("…", style)], 1)])
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._dirty = True  # repaint with the new styles at the next render

    # ------------------------------------------------------------------ selection

    def watch_selected(self, old: str | None, new: str | None) -> None:
        if self._lay is not None:
            self._dirty = True
            self.refresh()
        self._scroll_to_selected()
        self._announce()

    def watch_collapsed(self, collapsed: bool) -> None:
        previous = self.selected
        self._rebuild()
        if previous and previous not in self._graph:
            for key, node in self._graph.items():
                if previous in node.members:
                    self.selected = key
                    break
        elif previous and previous.startswith("\x01"):
            self.selected = next(iter(self._graph), None)

    def _announce(self) -> None:
        key = self.selected
        node = self._graph.get(key or "")
        if node is None:
            self.post_message(self.StepSelected(self, None, ()))
        else:
            self.post_message(
                self.StepSelected(self, node.step.step_id if node.step else None, node.members)
            )

    def _scroll_to_selected(self) -> None:
        """Bring the selection into view, with the column before it when that fits (the
        steps it needs are then on screen too); nothing moves while it is visible."""
        lay = self._lay
        slot = lay.slots.get(self.selected or "") if lay else None
        if lay is None or slot is None:
            return
        width = self.scrollable_content_region.width
        height = self.scrollable_content_region.height
        x0 = lay.col_x[slot.layer]
        x1 = x0 + lay.col_w[slot.layer]
        sx, sy = int(self.scroll_x), int(self.scroll_y)
        if x0 < sx or x1 > sx + width:
            before = lay.col_x[slot.layer - 1] if slot.layer else 0
            sx = before if x1 - before <= width else x0
        y0 = slot.entry_row
        if y0 < sy or y0 + 2 > sy + height:
            sy = max(0, y0 - height // 3)
        if (sx, sy) != (int(self.scroll_x), int(self.scroll_y)):
            self.scroll_to(sx, sy, animate=False, immediate=True)

    def select(self, key: str) -> None:
        """Select a step (or the group holding it)."""
        if key in self._graph:
            self.selected = key
            return
        for k, node in self._graph.items():
            if key in node.members:
                self.selected = k
                return

    def action_move(self, dx: int, dy: int) -> None:
        lay = self._lay
        if lay is None or not lay.layers:
            return
        slot = lay.slots.get(self.selected or "")
        if slot is None:
            self.action_first()
            return
        if dy:
            column = [s for s in lay.layers[slot.layer] if not s.dummy]
            i = column.index(slot) + dy
            if 0 <= i < len(column):
                self.selected = column[i].key
            return
        layer = slot.layer + dx
        while 0 <= layer < len(lay.layers):
            column = [s for s in lay.layers[layer] if not s.dummy]
            if column:
                best = min(column, key=lambda s: abs(s.index - slot.index))
                self.selected = best.key
                return
            layer += dx

    def action_first(self) -> None:
        if self._lay and self._lay.layers:
            column = [s for s in self._lay.layers[0] if not s.dummy]
            if column:
                self.selected = column[0].key

    def action_toggle_collapse(self) -> None:
        self.collapsed = not self.collapsed

    def on_click(self, event: Click) -> None:
        if self._lay is None:
            return
        x, y = event.x + int(self.scroll_x), event.y + int(self.scroll_y)
        slot = self._lay.slot_at(x, y)
        if slot is not None:
            self.selected = slot.key

    def on_resize(self) -> None:
        self._scroll_to_selected()


def _is_label(ch: str) -> bool:
    """A character of a node's text (not blank, not part of an edge)."""
    return ch != " " and not ("\u2500" <= ch <= "\u257f") and ch != "▶"


def _goes_on(text: str, x: int) -> bool:
    """The label text continues at column `x` (or after one blank, as in `a, b`)."""
    return _is_label(text[x]) or (text[x] == " " and x + 1 < len(text) and _is_label(text[x + 1]))


def _shorten(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


__all__ = ["ROW_H", "DagView"]
