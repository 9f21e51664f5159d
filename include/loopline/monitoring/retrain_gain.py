"""Would a retrain pay? The retrain-gain metric of the monitoring policy.

A shadow model is what a retrain ``GAIN_DAYS`` days ago would have produced: the
champion's own model family and setting, fitted on the training window that ended then.
The shadow and the champion are compared on the labelled flights of those last days,
which neither was trained on. The metric is the relative log-loss gain of the shadow,
``(champion - shadow) / champion``: above 0 the newer data helps, and a rule on it requests
a retrain only when the gain is worth a retrain.

The shadow is never registered. It costs one fit, so the metric is computed only once
every ``retrain_gain_every_days`` and never within the retrain cooldown.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import warnings

import pandas as pd
import yaml
from sqlalchemy.engine import Engine

from loopline import candidates, metrics, store, training
from loopline.config import LooplineConfig
from loopline.monitoring import store as monitoring_store

logger = logging.getLogger(__name__)

# The shadow model is compared with the champion on this many most recent days.
GAIN_DAYS = 7
METRIC = "retrain_gain"


@dataclasses.dataclass(frozen=True)
class Gain:
    value: float | None
    # "ok", or why there is no value.
    status: str
    sample_size: int
    detail: str = ""


def in_policy(config: LooplineConfig) -> bool:
    """Return True when a rule of the policy in force uses the retrain gain."""
    return any(rule.metric == METRIC for rule in config.monitoring.rules)


def due(config: LooplineConfig, engine: Engine, day: dt.date) -> str | None:
    """Return why the gain is not computed on ``day``, or None when it is due.

    Both conditions read stored results of earlier data days only, so a rerun of a day
    decides as the first run did.
    """
    monitoring = config.monitoring
    last = monitoring_store.latest_metric_day(engine, METRIC, before=day)
    if last is not None and (day - last).days < monitoring.retrain_gain_every_days:
        return f"computed on {last}, every {monitoring.retrain_gain_every_days} days"
    request = monitoring_store.latest_retrain_request(engine, before=day)
    if request is not None:
        since = (day - dt.date.fromisoformat(request["partition_date"])).days
        if since < monitoring.retrain_cooldown_days:
            return f"a retrain was requested on {request['partition_date']}, within the {monitoring.retrain_cooldown_days}-day cooldown"
    return None


def candidate_of(label: str) -> candidates.Candidate:
    """Parse a candidate label such as ``hist_gradient_boosting(learning_rate=0.1,max_iter=100)``."""
    match = re.fullmatch(r"(\w+)\((.*)\)", label or "")
    if not match:
        raise ValueError(f"cannot read the model family from {label!r}; expected family(key=value,...)")
    settings = {}
    for item in filter(None, match.group(2).split(",")):
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    return candidates.Candidate(match.group(1), settings)


def compute(config: LooplineConfig, engine: Engine, day: dt.date, version: str, model_label: str, champion_window_end: dt.date | None) -> Gain:
    """Fit the shadow model and return its relative log-loss gain over champion ``version``."""
    first = day - dt.timedelta(days=GAIN_DAYS)
    if champion_window_end is None or champion_window_end > first:
        return Gain(None, "champion_too_recent", 0, f"the champion's training ended {champion_window_end}, after {first}")

    # The champion's own predictions of the last days, with the labels known on ``day``.
    labelled = [row for row in monitoring_store.labelled_predictions(engine, first, day, arrived_by=day) if row["model_version"] == version]
    if len(labelled) < config.monitoring.min_rows:
        return Gain(None, "insufficient_data", len(labelled), f"{len(labelled)} labelled predictions of version {version} since {first}")

    try:
        window = training.plan_window(config, end=first)
    except training.TrainingSkipped as skipped:
        return Gain(None, "insufficient_data", len(labelled), str(skipped))
    feature_set = config.feature_set
    train_frame = training.training_set(config, list(window.days), training.label_cutoff(config, window.end))
    candidate = candidate_of(model_label)
    shadow = candidates.build(config, candidate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shadow.fit(train_frame[feature_set.features], train_frame[feature_set.label])

    days = sorted({dt.date.fromisoformat(row["partition_date"]) for row in labelled})
    features = store.read_days(store.feature_dataset(feature_set.name, feature_set.version), days)
    scored = pd.DataFrame(labelled).merge(
        features.rename(columns={feature_set.entity_key: "flight_id"}), on="flight_id", how="inner", validate="one_to_one"
    )
    if len(scored) < len(labelled):
        # Feature partitions rewritten after scoring; such flights are left out of both sides.
        logger.warning("%d of %d labelled predictions have no stored features and are left out", len(labelled) - len(scored), len(labelled))
    champion = metrics.log_loss(scored["delayed"].to_numpy(), scored["probability"].to_numpy())
    challenger = metrics.log_loss(scored["delayed"].to_numpy(), shadow.predict_proba(scored[feature_set.features])[:, 1])
    gain = (champion - challenger) / champion
    detail = (
        f"shadow {candidate.label} on {window.label}: log loss {challenger:.5f} vs champion version {version} "
        f"{champion:.5f} on {len(scored)} flights of {first}..{day - dt.timedelta(days=1)}"
    )
    logger.info("retrain gain on %s: %.4f (%s)", day, gain, detail)
    return Gain(gain, "ok", len(scored), detail)
