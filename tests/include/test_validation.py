"""The GX suite passes real partitions and fails broken or empty ones with a summary."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from loopline import sources, validation


@pytest.fixture(scope="module")
def partition():
    return sources.flight_feed(dt.date(2013, 1, 5))


def test_validate_real_partition_passes(partition, tmp_path):
    summary = validation.validate_partition(partition, "2013-01-05", tmp_path / "result.json")
    assert summary["success"] is True
    assert summary["rows"] == 720
    assert json.loads((tmp_path / "result.json").read_text())["failed_expectations"] == 0


def test_validate_bad_values_fail_with_summary(partition, tmp_path):
    broken = partition.copy()
    broken.loc[:9, "origin"] = "XXX"
    broken.loc[0, "flight_id"] = None

    with pytest.raises(validation.ValidationFailed) as failure:
        validation.validate_partition(broken, "2013-01-05", tmp_path / "result.json")

    message = str(failure.value)
    assert "expect_column_values_to_be_in_set on column 'origin': 10 unexpected value(s)" in message
    assert "expect_column_values_to_not_be_null on column 'flight_id': 1 unexpected value(s)" in message
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["success"] is False
    # The summary stays small however many rows fail: a few samples per expectation.
    assert all(len(item["samples"]) <= validation.MAX_SAMPLES for item in stored["failures"])
    assert len(json.dumps(failure.value.summary)) < 4096


def test_validate_empty_partition_fails(partition, tmp_path):
    with pytest.raises(validation.ValidationFailed, match="expect_table_row_count_to_be_between: observed 0"):
        validation.validate_partition(partition.iloc[:0], "2013-01-05", tmp_path / "result.json")
