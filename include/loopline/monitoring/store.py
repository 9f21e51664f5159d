"""The monitoring store: predictions, labels, metrics, alerts, incidents and retrain requests.

One SQL schema through SQLAlchemy Core, the same on SQLite (the local profile) and
PostgreSQL (production). Writes that belong to one data interval replace that interval's
earlier rows inside one transaction, so a rerun never duplicates.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from loopline import settings

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Null for an online request that named no flight.
    sa.Column("flight_id", sa.String(64), nullable=True),
    # The data interval the scored row belongs to (YYYY-MM-DD); null for online requests
    # that did not name one.
    sa.Column("partition_date", sa.String(10), nullable=True, index=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("decision", sa.Integer, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

request_timings = sa.Table(
    "request_timings",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("preprocessing_ms", sa.Float, nullable=False),
    sa.Column("feature_ms", sa.Float, nullable=False),
    sa.Column("inference_ms", sa.Float, nullable=False),
    sa.Column("postprocessing_ms", sa.Float, nullable=False),
    sa.Column("total_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("flight_id", sa.String(64), primary_key=True),
    sa.Column("flight_date", sa.String(10), nullable=False, index=True),
    sa.Column("delayed", sa.Integer, nullable=False),
    sa.Column("arrived_date", sa.String(10), nullable=False),
)

scoring_batches = sa.Table(
    "scoring_batches",
    metadata,
    sa.Column("partition_date", sa.String(10), primary_key=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("rows", sa.Integer, nullable=False),
    # "scored", or "no_champion" when no model held the alias at scoring time.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

metric_values = sa.Table(
    "metric_values",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partition_date", sa.String(10), nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("feature", sa.String(64), nullable=True),
    sa.Column("value", sa.Float, nullable=True),
    # "ok", or why there is no value ("insufficient_data", "no_reference", ...).
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("sample_size", sa.Integer, nullable=False),
    sa.Column("reference", sa.String(128), nullable=True),
    sa.Column("policy_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partition_date", sa.String(10), nullable=False, index=True),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("feature", sa.String(64), nullable=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("policy_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The incident this breach belongs to (see monitoring.incidents).
    sa.Column("incident_id", sa.Integer, nullable=True, index=True),
    # A sentence for people: set on alerts that Loopline raises itself, such as the breaker's.
    sa.Column("message", sa.String(1024), nullable=True),
)

# Columns added after the first release. ``get_engine`` adds them to an existing database,
# because ``create_all`` creates missing tables but never alters existing ones.
ADDED_COLUMNS = {"alerts": ("incident_id", "message"), "retrain_requests": ("incident_ids",)}

# One row per (rule, feature) problem: the first breach opens it, later breaches of the same
# rule on the same feature link to it while it is open. All dates are data days.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(64), nullable=False),
    # The feature name, or "" for a model-level metric. Never null, so that the unique
    # constraint below holds on PostgreSQL too, where nulls never compare equal.
    sa.Column("feature_key", sa.String(64), nullable=False),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("opened_date", sa.String(10), nullable=False, index=True),
    sa.Column("status", sa.String(8), nullable=False),
    # The run id of the latest retrain this incident requested.
    sa.Column("retrain_run_id", sa.String(250), nullable=True),
    # What monitoring did about it besides alerting, e.g. "rollback 3 -> 2".
    sa.Column("action_taken", sa.String(256), nullable=True),
    sa.Column("closed_date", sa.String(10), nullable=True),
    sa.Column("closed_reason", sa.String(512), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("rule", "feature_key", "opened_date", name="uq_incident_key_day"),
)

# The result of every training run, written by the training DAG's last task. Monitoring reads
# the results of the retrains it requested from here (the circuit breaker, incident closing).
training_outcomes = sa.Table(
    "training_outcomes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dag_run_id", sa.String(250), nullable=False, unique=True),
    # The retrain request's run id when monitoring asked for this training, else null.
    sa.Column("request_id", sa.String(250), nullable=True, index=True),
    sa.Column("cause", sa.String(16), nullable=False),
    # "promoted", "rejected" (the gate kept the champion), "skipped" or "failed".
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=True),
    # The end (exclusive) of the training window, a data day: monitoring counts an outcome
    # from this day on, so a rerun of an earlier day decides as the first run did.
    sa.Column("window_end", sa.String(10), nullable=False),
    sa.Column("detail", sa.String(1024), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# An operator's reset of the circuit breaker: outcomes and requests up to these ids no
# longer count.
breaker_resets = sa.Table(
    "breaker_resets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("after_outcome_id", sa.Integer, nullable=False),
    sa.Column("after_request_id", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(512), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per data day and notification channel; a rerun replaces the day's rows.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partition_date", sa.String(10), nullable=False, index=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("alerts", sa.Integer, nullable=False),
    # "sent", "failed" or "not_configured".
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.String(512), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

retrain_requests = sa.Table(
    "retrain_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("partition_date", sa.String(10), nullable=False),
    sa.Column("rules", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(1024), nullable=False),
    # The Airflow run id of the triggered training run. It is unique, so a retried trigger
    # task finds its own earlier request instead of adding a second one.
    sa.Column("dag_run_id", sa.String(250), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Comma-separated ids of the incidents that asked for this retrain.
    sa.Column("incident_ids", sa.String(256), nullable=True),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@functools.lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    """Return an engine for the store (``LOOPLINE_MONITORING_DB_URL``), creating tables once."""
    url = url or settings.monitoring_db_url()
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Tasks, the model server and the sensors write concurrently; wait for the lock
        # instead of failing at once.
        connect_args["timeout"] = 30
    engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if url.startswith("sqlite"):
        sa.event.listen(engine, "connect", _sqlite_wal)
    metadata.create_all(engine)
    _add_missing_columns(engine)
    logger.info("monitoring store ready at %s", engine.url.render_as_string(hide_password=True))
    return engine


def _add_missing_columns(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    for table_name, names in ADDED_COLUMNS.items():
        present = {column["name"] for column in inspector.get_columns(table_name)}
        for name in names:
            if name in present:
                continue
            column = metadata.tables[table_name].c[name]
            type_sql = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(sa.text(f"ALTER TABLE {table_name} ADD COLUMN {name} {type_sql}"))
            logger.info("added column %s.%s to the monitoring store", table_name, name)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def replace_batch_predictions(
    engine: Engine, day: dt.date, model_version: str | None, rows: list[Mapping[str, Any]], status: str
) -> None:
    """Replace the batch predictions and the scoring record of ``day`` in one transaction."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            predictions.delete().where(
                predictions.c.partition_date == day.isoformat(), predictions.c.source == "batch"
            )
        )
        if rows:
            connection.execute(
                predictions.insert(),
                [{**row, "partition_date": day.isoformat(), "source": "batch", "created_at": now} for row in rows],
            )
        connection.execute(scoring_batches.delete().where(scoring_batches.c.partition_date == day.isoformat()))
        connection.execute(
            scoring_batches.insert().values(
                partition_date=day.isoformat(), model_version=model_version, rows=len(rows), status=status, created_at=now
            )
        )


def insert_online_predictions(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append online predictions; each row needs flight_id, model_version, probability, decision."""
    rows = [{"source": "online", "created_at": utcnow(), **row} for row in rows]
    if rows:
        with engine.begin() as connection:
            connection.execute(predictions.insert(), rows)
    return len(rows)


def insert_request_timings(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    rows = [{"created_at": utcnow(), **row} for row in rows]
    if rows:
        with engine.begin() as connection:
            connection.execute(request_timings.insert(), rows)
    return len(rows)


def replace_labels(engine: Engine, flight_day: dt.date, arrived: dt.date, rows: list[Mapping[str, Any]]) -> None:
    """Replace the labels of the flights of ``flight_day``."""
    with engine.begin() as connection:
        connection.execute(labels.delete().where(labels.c.flight_date == flight_day.isoformat()))
        if rows:
            connection.execute(
                labels.insert(),
                [
                    {
                        "flight_id": row["flight_id"],
                        "delayed": int(row["delayed"]),
                        "flight_date": flight_day.isoformat(),
                        "arrived_date": arrived.isoformat(),
                    }
                    for row in rows
                ],
            )


def scoring_batch(engine: Engine, day: dt.date) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(scoring_batches).where(scoring_batches.c.partition_date == day.isoformat())
        ).mappings().first()
    return dict(row) if row else None


def batch_predictions(engine: Engine, day: dt.date) -> list[dict[str, Any]]:
    query = sa.select(predictions.c.flight_id, predictions.c.model_version, predictions.c.probability).where(
        predictions.c.partition_date == day.isoformat(), predictions.c.source == "batch"
    )
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def labelled_predictions(engine: Engine, start: dt.date, end: dt.date, arrived_by: dt.date) -> list[dict[str, Any]]:
    """Return batch predictions of days in ``[start, end)`` whose labels arrived by ``arrived_by``.

    The arrival cutoff makes the result depend only on the data day, not on when the
    query runs, so a rerun computes the same quality metrics.
    """
    query = (
        sa.select(
            predictions.c.flight_id,
            predictions.c.partition_date,
            predictions.c.model_version,
            predictions.c.probability,
            labels.c.delayed,
        )
        .join(labels, labels.c.flight_id == predictions.c.flight_id)
        .where(
            predictions.c.source == "batch",
            predictions.c.partition_date >= start.isoformat(),
            predictions.c.partition_date < end.isoformat(),
            labels.c.arrived_date <= arrived_by.isoformat(),
        )
        .order_by(predictions.c.partition_date, predictions.c.flight_id)
    )
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def batch_prediction_count(engine: Engine, start: dt.date, end: dt.date) -> int:
    """Return the number of batch predictions of the days in ``[start, end)``."""
    query = sa.select(sa.func.count()).select_from(predictions).where(
        predictions.c.source == "batch",
        predictions.c.partition_date >= start.isoformat(),
        predictions.c.partition_date < end.isoformat(),
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def request_timings_on(engine: Engine, day: dt.date) -> list[dict[str, Any]]:
    """Return the status code and total time of the model-server requests logged on ``day``
    (by ``created_at``, UTC)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    query = sa.select(request_timings.c.status_code, request_timings.c.total_ms).where(
        request_timings.c.created_at >= start,
        request_timings.c.created_at < start + dt.timedelta(days=1),
    )
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def labels_arrived(engine: Engine, flight_day: dt.date) -> int:
    query = sa.select(sa.func.count()).select_from(labels).where(labels.c.flight_date == flight_day.isoformat())
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def replace_monitoring_results(
    engine: Engine, day: dt.date, metric_rows: list[Mapping[str, Any]], alert_rows: list[Mapping[str, Any]]
) -> None:
    """Replace the metric values and alerts computed for ``day``."""
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(metric_values.delete().where(metric_values.c.partition_date == day.isoformat()))
        connection.execute(alerts.delete().where(alerts.c.partition_date == day.isoformat()))
        if metric_rows:
            connection.execute(
                metric_values.insert(),
                [{**row, "partition_date": day.isoformat(), "created_at": now} for row in metric_rows],
            )
        if alert_rows:
            connection.execute(
                alerts.insert(), [{**row, "partition_date": day.isoformat(), "created_at": now} for row in alert_rows]
            )


def latest_retrain_request(engine: Engine, before: dt.date | None = None) -> dict[str, Any] | None:
    """Return the retrain request with the latest data date (before ``before``, if given), or None."""
    query = sa.select(retrain_requests).order_by(retrain_requests.c.partition_date.desc(), retrain_requests.c.id.desc()).limit(1)
    if before is not None:
        query = query.where(retrain_requests.c.partition_date < before.isoformat())
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def retrain_request(engine: Engine, dag_run_id: str) -> dict[str, Any] | None:
    query = sa.select(retrain_requests).where(retrain_requests.c.dag_run_id == dag_run_id)
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
    return dict(row) if row else None


def latest_metric_day(engine: Engine, metric: str, before: dt.date) -> dt.date | None:
    """Return the latest data day before ``before`` with a computed value of ``metric``."""
    query = sa.select(sa.func.max(metric_values.c.partition_date)).where(
        metric_values.c.metric == metric,
        metric_values.c.status == "ok",
        metric_values.c.partition_date < before.isoformat(),
    )
    with engine.connect() as connection:
        latest = connection.execute(query).scalar_one()
    return dt.date.fromisoformat(latest) if latest else None


def record_retrain_request(
    engine: Engine, day: dt.date, rules: list[str], reason: str, dag_run_id: str, incident_ids: Iterable[int] = ()
) -> bool:
    """Store a retrain request and link its incidents; return False when one with this run id already exists."""
    incident_ids = [int(item) for item in incident_ids]
    if incident_ids:
        # A retry links again, which changes nothing.
        with engine.begin() as connection:
            connection.execute(
                incidents.update().where(incidents.c.id.in_(incident_ids)).values(retrain_run_id=dag_run_id)
            )
    with engine.begin() as connection:
        existing = connection.execute(
            sa.select(retrain_requests.c.id).where(retrain_requests.c.dag_run_id == dag_run_id)
        ).first()
        if existing:
            return False
        connection.execute(
            retrain_requests.insert().values(
                partition_date=day.isoformat(),
                rules=",".join(rules),
                reason=reason[:1024],
                dag_run_id=dag_run_id,
                created_at=utcnow(),
                incident_ids=",".join(str(item) for item in incident_ids) or None,
            )
        )
    return True


def table_counts(engine: Engine) -> dict[str, int]:
    """Return the row count of every table (used by the demo summary and tests)."""
    counts = {}
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            counts[table.name] = int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    return counts
