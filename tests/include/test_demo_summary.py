"""The demo summary names every run state, the champion, the store counts and retrains."""

from __future__ import annotations

from loopline import demo


def test_print_summary_lists_loop_results(capsys):
    summary = {
        "dag_runs": {"loopline_data_pipeline": {"success": 28}, "loopline_monitoring": {"success": 10, "failed": 1}},
        "champion": {"version": "3", "holdout_log_loss": 0.4635, "holdout_roc_auc": 0.7015, "run_id": "abc"},
        "store": {"predictions": 9556, "labels": 23363, "metric_values": 370, "alerts": 4, "retrain_requests": 1},
        "retrain_runs": ["retrain__2013-01-25"],
        "retrain_decisions": ["version 4, compared on holdout 2013-01-22..2013-01-24, kept as challenger: ..."],
        "latency": None,
    }

    demo.print_summary(summary)
    output = capsys.readouterr().out

    assert "loopline_monitoring        failed=1, success=10" in output
    assert "@champion: version 3, on its own holdout log loss 0.4635 and ROC AUC 0.7015" in output
    assert "9556 predictions, 23363 labels, 370 metric values, 4 alerts raised, 1 retrain requests" in output
    assert "retrains triggered by monitoring: 1 ['retrain__2013-01-25']" in output
    assert "registry gate: version 4, compared on holdout 2013-01-22..2013-01-24, kept as challenger" in output
    assert "Airflow UI    http://127.0.0.1:" in output


def test_print_summary_without_champion(capsys):
    summary = {
        "dag_runs": {},
        "champion": None,
        "store": {"predictions": 0, "labels": 0, "metric_values": 0, "alerts": 0, "retrain_requests": 0},
        "retrain_runs": ["retrain__2013-01-25"],
        "retrain_decisions": [],
    }
    demo.print_summary(summary)
    output = capsys.readouterr().out
    assert "@champion: none (no training run has promoted a model yet)" in output
    assert "registry gate: no new version (the retrain runs skipped" in output


class _SchedulerThatDies:
    """The two Airflow API calls ``wait_for_days`` makes, with a scheduler that stops once."""

    def __init__(self, healthy_after_restart: bool):
        self.healthy = False
        self.healthy_after_restart = healthy_after_restart
        self.restarts = 0

    def scheduler_healthy(self) -> bool:
        return self.healthy

    def restart(self) -> None:
        self.restarts += 1
        self.healthy = self.healthy_after_restart

    def dag_runs(self, dag_id: str) -> list[dict]:
        if not self.healthy:
            return [{"logical_date": "2013-01-18T00:00:00+00:00", "state": "queued"}]
        return [{"logical_date": "2013-01-18T00:00:00+00:00", "state": "success"}]


def test_demo_restarts_dead_scheduler(monkeypatch):
    """A scheduler without heartbeats is restarted, and the demo goes on."""
    import datetime as dt

    api = _SchedulerThatDies(healthy_after_restart=True)
    monkeypatch.setattr(demo, "SCHEDULER_GRACE_SECONDS", 0)
    monkeypatch.setattr(demo, "POLL_SECONDS", 0)
    monkeypatch.setattr(demo, "restart_services", api.restart)

    demo.wait_for_days(api, ["loopline_data_pipeline"], dt.date(2013, 1, 18), dt.date(2013, 1, 18), "live", timeout=60)

    assert api.restarts == 1


def test_demo_stops_after_restarts_fail(monkeypatch):
    """A scheduler that stays dead after the restarts stops the demo with the log to read."""
    import datetime as dt

    import pytest

    api = _SchedulerThatDies(healthy_after_restart=False)
    monkeypatch.setattr(demo, "SCHEDULER_GRACE_SECONDS", 0)
    monkeypatch.setattr(demo, "POLL_SECONDS", 0)
    monkeypatch.setattr(demo, "restart_services", api.restart)

    with pytest.raises(demo.DemoError, match=r"stopped sending heartbeats 3 times; read .loopline/logs/airflow-scheduler.log"):
        demo.wait_for_days(api, ["loopline_data_pipeline"], dt.date(2013, 1, 18), dt.date(2013, 1, 18), "live", timeout=60)
    assert api.restarts == demo.SCHEDULER_RESTARTS


def test_stop_scheduler_ends_its_session(tmp_path, monkeypatch):
    """The pid file's process and its session end; a pid file with another start time is left."""
    import subprocess
    import time

    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    # A leader with a child in its session, as the scheduler has its LocalExecutor workers.
    process = subprocess.Popen(["setsid", "sh", "-c", "sleep 300 & exec sleep 301"])
    time.sleep(0.5)
    child = subprocess.run(["pgrep", "-s", str(process.pid), "-f", "sleep 300"], capture_output=True, text=True).stdout.split()
    pid_file = tmp_path / "run" / "airflow-scheduler.pid"

    pid_file.write_text(f"{process.pid} 1\n")
    demo.stop_scheduler()
    assert process.poll() is None
    assert not pid_file.exists()

    pid_file.write_text(f"{process.pid} {demo._start_time(process.pid)}\n")
    demo.stop_scheduler()
    assert process.wait(timeout=10) != 0
    assert not pid_file.exists()
    assert len(child) == 1
    time.sleep(0.5)
    assert subprocess.run(["ps", "-p", child[0], "-o", "stat="], capture_output=True, text=True).stdout.strip() in ("", "Z")
