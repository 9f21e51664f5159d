"""Steps of the daily data pipeline, one function per Airflow task.

Each step reads and writes partitions named by the data interval's date and returns a
small JSON-able summary (the XCom value), never the data itself.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from loopline import sources, store, validation
from loopline.config import LooplineConfig
from loopline.monitoring import store as monitoring_store

logger = logging.getLogger(__name__)

CLEAN_FLIGHTS = "clean/flights"
QUARANTINE_FLIGHTS = "quarantine/flights"
VALIDATION_DATASET = "validation/flights"


def extract_flights(day: dt.date) -> dict[str, Any]:
    """Land the flight feed of ``day`` as its raw partition."""
    frame = sources.flight_feed(day)
    path = store.write_partition(frame, store.RAW_FLIGHTS, day)
    return {"date": day.isoformat(), "rows": len(frame), "path": str(path)}


def validate_flights(day: dt.date, config: LooplineConfig) -> dict[str, Any]:
    """Split the raw partition of ``day`` into clean and quarantined rows and validate it.

    Quarantined rows are written with their reasons first, so they can be inspected even
    when the task then fails. The task fails when the quarantined share exceeds
    ``validation.max_quarantine_share`` or the clean rows fail the expectation suite.
    """
    frame = store.read_partition(store.RAW_FLIGHTS, day)
    clean, quarantined = validation.split_rows(frame)
    if len(clean) + len(quarantined) != len(frame):
        raise RuntimeError(f"row split of {day} lost rows: {len(frame)} in, {len(clean)} clean, {len(quarantined)} quarantined")
    quarantine_path = store.write_partition(quarantined, QUARANTINE_FLIGHTS, day)
    reasons = quarantined["quarantine_reason"].value_counts().head(10).to_dict()
    if len(quarantined):
        logger.warning("quarantined %d of %d rows of %s: %s", len(quarantined), len(frame), day, reasons)

    limit = config.validation.max_quarantine_share
    share = len(quarantined) / len(frame) if len(frame) else 0.0
    if share > limit:
        raise validation.ValidationFailed(
            f"partition {day} has {len(quarantined)} of {len(frame)} rows ({share:.1%}) breaking row rules, "
            f"above validation.max_quarantine_share={limit:.1%}: {reasons}; the rows are in {quarantine_path}",
            {"partition": day.isoformat(), "rows": len(frame), "quarantined": len(quarantined), "reasons": reasons},
        )

    result_path = store.partition_dir(VALIDATION_DATASET, day) / "result.json"
    summary = validation.validate_partition(clean, day.isoformat(), result_path)
    path = store.write_partition(clean, CLEAN_FLIGHTS, day)
    return {
        "date": day.isoformat(),
        "rows_in": len(frame),
        "rows": summary["rows"],
        "quarantined": len(quarantined),
        "evaluated_expectations": summary["evaluated_expectations"],
        "result_path": str(result_path),
        "clean_path": str(path),
    }


def build_features(day: dt.date, config: LooplineConfig) -> dict[str, Any]:
    """Write the feature-store partition of ``day``: entity key, event time and raw features."""
    feature_set = config.feature_set
    frame = store.read_partition(CLEAN_FLIGHTS, day)
    columns = [feature_set.entity_key, feature_set.event_time, *feature_set.features]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise KeyError(
            f"clean partition {day} lacks columns {missing} named by feature set "
            f"{feature_set.name}/{feature_set.version}; fix the feature set or the source"
        )
    features = frame[columns].copy()
    features.insert(2, "flight_date", day.isoformat())
    dataset = store.feature_dataset(feature_set.name, feature_set.version)
    path = store.write_partition(features, dataset, day)
    return {
        "date": day.isoformat(),
        "rows": len(features),
        "feature_set": f"{feature_set.name}/{feature_set.version}",
        "path": str(path),
    }


def land_labels(day: dt.date, config: LooplineConfig) -> dict[str, Any]:
    """Land the labels that arrive on ``day`` (those of the flights ``label_delay_days`` earlier)."""
    flight_day = day - dt.timedelta(days=config.source.label_delay_days)
    if flight_day < sources.FIRST_DAY:
        logger.info("no labels arrive on %s: the data set starts on %s", day, sources.FIRST_DAY)
        return {"date": day.isoformat(), "flight_date": None, "rows": 0}

    frame = sources.label_feed(flight_day, config.source.delay_threshold_minutes)
    path = store.write_partition(frame, store.LABELS, flight_day)
    monitoring_store.replace_labels(
        monitoring_store.get_engine(), flight_day, day, frame[["flight_id", "delayed"]].to_dict("records")
    )
    return {
        "date": day.isoformat(),
        "flight_date": flight_day.isoformat(),
        "rows": len(frame),
        "positive_rate": round(float(frame["delayed"].mean()), 4) if len(frame) else None,
        "path": str(path),
    }
