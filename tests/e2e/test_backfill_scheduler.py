"""A backfill through the real scheduler writes the partitions a sequential run writes.

The fixture starts Airflow's API server, scheduler and DAG processor with
``scripts/services.sh`` (LocalExecutor, SQLite) on free ports of 127.0.0.1, in its own
LOOPLINE_HOME and AIRFLOW_HOME. The test unpauses the data pipeline DAG and runs
``airflow backfill create`` over three days, all three runs at a time. Meanwhile the
pipeline's task functions run day by day in another process and another folder, as the
reference. Every partition must match it row for row.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_pipeline_reruns import DATASETS, _assert_same, _finish, _snapshot, _start

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "loopline_data_pipeline"
# Three days with --max-active-runs 3, so all three runs are active at once.
DAYS = [dt.date(2013, 3, 4) + dt.timedelta(days=offset) for offset in range(3)]
# The services the data pipeline needs: tasks report to the API server's execution API.
SERVICES = "airflow-api-server airflow-scheduler airflow-dag-processor"
RUN_TIMEOUT_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Airflow:
    """The services of one LOOPLINE_HOME, driven through scripts/services.sh and the airflow CLI."""

    def __init__(self, home: Path):
        self.home = home
        port = _free_port()
        # Session-wide settings of tests/conftest.py point at the shared test database; the
        # services get their own, which scripts/env.sh derives from LOOPLINE_HOME.
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "LOOPLINE_", "MLFLOW_"))}
        self.env.update(
            {
                "LOOPLINE_HOME": str(home),
                "LOOPLINE_SERVICES": SERVICES,
                "LOOPLINE_AIRFLOW_PORT": str(port),
                # Unused, but env.sh derives the tracking URI from it; never the default 5000.
                "LOOPLINE_MLFLOW_PORT": str(_free_port()),
                "LOOPLINE_SERVER_PORT": str(_free_port()),
                # Only the DAG under test runs; the training DAG would follow its asset events.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "GX_ANALYTICS_ENABLED": "false",
            }
        )
        self.api_url = f"http://127.0.0.1:{port}"

    def services(self, command: str) -> str:
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "services.sh"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"services.sh {command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def _run_cli(self, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        # env.sh sets the same AIRFLOW_HOME, database and API URL as for the services.
        command = f'source "{REPO_ROOT}/scripts/env.sh" && exec airflow "$@"'
        return subprocess.run(["bash", "-c", command, "airflow", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 120) -> str:
        result = self._run_cli(args, timeout)
        assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
        return result.stdout

    def create_backfill(self, *args: str, attempts: int = 6) -> str:
        """Run ``airflow backfill create``, retrying while SQLite is locked.

        On SQLite, Airflow 3.3 fails the command with "database is locked" while the
        scheduler holds the lock. A retry that finds a backfill already running has found
        the one an earlier attempt created.
        """
        args = ("backfill", "create", *args)
        for attempt in range(1, attempts + 1):
            result = self._run_cli(args, timeout=120)
            if result.returncode == 0:
                return result.stdout
            if attempt > 1 and "already a running backfill" in result.stderr:
                return result.stderr
            if "database is locked" not in result.stderr or attempt == attempts:
                raise AssertionError(f"airflow {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
            print(f"airflow backfill create: database is locked (attempt {attempt}); retrying in 5 s")
            time.sleep(5)
        raise AssertionError("unreachable")


@pytest.fixture
def airflow(tmp_path) -> Iterator[Airflow]:
    services = Airflow(tmp_path / "scheduler-home")
    started = time.monotonic()
    try:
        services.services("start")
        print(f"services started in {time.monotonic() - started:.0f} s")
        yield services
    finally:
        # Runs on failure too, and after a start that failed halfway.
        print(services.services("stop"))


def _api(airflow: Airflow):
    from loopline.demo import AirflowApi

    return AirflowApi(airflow.api_url, airflow.home / "airflow" / "simple_auth_manager_passwords.json.generated")


def _wait_for_runs(airflow: Airflow) -> dict[dt.date, str]:
    """Wait until every day's backfill run has finished; return each day's run state."""
    api = _api(airflow)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        runs = {dt.date.fromisoformat(run["logical_date"][:10]): run for run in api.dag_runs(DAG_ID) if run.get("logical_date")}
        states = {day: runs[day]["state"] for day in DAYS if day in runs}
        if len(states) == len(DAYS) and set(states.values()) <= {"success", "failed"}:
            assert {runs[day]["run_type"] for day in DAYS} == {"backfill"}
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill runs not finished after {RUN_TIMEOUT_SECONDS} s: {states}")
        time.sleep(3)


def _wait_for_dag(airflow: Airflow) -> None:
    api = _api(airflow)
    deadline = time.monotonic() + 120
    while DAG_ID not in {dag["dag_id"] for dag in api.request("GET", "/api/v2/dags", params={"limit": 100})["dags"]}:
        if time.monotonic() > deadline:
            raise AssertionError(f"the DAG processor did not parse {DAG_ID} within 120 s")
        time.sleep(2)


def test_backfill_matches_sequential_run(airflow, tmp_path):
    """Three concurrent backfill runs write the partitions of a day-by-day run, row for row."""
    sequential_home = tmp_path / "sequential-home"
    sequential = _start(DAYS, sequential_home)
    started = time.monotonic()

    _wait_for_dag(airflow)
    print(f"DAG parsed after {time.monotonic() - started:.0f} s")
    airflow.cli("dags", "unpause", DAG_ID)
    output = airflow.create_backfill(
        "--dag-id", DAG_ID,
        "--from-date", DAYS[0].isoformat(), "--to-date", DAYS[-1].isoformat(),
        "--max-active-runs", "3",
    )  # fmt: skip
    assert DAG_ID in output
    states = _wait_for_runs(airflow)
    print(f"backfill of {len(DAYS)} days finished after {time.monotonic() - started:.0f} s")
    _finish(sequential)

    assert states == {day: "success" for day in DAYS}
    backfilled, reference = _snapshot(airflow.home), _snapshot(sequential_home)
    for dataset in DATASETS[:-1]:
        assert sorted(day for name, day in backfilled if name == dataset) == DAYS, f"{dataset} lacks days"
    _assert_same(reference, backfilled, "backfill")
    for day in DAYS:
        rows_in = len(backfilled[("raw/flights", day)])
        clean = len(backfilled[("clean/flights", day)])
        quarantined = len(backfilled[("quarantine/flights", day)])
        assert rows_in > 0
        assert rows_in == clean + quarantined, f"{day}: {rows_in} rows in, {clean} clean, {quarantined} quarantined"
