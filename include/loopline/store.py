"""Partitioned Parquet storage: raw flights, labels and the offline feature store.

Every partition is one file, ``<root>/<dataset>/date=YYYY-MM-DD/part.parquet``, named by
the data interval it holds. A write goes to a temporary file in the same folder and is
renamed into place with ``os.replace``, which is atomic on POSIX file systems. A reader
sees the old partition or the new one, never a partial file, and a rerun replaces only
its own partition. A writer killed mid-write leaves its hidden temporary file
(``.part.parquet.*.tmp``), which no reader opens. It is not removed on the next write,
because a parallel run of the same day may still be writing it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from loopline import settings

logger = logging.getLogger(__name__)

PARTITION_FILE = "part.parquet"

# Dataset names under the data folder.
RAW_FLIGHTS = "raw/flights"
LABELS = "labels"
PREDICTIONS = "predictions"


def feature_dataset(feature_set: str, version: str) -> str:
    """Return the dataset name of one feature-set version in the offline store."""
    return f"features/{feature_set}/{version}"


def partition_dir(dataset: str, day: dt.date, root: Path | None = None) -> Path:
    root = root or settings.data_dir()
    return root / dataset / f"date={day.isoformat()}"


def partition_path(dataset: str, day: dt.date, root: Path | None = None) -> Path:
    return partition_dir(dataset, day, root) / PARTITION_FILE


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_partition(frame: pd.DataFrame, dataset: str, day: dt.date, root: Path | None = None) -> Path:
    """Write ``frame`` as the partition of ``day``, replacing any earlier one atomically."""
    path = partition_path(dataset, day, root)
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    logger.info("wrote %s partition %s: %d rows -> %s", dataset, day.isoformat(), len(frame), path)
    return path


def write_json(payload: Any, path: Path) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)

    _atomic_write(path, write)
    return path


def read_partition(dataset: str, day: dt.date, root: Path | None = None) -> pd.DataFrame:
    path = partition_path(dataset, day, root)
    if not path.is_file():
        raise FileNotFoundError(
            f"partition {dataset} {day.isoformat()} not found at {path}; run the data pipeline "
            "for that date first (a backfill covers past dates)"
        )
    return pd.read_parquet(path)


def available_days(dataset: str, root: Path | None = None) -> list[dt.date]:
    """Return the dates that have a partition of ``dataset``, oldest first."""
    folder = (root or settings.data_dir()) / dataset
    if not folder.is_dir():
        return []
    days = []
    for child in folder.iterdir():
        if child.name.startswith("date=") and (child / PARTITION_FILE).is_file():
            days.append(dt.date.fromisoformat(child.name.removeprefix("date=")))
    return sorted(days)


def read_days(dataset: str, days: list[dt.date], root: Path | None = None) -> pd.DataFrame:
    """Concatenate the partitions of ``days`` in date order."""
    frames = [read_partition(dataset, day, root) for day in sorted(days)]
    if not frames:
        raise ValueError(f"no days given to read from {dataset}")
    return pd.concat(frames, ignore_index=True)
