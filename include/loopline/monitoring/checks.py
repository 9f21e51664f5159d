"""Daily monitoring: drift and quality metrics, threshold rules, alerts and retrain requests.

For one data interval the check computes, against the reference profile logged with the
model version that scored the day, the PSI, Jensen-Shannon distance and KS p-value of each
numerical feature, the chi-squared p-value, PSI, JS distance and unseen share of each
categorical feature, each feature's missing rate, and the drift of the day's predicted
probabilities. It computes the label share and quality (``quality``) of the batch
predictions of the trailing quality window, the days before the data day, using the labels
that had arrived by the data day, and the model server's latency and error rates of the
day (``serving_health``).
Quality counts only the predictions of the model version that scored the day, so a fresh
champion is judged on its own predictions.
When a rule of the policy uses it, the retrain gain of a shadow model is computed too
(see ``retrain_gain``). The policy is the one stamped on the scoring model at its
promotion, so a rerun of a past day decides as that day did.
Each rule of the policy compares one metric with its threshold. A metric without a value
(too few rows, no labels yet, NaN) never fires a rule. What fired rules lead to (incidents,
retrain requests, the circuit breaker, rollback) is ``monitoring.feedback``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from loopline import registry, store, tracking, training
from loopline.config import LooplineConfig, RuleConfig, policy_of, with_policy
from loopline.monitoring import drift, feedback, missing_values, quality, retrain_gain, serving_health
from loopline.monitoring import store as monitoring_store
from loopline.monitoring.values import MetricValue

logger = logging.getLogger(__name__)


def crosses(rule: RuleConfig, value: float | None) -> bool:
    """Return True when ``value`` breaks ``rule``; a missing or NaN value never does."""
    if value is None or not math.isfinite(value):
        return False
    if rule.direction == "above":
        return value > rule.threshold
    return value < rule.threshold


def run_checks(config: LooplineConfig, day: dt.date) -> dict[str, Any]:
    """Compute, store and evaluate the monitoring metrics of ``day``."""
    monitoring = config.monitoring
    engine = monitoring_store.get_engine()
    batch = monitoring_store.scoring_batch(engine, day)
    if batch is None:
        raise LookupError(f"day {day} has not been scored yet; run the batch-scoring DAG for it first")
    if batch["status"] != "scored" or not batch["model_version"]:
        logger.info("day %s was not scored (%s); no metrics are computed", day, batch["status"])
        row = _metric_row("psi", None, None, batch["status"], 0, None, monitoring.policy_version)
        monitoring_store.replace_monitoring_results(engine, day, [row], [])
        return {"date": day.isoformat(), "status": batch["status"], "alerts": [], "retrain": None}

    version = batch["model_version"]
    client = tracking.configure()
    model_version = client.get_model_version(config.model_name, version)
    config = policy_in_force(config, model_version)
    monitoring = config.monitoring
    reference = f"{config.model_name}/{version}"
    profile = training.load_reference_profile(model_version.run_id)

    feature_set = config.feature_set
    features = store.read_partition(store.feature_dataset(feature_set.name, feature_set.version), day)
    holdout_log_loss = client.get_run(model_version.run_id).data.metrics.get("holdout_log_loss")
    values, new_categories = compute_metrics(config, engine, day, profile, features, holdout_log_loss, version)
    metric_rows = [
        _metric_row(item.metric, item.feature, item.value, item.status, item.sample_size, version, monitoring.policy_version, reference)
        for item in values
    ]
    labelled_rows = next(item.sample_size for item in values if item.metric == "log_loss")

    if retrain_gain.in_policy(config):
        metric_rows.append(_retrain_gain_row(config, engine, day, model_version, client, reference))

    day_feedback = feedback.process_day(config, engine, day, _evaluate_rules(config, metric_rows, version))
    alert_rows = day_feedback.alerts
    monitoring_store.replace_monitoring_results(engine, day, metric_rows, alert_rows)
    for alert in alert_rows:
        logger.warning(
            "ALERT %s (%s): %s%s = %.4f is %s threshold %.4f on %s, model version %s, incident %s%s",
            alert["rule"],
            alert["severity"],
            alert["metric"],
            f"[{alert['feature']}]" if alert["feature"] else "",
            alert["value"],
            "above" if alert["value"] > alert["threshold"] else "below",
            alert["threshold"],
            day,
            version,
            alert["incident_id"],
            f": {alert['message']}" if alert.get("message") else "",
        )

    retrain = day_feedback.retrain
    return {
        "date": day.isoformat(),
        "status": "checked",
        "model_version": version,
        "metrics": len(metric_rows),
        "labelled_rows": labelled_rows,
        "new_categories": {name: list(shares)[:3] for name, shares in new_categories.items()},
        "alerts": [f"{row['rule']}:{row['metric']}:{row['feature'] or '-'}" for row in alert_rows][:20],
        "retrain": retrain,
        "incidents_opened": day_feedback.incidents["opened"][:20],
        "incidents_closed": day_feedback.incidents["closed"][:20],
        "breaker_open": day_feedback.breaker.is_open,
        "rollback": day_feedback.rollback,
    }


def compute_metrics(
    config: LooplineConfig, engine, day: dt.date, profile: dict, features, holdout_log_loss: float | None, version: str | None = None
) -> tuple[list[MetricValue], dict[str, dict[str, float]]]:
    """Return every metric of ``day`` against ``profile``, and the categories unseen in
    training by feature (their share of the day's rows, at most five per feature).

    Reads the monitoring store but not MLflow: ``run_checks`` passes the reference profile
    and the holdout log loss of the model version that scored the day.
    """
    monitoring, feature_set = config.monitoring, config.feature_set
    values = []
    for result in drift.numerical_drift(profile, features, monitoring.psi_epsilon, monitoring.min_rows, monitoring.ks_min_rows):
        values += [
            MetricValue("psi", result.feature, result.psi, result.status, result.sample_size),
            MetricValue("js_distance", result.feature, result.js_distance, result.status, result.sample_size),
            MetricValue("ks_pvalue", result.feature, result.ks_pvalue, result.ks_status, result.sample_size),
        ]
    new_categories = {}
    for name, counts in profile.get("categorical", {}).items():
        result = drift.categorical_drift(counts, features[name], monitoring.psi_epsilon, monitoring.min_rows, name)
        for metric, value in (
            ("chi2_pvalue", result.chi2_pvalue),
            ("categorical_psi", result.psi),
            ("categorical_js_distance", result.js_distance),
            ("unseen_category_rate", result.unseen_rate),
        ):
            values.append(MetricValue(metric, name, value, result.status, result.sample_size))
        if result.new_categories:
            new_categories[name] = {category: round(share, 4) for category, share in list(result.new_categories.items())[:5]}
    if new_categories:
        logger.warning("categories unseen in training on %s (share of the day's rows): %s", day, new_categories)

    values += _prediction_drift_values(profile, monitoring_store.batch_predictions(engine, day), monitoring)
    values += missing_values.missing_rate_values(
        profile, features, list(feature_set.numerical), list(feature_set.categorical), monitoring.min_rows
    )
    values += quality.window_quality(engine, day, monitoring.quality_window_days, monitoring.min_rows, holdout_log_loss, version)
    values += serving_health.serving_metrics(engine, day)
    return values, new_categories


def _prediction_drift_values(profile: dict, predictions: list[dict[str, Any]], monitoring) -> list[MetricValue]:
    probabilities = [row["probability"] for row in predictions]
    result = drift.prediction_drift(profile, probabilities, monitoring.psi_epsilon, monitoring.min_rows, monitoring.ks_min_rows)
    return [
        MetricValue("prediction_psi", None, result.psi, result.status, result.sample_size),
        MetricValue("prediction_js_distance", None, result.js_distance, result.status, result.sample_size),
        MetricValue("prediction_ks_pvalue", None, result.ks_pvalue, result.ks_status, result.sample_size),
    ]


def policy_in_force(config: LooplineConfig, model_version) -> LooplineConfig:
    """Return ``config`` under the monitoring policy stamped on ``model_version``.

    The policy was stamped when the version was promoted. Applying it, rather than the
    config's current policy, makes a rerun of a past day decide as that day did.
    """
    stamped = registry.stamped_policy(model_version)
    current = policy_of(config)
    if stamped is None:
        logger.info(
            "model version %s carries no stamped policy; applying the config's policy %s",
            model_version.version,
            current["policy_version"],
        )
        return config
    if stamped == current:
        return config
    logger.info(
        "applying policy %s, stamped on model version %s at its promotion (the config's policy is %s)",
        stamped.get("policy_version"),
        model_version.version,
        current["policy_version"],
    )
    return with_policy(config, stamped, f"stamped on model version {model_version.version}")


def _retrain_gain_row(config: LooplineConfig, engine, day: dt.date, model_version, client, reference: str) -> dict[str, Any]:
    version, policy_version = str(model_version.version), config.monitoring.policy_version
    not_due = retrain_gain.due(config, engine, day)
    if not_due:
        logger.info("retrain gain not computed on %s: %s", day, not_due)
        return _metric_row(retrain_gain.METRIC, None, None, "not_due", 0, version, policy_version, reference)
    run_id = model_version.tags.get("loopline.run_id") or model_version.run_id
    model_label = client.get_run(run_id).data.params.get("model", "")
    gain = retrain_gain.compute(config, engine, day, version, model_label, registry.window_end_of(model_version))
    if gain.status != "ok":
        logger.info("retrain gain on %s: %s (%s)", day, gain.status, gain.detail)
    return _metric_row(retrain_gain.METRIC, None, gain.value, gain.status, gain.sample_size, version, policy_version, reference)


def _metric_row(metric, feature, value, status, sample_size, version, policy_version, reference=None) -> dict[str, Any]:
    return {
        "metric": metric,
        "feature": feature,
        "value": value,
        "status": status,
        "sample_size": sample_size,
        "model_version": version,
        "reference": reference,
        "policy_version": policy_version,
    }


def _evaluate_rules(config: LooplineConfig, metric_rows: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    alert_rows = []
    for rule in config.monitoring.rules:
        covered = set(rule.features)
        for row in metric_rows:
            if row["metric"] != rule.metric or row["status"] != "ok":
                continue
            if row["sample_size"] < rule.min_sample_size:
                continue
            if covered and row["feature"] not in covered:
                continue
            if crosses(rule, row["value"]):
                alert_rows.append(
                    {
                        "rule": rule.name,
                        "metric": rule.metric,
                        "feature": row["feature"],
                        "value": row["value"],
                        "threshold": rule.threshold,
                        "severity": rule.severity,
                        "action": rule.action,
                        "model_version": version,
                        "policy_version": config.monitoring.policy_version,
                    }
                )
    return alert_rows


request_id_for = feedback.request_id_for


def _retrain_decision(config: LooplineConfig, day: dt.date, alert_rows, engine) -> dict[str, Any] | None:
    return feedback.retrain_decision(config, day, alert_rows, engine)
