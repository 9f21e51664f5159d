"""The charts of the monitoring report, drawn with matplotlib and returned as base64 PNG.

Each chart function returns ``(base64 PNG, alt text)``, or None when the store holds no
value for it yet. Only values with the status "ok" are drawn; a day without one is a gap.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd


THRESHOLD_COLOR = "#c0392b"
LINE_COLOR = "#1d3557"
SERIES_COLORS = ("#1d3557", "#e76f51", "#2a9d8f")
FIGURE_DPI = 90


def encode_png(figure) -> str:
    """Return ``figure`` as base64 PNG text and close it."""
    buffer = io.BytesIO()
    # No Software entry in the PNG metadata, so the bytes depend only on the chart.
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Series:
    """Metric values by day, read from the report's metric rows, and the rule thresholds."""

    def __init__(self, metrics: pd.DataFrame, rules: list[Any]):
        self.rules = rules
        frame = metrics.copy()
        frame["date"] = pd.to_datetime(frame["partition_date"])
        frame["feature"] = frame["feature"].where(frame["feature"].notna(), None)
        self.frame = frame
        self.days = sorted(frame["date"].unique()) if len(frame) else []

    def values(self, metric: str, feature: str | None = None) -> pd.Series:
        """Return the ok values of one metric (and feature) indexed by date."""
        frame = self.frame
        if not len(frame):
            return pd.Series(dtype="float64")
        mask = (frame["metric"] == metric) & (frame["status"] == "ok") & frame["value"].notna()
        mask &= frame["feature"].isna() if feature is None else (frame["feature"] == feature)
        rows = frame[mask]
        return pd.Series(rows["value"].to_numpy(dtype="float64"), index=rows["date"]).sort_index()

    def features(self, metric: str) -> list[str]:
        frame = self.frame
        if not len(frame):
            return []
        return sorted(frame.loc[(frame["metric"] == metric) & frame["feature"].notna(), "feature"].unique())

    def thresholds(self, metric: str, feature: str | None = None) -> list[tuple[str, float]]:
        """Return (rule name, threshold) of each rule that checks this metric and feature."""
        return [
            (rule.name, rule.threshold)
            for rule in self.rules
            if rule.metric == metric and (not rule.features or feature in rule.features)
        ]


def _pyplot():
    from loopline.evaluation import pyplot

    return pyplot()


def _format_dates(axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=2, maxticks=6)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _draw_series(axes, series: Series, metrics: tuple[str, ...], feature: str | None, title: str) -> bool:
    """Draw one panel; return False when none of its metrics has a value."""
    drawn = False
    for index, metric in enumerate(metrics):
        values = series.values(metric, feature)
        if not len(values):
            continue
        # Reindexing on every day leaves a gap (NaN) where a day has no value.
        values = values.reindex(series.days)
        label = metric.replace("_", " ") if len(metrics) > 1 else None
        axes.plot(values.index, values.to_numpy(), marker="o", markersize=3, linewidth=1.4, color=SERIES_COLORS[index % 3], label=label)
        drawn = True
        for rule, threshold in series.thresholds(metric, feature):
            axes.axhline(threshold, color=THRESHOLD_COLOR, linestyle="--", linewidth=1, label=f"{rule} ({threshold:g})")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.tick_params(labelsize=8)
    if drawn:
        _format_dates(axes)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
    else:
        axes.text(0.5, 0.5, "no value yet", ha="center", va="center", transform=axes.transAxes, color="#7b8794")
        axes.set_xticks([])
        axes.set_yticks([])
    return drawn


def feature_grid(series: Series, title: str, columns: int) -> tuple[str, str] | None:
    """Return one PSI chart per feature, numerical then categorical, on a grid."""
    panels = [("psi", name, name) for name in series.features("psi")]
    panels += [("categorical_psi", name, f"{name} (categorical)") for name in series.features("categorical_psi")]
    if not panels:
        return None
    plt = _pyplot()
    rows = int(np.ceil(len(panels) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.4 * rows), squeeze=False)
    for axes, (metric, feature, label) in zip(grid.flat, panels, strict=False):
        _draw_series(axes, series, (metric,), feature, label)
    for axes in list(grid.flat)[len(panels):]:
        axes.set_visible(False)
    figure.suptitle(title, fontsize=12)
    figure.tight_layout()
    return encode_png(figure), f"{title}: {len(panels)} charts, one per feature"


def psi_heatmap(series: Series, psi_max: float) -> tuple[str, str] | None:
    """Return a heat map of PSI, features by days; grey cells have no value."""
    rows = [("psi", name, name) for name in series.features("psi")]
    rows += [("categorical_psi", name, f"{name} (cat.)") for name in series.features("categorical_psi")]
    if not rows or not series.days:
        return None
    matrix = np.full((len(rows), len(series.days)), np.nan)
    for index, (metric, feature, _) in enumerate(rows):
        matrix[index] = series.values(metric, feature).reindex(series.days).to_numpy()

    plt = _pyplot()
    colormap = plt.get_cmap("Reds").with_extremes(bad="#e4e7eb")
    width = min(14.0, 4.0 + 0.35 * len(series.days))
    figure, axes = plt.subplots(figsize=(width, 0.3 * len(rows) + 1.6))
    image = axes.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=colormap, vmin=0.0, vmax=psi_max, interpolation="nearest")
    axes.set_yticks(range(len(rows)), [label for _, _, label in rows], fontsize=8)
    step = max(1, int(np.ceil(len(series.days) / 16)))
    ticks = list(range(0, len(series.days), step))
    axes.set_xticks(ticks, [pd.Timestamp(series.days[tick]).strftime("%m-%d") for tick in ticks], fontsize=8)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.03, pad=0.01)
    colorbar.set_label(f"PSI (colour saturates at {psi_max:g})", fontsize=8)
    axes.set_title("PSI by feature and data day", fontsize=11)
    figure.tight_layout()
    return encode_png(figure), "Heat map of PSI by feature and data day"


def panel_row(series: Series, panels, title: str) -> tuple[str, str] | None:
    """Return a grid of panels; each panel draws one metric or a tuple of metrics."""
    specs = [((metric,) if isinstance(metric, str) else tuple(metric), label) for metric, label in panels]
    if not any(len(series.values(metric)) for metrics, _ in specs for metric in metrics):
        return None
    plt = _pyplot()
    columns = min(3, len(specs))
    rows = int(np.ceil(len(specs) / columns))
    figure, grid = plt.subplots(rows, columns, figsize=(4.6 * columns, 2.8 * rows), squeeze=False)
    for axes, (metrics, label) in zip(grid.flat, specs, strict=False):
        _draw_series(axes, series, metrics, None, label)
    for axes in list(grid.flat)[len(specs):]:
        axes.set_visible(False)
    figure.suptitle(title, fontsize=12)
    figure.tight_layout()
    return encode_png(figure), f"{title} over time: " + ", ".join(label for _, label in specs)


def latency_pie(summary: dict[str, Any]) -> tuple[str, str]:
    """Return the latency report's pie of each stage's share of request time."""
    from loopline.serving import latency_report

    figure = latency_report.pie_figure(summary)
    return encode_png(figure), f"Pie of model-server request time by stage over {summary['requests']} requests"
