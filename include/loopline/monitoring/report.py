"""The monitoring report: one self-contained HTML page per data day.

The page shows what the monitoring store contains for every data day up to and including
the report's day. Over time it charts drift per feature (a PSI heat map and one PSI chart
per feature), prediction drift, quality, label share and serving health. It also shows
the model server's latency pie, the day's drift table, and the alerts, retrain requests
and incidents. It reads nothing dated after the day, so
a backfill of a past day writes the same bytes as the daily run did, as long as the
store's rows for those days are the same.

The charts are PNG images drawn with matplotlib (Agg) and embedded as base64 data URIs,
and the page's Content-Security-Policy blocks every other source, so the file opens
offline and loads nothing from the network. A short inline script sets
``data-images-decoded`` on ``<body>`` once the images have decoded, which the browser
test reads back.

``log_report`` logs the page to the MLflow experiment ``loopline-monitoring`` as one run
per data day, tagged ``loopline.data_day``. A rerun of the day replaces the day's run: the
new run is created first, and the day's older runs are deleted once it has finished, so
a failed rerun leaves the previous report in place. MLflow deletes runs softly, so they
stay restorable until ``mlflow gc`` removes them.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from loopline import settings
from loopline.config import LooplineConfig
from loopline.monitoring import report_charts as charts
from loopline.monitoring import store

logger = logging.getLogger(__name__)

MONITORING_EXPERIMENT = "loopline-monitoring"
DAY_TAG = "loopline.data_day"
# Newest rows shown in the alert, retrain-request and incident tables; older ones are
# counted in a note under the table.
MAX_TABLE_ROWS = 200
# PSI at which the heat map's colour saturates: twice the usual drift threshold of 0.25.
HEATMAP_PSI_MAX = 0.5
# Width of the small charts' grid.
GRID_COLUMNS = 4

QUALITY_PANELS = (
    ("log_loss", "log loss"),
    ("log_loss_ratio", "log loss / holdout log loss"),
    ("roc_auc", "ROC AUC"),
    ("expected_calibration_error", "expected calibration error"),
    ("label_share", "share of predictions with labels"),
    (("positive_rate", "mean_probability"), "positive rate and mean probability"),
)
PREDICTION_PANELS = (
    ("prediction_psi", "PSI of predicted probabilities"),
    ("prediction_js_distance", "Jensen-Shannon distance"),
    ("prediction_ks_pvalue", "KS p-value"),
)
SERVING_PANELS = (
    (("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"), "latency of successful requests (ms)"),
    (("error_rate_5xx", "error_rate_4xx"), "share of requests answered with 5xx / 4xx"),
)
# Columns of the day's drift table: (header, metric of numerical features, metric of
# categorical features).
DAY_TABLE_COLUMNS = (
    ("PSI", "psi", "categorical_psi"),
    ("JS distance", "js_distance", "categorical_js_distance"),
    ("KS / χ² p-value", "ks_pvalue", "chi2_pvalue"),
    ("unseen share", None, "unseen_category_rate"),
    ("missing rate", "missing_rate", "missing_rate"),
    ("missing change", "missing_rate_change", "missing_rate_change"),
)


# Table headers that differ from the store's column names.
COLUMN_TITLES = {"partition_date": "data day", "dag_run_id": "training run id", "model_version": "model version"}


@dataclass
class ReportData:
    """Everything the report shows, read from the monitoring store up to ``day``."""

    day: dt.date
    model_name: str
    batch: dict[str, Any] | None
    metrics: pd.DataFrame
    alerts: list[dict[str, Any]]
    retrain_requests: list[dict[str, Any]]
    latency: dict[str, Any]
    incidents: list[dict[str, Any]] = field(default_factory=list)
    incident_note: str = ""
    rules: list[Any] = field(default_factory=list)


def default_path(day: dt.date) -> Path:
    """Return where the report of ``day`` is written by default."""
    return settings.home() / "reports" / "monitoring" / f"monitoring_{day.isoformat()}.html"


def collect(config: LooplineConfig, engine, day: dt.date) -> ReportData:
    """Read the rows of every data day up to and including ``day`` from the monitoring store."""
    from loopline.serving import latency_report

    until = day.isoformat()
    metric_columns = [
        store.metric_values.c[name]
        for name in ("partition_date", "model_version", "metric", "feature", "value", "status", "sample_size", "policy_version")
    ]
    metric_query = (
        sa.select(*metric_columns)
        .where(store.metric_values.c.partition_date <= until)
        .order_by(store.metric_values.c.partition_date, store.metric_values.c.metric, store.metric_values.c.feature)
    )
    alert_columns = [
        store.alerts.c[name]
        for name in ("partition_date", "rule", "severity", "metric", "feature", "value", "threshold", "action", "model_version")
    ]
    alert_query = (
        sa.select(*alert_columns)
        .where(store.alerts.c.partition_date <= until)
        .order_by(store.alerts.c.partition_date.desc(), store.alerts.c.rule, store.alerts.c.feature)
    )
    retrain_query = (
        sa.select(store.retrain_requests.c.partition_date, store.retrain_requests.c.rules, store.retrain_requests.c.reason, store.retrain_requests.c.dag_run_id)
        .where(store.retrain_requests.c.partition_date <= until)
        .order_by(store.retrain_requests.c.partition_date.desc())
    )
    with engine.connect() as connection:
        metrics = pd.DataFrame([dict(row) for row in connection.execute(metric_query).mappings()], columns=[column.name for column in metric_columns])
        alerts = [dict(row) for row in connection.execute(alert_query).mappings()]
        retrain_requests = [dict(row) for row in connection.execute(retrain_query).mappings()]
    incidents, incident_note = _incidents(engine, until)

    end_of_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    return ReportData(
        day=day,
        model_name=config.model_name,
        batch=store.scoring_batch(engine, day),
        metrics=metrics,
        alerts=alerts,
        retrain_requests=retrain_requests,
        latency=latency_report.stage_summary(engine, until=end_of_day),
        incidents=incidents,
        incident_note=incident_note,
        rules=list(config.monitoring.rules),
    )


# Incident columns shown in the report, in this order.
INCIDENT_COLUMNS = ("id", "opened_date", "rule", "feature_key", "metric", "severity", "action", "status", "retrain_run_id", "action_taken", "closed_date", "closed_reason")


def _incidents(engine, until: str) -> tuple[list[dict[str, Any]], str]:
    """Return the incidents opened up to the day, as they stood at the end of that day.

    An incident closed after the day shows as open, so a backfilled report matches the one
    written on the day itself.
    """
    table = store.incidents
    query = sa.select(*[table.c[name] for name in INCIDENT_COLUMNS]).where(table.c.opened_date <= until)
    query = query.order_by(table.c.opened_date.desc(), table.c.id.desc())
    rows = []
    with engine.connect() as connection:
        for row in connection.execute(query).mappings():
            row = dict(row)
            if row["closed_date"] and row["closed_date"] > until:
                row.update(status="open", closed_date=None, closed_reason=None)
            rows.append(row)
    return rows, ""


def write_report(config: LooplineConfig, engine, day: dt.date, path: Path | None = None) -> dict[str, Any]:
    """Write the HTML report of ``day`` (atomically) and return its path and counts."""
    path = Path(path) if path is not None else default_path(day)
    data = collect(config, engine, day)
    page = render(data)

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            output.write(page)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

    days = int(data.metrics["partition_date"].nunique()) if len(data.metrics) else 0
    today_alerts = sum(1 for alert in data.alerts if alert["partition_date"] == day.isoformat())
    logger.info("wrote the monitoring report of %s (%d data days, %d alerts that day) to %s", day, days, today_alerts, path)
    return {"path": str(path), "days": days, "alerts": today_alerts, "bytes": path.stat().st_size}


def log_report(path: Path, day: dt.date, tags: dict[str, str], engine=None) -> str:
    """Log the report to the monitoring experiment as the day's run; return the run id.

    With ``engine``, the day's metric values are logged as run metrics too, named
    ``metric`` or ``metric.feature``. The day's earlier runs are deleted after the new run
    has finished (see the module docstring), so the experiment keeps one active run per
    data day.
    """
    import mlflow

    from loopline import tracking

    client = tracking.configure()
    run_tags = {**tags, DAY_TAG: day.isoformat()}
    with tracking.task_run(MONITORING_EXPERIMENT, f"monitoring {day.isoformat()}", run_tags) as run:
        mlflow.log_artifact(str(path), artifact_path="report")
        if engine is not None:
            day_metrics = _day_metrics(engine, day)
            if day_metrics:
                mlflow.log_metrics(day_metrics)
        run_id = run.info.run_id

    experiment_key = tracking.experiment_id(MONITORING_EXPERIMENT)
    earlier = client.search_runs([experiment_key], filter_string=f"tags.`{DAY_TAG}` = '{day.isoformat()}'", max_results=1000)
    for old in earlier:
        if old.info.run_id != run_id:
            client.delete_run(old.info.run_id)
            logger.info("deleted MLflow run %s: run %s replaces the report of %s", old.info.run_id, run_id, day)
    logger.info("logged the monitoring report of %s to MLflow run %s (experiment %s)", day, run_id, MONITORING_EXPERIMENT)
    return run_id


def _day_metrics(engine, day: dt.date) -> dict[str, float]:
    """Return the day's metrics with a value, keyed ``metric`` or ``metric.feature``."""
    table = store.metric_values
    query = sa.select(table.c.metric, table.c.feature, table.c.value).where(
        table.c.partition_date == day.isoformat(), table.c.value.is_not(None)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {(metric if feature is None else f"{metric}.{feature}"): float(value) for metric, feature, value in rows}


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def render(data: ReportData) -> str:
    """Return the report page as one HTML document."""
    day = data.day.isoformat()
    series = charts.Series(data.metrics, data.rules)
    sections = [
        _summary_section(data),
        _day_table_section(data),
        _section(
            "drift",
            "Feature drift over time",
            "PSI of each feature against the reference profile of the model version that scored "
            "the day. Dashed lines are rule thresholds; a gap is a day without a value (too few rows).",
            [
                charts.psi_heatmap(series, HEATMAP_PSI_MAX),
                charts.feature_grid(series, "PSI per feature", GRID_COLUMNS),
            ],
        ),
        _section(
            "prediction-drift",
            "Prediction drift over time",
            "The day's predicted probabilities against the model's own on its holdout days.",
            [charts.panel_row(series, PREDICTION_PANELS, "Prediction drift")],
        ),
        _section(
            "quality",
            "Quality over time",
            "Batch predictions of the trailing quality window, with the labels that had arrived by the day.",
            [charts.panel_row(series, QUALITY_PANELS, "Quality")],
        ),
        _serving_section(data, series),
        _alert_section(data),
        _retrain_section(data),
        _incident_section(data),
    ]
    toc = "".join(
        f'<a href="#{anchor}">{html.escape(title)}</a>'
        for anchor, title in (
            ("summary", "Summary"),
            ("day-drift", "Drift on the day"),
            ("drift", "Feature drift"),
            ("prediction-drift", "Prediction drift"),
            ("quality", "Quality"),
            ("serving", "Serving"),
            ("alerts", "Alerts"),
            ("retrain", "Retrain requests"),
            ("incidents", "Incidents"),
        )
    )
    return PAGE.format(
        title=html.escape(f"Loopline monitoring, {day}"),
        heading=html.escape(f"Monitoring report for {day}"),
        subtitle=html.escape(
            f"Model {data.model_name} · data days up to and including {day} (UTC) · "
            f"{data.metrics['partition_date'].nunique() if len(data.metrics) else 0} day(s) of metrics"
        ),
        toc=toc,
        body="\n".join(sections),
        style=STYLE,
        script=SCRIPT,
    )


def _section(anchor: str, title: str, note: str, images: list[tuple[str, str] | None]) -> str:
    parts = [f'<section id="{anchor}"><h2>{html.escape(title)}</h2><p class="note">{html.escape(note)}</p>']
    drawn = [image for image in images if image is not None]
    if not drawn:
        parts.append('<p class="empty">No values stored yet.</p>')
    for encoded, alt in drawn:
        parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"></figure>')
    parts.append("</section>")
    return "".join(parts)


def _summary_section(data: ReportData) -> str:
    day = data.day.isoformat()
    today = data.metrics[data.metrics["partition_date"] == day] if len(data.metrics) else data.metrics

    def value_of(metric: str, digits: int = 3) -> str:
        rows = today[(today["metric"] == metric) & today["feature"].isna()] if len(today) else today
        if not len(rows):
            return "not computed"
        row = rows.iloc[0]
        if row["value"] is None or pd.isna(row["value"]):
            return str(row["status"]).replace("_", " ")
        return f"{row['value']:.{digits}f}"

    batch = data.batch
    if batch is None:
        scoring = "not scored"
    else:
        scoring = f"{batch['status']}, {batch['rows']} rows, version {batch['model_version'] or '-'}"
    alerts_today = [alert for alert in data.alerts if alert["partition_date"] == day]
    requested = [request for request in data.retrain_requests if request["partition_date"] == day]
    cards = [
        ("scoring", scoring),
        ("alerts on the day", str(len(alerts_today))),
        ("retrain requested", requested[0]["dag_run_id"] if requested else "no"),
        ("log loss / holdout", value_of("log_loss_ratio")),
        ("label share", value_of("label_share")),
        ("prediction PSI", value_of("prediction_psi")),
        ("latency p95 (ms)", value_of("latency_p95_ms", 2)),
        ("5xx share", value_of("error_rate_5xx")),
    ]
    items = "".join(
        f'<div class="card{" alert" if label == "alerts on the day" and alerts_today else ""}">'
        f'<div class="label">{html.escape(label)}</div><div class="value">{html.escape(value)}</div></div>'
        for label, value in cards
    )
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{items}</div></section>'


def _day_table_section(data: ReportData) -> str:
    day = data.day.isoformat()
    today = data.metrics[data.metrics["partition_date"] == day] if len(data.metrics) else data.metrics
    if not len(today):
        return '<section id="day-drift"><h2>Drift on the day</h2><p class="empty">No metrics stored for this day.</p></section>'
    fired = {(alert["metric"], alert["feature"]) for alert in data.alerts if alert["partition_date"] == day}
    values = {(row.metric, row.feature): (row.value, row.status) for row in today.itertuples()}
    numerical = sorted({feature for (metric, feature) in values if metric == "psi" and feature})
    categorical = sorted({feature for (metric, feature) in values if metric == "categorical_psi" and feature})

    header = "".join(f"<th>{html.escape(title)}</th>" for title, _, _ in DAY_TABLE_COLUMNS)
    rows = []
    for kind, features in (("numerical", numerical), ("categorical", categorical)):
        for feature in features:
            cells = []
            for _, numerical_metric, categorical_metric in DAY_TABLE_COLUMNS:
                metric = numerical_metric if kind == "numerical" else categorical_metric
                cells.append(_value_cell(values.get((metric, feature)), (metric, feature) in fired))
            rows.append(f"<tr><th scope=\"row\">{html.escape(feature)}</th><td class=\"kind\">{kind}</td>{''.join(cells)}</tr>")
    return (
        '<section id="day-drift"><h2>Drift on the day</h2>'
        '<p class="note">Red cells fired a rule on this day. Text in grey says why a value is missing.</p>'
        f'<table class="numbers"><thead><tr><th>feature</th><th>kind</th>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _value_cell(entry: tuple[float | None, str] | None, fired: bool) -> str:
    if entry is None:
        return '<td class="status">–</td>'
    value, status = entry
    if value is None or pd.isna(value):
        return f'<td class="status">{html.escape(str(status).replace("_", " "))}</td>'
    text = f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return f'<td class="{"fired" if fired else ""}">{text}</td>'


def _serving_section(data: ReportData, series) -> str:
    images = [charts.panel_row(series, SERVING_PANELS, "Serving")]
    latency = data.latency
    note = (
        "Requests are dated by when the model server logged them (UTC), so the days here are "
        "calendar days, not the data days of a backfill."
    )
    if latency["requests"]:
        images.append(charts.latency_pie(latency))
        note += f" The pie covers the {latency['requests']} successful requests logged by the end of the day."
    else:
        note += " No successful model-server request was logged by the end of the day, so there is no latency pie."
    return _section("serving", "Serving", note, images)


def _table(rows: list[dict[str, Any]], columns: list[str], anchor: str, title: str, empty: str, note: str = "") -> str:
    parts = [f'<section id="{anchor}"><h2>{html.escape(title)}</h2>']
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    if not rows:
        parts.append(f'<p class="empty">{html.escape(empty)}</p></section>')
        return "".join(parts)
    header = "".join(f"<th>{html.escape(COLUMN_TITLES.get(column, column.replace('_', ' ')))}</th>" for column in columns)
    body = []
    for row in rows[:MAX_TABLE_ROWS]:
        cells = "".join(f"<td>{html.escape(_format(row.get(column)))}</td>" for column in columns)
        body.append(f"<tr>{cells}</tr>")
    parts.append(f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    if len(rows) > MAX_TABLE_ROWS:
        parts.append(f'<p class="note">Showing the newest {MAX_TABLE_ROWS} of {len(rows)} rows.</p>')
    parts.append("</section>")
    return "".join(parts)


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _alert_section(data: ReportData) -> str:
    columns = ["partition_date", "rule", "severity", "metric", "feature", "value", "threshold", "action", "model_version"]
    return _table(data.alerts, columns, "alerts", "Alerts", "No rule fired on any day up to this one.", "Newest first.")


def _retrain_section(data: ReportData) -> str:
    columns = ["partition_date", "rules", "reason", "dag_run_id"]
    return _table(
        data.retrain_requests,
        columns,
        "retrain",
        "Retrain requests",
        "No retrain was requested on any day up to this one.",
        "Each request triggered the training DAG with this run id.",
    )


def _incident_section(data: ReportData) -> str:
    columns = list(INCIDENT_COLUMNS) if data.incidents else []
    return _table(data.incidents, columns, "incidents", "Incidents", "No incident up to this day.", data.incident_note)


STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d2733; background: #f5f7fa; }
header { background: #1d3557; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; }
header p { margin: 6px 0 0; color: #d5deea; }
nav { background: #fff; border-bottom: 1px solid #d8dee6; padding: 8px 32px; position: sticky; top: 0; }
nav a { margin-right: 16px; color: #1d3557; text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d8dee6; border-radius: 6px; padding: 12px 20px;
          margin-top: 16px; }
h2 { font-size: 19px; margin: 4px 0 8px; }
.note { color: #52606d; font-size: 14px; margin: 4px 0 10px; }
.empty { color: #52606d; font-style: italic; }
figure { margin: 8px 0; }
figure img { max-width: 100%; height: auto; display: block; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #d8dee6; border-radius: 6px; padding: 8px 14px; min-width: 150px; background: #fafbfc; }
.card.alert { border-color: #c0392b; background: #fdecea; }
.card .label { font-size: 12px; color: #52606d; text-transform: uppercase; letter-spacing: 0.04em; }
.card .value { font-size: 18px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #d8dee6; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #eef2f7; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td.kind, table.numbers td.status { text-align: left; }
td.status { color: #7b8794; font-size: 12px; }
td.fired { background: #f8d7d3; color: #8e1b10; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
"""

# Sets data-images and data-images-decoded on <body> once the page has loaded (the load
# event waits for every image), so a headless browser test can check that the charts
# rendered: a decoded image has a natural width above 0.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-decoded", String(decoded.length));
});
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{heading}</h1><p>{subtitle}</p></header>
<nav>{toc}</nav>
<main>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""
