"""The GX suite passes real partitions and fails broken or empty ones with a summary."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from loopline import sources, validation
from loopline.config import load_config

DAY = dt.date(2013, 1, 5)
SCHEMA = load_config().data_schema


@pytest.fixture(scope="module")
def partition():
    return sources.flight_feed(DAY)


def test_validate_real_partition_passes(partition, tmp_path):
    summary = validation.validate_partition(partition, "2013-01-05", tmp_path / "result.json", SCHEMA, DAY)
    assert summary["success"] is True
    assert summary["rows"] == 720
    assert json.loads((tmp_path / "result.json").read_text())["failed_expectations"] == 0


def test_validate_bad_values_fail_with_summary(partition, tmp_path):
    broken = partition.copy()
    broken.loc[:9, "origin"] = "XXX"
    broken.loc[0, "flight_id"] = None

    with pytest.raises(validation.ValidationFailed) as failure:
        validation.validate_partition(broken, "2013-01-05", tmp_path / "result.json", SCHEMA, DAY)

    message = str(failure.value)
    assert "expect_column_values_to_be_in_set on column 'origin': 10 unexpected value(s)" in message
    assert "expect_column_values_to_not_be_null on column 'flight_id': 1 unexpected value(s)" in message
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["success"] is False
    # The summary stays small however many rows fail: a few samples per expectation.
    assert all(len(item["samples"]) <= validation.MAX_SAMPLES for item in stored["failures"])
    assert len(json.dumps(failure.value.summary)) < 4096


def test_validate_empty_partition_fails(partition, tmp_path):
    """Case 30: the row-count expectation fails an empty partition by name."""
    with pytest.raises(validation.ValidationFailed, match="expect_table_row_count_to_be_between: observed 0"):
        validation.validate_partition(partition.iloc[:0], "2013-01-05", tmp_path / "result.json", SCHEMA, DAY)


def test_split_rows_quarantines_with_reasons(partition):
    broken = partition.copy()
    broken.loc[0, "origin"] = "XXX"
    broken.loc[1, "flight_id"] = None
    broken.loc[2, "distance"] = -5.0
    broken.loc[3, "flight_id"] = broken.loc[4, "flight_id"]

    clean, quarantined = validation.split_rows(broken, SCHEMA, DAY)

    assert len(clean) + len(quarantined) == len(broken)
    assert len(quarantined) == 4
    assert quarantined["quarantine_reason"].tolist() == [
        "origin not in allowed set",
        "flight_id is null",
        "distance outside [1, 6000]",
        "duplicate flight_id",
    ]
    assert clean["flight_id"].is_unique


def test_split_rows_clean_partition_keeps_all(partition):
    clean, quarantined = validation.split_rows(partition, SCHEMA, DAY)
    assert len(clean) == len(partition)
    assert len(quarantined) == 0
    assert "quarantine_reason" in quarantined.columns


@pytest.fixture
def pipeline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path))
    return tmp_path


def test_validate_flights_counts_every_row(partition, pipeline_home):
    """A few bad rows are quarantined and the rest pass: rows in = clean + quarantined."""
    from loopline import pipeline, store
    from loopline.config import load_config

    day = dt.date(2013, 1, 5)
    broken = partition.copy()
    broken.loc[0, "carrier"] = "ZZ"
    store.write_partition(broken, store.RAW_FLIGHTS, day)

    summary = pipeline.validate_flights(day, load_config())

    assert summary["rows_in"] == 720
    assert summary["rows"] == 719
    assert summary["quarantined"] == 1
    quarantined = store.read_partition(pipeline.QUARANTINE_FLIGHTS, day)
    assert quarantined["quarantine_reason"].tolist() == ["carrier not in allowed set"]
    assert len(store.read_partition(pipeline.CLEAN_FLIGHTS, day)) == 719


def test_validate_flights_too_many_bad_rows_fails(partition, pipeline_home):
    from loopline import pipeline, store
    from loopline.config import load_config

    day = dt.date(2013, 1, 5)
    broken = partition.copy()
    broken.loc[:19, "origin"] = "XXX"
    store.write_partition(broken, store.RAW_FLIGHTS, day)

    with pytest.raises(validation.ValidationFailed, match=r"20 of 720 rows \(2.8%\).*max_quarantine_share=1.0%"):
        pipeline.validate_flights(day, load_config())
    assert len(store.read_partition(pipeline.QUARANTINE_FLIGHTS, day)) == 20
    assert store.available_days(pipeline.CLEAN_FLIGHTS) == []


def test_validate_flights_builds_data_docs(partition, pipeline_home, caplog):
    """Validation builds GX Data Docs, logs their path and keeps the XCom value small."""
    import logging

    from loopline import pipeline, store
    from loopline.config import load_config

    store.write_partition(partition, store.RAW_FLIGHTS, DAY)
    with caplog.at_level(logging.INFO, logger="loopline.validation"):
        summary = pipeline.validate_flights(DAY, load_config())

    docs = pipeline_home / "data/validation/flights/date=2013-01-05/data_docs/index.html"
    assert summary["data_docs"] == str(docs)
    assert docs.is_file()
    assert list(docs.parent.glob("validations/**/*.html")), "no validation page in the Data Docs"
    assert f"Data Docs of partition 2013-01-05: {docs}" in caplog.text
    full = json.loads((docs.parent.parent / "gx_result.json").read_text())
    assert full["success"] is True
    assert len(full["results"]) == summary["evaluated_expectations"]
    assert len(json.dumps(summary)) < 1024


def test_validate_flights_empty_partition_flagged(partition, pipeline_home):
    """Case 30: a partition with 0 rows fails by name, is recorded as empty and gets no clean partition."""
    from loopline import pipeline, store
    from loopline.config import load_config

    store.write_partition(partition.iloc[:0], store.RAW_FLIGHTS, DAY)

    with pytest.raises(validation.ValidationFailed, match=r"partition 2013-01-05 is empty \(0 rows\)") as failure:
        pipeline.validate_flights(DAY, load_config())

    message = str(failure.value)
    assert "expect_table_row_count_to_be_between: observed 0" in message
    assert "row-by-row expectations passed only because there were no rows" in message
    stored = json.loads((pipeline_home / "data/validation/flights/date=2013-01-05/result.json").read_text())
    assert stored["empty"] is True
    assert stored["rows"] == 0
    assert stored["success"] is False
    assert (pipeline_home / "data/validation/flights/date=2013-01-05/data_docs/index.html").is_file()
    assert store.available_days(pipeline.CLEAN_FLIGHTS) == []


def test_validate_large_failure_summary_bounded(tmp_path):
    """Case 31: 200,000 rows breaking one expectation give a summary of a few hundred bytes, not megabytes."""
    from loopline.config import SchemaConfig

    schema = SchemaConfig.model_validate(
        {
            "entity_key": "customer_id",
            "event_time": "signup_time",
            "columns": {
                "customer_id": {"type": "string", "nullable": False},
                "signup_time": {"type": "timestamp", "nullable": False},
                "plan": {"type": "string", "allowed_values": ["basic", "pro"]},
            },
            "label": {"column": "churned", "mapping": {"0": 0, "1": 1}},
        }
    )
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{number:06d}" for number in range(200_000)],
            "signup_time": pd.Timestamp("2024-06-01T10:00", tz="UTC"),
            "plan": "gold",
        }
    )

    with pytest.raises(validation.ValidationFailed) as failure:
        validation.validate_partition(frame, "2024-06-01", tmp_path / "result.json", schema, build_docs=True)

    assert "expect_column_values_to_be_in_set on column 'plan': 200000 unexpected value(s); e.g. ['gold'" in str(failure.value)
    assert len(json.dumps(failure.value.summary)) < 1024
    assert (tmp_path / "gx_result.json").stat().st_size < 64_000


def test_unknown_labels_summary_bounded(user_home, customer_config, tmp_path):
    """Case 31: 200,000 rows whose label is 2 fail the task with a message of a few hundred bytes."""
    from loopline import pipeline, store

    day = dt.date(2024, 6, 1)
    # A drop folder's rows carry their labels, so the label mapping is a row rule.
    customer_config["source"] = {"kind": "drop_folder", "path": str(tmp_path), "file_pattern": "customers_%Y-%m-%d.csv"}
    config = user_home.write_config(customer_config)
    rows = 200_000
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{number:06d}" for number in range(rows)],
            "signup_time": pd.Timestamp("2024-06-01T10:00", tz="UTC"),
            "age": 40,
            "income": 1000.5,
            "plan": "basic",
            "churned": "2",
        }
    )
    store.write_partition(frame, store.RAW_FLIGHTS, day)

    with pytest.raises(validation.ValidationFailed) as failure:
        pipeline.validate_flights(day, config)

    message = str(failure.value)
    assert "200000 of 200000 rows (100.0%) breaking row rules" in message
    assert "{'churned not in schema.label.mapping': 200000}" in message
    assert len(message) < 1024
    assert len(json.dumps(failure.value.summary)) < 1024
    assert failure.value.summary["reasons"] == {"churned not in schema.label.mapping": 200000}
    result_path = user_home.path / "data/validation/flights/date=2024-06-01/result.json"
    assert result_path.stat().st_size < 1024
    # Every row is kept for inspection, with its raw label.
    quarantined = store.read_partition(pipeline.QUARANTINE_FLIGHTS, day)
    assert len(quarantined) == rows
    assert quarantined["churned"].unique().tolist() == ["2"]
