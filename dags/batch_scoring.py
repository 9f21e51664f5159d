"""
### Loopline batch scoring

Daily, one run per data interval. Waits for the day's feature partition, then scores it
with the `@champion` model version. The predictions, with the model version on every row,
go to the monitoring store and to a predictions partition named by the day.
Before the first champion exists the day is recorded as `no_champion`. Reruns replace the
day's predictions, never duplicate them.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task
from loopline_airflow import (
    CHAMPION_ASSET,
    DEFAULT_ARGS,
    FEATURES_ASSET,
    PREDICTIONS_ASSET,
    FeaturePartitionSensor,
    config,
    interval_day,
)


@dag(
    dag_id="loopline_batch_scoring",
    schedule="@daily",
    start_date=dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc),
    end_date=dt.datetime(2013, 12, 31, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    tags=["loopline", "serving"],
    doc_md=__doc__,
)
def loopline_batch_scoring():
    wait_for_features = FeaturePartitionSensor(task_id="wait_for_features", timeout=2 * 3600, inlets=[FEATURES_ASSET])

    @task(inlets=[CHAMPION_ASSET], outlets=[PREDICTIONS_ASSET])
    def score_partition(**context) -> dict:
        from loopline import scoring

        return scoring.score_day(config(), interval_day(context))

    wait_for_features >> score_partition()


loopline_batch_scoring()
