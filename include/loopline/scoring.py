"""Batch scoring: the champion scores one day's feature partition into the monitoring store."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd

from loopline import registry, store, tracking
from loopline.config import LooplineConfig
from loopline.monitoring import store as monitoring_store

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = {"flight_id": "str", "model_version": "str", "probability": "float64", "decision": "int64"}


def score_day(config: LooplineConfig, day: dt.date) -> dict[str, Any]:
    """Score the feature partition of ``day`` with the champion as of that day.

    That is ``@champion`` unless it was trained on ``day`` itself, as happens when a backfill
    scores past days (see ``registry.champion_as_of``). Reruns replace, never duplicate.
    """
    import mlflow

    feature_set = config.feature_set
    features = store.read_partition(store.feature_dataset(feature_set.name, feature_set.version), day)
    engine = monitoring_store.get_engine()

    client = tracking.configure()
    champion = registry.champion_as_of(client, config.model_name, day)
    if champion is None:
        logger.warning(
            "no %s champion trained before %s exists, so the day is recorded as not scored", config.model_name, day
        )
        monitoring_store.replace_batch_predictions(engine, day, None, [], status="no_champion")
        return {"date": day.isoformat(), "status": "no_champion", "rows": 0}

    version = str(champion.version)
    model = mlflow.sklearn.load_model(f"models:/{config.model_name}/{version}")
    if len(features):
        probability = model.predict_proba(features[feature_set.features])[:, 1]
    else:
        probability = []
    predictions = pd.DataFrame(
        {
            "flight_id": features[feature_set.entity_key].astype("str"),
            "model_version": version,
            "probability": pd.Series(probability, dtype="float64"),
        }
    )
    predictions["decision"] = (predictions["probability"] >= config.serving.decision_threshold).astype("int64")
    predictions = predictions.astype(PREDICTION_COLUMNS)

    path = store.write_partition(predictions, store.PREDICTIONS, day)
    monitoring_store.replace_batch_predictions(engine, day, version, predictions.to_dict("records"), status="scored")
    logger.info("scored %s with %s version %s: %d rows", day, config.model_name, version, len(predictions))
    return {
        "date": day.isoformat(),
        "status": "scored",
        "model_version": version,
        "rows": len(predictions),
        "mean_probability": round(float(predictions["probability"].mean()), 4) if len(predictions) else None,
        "path": str(path),
    }
