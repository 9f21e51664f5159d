"""
### Loopline monitoring

Daily, one run per data interval; the feedback edge of the loop.

1. **wait_for_scoring** (a sensor in reschedule mode, bounded by its timeout) waits until
   the day's batch scoring is recorded in the monitoring store.
2. **check_day** computes the PSI of every numerical feature against the reference profile
   of the model version that scored the day. It computes log loss, its ratio to the
   model's holdout log loss, and ROC AUC over the trailing week of labelled predictions.
   It stores them and checks the rules of the policy stamped on that model version. A rule that fires is stored as
   an alert linked to its incident (one per rule and feature while open). A rule with
   action `rollback` moves `@champion` back when it breaks within
   `monitoring.rollback_window_days` of the champion's promotion.
3. **send_alerts** sends the day's alerts through the Loopline notifiers: the task log
   always, and the alerts that opened an incident to the webhook and by e-mail when
   `monitoring.notify` configures them. A failed delivery is logged and counted, never fatal.
4. **request_retrain** goes on only when a fired rule requests a retrain, the circuit
   breaker is closed, no earlier retrain is still without an outcome and none was requested
   within the cooldown; it records the request.
5. **trigger_training** starts `loopline_training` with the reason, the incident ids and
   the window in its conf. The run id is fixed per data day, so a retry or a cleared run
   finds the run it started instead of starting a second one.
6. **report** writes the day's HTML monitoring report (drift, quality and serving health
   over every day up to this one, the latency pie, alerts and retrain requests) and logs
   it to the `loopline-monitoring` MLflow experiment as the day's run. It runs after the
   retrain trigger, or after check_day when no retrain is due, so the day's request is in it.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from loopline_airflow import DEFAULT_ARGS, PREDICTIONS_ASSET, ScoringBatchSensor, config, interval_day, run_tags


@dag(
    dag_id="loopline_monitoring",
    schedule="@daily",
    start_date=dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc),
    end_date=dt.datetime(2013, 12, 31, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["loopline", "monitoring"],
    doc_md=__doc__,
    render_template_as_native_obj=True,
)
def loopline_monitoring():
    wait_for_scoring = ScoringBatchSensor(task_id="wait_for_scoring", timeout=2 * 3600, inlets=[PREDICTIONS_ASSET])

    @task
    def check_day(**context) -> dict:
        from loopline.monitoring import checks

        return checks.run_checks(config(), interval_day(context))

    @task
    def send_alerts(summary: dict, **context) -> dict:
        from loopline_airflow.notifiers import alert_notifiers

        results = {}
        for notifier in alert_notifiers():
            notifier(context)
            results[notifier.channel] = (notifier.result or {"status": "failed"})["status"]
        return results

    # With ignore_downstream_trigger_rules=False a "no retrain" result skips only
    # trigger_training; report still runs by its own trigger rule.
    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def request_retrain(summary: dict, **context) -> dict | None:
        from loopline.monitoring import feedback, store

        retrain = summary.get("retrain")
        if not retrain or not retrain.get("due"):
            return None
        return feedback.record_request(store.get_engine(), interval_day(context), retrain)

    trigger_training = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id="loopline_training",
        trigger_run_id="retrain__{{ ds }}",
        # The data day that raised the request, so the run sits on the 2013 timeline.
        logical_date="{{ logical_date }}",
        conf="{{ ti.xcom_pull(task_ids='request_retrain') }}",
        skip_when_already_exists=True,
    )

    @task(trigger_rule="none_failed")
    def report(**context) -> dict:
        from pathlib import Path

        from loopline.monitoring import report, store

        day = interval_day(context)
        engine = store.get_engine()
        written = report.write_report(config(), engine, day)
        run_id = report.log_report(Path(written["path"]), day, run_tags(context), engine=engine)
        return {"path": written["path"], "mlflow_run_id": run_id, "alerts": written["alerts"]}

    summary = check_day()
    wait_for_scoring >> summary
    send_alerts(summary)
    request_retrain(summary) >> trigger_training
    [summary, trigger_training] >> report()


loopline_monitoring()
