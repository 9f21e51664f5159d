"""Where request time goes: the stage timings of the model server as a pie and percentiles.

The report reads the timings of successful requests from the monitoring store. It writes
``latency.png``, a pie of each stage's share of the summed request time, and
``latency.md``, with the same shares as a Mermaid ``pie`` block and p50, p95 and p99 per
stage in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from loopline.monitoring import store

logger = logging.getLogger(__name__)

# Stage columns of request_timings, in request order, with the label shown in the report.
STAGES = {
    "preprocessing_ms": "preprocessing",
    "feature_ms": "feature computation",
    "inference_ms": "inference",
    "postprocessing_ms": "post-processing",
}
PERCENTILES = (50, 95, 99)


def stage_summary(engine, until: dt.datetime | None = None) -> dict[str, Any]:
    """Return the request count, each stage's share of the summed time and its percentiles,
    over the successful requests logged before ``until`` (all of them when None)."""
    columns = [store.request_timings.c[name] for name in [*STAGES, "total_ms"]]
    query = sa.select(*columns).where(store.request_timings.c.status_code == 200)
    if until is not None:
        query = query.where(store.request_timings.c.created_at < until)
    with engine.connect() as connection:
        rows = np.asarray(connection.execute(query).all(), dtype="float64")
    if rows.size == 0:
        return {"requests": 0, "stages": {}}

    stage_totals = rows[:, : len(STAGES)].sum(axis=0)
    grand_total = stage_totals.sum()
    stages = {}
    for index, label in enumerate(STAGES.values()):
        values = rows[:, index]
        stages[label] = {
            "share": float(stage_totals[index] / grand_total) if grand_total > 0 else 0.0,
            **{f"p{percentile}_ms": float(np.percentile(values, percentile)) for percentile in PERCENTILES},
        }
    total = rows[:, len(STAGES)]
    stages["total"] = {f"p{percentile}_ms": float(np.percentile(total, percentile)) for percentile in PERCENTILES}
    return {"requests": int(rows.shape[0]), "stages": stages}


def mermaid_pie(summary: dict[str, Any]) -> str:
    lines = ["```mermaid", f"pie title Share of request time ({summary['requests']} requests)"]
    for label, values in summary["stages"].items():
        if label != "total":
            lines.append(f'    "{label}" : {100 * values["share"]:.2f}')
    lines.append("```")
    return "\n".join(lines)


def pie_figure(summary: dict[str, Any]):
    """Return a matplotlib pie of each stage's share of the summed request time."""
    from loopline.evaluation import pyplot

    plt = pyplot()
    labels = [label for label in summary["stages"] if label != "total"]
    shares = [summary["stages"][label]["share"] for label in labels]
    figure, axes = plt.subplots(figsize=(8, 5))
    wedges, _ = axes.pie(shares, startangle=90, counterclock=False)
    # Small stages would overlap as wedge labels, so the shares go in the legend.
    axes.legend(
        wedges,
        [f"{label}: {100 * share:.1f}%" for label, share in zip(labels, shares, strict=True)],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
    )
    axes.set_title(f"Where model-server request time goes ({summary['requests']} requests)")
    return figure


def write_report(engine, folder: Path) -> dict[str, Any]:
    """Write latency.png and latency.md to ``folder``; return the summary and the paths."""
    summary = stage_summary(engine)
    if summary["requests"] == 0:
        raise ValueError("the monitoring store contains no successful model-server request yet; send POST /predict first")
    folder.mkdir(parents=True, exist_ok=True)

    from loopline.evaluation import pyplot

    plt = pyplot()
    figure = pie_figure(summary)
    png = folder / "latency.png"
    figure.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(figure)

    table = ["| stage | share | p50 ms | p95 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for label, values in summary["stages"].items():
        share = f"{100 * values['share']:.1f}%" if "share" in values else "100%"
        table.append(f"| {label} | {share} | {values['p50_ms']:.3f} | {values['p95_ms']:.3f} | {values['p99_ms']:.3f} |")
    markdown = folder / "latency.md"
    markdown.write_text(
        "# Model-server latency by stage\n\n" + mermaid_pie(summary) + "\n\n" + "\n".join(table) + "\n", encoding="utf-8"
    )
    logger.info("wrote the latency report of %d requests to %s", summary["requests"], folder)
    return {**summary, "png": str(png), "markdown": str(markdown)}
