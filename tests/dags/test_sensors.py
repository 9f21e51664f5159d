"""The store sensors give up after a bounded wait counted from the first poke."""

from __future__ import annotations

import datetime as dt
import os

import pytest


@pytest.fixture
def empty_home(tmp_path, airflow_db):
    saved = os.environ.get("LOOPLINE_HOME")
    os.environ["LOOPLINE_HOME"] = str(tmp_path)
    yield tmp_path
    if saved is None:
        os.environ.pop("LOOPLINE_HOME")
    else:
        os.environ["LOOPLINE_HOME"] = saved


SENSOR_DAG = """
import datetime as dt

from airflow.sdk import DAG, task
from loopline_airflow import FeaturePartitionSensor

with DAG(
    "sensor_timeout_check",
    schedule="@daily",
    start_date=dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
) as dag:
    wait = FeaturePartitionSensor(task_id="wait_for_features", poke_interval=1, timeout=4, retries=2)

    @task
    def score():
        return "scored"

    wait >> score()
"""


def test_feature_sensor_times_out_and_blocks_downstream(empty_home):
    """A partition that never arrives fails the sensor once, and downstream never runs."""
    import json

    from airflow.dag_processing.dagbag import DagBag

    dag_folder = empty_home / "dags"
    dag_folder.mkdir()
    (dag_folder / "sensor_timeout_check.py").write_text(SENSOR_DAG)
    # dag.test() runs only DAGs that a configured bundle serializes, so the folder becomes one.
    bundles = [{"name": "sensor-test", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {"path": str(dag_folder)}}]
    saved = os.environ.get("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST")
    os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(bundles)
    try:
        dag = DagBag(dag_folder=str(dag_folder)).dags["sensor_timeout_check"]
        run = dag.test(logical_date=dt.datetime(2013, 1, 5, tzinfo=dt.timezone.utc))
    finally:
        if saved is None:
            os.environ.pop("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST")
        else:
            os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = saved

    instances = {ti.task_id: ti for ti in run.get_task_instances()}
    assert instances["wait_for_features"].state == "failed"
    assert instances["score"].state == "upstream_failed"
    # A sensor timeout is final: the two configured retries are not used.
    assert instances["wait_for_features"].try_number == 1
