"""The monitoring store: predictions, labels, metrics, alerts and retrain requests.

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
    logger.info("monitoring store ready at %s", engine.url.render_as_string(hide_password=True))
    return engine


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
    """Return the retrain request with the latest data date (before ``before`` if given), or None."""
    query = sa.select(retrain_requests).order_by(retrain_requests.c.partition_date.desc()).limit(1)
    if before is not None:
        query = query.where(retrain_requests.c.partition_date < before.isoformat())
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
    engine: Engine, day: dt.date, rules: list[str], reason: str, dag_run_id: str
) -> bool:
    """Store a retrain request; return False when one with this run id already exists."""
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
