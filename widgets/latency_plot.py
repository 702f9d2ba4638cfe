"""LatencyPlot: P50, P95 and P99 call latency per minute (textual-plotext).

Fed `engine.analytics.TimeSeriesPoint`s (t, p50_ms, p95_ms, p99_ms) via `show()`; redraws only
when the series changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from textual_plotext import PlotextPlot

LINES = (("p50_ms", "P50", "green"), ("p95_ms", "P95", "orange"), ("p99_ms", "P99", "red"))


class LatencyPlot(PlotextPlot):
    """Latency percentiles over time."""

    DEFAULT_CSS = """
    LatencyPlot {
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self._series: tuple = ()

    def on_mount(self) -> None:
        self._draw()

    def show(self, series: Sequence[Any]) -> None:
        key = tuple((p.t, p.p50_ms, p.p95_ms, p.p99_ms) for p in series)
        if key == self._series:
            return
        self._series = key
        self._draw()

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
            plt.plot(
                xs, [p[index] or 0 for p in points], label=label, color=color, marker="braille"
            )
        step = max(1, len(points) // 4)
        ticks = xs[::step]
        plt.xticks(ticks, [time.strftime("%H:%M", time.localtime(points[i][0])) for i in ticks])
        top = max((max(v or 0 for v in p[1:]) for p in points), default=0)
        plt.ylim(0, max(1.0, top * 1.1))
        self.refresh()
