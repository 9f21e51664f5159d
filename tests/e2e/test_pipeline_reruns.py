"""Reruns and parallel runs of the data pipeline give the same partitions, row for row.

Each run is a separate Python process that calls the pipeline's task functions for every
day, as Airflow's workers would. All runs share one state folder, so a rerun replaces the
partitions of the run before it, and the parallel runs write the same partitions at the
same time.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

DAYS = [dt.date(2013, 2, 1) + dt.timedelta(days=offset) for offset in range(30)]
DATASETS = ("raw/flights", "clean/flights", "quarantine/flights", "features/flights/v1", "labels")

# Runs the data pipeline's four task functions over the days given as arguments, in order.
RUNNER = """
import datetime as dt, sys

from loopline import pipeline
from loopline.config import load_config

config = load_config()
for text in sys.argv[1:]:
    day = dt.date.fromisoformat(text)
    pipeline.extract_flights(day, config)
    pipeline.validate_flights(day, config)
    pipeline.build_features(day, config)
    pipeline.land_labels(day, config)
"""


def _start(days: list[dt.date], home) -> subprocess.Popen:
    env = {**os.environ, "LOOPLINE_HOME": str(home)}
    env.pop("LOOPLINE_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *(day.isoformat() for day in days)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"pipeline run failed:\n{output[-3000:]}"


def _snapshot(home) -> dict[tuple[str, dt.date], pd.DataFrame]:
    root = home / "data"
    snapshot = {}
    for dataset in DATASETS:
        for path in sorted((root / dataset).glob("date=*/part.parquet")):
            day = dt.date.fromisoformat(path.parent.name.removeprefix("date="))
            snapshot[(dataset, day)] = pd.read_parquet(path)
    return snapshot


def _assert_same(first, second, label):
    assert first.keys() == second.keys(), f"{label}: partitions differ: {sorted(set(first) ^ set(second))}"
    for key, frame in first.items():
        # Same rows, in the same order, with the same values and dtypes.
        pd.testing.assert_frame_equal(frame, second[key], check_exact=True, obj=f"{label} {key[0]} {key[1]}")


def test_reruns_give_identical_partitions(tmp_path):
    home = tmp_path / "home"

    _finish(_start(DAYS, home))
    first = _snapshot(home)

    _finish(_start(DAYS, home))
    rerun = _snapshot(home)

    # Two runs over the same days at once, one forwards and one backwards, so every
    # partition is written by both, often at the same moment.
    forwards, backwards = _start(DAYS, home), _start(DAYS[::-1], home)
    _finish(forwards)
    _finish(backwards)
    parallel = _snapshot(home)

    for dataset in ("raw/flights", "clean/flights", "quarantine/flights", "features/flights/v1"):
        assert sorted(day for name, day in first if name == dataset) == DAYS, f"{dataset} lacks days"
    # Labels of a day land with the next day's run; the first day's previous day has none here.
    assert sorted(day for name, day in first if name == "labels") == [DAYS[0] - dt.timedelta(days=1), *DAYS[:-1]]
    _assert_same(first, rerun, "rerun")
    _assert_same(first, parallel, "parallel runs")

    for day in DAYS:
        rows_in = len(first[("raw/flights", day)])
        clean = len(first[("clean/flights", day)])
        quarantined = len(first[("quarantine/flights", day)])
        assert rows_in == clean + quarantined, f"{day}: {rows_in} rows in, {clean} clean, {quarantined} quarantined"
        assert len(first[("features/flights/v1", day)]) == clean

    leftovers = [path for path in (home / "data").rglob("*.tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
