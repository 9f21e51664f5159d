"""The data pipeline DAG through ``dag.test()``: a day that fails validation stops there.

The source is a drop folder of a user's CSV files whose rows carry their labels, so the
labels of a failed day must not land either. Each test gets its own LOOPLINE_HOME and config;
the Airflow metadata database is the session's.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
import yaml

# The data pipeline DAG's schedule ends with 2013, so the case's partition is moved to 2013.
DAY = dt.date(2013, 6, 1)
HEADER = "customer_id,signup_time,age,plan,label"
# Case 29's partition, with the event time that every partition needs: C2's age is below the
# range, C3 has no age and a label outside {0, 1}.
CASE_29_ROWS = [
    "C1,2013-06-01T09:00:00Z,34,basic,0",
    "C2,2013-06-01T10:00:00Z,-5,pro,1",
    "C3,2013-06-01T11:00:00Z,,basic,2",
]


def _config(folder) -> dict:
    return {
        "feature_set": {
            "name": "customers",
            "version": "v1",
            "entity_key": "customer_id",
            "event_time": "signup_time",
            "label": "label",
            "numerical": ["age"],
            "categorical": ["plan"],
        },
        "source": {"kind": "drop_folder", "path": str(folder), "file_pattern": "customers_%Y-%m-%d.csv"},
        "schema": {
            "entity_key": "customer_id",
            "event_time": "signup_time",
            "columns": {
                "customer_id": {"type": "string", "nullable": False},
                "signup_time": {"type": "timestamp", "nullable": False},
                "age": {"type": "int", "nullable": False, "min": 0, "max": 120},
                "plan": {"type": "string", "nullable": False, "allowed_values": ["basic", "pro"]},
            },
            "label": {"column": "label", "mapping": {"0": 0, "1": 1}},
        },
        "monitoring": {"policy_version": "test", "rules": []},
    }


@pytest.fixture
def drop_folder_home(tmp_path, airflow_db):
    """Point LOOPLINE_HOME and LOOPLINE_CONFIG at a fresh drop-folder setup; return (home, folder)."""
    from loopline.config import cached_config
    from loopline.monitoring import store

    home, folder = tmp_path / "home", tmp_path / "drop"
    home.mkdir()
    folder.mkdir()
    config_path = tmp_path / "loopline.yaml"
    config_path.write_text(yaml.safe_dump(_config(folder)))
    saved = dict(os.environ)
    os.environ.update({"LOOPLINE_HOME": str(home), "LOOPLINE_CONFIG": str(config_path)})
    cached_config.cache_clear()
    store.get_engine.cache_clear()
    yield home, folder
    os.environ.clear()
    os.environ.update(saved)
    cached_config.cache_clear()
    store.get_engine.cache_clear()


def _run_day(day: dt.date):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    dag = bag.dags["loopline_data_pipeline"]
    run = dag.test(logical_date=dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc))
    return run, {ti.task_id: ti for ti in run.get_task_instances()}


def _assert_day_stopped(home, instances) -> None:
    """The validation task failed on its first try and nothing after it wrote a partition."""
    from loopline import pipeline, store

    assert instances["extract_flights"].state == "success"
    assert instances["validate_flights"].state == "failed"
    # AirflowFailException: no retry, although the DAG's tasks have retries=2.
    assert instances["validate_flights"].try_number == 1
    assert instances["build_features"].state == "upstream_failed"
    assert instances["land_labels"].state == "skipped"
    assert instances["publish_features"].state == "upstream_failed"
    assert store.available_days(store.feature_dataset("customers", "v1")) == []
    assert store.available_days(pipeline.CLEAN_FLIGHTS) == []
    assert store.available_days(store.LABELS) == []


def test_failed_validation_stops_day(drop_folder_home):
    """Case 29: the failing partition fails validate_flights; features, labels and the asset event never happen."""
    from loopline import pipeline, store

    home, folder = drop_folder_home
    (folder / f"customers_{DAY}.csv").write_text("\n".join([HEADER, *CASE_29_ROWS]) + "\n")

    run, instances = _run_day(DAY)

    assert run.state == "failed"
    _assert_day_stopped(home, instances)
    # The evidence stays for inspection: the quarantined rows with their reasons and the
    # bounded result summary.
    quarantined = store.read_partition(pipeline.QUARANTINE_FLIGHTS, DAY)
    reasons = dict(zip(quarantined["customer_id"], quarantined["quarantine_reason"], strict=True))
    assert reasons == {"C2": "age outside [0, 120]", "C3": "age is null; label not in schema.label.mapping"}
    result = json.loads((home / f"data/validation/flights/date={DAY}/result.json").read_text())
    assert result == {
        "partition": DAY.isoformat(),
        "success": False,
        "rows": 3,
        "quarantined": 2,
        "reasons": {"age outside [0, 120]": 1, "age is null; label not in schema.label.mapping": 1},
    }


def test_empty_partition_stops_day(drop_folder_home):
    """Case 30: a header-only file fails on the row count, not on vacuous row checks, and stops the day."""
    home, folder = drop_folder_home
    (folder / f"customers_{DAY}.csv").write_text(HEADER + "\n")

    run, instances = _run_day(DAY)

    assert run.state == "failed"
    _assert_day_stopped(home, instances)
    result = json.loads((home / f"data/validation/flights/date={DAY}/result.json").read_text())
    assert result["empty"] is True
    assert result["rows"] == 0
    failures = [(item["expectation"], item["column"], item["observed_value"]) for item in result["failures"]]
    assert failures[0] == ("expect_table_row_count_to_be_between", None, 0)
    # A header-only CSV has no values to type, so its int column is read as strings.
    assert failures[1:] == [("expect_column_values_to_be_in_type_list", "age", "str")]
    # The other expectations passed only because there was nothing to check, so the
    # summary counts them as vacuous.
    assert result["vacuous_expectations"] == result["evaluated_expectations"] - len(failures) == 13
