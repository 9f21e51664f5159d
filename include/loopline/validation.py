"""Partition validation: row rules and a Great Expectations 1.x suite, both from the schema.

The declared schema (``schema`` in the config) gives each column a type, nullability,
allowed values or a range, plus the entity key, the event-time column and the label
mapping. ``split_rows`` turns it into row rules: a row that breaks one goes to quarantine
with its reason, so every row of a partition is either clean or quarantined.
``build_suite`` turns it into the expectation suite that the clean rows must pass: the
schema, non-null keys, unique entity keys, ranges, allowed sets, event times inside the
data interval, and at least one row. The row count has its own expectation because map
expectations pass vacuously on an empty batch. A failed validation raises
``ValidationFailed`` with a short summary; the full result goes to a JSON file.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline import store
from loopline.config import SchemaConfig

logger = logging.getLogger(__name__)

SUITE_NAME = "partition"
# Unexpected values quoted per failed expectation in the summary; the full list would make
# the task log and XCom unbounded for a badly broken partition.
MAX_SAMPLES = 5
# Characters of a raw value quoted in a quarantine reason.
MAX_QUOTED_CHARS = 40

NUMERIC_TYPES = ("float", "int")
# pandas dtypes the suite accepts for a numeric column.
NUMERIC_DTYPES = ["float64", "int64", "Float64", "Int64"]
TRUE_SPELLINGS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_SPELLINGS = frozenset({"false", "f", "no", "n", "0"})


class ValidationFailed(RuntimeError):
    """A partition failed its expectation suite."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def interval_bounds(day: dt.date, schema: SchemaConfig) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Return the UTC bounds ``[start, end)`` of the calendar day ``day`` in the partition time zone."""
    zone = zoneinfo.ZoneInfo(schema.partition_timezone)
    start = pd.Timestamp(dt.datetime.combine(day, dt.time(), tzinfo=zone)).tz_convert("UTC")
    end = pd.Timestamp(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)).tz_convert("UTC")
    return start, end


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 3] + "..."


def _bound(value: float) -> str:
    return f"{value:g}"


def _is_missing(column: pd.Series) -> pd.Series:
    missing = column.isna()
    if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column)):
        missing |= column.astype("str").str.strip().eq("")
    return missing


def _coerce(column: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """Return the column as its declared type and a mask of values that do not parse."""
    missing = _is_missing(column)
    if kind == "string":
        if isinstance(column.dtype, pd.StringDtype):
            return column, pd.Series(False, index=column.index)
        return column.astype("str").where(~missing, None), pd.Series(False, index=column.index)

    if kind == "timestamp":
        if pd.api.types.is_datetime64_any_dtype(column):
            # NOTE: a timestamp without a time zone is read as UTC.
            typed = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
            return typed, pd.Series(False, index=column.index)
        typed = pd.to_datetime(column.where(~missing, None), utc=True, errors="coerce", format="ISO8601")
        return typed, typed.isna() & ~missing

    if kind == "bool":
        if pd.api.types.is_bool_dtype(column):
            return column.astype("boolean"), pd.Series(False, index=column.index)
        text = column.astype("str").str.strip().str.casefold()
        typed = pd.Series(pd.NA, index=column.index, dtype="boolean")
        typed[text.isin(TRUE_SPELLINGS)] = True
        typed[text.isin(FALSE_SPELLINGS)] = False
        return typed.where(~missing, pd.NA), typed.isna() & ~missing

    if pd.api.types.is_bool_dtype(column):
        return pd.Series(math.nan, index=column.index, dtype="float64"), ~missing
    if pd.api.types.is_numeric_dtype(column):
        numbers = column
    else:
        numbers = pd.to_numeric(column.where(~missing, None), errors="coerce")
    invalid = numbers.isna() & ~missing
    # NOTE: the nullable Int64 and Float64 dtypes fail ExpectColumnValuesToBeInTypeList in
    # GX 1.24.1 even when the type list names them. So numbers become float64, or int64 for
    # an int column without missing values (see split_rows).
    values = pd.Series(numbers.to_numpy(dtype="float64", na_value=np.nan), index=column.index)
    if kind == "float":
        return values, invalid
    fractional = values.notna() & (values != values.round())
    values = values.where(~fractional)
    if values.notna().all():
        return values.astype("int64"), invalid | fractional
    return values, invalid | fractional


def _label_key(value: Any) -> str | None:
    """Return the mapping key of a raw label value (``1.0`` and ``"1"`` both give ``"1"``)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def map_labels(raw: pd.Series, schema: SchemaConfig) -> tuple[pd.Series, pd.Series]:
    """Map raw label values to 0/1 with the declared mapping.

    Returns the mapped labels (nullable Int64, missing where the raw label is missing) and
    a mask of raw values that the mapping does not name. Those are never guessed.
    """
    keys = raw.map(_label_key)
    mapping = schema.label.mapping
    mapped = keys.map(lambda key: mapping.get(key) if key is not None else None).astype("Int64")
    unknown = keys.notna() & mapped.isna()
    return mapped, unknown


def split_rows(
    frame: pd.DataFrame, schema: SchemaConfig, day: dt.date | None = None, labels_in_rows: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a partition into clean rows, typed as declared, and quarantined rows with a reason each.

    The row rules come from the schema: a value that does not parse as its declared type,
    a null in a non-nullable column, a value outside ``allowed_values``, a number outside
    ``[min, max]`` when ``mostly`` is 1, an event time outside the data interval of
    ``day``, a label missing from the mapping (when ``labels_in_rows``), and a repeated
    entity key (the first row of a key is kept). Ranges with ``mostly`` below 1 are left
    to the suite. Quarantined rows keep their raw values. Every row ends up in exactly one
    of the two frames.
    """
    typed = frame.copy()
    # One boolean column per rule, named by the reason a row breaks it. Reasons that quote
    # a value are built per row below.
    flags = pd.DataFrame(index=frame.index)
    invalid_values: dict[str, pd.Series] = {}
    for name, column in schema.columns.items():
        if name not in frame.columns:
            continue
        typed[name], invalid = _coerce(frame[name], column.type)
        if invalid.any():
            invalid_values[name] = invalid
            flags[f"{name} is not a valid {column.type}"] = invalid
        if not column.nullable:
            flags[f"{name} is null"] = _is_missing(frame[name])
        if column.allowed_values is not None:
            values = typed[name]
            flags[f"{name} not in allowed set"] = values.notna() & ~values.isin(column.allowed_values)
        if column.type in NUMERIC_TYPES and column.mostly == 1.0 and (column.min is not None or column.max is not None):
            values = typed[name].astype("float64")
            outside = pd.Series(False, index=frame.index)
            if column.min is not None:
                outside |= values < column.min
            if column.max is not None:
                outside |= values > column.max
            low = _bound(column.min) if column.min is not None else "-inf"
            high = _bound(column.max) if column.max is not None else "inf"
            flags[f"{name} outside [{low}, {high}]"] = values.notna() & outside

    event_time = schema.event_time
    if day is not None and event_time in typed.columns:
        start, end = interval_bounds(day, schema)
        times = typed[event_time]
        flags[f"{event_time} outside data interval {day.isoformat()} ({schema.partition_timezone})"] = times.notna() & (
            (times < start) | (times >= end)
        )

    label = schema.label.column
    if labels_in_rows and label in frame.columns:
        typed[label], unknown = map_labels(frame[label], schema)
        flags[f"{label} not in schema.label.mapping"] = unknown

    key = schema.entity_key
    if key in typed.columns:
        keys = typed[key]
        flags[f"duplicate {key}"] = keys.notna() & keys.duplicated(keep="first")

    flags = flags.fillna(False).astype(bool)
    bad = flags.any(axis=1) if len(flags.columns) else pd.Series(False, index=frame.index)
    quarantined = frame[bad].copy()
    reasons = []
    for index, row in flags[bad].iterrows():
        parts = []
        for reason, broken in row.items():
            if not broken:
                continue
            column = reason.split(" is not a valid ", 1)[0]
            if column in invalid_values and reason.startswith(f"{column} is not a valid "):
                reason = f"{reason}: {_quote(frame.at[index, column])}"
            parts.append(reason)
        reasons.append("; ".join(parts))
    quarantined["quarantine_reason"] = pd.Series(reasons, index=quarantined.index, dtype="str")
    clean = typed[~bad].copy()
    for name, column in schema.columns.items():
        # Rows that held the unparseable values are gone, so an int column may be whole again.
        if column.type == "int" and name in clean.columns and clean[name].dtype == "float64" and clean[name].notna().all():
            clean[name] = clean[name].astype("int64")
    return clean, quarantined


def _import_gx():
    # Raise GX's loggers to WARNING before the import, or its INFO lines flood task logs,
    # and keep its usage statistics off: this product must not call out to the internet.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def build_suite(gx, schema: SchemaConfig, day: dt.date | None = None, labels_in_rows: bool = False):
    """Return the expectation suite that the schema declares for one partition."""
    expectations = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)

    suite.add_expectation(expectations.ExpectTableRowCountToBeBetween(min_value=1))
    for name in schema.columns:
        suite.add_expectation(expectations.ExpectColumnToExist(column=name))
    for name, column in schema.columns.items():
        if column.type in NUMERIC_TYPES:
            suite.add_expectation(expectations.ExpectColumnValuesToBeInTypeList(column=name, type_list=NUMERIC_DTYPES))
    for name, column in schema.columns.items():
        if not column.nullable:
            suite.add_expectation(expectations.ExpectColumnValuesToNotBeNull(column=name))
    suite.add_expectation(expectations.ExpectColumnValuesToBeUnique(column=schema.entity_key))
    for name, column in schema.columns.items():
        if column.type in NUMERIC_TYPES and (column.min is not None or column.max is not None):
            suite.add_expectation(
                expectations.ExpectColumnValuesToBeBetween(
                    column=name, min_value=column.min, max_value=column.max, mostly=column.mostly
                )
            )
    for name, column in schema.columns.items():
        if column.allowed_values is not None:
            suite.add_expectation(expectations.ExpectColumnValuesToBeInSet(column=name, value_set=list(column.allowed_values)))
    if day is not None:
        start, end = interval_bounds(day, schema)
        # The end is exclusive; the suite's bounds are inclusive, so it stops one microsecond before.
        suite.add_expectation(
            expectations.ExpectColumnValuesToBeBetween(
                column=schema.event_time, min_value=start, max_value=end - pd.Timedelta(microseconds=1)
            )
        )
    if labels_in_rows:
        suite.add_expectation(expectations.ExpectColumnValuesToBeInSet(column=schema.label.column, value_set=[0, 1]))
    return suite


def validate_frame(
    frame: pd.DataFrame,
    partition: str,
    schema: SchemaConfig,
    day: dt.date | None = None,
    labels_in_rows: bool = False,
    docs_dir: Path | None = None,
    full_result_path: Path | None = None,
) -> dict[str, Any]:
    """Validate ``frame`` and return a bounded summary (well under 1 KB per failure).

    With ``docs_dir`` the run builds GX Data Docs (HTML) there, replacing earlier ones.
    With ``full_result_path`` GX's own validation result is written there as JSON. It contains
    every expectation with at most ``MAX_SAMPLES`` unexpected values each, so its size does
    not grow with the number of bad rows.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would write hundreds of carriage-return lines into the task log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas("source")
        .add_dataframe_asset(name="partition")
        .add_batch_definition_whole_dataframe("whole_partition")
    )
    suite = context.suites.add(build_suite(gx, schema, day, labels_in_rows))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_SAMPLES}
    if docs_dir is None:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format=result_format)
    else:
        result = _validate_with_docs(gx, context, batch_definition, suite, frame, partition, docs_dir, result_format)
    if full_result_path is not None:
        store.write_json(result.to_json_dict(), full_result_path)

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
    summary = {
        "partition": partition,
        "suite": SUITE_NAME,
        "success": bool(result.success),
        "rows": len(frame),
        "evaluated_expectations": len(result.results),
        "failed_expectations": len(failures),
        "failures": failures,
    }
    if not len(frame):
        # Row-by-row expectations pass on zero rows without having checked anything.
        summary["vacuous_expectations"] = sum(1 for item in result.results if item.success)
    if docs_dir is not None:
        summary["data_docs"] = str(docs_dir / "index.html")
    if full_result_path is not None:
        summary["full_result"] = str(full_result_path)
    return summary


def _validate_with_docs(gx, context, batch_definition, suite, frame, partition, docs_dir: Path, result_format):
    """Run the suite through a checkpoint that builds Data Docs, then move the site into ``docs_dir``.

    The site is built in a temporary folder beside ``docs_dir`` and swapped in with two
    renames, so a reader sees the old site or the new one. Between the two renames there
    is briefly no site.
    """
    import shutil
    import tempfile

    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", dir=docs_dir.parent))
    try:
        context.add_data_docs_site(
            site_name="loopline",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(building)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"partition {partition}", data=batch_definition, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"validate {partition}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["loopline"])],
                result_format=result_format,
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        _swap_in(building, docs_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return next(iter(run.run_results.values()))


def _swap_in(building: Path, target: Path, attempts: int = 5) -> None:
    """Rename the folder ``building`` to ``target``, moving an existing ``target`` aside first.

    Two runs of the same partition may swap at the same moment. Then a rename finds the
    target gone or already back, and the swap is tried again.
    """
    import shutil
    import uuid

    for attempt in range(attempts):
        old = target.with_name(f".{target.name}.old.{uuid.uuid4().hex}")
        try:
            if target.exists():
                os.replace(target, old)
            os.replace(building, target)
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            logger.info("another run swapped %s at the same time; trying again", target)
        finally:
            shutil.rmtree(old, ignore_errors=True)


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


def validate_partition(
    frame: pd.DataFrame,
    partition: str,
    result_path: Path,
    schema: SchemaConfig,
    day: dt.date | None = None,
    labels_in_rows: bool = False,
    build_docs: bool = False,
) -> dict[str, Any]:
    """Validate a partition, write the summary to ``result_path``, raise on failure.

    With ``build_docs`` the GX Data Docs go to ``data_docs/`` and GX's full result to
    ``gx_result.json``, both beside ``result_path``, and the task log names their paths.
    """
    folder = result_path.parent
    summary = validate_frame(
        frame,
        partition,
        schema,
        day,
        labels_in_rows,
        docs_dir=folder / "data_docs" if build_docs else None,
        full_result_path=folder / "gx_result.json" if build_docs else None,
    )
    if not len(frame):
        summary["empty"] = True
    store.write_json(summary, result_path)
    logger.info(
        "validated partition %s: %d rows, %d/%d expectations failed; result at %s",
        partition,
        summary["rows"],
        summary["failed_expectations"],
        summary["evaluated_expectations"],
        result_path,
    )
    if build_docs:
        logger.info("Data Docs of partition %s: %s (full GX result: %s)", partition, summary["data_docs"], summary["full_result"])
    if not len(frame):
        raise ValidationFailed(
            f"partition {partition} is empty (0 rows): the source delivered no rows for its data interval, so it "
            f"is not stored as clean or trained on; {summary['vacuous_expectations']} row-by-row expectations "
            "passed only because there were no rows to check. Check the source and rerun the day.\n"
            + describe_failures(summary),
            summary,
        )
    if not summary["success"]:
        raise ValidationFailed(describe_failures(summary), summary)
    return summary
