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
