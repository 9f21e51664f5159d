"""Partitions are named by date, written atomically and replaced on rerun."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from loopline import store

DAY = dt.date(2013, 1, 5)


def test_write_partition_rerun_replaces_only_its_day(tmp_path):
    store.write_partition(pd.DataFrame({"x": [1, 2]}), "demo", DAY, root=tmp_path)
    store.write_partition(pd.DataFrame({"x": [9]}), "demo", DAY + dt.timedelta(days=1), root=tmp_path)
    store.write_partition(pd.DataFrame({"x": [3, 4, 5]}), "demo", DAY, root=tmp_path)

    assert store.read_partition("demo", DAY, root=tmp_path)["x"].tolist() == [3, 4, 5]
    assert store.read_partition("demo", DAY + dt.timedelta(days=1), root=tmp_path)["x"].tolist() == [9]
    assert store.available_days("demo", root=tmp_path) == [DAY, DAY + dt.timedelta(days=1)]
    assert [path.name for path in store.partition_dir("demo", DAY, tmp_path).iterdir()] == ["part.parquet"]


def test_write_partition_failure_keeps_old_file(tmp_path):
    """A write that fails midway leaves the previous partition and no temporary file."""
    store.write_partition(pd.DataFrame({"x": [1]}), "demo", DAY, root=tmp_path)

    class Broken(pd.DataFrame):
        def to_parquet(self, *args, **kwargs):
            with open(args[0], "wb") as handle:
                handle.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write_partition(Broken({"x": [2]}), "demo", DAY, root=tmp_path)
    assert store.read_partition("demo", DAY, root=tmp_path)["x"].tolist() == [1]
    assert [path.name for path in store.partition_dir("demo", DAY, tmp_path).iterdir()] == ["part.parquet"]


def test_read_partition_missing_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data pipeline for that date"):
        store.read_partition("demo", DAY, root=tmp_path)
