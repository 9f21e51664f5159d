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


# Run in a child process: write a partition of 200,000 rows, one row group at a time,
# touching the marker file after the first group, so the parent can kill it mid-write.
SLOW_WRITER = """
import datetime as dt, sys, time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopline import store

root, marker = Path(sys.argv[1]), Path(sys.argv[2])


def slow_to_parquet(self, path, index=False):
    table = pa.Table.from_pandas(self, preserve_index=index)
    with pq.ParquetWriter(path, table.schema) as writer:
        for offset in range(0, table.num_rows, 10_000):
            writer.write_table(table.slice(offset, 10_000))
            marker.touch()
            time.sleep(0.5)


pd.DataFrame.to_parquet = slow_to_parquet
store.write_partition(pd.DataFrame({"x": range(200_000)}), "demo", dt.date(2013, 1, 5), root=root)
"""


@pytest.mark.parametrize("had_partition", [True, False])
def test_write_partition_killed_writer_leaves_no_partial(tmp_path, had_partition):
    """A writer killed with SIGKILL mid-partition leaves the old partition, or none, visible."""
    import signal
    import subprocess
    import sys
    import time

    if had_partition:
        store.write_partition(pd.DataFrame({"x": [1, 2, 3]}), "demo", DAY, root=tmp_path)
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(tmp_path), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, f"writer exited with {child.returncode} before it started writing"
            assert time.monotonic() < deadline, "writer did not start writing within 60 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    folder = store.partition_dir("demo", DAY, tmp_path)
    leftovers = [path.name for path in folder.iterdir() if path.name != store.PARTITION_FILE]
    # The killed writer's temporary file stays behind, hidden and never read as a partition.
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".part.parquet.")
    if had_partition:
        assert store.available_days("demo", root=tmp_path) == [DAY]
        assert store.read_partition("demo", DAY, root=tmp_path)["x"].tolist() == [1, 2, 3]
    else:
        assert store.available_days("demo", root=tmp_path) == []
        with pytest.raises(FileNotFoundError):
            store.read_partition("demo", DAY, root=tmp_path)
