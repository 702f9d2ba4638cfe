"""LatencyPlot: P50, P95 and P99 call latency per minute (textual-plotext).

Fed `engine.analytics.TimeSeriesPoint`s (t, p50_ms, p95_ms, p99_ms) via `show()`. Building a
plotext figure costs tens of milliseconds, so the drawn plot is cached (by size, theme and
data) and new data is taken at most every `min_interval` seconds unless a minute was added.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from textual_plotext import PlotextPlot

from widgets.text import millis

LINES = (("p50_ms", "P50", "green"), ("p95_ms", "P95", "orange"), ("p99_ms", "P99", "red"))


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and `count` round steps (1, 2 or 5 x 10^n ms) reaching at least `top`."""
    top = max(top, 1.0)
    raw = top / count
    magnitude = 10 ** len(str(int(raw))) / 10
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(count + 1) if step * (i - 1) < top]


class LatencyPlot(PlotextPlot):
    """Latency percentiles over time."""

    DEFAULT_CSS = """
    LatencyPlot {
        height: 1fr;
        min-height: 6;
    }
    """

    min_interval = 5.0
    """Least seconds between two redraws with new values (a new minute redraws at once)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._series: tuple = ()
        self._taken = float("-inf")
        self._plot_cache: tuple[tuple, RenderableType] | None = None

    def on_mount(self) -> None:
        self._draw()

    def show(self, series: Sequence[Any]) -> None:
        key = tuple((p.t, p.p50_ms, p.p95_ms, p.p99_ms) for p in series)
        if key == self._series:
            return
        same_minutes = [p[0] for p in key] == [p[0] for p in self._series]
        if same_minutes and time.monotonic() - self._taken < self.min_interval:
            return
        self._series = key
        self._taken = time.monotonic()
        self._draw()

    def render(self) -> RenderableType:
        key = (self.size, self.app.theme, self._series)
        if self._plot_cache is None or self._plot_cache[0] != key:
            self._plot_cache = (key, super().render())
        return self._plot_cache[1]

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        points = [p for p in self._series if p[1] is not None]
        if not points:
            plt.title("no calls in the window yet")
            plt.xticks([], [])
            plt.yticks([], [])
            self.refresh()
            return
        plt.title("ms per minute")
        xs = list(range(len(points)))
        for index, (_, label, color) in enumerate(LINES, start=1):
            plt.plot(xs, [p[index] or 0 for p in points], label=label, color=color, marker="hd")
        step = max(1, len(points) // 4)
        ticks = xs[::step]
        plt.xticks(ticks, [time.strftime("%H:%M", time.localtime(points[i][0])) for i in ticks])
        top = max((max(v or 0 for v in p[1:]) for p in points), default=0)
        ticks = nice_ticks(top)
        plt.ylim(0, ticks[-1])
        plt.yticks(ticks, [millis(t) if t else "0" for t in ticks])
        self.refresh()
