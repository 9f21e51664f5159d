"""A bare FastAPI app that applies the champion's fitted parameters with plain NumPy.

It is the practical limit of the serving benchmark: no signature validation, no stage
timings, no monitoring log, no access log. At start it loads the champion once and keeps
only numbers: the imputation means, the category shares, the one-hot categories, the
scaler's mean and scale and the logistic model's coefficients. Run with ``python bench/bare_app.py --port PORT``
with LOOPLINE_HOME pointing at the benchmark's MLflow store.
"""

from __future__ import annotations

import argparse
import math

import mlflow
import numpy as np
import uvicorn
from fastapi import FastAPI, Request

from loopline import settings
from loopline.config import load_config
from loopline.features import normalize_category
from loopline.modeling import CLASSIFIER_STEP, FEATURES_STEP, SCALE_STEP


def create_app() -> FastAPI:
    config = load_config()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    mlflow.set_registry_uri(settings.mlflow_tracking_uri())
    pipeline = mlflow.sklearn.load_model(f"models:/{config.model_name}@champion")
    features = pipeline.named_steps[FEATURES_STEP]
    scaler = pipeline.named_steps[SCALE_STEP]
    classifier = pipeline.named_steps[CLASSIFIER_STEP]
    positive = list(classifier.classes_).index(1)
    sign = 1.0 if positive == 1 else -1.0

    numerical = list(features.numerical)
    categorical = list(features.categorical)
    means = [float(value) for value in features.means_]
    shares = features.frequencies_
    # Per categorical feature: the one-hot column of each training category, or None where
    # the feature is frequency-encoded into a single column.
    one_hot_categories = getattr(features, "one_hot_categories_", {})
    layout = []
    width = len(numerical)
    for name in categorical:
        categories = one_hot_categories.get(name)
        layout.append((width, None if categories is None else {category: index for index, category in enumerate(categories)}))
        width += 1 if categories is None else len(categories)
    center = scaler.mean_
    scale = scaler.scale_
    weights = sign * classifier.coef_.ravel()
    bias = sign * float(classifier.intercept_[0])

    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        record = await request.json()
        row = np.zeros(width)
        for index, name in enumerate(numerical):
            value = record.get(name)
            row[index] = means[index] if value is None else float(value)
        for offset, name in enumerate(categorical):
            start, one_hot_index = layout[offset]
            category = normalize_category(record.get(name))
            if one_hot_index is None:
                row[start] = shares[offset].get(category, 0.0)
            elif category in one_hot_index:
                row[start + one_hot_index[category]] = 1.0
        score = float(((row - center) / scale) @ weights) + bias
        probability = 1.0 / (1.0 + math.exp(-score))
        return {"predictions": [{"flight_id": record.get("flight_id"), "probability": probability}]}

    @app.get("/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, workers=1, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
