"""The production profile, proven on loopback: PostgreSQL, Redis, Celery and an MLflow server.

The module fixture starts, as real processes through ``scripts/services.sh``, Airflow with a
PostgreSQL metadata database and the CeleryExecutor with Redis as broker, one Celery worker,
the MLflow tracking server on PostgreSQL, and the model server. The same code runs as in the
local profile; only environment variables differ. The tests then run the loop over a few
days of real flights and check what each store contains, kill the worker in the middle of a
training task, and stop the MLflow server for a minute while training runs.

Every database gets a unique name and is dropped afterwards. The Redis database is one that
was empty at the start, and it is emptied again at the end. Without PostgreSQL and Redis on
127.0.0.1 the module is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TRAINING_DAG = "loopline_training"

pytestmark = pytest.mark.production


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


if not (_answers("127.0.0.1", 5432) and _answers(REDIS_HOST, REDIS_PORT)):
    pytest.skip(
        "the production profile needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; "
        "start them (see .ci/run) to run these tests",
        allow_module_level=True,
    )

import psycopg  # noqa: E402
import redis  # noqa: E402

from loopline.config import read_config_mapping  # noqa: E402
from loopline.demo import DATA_PIPELINE, AirflowApi, backfill, kill_session, wait_for_days  # noqa: E402


@dataclasses.dataclass
class Stack:
    home: Path
    env: dict[str, str]
    databases: dict[str, str]
    api: AirflowApi
    airflow_url: str
    model_server_url: str

    def services(self, command: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "services.sh"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"services.sh {command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def query(self, database: str, sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={self.databases[database]}") as connection:
            return connection.execute(sql, params).fetchall()

    def service_pid(self, name: str) -> int:
        return int((self.home / "run" / f"{name}.pid").read_text().split()[0])

    def log(self, name: str) -> str:
        return (self.home / "logs" / f"{name}.log").read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _empty_redis_database() -> int:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for index in range(15, 0, -1):
        if client.execute_command("SELECT", index) and client.dbsize() == 0:
            return index
    pytest.skip("every Redis database 1..15 on 127.0.0.1:6379 holds keys; none is free for the test broker")


def _test_config(path: Path) -> Path:
    """Write the default config with a training window that fits a few days of data."""
    config = read_config_mapping(REPO_ROOT / "include" / "config" / "loopline.yaml")
    config["training"].update({"window_days": 6, "min_days": 4, "holdout_days": 1, "validation_days": 1})
    # One small setting per family keeps each training task short on 2 cores.
    config["training"]["candidates"] = {
        "sgd_logistic": [{"alpha": 0.0001}],
        "logistic_regression": [{"C": 1.0}],
        "hist_gradient_boosting": [{"learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _wait_for(condition: Callable[[], Any], timeout: float, description: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {description}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:10]
    databases = {name: f"loopline_test_{suffix}_{name}" for name in ("airflow", "mlflow", "monitoring")}
    redis_database = _empty_redis_database()
    home = tmp_path_factory.mktemp("production-home")
    ports = {name: _free_port() for name in ("airflow", "mlflow", "server")}

    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "LOOPLINE_", "MLFLOW_"))}
    airflow_db = f"{POSTGRES}/{databases['airflow']}"
    env.update(
        {
            "LOOPLINE_HOME": str(home),
            "LOOPLINE_CONFIG": str(_test_config(home / "loopline.yaml")),
            "LOOPLINE_AIRFLOW_PORT": str(ports["airflow"]),
            "LOOPLINE_MLFLOW_PORT": str(ports["mlflow"]),
            "LOOPLINE_SERVER_PORT": str(ports["server"]),
            "LOOPLINE_MLFLOW_BACKEND_STORE_URI": f"{POSTGRES}/{databases['mlflow']}",
            "LOOPLINE_MONITORING_DB_URL": f"{POSTGRES}/{databases['monitoring']}",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            # Without it Airflow derives postgresql+asyncpg, which is not installed.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": airflow_db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_database}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_db}",
            # A killed worker's task is declared failed after 30 s without a heartbeat
            # (default 300 s), so its retry starts within the test.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            # MLflow clients give up after a few seconds (default: 7 retries with backoff),
            # so an MLflow outage fails the task and Airflow's retry takes over.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "LOOPLINE_START_TIMEOUT": "300",
        }
    )

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as connection:
        for name in databases.values():
            connection.execute(f'CREATE DATABASE "{name}"')

    airflow_url = f"http://127.0.0.1:{ports['airflow']}"
    stack = Stack(
        home=home,
        env=env,
        databases=databases,
        api=AirflowApi(airflow_url, home / "airflow" / "simple_auth_manager_passwords.json.generated"),
        airflow_url=airflow_url,
        model_server_url=f"http://127.0.0.1:{ports['server']}",
    )
    try:
        output = stack.services("start")
        print(output)
        yield stack
    finally:
        print(subprocess.run([str(REPO_ROOT / "scripts" / "services.sh"), "stop"], env=env, capture_output=True, text=True).stdout)
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as connection:
            for name in databases.values():
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        broker = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=redis_database)
        broker.flushdb()


def _report(capsys: pytest.CaptureFixture[str], title: str, lines: list[str]) -> None:
    """Print evidence past pytest's capture, so that the `make test` log shows it."""
    with capsys.disabled():
        print(f"\n--- {title} ---")
        for line in lines:
            print(line)


def _trigger_training(stack: Stack, label: str) -> str:
    run_id = f"manual__{label}__{uuid.uuid4().hex[:6]}"
    stack.api.request(
        "POST",
        f"/api/v2/dags/{TRAINING_DAG}/dagRuns",
        json={"dag_run_id": run_id, "logical_date": None, "conf": {"force": True}},
    )
    return run_id


def _task_instance(stack: Stack, run_id: str, task_id: str) -> dict[str, Any]:
    return stack.api.request("GET", f"/api/v2/dags/{TRAINING_DAG}/dagRuns/{run_id}/taskInstances/{task_id}")


def _run_state(stack: Stack, run_id: str) -> str:
    return stack.api.request("GET", f"/api/v2/dags/{TRAINING_DAG}/dagRuns/{run_id}")["state"]


def _wait_for_run(stack: Stack, run_id: str, timeout: float) -> str:
    def finished_state() -> str | None:
        state = _run_state(stack, run_id)
        return state if state in ("success", "failed") else None

    return _wait_for(finished_state, timeout, f"training run {run_id} to finish", 3)


def _open_mlflow_runs(stack: Stack, run_id: str | None = None) -> list[tuple]:
    sql = "SELECT r.run_uuid, r.status FROM runs r WHERE r.status = 'RUNNING'"
    if run_id is None:
        return stack.query("mlflow", sql)
    sql += " AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'airflow.run_id' AND t.value = %s)"
    return stack.query("mlflow", sql, run_id)


def test_loop_runs_on_postgres_celery_and_mlflow_server(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    command = "source scripts/env.sh && loopline demo --start 2013-01-01 --live-start 2013-01-07 --end 2013-01-08 --timeout 900"
    demo = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=1500)
    assert demo.returncode == 0, f"demo failed:\n{demo.stdout[-6000:]}\n{demo.stderr[-6000:]}"

    # Airflow's metadata database on PostgreSQL: every task of the demo's runs ran through
    # the Celery worker. Runs of 2013 and training runs (no logical date) are the demo's;
    # unpausing also schedules today's interval, which lies outside the replayed year.
    task_rows = stack.query(
        "airflow",
        "SELECT ti.dag_id, ti.queue, ti.state, count(*) FROM task_instance ti "
        "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
        "WHERE dr.logical_date IS NULL OR dr.logical_date < '2014-01-01' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    celery_successes = [
        line
        for line in stack.log("airflow-celery-worker").splitlines()
        if "execute_workload[" in line and "succeeded in" in line
    ]
    _report(capsys, "task instances in Airflow's PostgreSQL database (dag, queue, state, count)", [str(row) for row in task_rows])
    _report(capsys, "Celery worker log: tasks it finished", [*celery_successes[:5], f"... {len(celery_successes)} in all"])

    assert {row[2] for row in task_rows} <= {"success", "skipped"}, task_rows
    succeeded = sum(row[3] for row in task_rows if row[2] == "success")
    assert succeeded > 0
    assert len(celery_successes) >= succeeded
    training_queues = {row[1] for row in task_rows if row[0] == TRAINING_DAG and row[2] == "success"}
    assert "training" in training_queues
    assert {row[1] for row in task_rows if row[0] != TRAINING_DAG} == {"default"}

    # MLflow's database on PostgreSQL: finished training runs and the champion alias.
    mlflow_runs = stack.query("mlflow", "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")
    aliases = stack.query("mlflow", "SELECT name, alias, version FROM registered_model_aliases")
    _report(capsys, "runs in MLflow's PostgreSQL database (status, count)", [str(row) for row in mlflow_runs])
    _report(capsys, "aliases in MLflow's registry", [str(row) for row in aliases])
    assert dict(mlflow_runs).get("FINISHED", 0) >= 1
    assert "RUNNING" not in dict(mlflow_runs)
    assert [row[1] for row in aliases].count("champion") == 1

    # The monitoring store on PostgreSQL: batch predictions for both live days, online ones
    # from the demo's requests, each with a model version.
    predictions = stack.query(
        "monitoring",
        "SELECT source, partition_date, count(*), count(DISTINCT model_version) FROM predictions GROUP BY 1, 2 ORDER BY 1, 2",
    )
    labels = stack.query("monitoring", "SELECT count(*) FROM labels")[0][0]
    _report(capsys, "predictions in the monitoring store on PostgreSQL (source, day, rows, versions)", [str(row) for row in predictions])
    batch_days = {str(row[1]) for row in predictions if row[0] == "batch"}
    assert batch_days == {"2013-01-07", "2013-01-08"}
    assert all(row[2] > 500 for row in predictions if row[0] == "batch")
    assert sum(row[2] for row in predictions if row[0] == "online") == 200
    assert stack.query("monitoring", "SELECT count(*) FROM predictions WHERE model_version IS NULL")[0][0] == 0
    assert labels > 0
    ready = httpx.get(f"{stack.model_server_url}/ready", timeout=5).json()
    assert ready["status"] == "ready"


def test_killed_worker_task_retried(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _trigger_training(stack, "worker-killed")
    _wait_for(lambda: _task_instance(stack, run_id, "train")["state"] == "running", 300, "the train task to run", 0.5)
    # Let the task get into its work (data loaded, MLflow run open) before the worker dies.
    _wait_for(lambda: _open_mlflow_runs(stack, run_id), 120, "the train task's MLflow run", 0.5)
    killed = kill_session(stack.service_pid("airflow-celery-worker"))
    restarted = stack.services("start")

    state = _wait_for_run(stack, run_id, 900)
    train = _task_instance(stack, run_id, "train")
    runs = stack.query(
        "mlflow",
        "SELECT r.status, t2.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'airflow.run_id' "
        "JOIN tags t2 ON t2.run_uuid = r.run_uuid AND t2.key = 'airflow.try_number' WHERE t.value = %s ORDER BY t2.value",
        run_id,
    )
    _report(
        capsys,
        "worker killed in the middle of a training task",
        [
            f"killed worker processes {killed}",
            *[line for line in restarted.splitlines() if "airflow-celery-worker" in line],
            f"run {run_id}: {state}; train task try {train['try_number']} {train['state']}",
            f"MLflow runs of the task (status, try): {runs}",
        ],
    )
    assert state == "success"
    assert train["state"] == "success"
    assert train["try_number"] >= 2
    assert ("FAILED", "1") in runs
    assert runs[-1][0] == "FINISHED"
    assert _open_mlflow_runs(stack) == []


def test_mlflow_outage_during_training_retried(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    # A day of new data, so that a forced training has days the champion has not seen.
    day = dt.date(2013, 1, 9)
    backfill(stack.api, DATA_PIPELINE, day, day, max_active_runs=1)
    wait_for_days(stack.api, [DATA_PIPELINE], day, day, "one more day", timeout=600)
    run_id = _trigger_training(stack, "mlflow-down")
    _wait_for(lambda: _task_instance(stack, run_id, "train")["state"] in ("running", "skipped"), 300, "the train task to start", 0.5)
    assert _task_instance(stack, run_id, "train")["state"] == "running"
    _wait_for(lambda: _open_mlflow_runs(stack, run_id), 120, "the train task's MLflow run", 0.5)
    mlflow_pid = stack.service_pid("mlflow")
    os.killpg(mlflow_pid, signal.SIGTERM)
    stopped_at = time.monotonic()
    _wait_for(lambda: not _answers("127.0.0.1", int(stack.env["LOOPLINE_MLFLOW_PORT"])), 30, "MLflow to stop", 0.5)
    time.sleep(max(0.0, 60 - (time.monotonic() - stopped_at)))
    stack.services("start")
    outage = time.monotonic() - stopped_at

    state = _wait_for_run(stack, run_id, 900)
    tries = {task: _task_instance(stack, run_id, task)["try_number"] for task in ("plan_window", "train", "register_and_gate")}
    _report(
        capsys,
        "MLflow server stopped during training",
        [f"MLflow down for {outage:.0f} s", f"run {run_id}: {state}; tries per task {tries}", f"open MLflow runs: {_open_mlflow_runs(stack)}"],
    )
    assert state == "success"
    assert outage >= 60
    assert max(tries.values()) >= 2
    assert _open_mlflow_runs(stack) == []
