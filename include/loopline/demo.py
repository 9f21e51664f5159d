"""The demo: run the loop over a window of 2013 through Airflow backfills and summarise it.

The services (Airflow, MLflow, the model server) must already run; ``make demo`` starts
them first. The window has two phases, so that the first champion exists before the
scored days begin, as in a real deployment:

1. history: backfill the data pipeline; its asset events trigger training, which promotes
   the first ``@champion`` once enough labelled days exist;
2. live: backfill the data pipeline, batch scoring and monitoring over the following days;
   monitoring alerts and re-triggers training where a rule fires.

Progress is printed while it waits: the phase, and how many days of each DAG are done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from loopline import settings

logger = logging.getLogger(__name__)

DATA_PIPELINE = "loopline_data_pipeline"
TRAINING = "loopline_training"
BATCH_SCORING = "loopline_batch_scoring"
MONITORING = "loopline_monitoring"
ALL_DAGS = (DATA_PIPELINE, TRAINING, BATCH_SCORING, MONITORING)

# The default window: 17 days of history (the first champion needs training.min_days=14
# labelled days) and 11 live days, 28 days in all.
DEFAULT_HISTORY_START = dt.date(2013, 1, 1)
DEFAULT_LIVE_START = dt.date(2013, 1, 18)
DEFAULT_END = dt.date(2013, 1, 28)

FINISHED = {"success", "failed"}
POLL_SECONDS = 5
# Single-flight requests the demo sends to the model server for the latency report.
ONLINE_REQUESTS = 200
BACKFILL_RETRY_SECONDS = 5
# Airflow's health check marks the scheduler unhealthy 30 s after its last heartbeat
# ([scheduler] scheduler_health_check_threshold); a busy loop can briefly miss one.
SCHEDULER_GRACE_SECONDS = 60
# On SQLite, Airflow 3.3's scheduler can crash, and then exit or hang, when a backfill that
# hit a lock deletes runs it was scheduling. The demo restarts it this many times, then stops.
SCHEDULER_RESTARTS = 2


class DemoError(RuntimeError):
    """The demo cannot go on: a service is down, or a run failed."""


class AirflowApi:
    """A small client for the Airflow 3 REST API (v2) with the simple auth manager."""

    def __init__(self, base_url: str, password_file: Path, username: str = "admin"):
        self.base_url = base_url.rstrip("/")
        self.password_file = password_file
        self.username = username
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self._token: str | None = None

    def _login(self) -> None:
        if not self.password_file.is_file():
            raise DemoError(f"Airflow password file {self.password_file} not found; start the services with `make services`")
        passwords = json.loads(self.password_file.read_text(encoding="utf-8"))
        response = self.client.post(
            "/auth/token", json={"username": self.username, "password": passwords[self.username]}
        )
        response.raise_for_status()
        self._token = response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._token is None:
            self._login()
        try:
            response = self.client.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if response.status_code == 401:
                self._login()
                response = self.client.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
        except httpx.TimeoutException:
            # On SQLite the API server waits for the database lock while the scheduler
            # holds it; callers that poll or retry treat this as busy.
            raise DemoError(f"Airflow API {method} {path} timed out: Database is locked or busy") from None
        if response.status_code >= 400:
            raise DemoError(f"Airflow API {method} {path} failed with {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def scheduler_healthy(self) -> bool:
        """Return whether Airflow's health endpoint reports a live scheduler heartbeat."""
        health = self.request("GET", "/api/v2/monitor/health")
        return health.get("scheduler", {}).get("status") == "healthy"

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 1000})["dag_runs"]


def _airflow_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('LOOPLINE_AIRFLOW_PORT', '8080')}"


def _password_file() -> Path:
    airflow_home = Path(os.environ.get("AIRFLOW_HOME", settings.home() / "airflow"))
    return airflow_home / "simple_auth_manager_passwords.json.generated"


def _say(message: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def wait_for_dags(api: AirflowApi, timeout: float = 300) -> None:
    """Wait until the DAG processor has parsed every Loopline DAG, then unpause them."""
    deadline = time.monotonic() + timeout
    while True:
        known = {dag["dag_id"] for dag in api.request("GET", "/api/v2/dags", params={"limit": 100})["dags"]}
        missing = [dag_id for dag_id in ALL_DAGS if dag_id not in known]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise DemoError(f"DAGs {missing} were not parsed within {timeout:.0f} s; see .loopline/logs/airflow-dag-processor.log")
        _say(f"waiting for the DAG processor to parse {missing}")
        time.sleep(POLL_SECONDS)
    for dag_id in ALL_DAGS:
        api.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})


def backfill(api: AirflowApi, dag_id: str, first: dt.date, last: dt.date, max_active_runs: int, timeout: float = 600) -> None:
    """Create a backfill of ``dag_id`` over the logical dates ``first`` to ``last``, both included."""

    def midnight(day: dt.date) -> str:
        return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).isoformat()

    body = {
        "dag_id": dag_id,
        "from_date": midnight(first),
        "to_date": midnight(last),
        "max_active_runs": max_active_runs,
        # Days that already succeeded (an earlier demo) are kept; failed days rerun.
        "reprocess_behavior": "failed",
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.request("POST", "/api/v2/backfills", json=body)
        except DemoError as error:
            # Airflow allows one active backfill per DAG and marks one complete a few
            # scheduler loops after its last run ends. On SQLite, Airflow 3.3 also returns
            # 503 while the scheduler has the database locked. Both pass, so retry.
            busy = "already a running backfill" in str(error) or "Database is locked" in str(error)
            if "timed out" in str(error):
                # The request may still have created the backfill; a retry then finds it.
                _say(f"{dag_id}: the Airflow API timed out while creating the backfill")
            elif "already a running backfill" in str(error) and _active_backfill(api, dag_id, body["from_date"]):
                # Created by a timed-out request, or by an earlier demo that stopped: its
                # runs are the ones this demo waits for.
                _say(f"backfill already active: {dag_id} {first} .. {last}; following it")
                return
            if not busy or time.monotonic() > deadline:
                raise
            _say(f"{dag_id}: an earlier backfill is still active or the database is busy; retrying")
            time.sleep(BACKFILL_RETRY_SECONDS)
            continue
        break
    _say(f"backfill created: {dag_id} {first} .. {last}")


def _active_backfill(api: AirflowApi, dag_id: str, from_date: str) -> bool:
    """Return whether an unfinished backfill of ``dag_id`` starts at ``from_date``."""
    backfills = api.request("GET", "/api/v2/backfills", params={"dag_id": dag_id}).get("backfills", [])
    return any(
        item.get("completed_at") is None and str(item.get("from_date", ""))[:10] == from_date[:10] for item in backfills
    )


def _runs_in(api: AirflowApi, dag_id: str, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
    runs = []
    for run in api.dag_runs(dag_id):
        logical = run.get("logical_date")
        if logical and first <= dt.date.fromisoformat(logical[:10]) <= last:
            runs.append(run)
    return runs


def wait_for_days(api: AirflowApi, dag_ids: list[str], first: dt.date, last: dt.date, phase: str, timeout: float) -> None:
    """Print progress until every day of ``dag_ids`` in the range has finished."""
    days = (last - first).days + 1
    deadline = time.monotonic() + timeout
    unhealthy_since = None
    restarts = 0
    while True:
        # A dead scheduler leaves runs queued forever: restart it, or stop with a message
        # instead of waiting out the timeout.
        try:
            healthy = api.scheduler_healthy()
        except DemoError as error:
            if "timed out" not in str(error):
                raise
            _say(f"{phase}: the Airflow API is busy (timed out); polling again")
            time.sleep(POLL_SECONDS)
            continue
        if healthy:
            unhealthy_since = None
        elif unhealthy_since is None:
            unhealthy_since = time.monotonic()
        elif time.monotonic() - unhealthy_since > SCHEDULER_GRACE_SECONDS:
            if restarts >= SCHEDULER_RESTARTS:
                raise DemoError(
                    f"the Airflow scheduler stopped sending heartbeats {restarts + 1} times; read "
                    ".loopline/logs/airflow-scheduler.log, then run `make demo` again: it restarts "
                    "stopped services and keeps the days already done"
                )
            restarts += 1
            _say(
                f"the Airflow scheduler has not sent a heartbeat for over {SCHEDULER_GRACE_SECONDS} s "
                "(its log is .loopline/logs/airflow-scheduler.log); restarting the stopped services"
            )
            restart_services()
            unhealthy_since = None
        parts = []
        done_all = True
        failed = []
        for dag_id in dag_ids:
            runs = _runs_in(api, dag_id, first, last)
            done = sum(1 for run in runs if run["state"] == "success")
            failed += [f"{dag_id} {run['logical_date'][:10]}" for run in runs if run["state"] == "failed"]
            running = sum(1 for run in runs if run["state"] == "running")
            queued = sum(1 for run in runs if run["state"] == "queued")
            parts.append(f"{dag_id.removeprefix('loopline_')} {done}/{days} days done ({running} running, {queued} queued)")
            done_all &= sum(1 for run in runs if run["state"] in FINISHED) >= days
        training = api.dag_runs(TRAINING)
        trained = sum(1 for run in training if run["state"] in FINISHED)
        parts.append(f"training runs finished {trained}/{len(training)}")
        _say(f"{phase}: " + "; ".join(parts))
        if failed:
            raise DemoError(f"runs failed: {failed}; open the Airflow UI at {_airflow_url()} to read their task logs")
        if done_all:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{phase} did not finish within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def restart_services() -> None:
    """Stop a scheduler that sends no heartbeat, then start every service that is not running.

    Airflow 3.3's scheduler can hang after such a crash: its process stays alive while it
    waits for its LocalExecutor workers, so ``services.sh start`` alone would leave it.
    """
    stop_scheduler()
    script = settings.REPO_ROOT / "scripts" / "services.sh"
    result = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise DemoError(f"{script} start failed with exit code {result.returncode}: {result.stderr.strip()[-500:]}")


def stop_scheduler() -> None:
    """Stop the scheduler that ``services.sh`` started, if its pid file names a live process."""
    pid_file = settings.home() / "run" / "airflow-scheduler.pid"
    if pid_file.is_file():
        # services.sh stores the pid and its start time (field 22 of /proc/PID/stat), so a
        # reused pid is never signalled.
        pid, start_time = pid_file.read_text(encoding="utf-8").split()[:2]
        if _start_time(int(pid)) == start_time:
            _end_session(int(pid))
        pid_file.unlink(missing_ok=True)


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name, or None for no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _end_session(pid: int, grace_seconds: float = 30) -> None:
    """Send SIGTERM to ``pid``, then SIGKILL to every process left in its session."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        if fields is None or fields[0] == "Z":
            break
        time.sleep(1)
    kill_session(pid)


def kill_session(pid: int) -> list[int]:
    """Send SIGKILL to every process in the session that ``pid`` leads; return their pids."""
    members = subprocess.run(["ps", "-s", str(pid), "-o", "pid="], capture_output=True, text=True).stdout.split()
    for member in members:
        try:
            os.kill(int(member), signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [int(member) for member in members]


def wait_for_training(api: AirflowApi, timeout: float) -> None:
    """Wait until no training run is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        active = [run for run in api.dag_runs(TRAINING) if run["state"] in ("queued", "running")]
        if not active:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"training runs still active after {timeout:.0f} s: {[run['dag_run_id'] for run in active]}")
        _say(f"training: waiting for {len(active)} run(s): {', '.join(run['dag_run_id'] for run in active)}")
        time.sleep(POLL_SECONDS)


def run_demo(history_start: dt.date, live_start: dt.date, end: dt.date, timeout: float = 1500) -> dict[str, Any]:
    if not history_start < live_start <= end:
        raise DemoError(f"need history start < live start <= end, got {history_start}, {live_start}, {end}")

    api = AirflowApi(_airflow_url(), _password_file())
    _say(f"window: history {history_start} .. {live_start - dt.timedelta(days=1)}, live {live_start} .. {end}")
    wait_for_dags(api)

    history_end = live_start - dt.timedelta(days=1)
    _say("phase 1/2 (history): data pipeline; its asset events trigger training")
    backfill(api, DATA_PIPELINE, history_start, history_end, max_active_runs=2)
    wait_for_days(api, [DATA_PIPELINE], history_start, history_end, "history", timeout)
    wait_for_training(api, timeout)

    _say("phase 2/2 (live): data pipeline, batch scoring and monitoring")
    backfill(api, DATA_PIPELINE, live_start, end, max_active_runs=2)
    backfill(api, BATCH_SCORING, live_start, end, max_active_runs=2)
    backfill(api, MONITORING, live_start, end, max_active_runs=1)
    wait_for_days(api, [DATA_PIPELINE, BATCH_SCORING, MONITORING], live_start, end, "live", timeout)
    wait_for_training(api, timeout)
    latency = send_online_requests(end)
    summary = summarize(api)
    summary["latency"] = latency
    return summary


def send_online_requests(day: dt.date, count: int = ONLINE_REQUESTS) -> dict[str, Any] | None:
    """Send ``count`` single-flight requests of ``day`` to the model server, then write the
    latency report from the timings it logged."""
    from loopline import store
    from loopline.config import cached_config
    from loopline.monitoring import store as monitoring_store
    from loopline.serving import latency_report

    feature_set = cached_config().feature_set
    frame = store.read_partition(store.feature_dataset(feature_set.name, feature_set.version), day).head(count)
    records = frame[[feature_set.entity_key, *feature_set.features]].astype(object)
    records = records.where(records.notna(), None).to_dict("records")
    url = f"http://127.0.0.1:{os.environ.get('LOOPLINE_SERVER_PORT', '8000')}/predict"
    failed = 0
    try:
        with httpx.Client(timeout=10) as client:
            for record in records:
                if client.post(url, json=record).status_code != 200:
                    failed += 1
    except httpx.HTTPError as error:
        _say(f"online: the model server at {url} did not answer ({error}); see .loopline/logs/model-server.log")
        return None
    _say(f"online: sent {len(records)} single-flight requests of {day} to the model server ({failed} failed)")

    engine = monitoring_store.get_engine()
    deadline = time.monotonic() + 30
    # The server writes timings through a background queue; give it a moment to drain.
    while monitoring_store.table_counts(engine)["request_timings"] < len(records) and time.monotonic() < deadline:
        time.sleep(1)
    try:
        return latency_report.write_report(engine, settings.home() / "reports" / "latency")
    except ValueError as error:
        _say(f"online: no latency report: {error}")
        return None


def summarize(api: AirflowApi) -> dict[str, Any]:
    """Collect run states, the champion, alerts and retrains into one summary."""
    from loopline import registry, tracking
    from loopline.config import cached_config
    from loopline.monitoring import store as monitoring_store

    config = cached_config()
    runs = {}
    for dag_id in ALL_DAGS:
        states: dict[str, int] = {}
        for run in api.dag_runs(dag_id):
            states[run["state"]] = states.get(run["state"], 0) + 1
        runs[dag_id] = states

    client = tracking.configure()
    champion = registry.champion_version(client, config.model_name)
    champion_summary = None
    if champion is not None:
        run_metrics = client.get_run(champion.run_id).data.metrics
        champion_summary = {
            "version": champion.version,
            "holdout_log_loss": run_metrics.get("holdout_log_loss"),
            "holdout_roc_auc": run_metrics.get("holdout_roc_auc"),
            "run_id": champion.run_id,
        }

    engine = monitoring_store.get_engine()
    counts = monitoring_store.table_counts(engine)
    retrains = [run["dag_run_id"] for run in api.dag_runs(TRAINING) if run["dag_run_id"].startswith("retrain__")]
    # What the registry gate decided for each model that a monitoring retrain produced.
    retrain_decisions = [
        f"version {entry.get('challenger_version')}, compared on holdout {entry.get('holdout')}, {entry['decision']}"
        for entry in registry.history()
        if entry.get("cause") == "monitoring"
    ]
    return {
        "dag_runs": runs,
        "champion": champion_summary,
        "store": counts,
        "retrain_runs": retrains,
        "retrain_decisions": retrain_decisions,
    }


def print_summary(summary: dict[str, Any]) -> None:
    """Print the summary: run states, champion, store counts, retrains, latency and URLs."""
    airflow_port = os.environ.get("LOOPLINE_AIRFLOW_PORT", "8080")
    mlflow_port = os.environ.get("LOOPLINE_MLFLOW_PORT", "5000")
    server_port = os.environ.get("LOOPLINE_SERVER_PORT", "8000")
    lines = ["", "Loopline demo summary", "====================="]

    lines.append("DAG runs by state:")
    for dag_id, states in summary["dag_runs"].items():
        lines.append(f"  {dag_id:<26} " + ", ".join(f"{state}={count}" for state, count in sorted(states.items())))

    champion = summary["champion"]
    if not champion:
        lines.append("@champion: none (no training run has promoted a model yet)")
    elif champion["holdout_roc_auc"] is None:
        lines.append(f"@champion: version {champion['version']}")
    else:
        lines.append(
            f"@champion: version {champion['version']}, on its own holdout log loss "
            f"{champion['holdout_log_loss']:.4f} and ROC AUC {champion['holdout_roc_auc']:.4f}"
        )

    store = summary["store"]
    lines.append(
        f"monitoring store: {store['predictions']} predictions, {store['labels']} labels, "
        f"{store['metric_values']} metric values, {store['alerts']} alerts raised, "
        f"{store['retrain_requests']} retrain requests"
    )
    lines.append(f"retrains triggered by monitoring: {len(summary['retrain_runs'])} {summary['retrain_runs']}")
    for decision in summary["retrain_decisions"]:
        lines.append(f"  registry gate: {decision}")
    if summary["retrain_runs"] and not summary["retrain_decisions"]:
        lines.append("  registry gate: no new version (the retrain runs skipped; their plan_window logs give the reason)")

    latency = summary.get("latency")
    if latency:
        shares = ", ".join(
            f"{label} {100 * values['share']:.0f}%" for label, values in latency["stages"].items() if label != "total"
        )
        total = latency["stages"]["total"]
        lines.append(
            f"online requests: {latency['requests']}, p50 {total['p50_ms']:.2f} ms, p99 {total['p99_ms']:.2f} ms; "
            f"time by stage: {shares}"
        )
        lines.append(f"  latency pie: {latency['png']} (Mermaid and percentiles in {latency['markdown']})")

    lines.append("Where to look:")
    lines.append(f"  Airflow UI    http://127.0.0.1:{airflow_port}  (user admin, password in {_password_file()})")
    lines.append(f"  MLflow UI     http://127.0.0.1:{mlflow_port}")
    lines.append(f"  Model server  http://127.0.0.1:{server_port}  (POST /predict, GET /model, GET /ready, GET /metrics)")
    lines.append("Stop everything with `make stop`.")
    print("\n".join(lines), flush=True)
