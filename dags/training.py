"""
### Loopline training

Runs on every `loopline_flight_features` asset event, on demand from the trigger form,
and when monitoring requests a retrain (with the reason in the run's conf).

1. **plan_window** picks the time-ordered training window: the days before the newest
   partition (asset events), the form's `start`/`end`, or the window monitoring names. An
   asset-triggered run skips, with the reason in its log, while too few labelled days exist
   or while the champion is younger than `training.retrain_every_days`.
2. **train** fits every candidate behind the fitted feature state: logistic regression by
   gradient descent on binary cross-entropy, L-BFGS logistic regression and gradient
   boosting. It keeps the best on the validation days and calibrates it where that lowers
   the validation log loss. One MLflow run holds params, log loss, ROC AUC, the training,
   validation and test windows as dataset inputs, the reference profile for drift, a
   signature and an input example. A part of the window that is empty or has a single
   class fails the task without retries.
   It runs on the `training` Celery queue and pool, and retries through an MLflow outage.
3. **register_and_gate** registers a new model version and moves `@champion` to it only
   if its holdout log loss beats the champion's on the same holdout.
4. **record_outcome** runs whatever happened before it and writes the run's outcome
   (promoted, rejected, skipped or failed) to the monitoring store, where monitoring's
   circuit breaker and incidents read it. A failed training fails this task too, so the
   run stays failed.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task
from loopline_airflow import CHAMPION_ASSET, DEFAULT_ARGS, FEATURES_ASSET, TRAINING_TASK_ARGS, config, run_tags


@dag(
    dag_id="loopline_training",
    schedule=[FEATURES_ASSET],
    start_date=dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["loopline", "training"],
    doc_md=__doc__,
    params={
        "start": Param(None, type=["null", "string"], format="date", description="First flight date of the window (inclusive)."),
        "end": Param(None, type=["null", "string"], format="date", description="End of the window (exclusive); default: the day after the newest labelled partition."),
        "force": Param(False, type="boolean", description="Train even if the champion is younger than training.retrain_every_days."),
    },
)
def loopline_training():
    @task
    def plan_window(**context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from loopline import registry, tracking, training

        settings = config()
        trigger = _trigger_of(context)
        client = tracking.configure()
        champion = registry.champion_version(client, settings.model_name)
        champion_end = registry.window_end_of(champion) if champion else None
        try:
            window = training.decide_window(
                settings,
                end=trigger["end"],
                start=trigger["start"],
                force=trigger["force"],
                champion_window_end=champion_end,
            )
        except training.TrainingSkipped as skipped:
            context["task_instance"].xcom_push(key="skip_reason", value=str(skipped)[:500])
            raise AirflowSkipException(f"no training: {skipped}") from None
        return {"window": window.to_dict(), "reason": trigger["reason"], "cause": trigger["cause"]}

    @task(**TRAINING_TASK_ARGS)
    def train(plan: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from loopline import training

        window = training.TrainingWindow.from_dict(plan["window"])
        tags = {**run_tags(context, window.label), "loopline.reason": plan["reason"][:250]}
        try:
            return training.train(config(), window, tags)
        except training.TrainingDataError as error:
            # A retry would read the same partitions, so the task fails without retries.
            # register_and_gate then never runs, so no model version is created.
            # record_outcome reads why, for the monitoring store.
            context["task_instance"].xcom_push(key="error", value=str(error)[:500])
            raise AirflowFailException(f"no model trained: {error}") from None

    @task(outlets=[CHAMPION_ASSET])
    def register_and_gate(plan: dict, trained: dict) -> dict:
        from loopline import registry

        return registry.register_and_gate(config(), trained, plan["reason"], plan["cause"])

    @task(trigger_rule="all_done")
    def record_outcome(**context) -> dict | None:
        from airflow.sdk.exceptions import AirflowFailException

        from loopline.monitoring import breaker, store

        ti = context["ti"]
        outcome, detail, version = breaker.record_run(
            store.get_engine(),
            context["dag_run"].run_id,
            context["dag_run"].conf or {},
            plan=ti.xcom_pull(task_ids="plan_window"),
            gate=ti.xcom_pull(task_ids="register_and_gate"),
            skip_reason=ti.xcom_pull(task_ids="plan_window", key="skip_reason"),
            error=ti.xcom_pull(task_ids="train", key="error"),
        )
        if outcome == "failed":
            raise AirflowFailException(f"training failed: {detail}")
        return {"outcome": outcome, "model_version": version}

    plan = plan_window()
    register_and_gate(plan, train(plan)) >> record_outcome()


def _trigger_of(context) -> dict:
    """Translate what started this run into a window end, an optional start, force and a reason."""
    conf = context["dag_run"].conf or {}
    params = context["params"]
    if conf.get("reason"):
        return {
            "end": dt.date.fromisoformat(conf["window_end"]),
            "start": None,
            "force": True,
            "reason": f"monitoring: {conf['reason']}",
            "cause": "monitoring",
        }

    events = context["triggering_asset_events"].get(FEATURES_ASSET, []) if context.get("triggering_asset_events") else []
    dates = [event.extra["partition_date"] for event in events if event.extra and event.extra.get("partition_date")]
    if dates:
        newest = dt.date.fromisoformat(max(dates))
        return {
            "end": newest + dt.timedelta(days=1),
            "start": None,
            "force": False,
            "reason": f"features updated to {newest}",
            "cause": "scheduled",
        }

    if params.get("end"):
        end = dt.date.fromisoformat(params["end"])
    else:
        from loopline import training

        days = training.labelled_days(config())
        if not days:
            raise ValueError("no labelled feature partitions exist; run the data pipeline (or a backfill) first")
        end = days[-1] + dt.timedelta(days=1)
    start = dt.date.fromisoformat(params["start"]) if params.get("start") else None
    return {"end": end, "start": start, "force": bool(params.get("force")), "reason": "manual", "cause": "manual"}


loopline_training()
