"""Charts people read, drawn with matplotlib (Agg: no display needed), as PNG files or inline SVG.

    figure = value_chart({"ort fp32": ([2.07], [0.41]), "ort int8": ([2.07], [0.25])},
                         title="p50 latency", x_label="megapixels", y_label="seconds")
    save_png(figure, "latency.png");  html = inline_svg(figure)

- `value_chart`: one value per series (e.g. one resolution): horizontal bars with their values
  written at the bar ends; several values: curves with markers. The axis becomes logarithmic
  where the values span more than `LOG_SPAN` (a wide range is unreadable on a linear axis).
- `labelled_points`: points on a plane (speed vs accuracy), a colour per series, each point labelled.
- `line_chart`: curves over steps (training losses), optionally on a log y axis.
Every function returns a matplotlib Figure, closed by save_png / inline_svg.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

from mattrt.errors import InputError
from mattrt.lazy import lazy_import

matplotlib = lazy_import("matplotlib")
pyplot = lazy_import("matplotlib.pyplot")

LOG_SPAN = 20.0  # max/min ratio above which an axis is logarithmic
WIDTH_INCHES = 7.5
DPI = 110

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _figure(height: float = 4.2):
    matplotlib.use("Agg", force=True)
    figure, axes = pyplot.subplots(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    axes.grid(True, alpha=0.3)
    return figure, axes


def _wide(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return len(positive) > 1 and max(positive) / min(positive) > LOG_SPAN


def _format(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _check(series: Series) -> None:
    if not series:
        raise InputError("a chart needs at least one series")
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys) or not len(xs):
            raise InputError(f"series {label!r}: x and y must be non-empty and of equal length")


def value_chart(series: Series, *, title: str, x_label: str, y_label: str, value_unit: str = ""):
    """Bars with their values when every series has one point at one shared x; curves otherwise."""
    _check(series)
    xs = {x for points, _ in series.values() for x in points}
    if all(len(points) == 1 for points, _ in series.values()) and len(xs) == 1:
        suffix = f" ({x_label} {_format(next(iter(xs)))})" if x_label else ""
        return _bars(series, title=title + suffix, value_label=y_label, value_unit=value_unit)
    figure, axes = _figure()
    for label, (points, values) in series.items():
        order = sorted(range(len(points)), key=lambda i: points[i])
        axes.plot([points[i] for i in order], [values[i] for i in order], marker="o", label=label)
    all_x = [x for points, _ in series.values() for x in points]
    all_y = [y for _, values in series.values() for y in values]
    if _wide(all_x):
        axes.set_xscale("log")
    if _wide(all_y):
        axes.set_yscale("log")
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.legend(fontsize="small", loc="best")
    return figure


def _bars(series: Series, *, title: str, value_label: str, value_unit: str):
    labels = list(series)
    values = [series[label][1][0] for label in labels]
    figure, axes = _figure(height=max(2.2, 0.45 * len(labels) + 1.2))
    positions = range(len(labels))
    axes.barh(positions, values, color=[f"C{i % 10}" for i in positions])
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()  # the first series on top
    if _wide(values):
        axes.set_xscale("log")
    top = max(values) if values else 1.0
    for position, value in zip(positions, values):
        axes.text(value, position, f" {_format(value)}{value_unit}", va="center", fontsize="small")
    if not _wide(values):
        axes.set_xlim(0, top * 1.18 if top > 0 else 1.0)
    axes.set(title=title, xlabel=value_label)
    axes.grid(True, axis="x", alpha=0.3)
    axes.grid(False, axis="y")
    return figure


def labelled_points(points: Sequence[tuple[str, str, float, float]], *, title: str, x_label: str, y_label: str):
    """Points on a plane (e.g. p50 seconds against SAD per megapixel): one colour and legend entry
    per series, each point annotated with its own label (e.g. the resolution). Points of one
    series are joined by a thin line when there are several."""
    if not points:
        raise InputError("a chart needs at least one point")
    figure, axes = _figure()
    series: dict[str, list[tuple[str, float, float]]] = {}
    for name, label, x, y in points:
        series.setdefault(name, []).append((label, x, y))
    for index, (name, members) in enumerate(series.items()):
        colour = f"C{index % 10}"
        members.sort(key=lambda m: m[1])
        axes.plot([m[1] for m in members], [m[2] for m in members], marker="o", color=colour, label=name,
                  linewidth=0.8 if len(members) > 1 else 0, zorder=3)
        for position, (label, x, y) in enumerate(members):
            if label:
                axes.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5 if position % 2 == 0 else -11),
                              fontsize="x-small", color=colour)
    if _wide([p[2] for p in points]):
        axes.set_xscale("log")
    if _wide([p[3] for p in points]):
        axes.set_yscale("log")
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.legend(fontsize="small", loc="best")
    axes.margins(0.12)
    return figure


def line_chart(series: Series, *, title: str, x_label: str, y_label: str, log_y: bool = False):
    """Curves over steps (training losses)."""
    _check(series)
    figure, axes = _figure()
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, label=label, linewidth=1.2)
    if log_y:
        axes.set_yscale("log")
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.legend(fontsize="small")
    return figure


def save_png(figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path


def inline_svg(figure) -> str:
    """The figure as an <svg> element for an HTML page (no XML header)."""
    buffer = io.StringIO()
    try:
        figure.savefig(buffer, format="svg")
    finally:
        pyplot.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


__all__ = ["LOG_SPAN", "inline_svg", "labelled_points", "line_chart", "save_png", "value_chart"]
