"""The online model server: FastAPI in front of the registered champion model.

The server loads the model version that the registry alias ``champion`` points to and
scores JSON records with the same fitted pipeline that batch scoring uses. A background
thread polls the alias and swaps a new version in without a restart. Predictions and
per-request stage timings go to the monitoring store through a bounded queue, so a slow
or unavailable store never delays or fails a request.

Endpoints:

* ``POST /predict``: one JSON record (object), a list of records, or CSV with a header
  row; bodies over ``serving.max_body_bytes`` or with more than ``serving.max_records``
  records get 413;
* ``GET /health``: 200 while the process runs, with the monitoring log counters;
* ``GET /ready``: 200 when a model is loaded, else 503 with the reason;
* ``GET /model``: name, version, alias, run id, signature inputs and load time;
* ``GET /metrics``: request counts, stage latency histograms, reloads and dropped
  monitoring records in the Prometheus text format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.types import DataType
from scipy.special import expit
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from starlette.concurrency import run_in_threadpool

from loopline import settings
from loopline.config import cached_config
from loopline.modeling import CLASSIFIER_STEP, FEATURES_STEP, SCALE_STEP, positive_probability
from loopline.serving.metrics import ServerMetrics
from loopline.serving.monitoring_log import DEFAULT_LOG_QUEUE_SIZE, LogEntry, MonitoringLog
from loopline.serving.requests import (
    NUMBER_TYPES,
    STRING_TYPES,
    InputColumn,
    RequestValidationFailed,
    parse_request,
)

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"

# Registry error codes that mean "this model or alias does not exist (yet)". The SQL store
# raises INVALID_PARAMETER_VALUE for a missing alias and RESOURCE_DOES_NOT_EXIST for a
# missing registered model (MLflow 3.17).
_NOT_FOUND_ERROR_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})

# The /predict body in the OpenAPI document. The endpoint reads the raw body itself, so that
# parsing is timed as preprocessing and errors name the record index.
_PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "description": "one record: every model input field, null allowed"},
                        {"type": "array", "items": {"type": "object"}, "minItems": 1},
                    ]
                }
            },
            "text/csv": {
                "schema": {"type": "string", "description": "a header row of field names, then one record per row"}
            },
        },
    }
}

# A version that failed to load is not retried for this long. A different version that the
# alias moves to loads at the next poll.
FAILED_VERSION_RETRY_SECONDS = 300.0


# ---------------------------------------------------------------------------------------
# The loaded model
# ---------------------------------------------------------------------------------------


class ModelLoadError(RuntimeError):
    """A registered model version cannot be served."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model version ready to serve.

    The server replaces its current ``LoadedModel`` with one reference assignment, and a
    request reads that reference once, so every request uses one version from start to end.
    """

    name: str
    version: str
    alias: str
    run_id: str | None
    model_uri: str
    pipeline: Pipeline
    inputs: tuple[InputColumn, ...]
    loaded_at: dt.datetime
    # The scaler and a binary logistic classifier as arrays, or None for other models.
    linear: LinearScorer | None = None

    def describe(self) -> dict[str, Any]:
        """Return the JSON description served by ``GET /model``."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "inputs": [{"name": column.name, "type": column.type} for column in self.inputs],
            "loaded_at": self.loaded_at.isoformat(),
        }


def load_model_version(name: str, version: str, alias: str = CHAMPION_ALIAS, run_id: str | None = None) -> LoadedModel:
    """Load one registered version, check it against its signature and score a test record.

    Uses the global MLflow registry URI, so call ``mlflow.set_registry_uri`` first. Raises
    ``ModelLoadError`` when the version has no usable signature, is not a Loopline
    pipeline, or fails on a record of nulls.
    """
    model_uri = f"models:/{name}/{version}"
    info = mlflow.models.get_model_info(model_uri)
    if info.signature is None:
        raise ModelLoadError(f"{model_uri} has no signature; log the model with model_signature(config)")
    inputs = _signature_inputs(model_uri, info.signature)

    pipeline = mlflow.sklearn.load_model(model_uri)
    _check_pipeline(model_uri, pipeline, inputs)

    # Scoring one record of nulls (all imputed) before the swap catches a model that loads
    # but cannot predict, while the previous version still serves.
    test_record = {column.name: None for column in inputs}
    try:
        expected, _, _ = _score(pipeline, [test_record])
    except Exception as error:
        raise ModelLoadError(f"{model_uri} failed to score a test record of nulls: {error}") from error
    linear = LinearScorer.from_pipeline(pipeline)
    if linear is not None and not np.array_equal(_score(pipeline, [test_record], linear)[0], expected):
        logger.warning("%s: the array path scores the test record differently from scikit-learn, so it is not used", model_uri)
        linear = None

    return LoadedModel(
        name=name,
        version=str(version),
        alias=alias,
        run_id=run_id or info.run_id,
        model_uri=model_uri,
        pipeline=pipeline,
        inputs=inputs,
        loaded_at=dt.datetime.now(dt.timezone.utc),
        linear=linear,
    )


def _signature_inputs(model_uri: str, signature: Any) -> tuple[InputColumn, ...]:
    schema = signature.inputs
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        raise ModelLoadError(f"{model_uri} needs a signature with named columns, got {schema}")

    columns = []
    for spec in schema.inputs:
        type_name = spec.type.name if isinstance(spec.type, DataType) else str(spec.type)
        if type_name not in NUMBER_TYPES | STRING_TYPES:
            raise ModelLoadError(
                f"{model_uri} input {spec.name!r} has type {type_name!r}; the server accepts "
                f"{sorted(NUMBER_TYPES | STRING_TYPES)}"
            )
        columns.append(InputColumn(spec.name, type_name))
    return tuple(columns)


def _check_pipeline(model_uri: str, pipeline: Any, inputs: Sequence[InputColumn]) -> None:
    steps = getattr(pipeline, "named_steps", {})
    missing_steps = [step for step in (FEATURES_STEP, SCALE_STEP, CLASSIFIER_STEP) if step not in steps]
    if not isinstance(pipeline, Pipeline) or missing_steps:
        raise ModelLoadError(
            f"{model_uri} is not a Loopline pipeline: it is a {type(pipeline).__name__} "
            f"without steps {missing_steps}; log the pipeline from loopline.modeling.build_pipeline"
        )

    types = {column.name: column.type for column in inputs}
    features = steps[FEATURES_STEP]
    wrong = [name for name in features.numerical if types.get(name) not in NUMBER_TYPES]
    wrong += [name for name in features.categorical if types.get(name) not in STRING_TYPES]
    if wrong:
        raise ModelLoadError(
            f"{model_uri} pipeline features {wrong} are missing from the signature or have the "
            "wrong type; numerical features need double and categorical features string"
        )


def _score(pipeline: Pipeline, records: list[dict[str, Any]], linear: LinearScorer | None = None) -> tuple[Any, float, float]:
    """Return P(delayed) per record and the feature and inference durations in seconds."""
    started = time.perf_counter()
    features = pipeline.named_steps[FEATURES_STEP].transform_records(records)
    if linear is not None and np.isfinite(features).all():
        scaled = linear.standardize(features)
        computed = time.perf_counter()
        probabilities = linear.probability(scaled)
    else:
        scaled = pipeline.named_steps[SCALE_STEP].transform(features)
        computed = time.perf_counter()
        probabilities = positive_probability(pipeline, scaled)
    inferred = time.perf_counter()
    return probabilities, computed - started, inferred - computed


@dataclasses.dataclass(frozen=True)
class LinearScorer:
    """A fitted ``StandardScaler`` and binary log-loss ``SGDClassifier`` as NumPy arrays.

    ``standardize`` and ``probability`` repeat the arithmetic of scikit-learn 1.9's
    ``StandardScaler.transform`` and ``SGDClassifier.predict_proba`` without their input
    validation: the two scikit-learn calls took about 0.27 ms for one record, timed
    in-process on a 2-core machine. ``load_model_version``
    uses it only after it scored the test record exactly as scikit-learn did, and
    ``_score`` falls back to scikit-learn for non-finite features so that they raise as
    before.
    """

    mean: np.ndarray | None
    scale: np.ndarray | None
    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> LinearScorer | None:
        scaler = pipeline.named_steps[SCALE_STEP]
        classifier = pipeline.named_steps[CLASSIFIER_STEP]
        if type(scaler) is not StandardScaler or type(classifier) is not SGDClassifier:
            return None
        if classifier.loss != "log_loss" or list(classifier.classes_) != [0, 1]:
            return None
        return cls(
            mean=scaler.mean_ if scaler.with_mean else None,
            scale=scaler.scale_ if scaler.with_std else None,
            coef=classifier.coef_.T,
            intercept=classifier.intercept_,
        )

    def standardize(self, features: np.ndarray) -> np.ndarray:
        scaled = np.array(features, dtype="float64")
        if self.mean is not None:
            scaled -= self.mean
        if self.scale is not None:
            scaled /= self.scale
        return scaled

    def probability(self, scaled: np.ndarray) -> np.ndarray:
        """Return P(class 1): the logistic function of the decision function."""
        decision = (scaled @ self.coef + self.intercept).reshape(-1)
        return expit(decision)


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


class ModelServer:
    """Server state: the loaded version of the alias, its poller and the monitoring log.

    ``refresh`` polls the alias once: the background poller calls it every ``poll_seconds``,
    and tests or operators may call it directly. A version that fails to load leaves the
    current one serving.
    """

    def __init__(
        self,
        model_name: str,
        tracking_uri: str,
        monitoring: MonitoringLog,
        decision_threshold: float,
        poll_seconds: float = 10.0,
        alias: str = CHAMPION_ALIAS,
        startup_wait_seconds: float = 30.0,
        max_body_bytes: int = 1_048_576,
        max_records: int = 1_000,
    ):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        if max_body_bytes < 1 or max_records < 1:
            raise ValueError(f"max_body_bytes and max_records must be positive, got {max_body_bytes} and {max_records}")
        self.model_name = model_name
        self.tracking_uri = tracking_uri
        self.alias = alias
        self.monitoring = monitoring
        self.metrics = ServerMetrics()
        self.decision_threshold = decision_threshold
        self.poll_seconds = poll_seconds
        self.startup_wait_seconds = startup_wait_seconds
        self.max_body_bytes = max_body_bytes
        self.max_records = max_records
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

        # Replaced by one assignment and never mutated (see LoadedModel).
        self._model: LoadedModel | None = None
        self._unavailable_reason = f"the server has not polled the registry for model {model_name!r} yet"
        self._refresh_lock = threading.Lock()
        self._failed_versions: dict[str, float] = {}
        self._last_poll_problem: str | None = None
        self._first_poll_done = threading.Event()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model(self) -> LoadedModel | None:
        """The model serving now, or None before a champion has loaded."""
        return self._model

    @property
    def unavailable_reason(self) -> str:
        return self._unavailable_reason

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitoring writer and the poller, and wait for the first poll.

        The first poll runs in the poller thread, and the wait ends after
        ``startup_wait_seconds`` even if the registry call has not returned. The server then
        starts without a model and ``/ready`` returns 503 until a poll loads one.
        """
        self.monitoring.start()
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="loopline-model-poller", daemon=True)
        self._poller.start()
        if not self._first_poll_done.wait(self.startup_wait_seconds):
            logger.warning(
                "first registry poll for %s@%s did not finish within %.0f s; starting without a model",
                self.model_name,
                self.alias,
                self.startup_wait_seconds,
            )
        logger.info(
            "model server started for %s@%s (tracking URI %s, poll every %.1f s)",
            self.model_name,
            self.alias,
            self.tracking_uri,
            self.poll_seconds,
        )

    def stop(self) -> None:
        """Stop the poller, then write the queued monitoring rows."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30.0)
            if self._poller.is_alive():
                logger.warning("model poller still busy after 30 s at shutdown; leaving it to exit with the process")
            self._poller = None
        self.monitoring.stop()
        logger.info("model server stopped")

    def _poll_loop(self) -> None:
        try:
            self.refresh()
        finally:
            self._first_poll_done.set()
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    # -- alias polling -------------------------------------------------------------------

    def refresh(self) -> LoadedModel | None:
        """Poll the alias once, load its version when it differs and return the serving model.

        Registry and load errors are logged, never raised, because the current version
        keeps serving.
        """
        with self._refresh_lock:
            try:
                self._refresh_locked()
            except Exception:  # the poller thread must survive any registry or load error
                logger.exception("polling %s@%s failed; the current model keeps serving", self.model_name, self.alias)
            return self._model

    def _refresh_locked(self) -> None:
        current = self._model
        try:
            target = self.client.get_model_version_by_alias(self.model_name, self.alias)
        except MlflowException as error:
            if error.error_code in _NOT_FOUND_ERROR_CODES:
                self._on_no_alias(current, error)
            else:
                self._on_registry_error(current, error)
            return
        except Exception as error:  # connection errors come as requests or SQLAlchemy exceptions
            self._on_registry_error(current, error)
            return

        version = str(target.version)
        self._last_poll_problem = None
        if current is not None and current.version == version:
            return
        failed_at = self._failed_versions.get(version)
        if failed_at is not None and time.monotonic() - failed_at < FAILED_VERSION_RETRY_SECONDS:
            return

        previous = current.version if current else None
        logger.info(
            "alias %s of %s points to version %s (serving %s); loading it",
            self.alias,
            self.model_name,
            version,
            previous or "none",
        )
        started = time.perf_counter()
        try:
            loaded = load_model_version(self.model_name, version, alias=self.alias, run_id=target.run_id)
        except Exception as error:
            self._failed_versions[version] = time.monotonic()
            self.metrics.observe_reload(succeeded=False)
            logger.error(
                "loading version %s of %s failed, so version %s keeps serving; the version is "
                "retried in %.0f s: %s",
                version,
                self.model_name,
                previous or "none (no model)",
                FAILED_VERSION_RETRY_SECONDS,
                error,
                exc_info=True,
            )
            if current is None:
                self._unavailable_reason = (
                    f"champion version {version} of model {self.model_name!r} failed to load: {error}"
                )
            return

        self._failed_versions.pop(version, None)
        self._model = loaded
        self.metrics.observe_reload(succeeded=True)
        logger.info(
            "now serving %s version %s (was %s), loaded in %.2f s",
            self.model_name,
            version,
            previous or "none",
            time.perf_counter() - started,
        )

    def _on_no_alias(self, current: LoadedModel | None, error: MlflowException) -> None:
        if current is None:
            self._unavailable_reason = (
                f"no champion is registered yet for model {self.model_name!r} (alias {self.alias!r} "
                f"not found); the server loads it within {self.poll_seconds:g} s after training sets the alias"
            )
            self._note_poll_problem(logging.INFO, f"no {self.alias} alias for {self.model_name} yet: {error.message}")
        else:
            self._note_poll_problem(
                logging.WARNING,
                f"alias {self.alias} of {self.model_name} is gone ({error.message}); "
                f"version {current.version} keeps serving",
            )

    def _on_registry_error(self, current: LoadedModel | None, error: Exception) -> None:
        if current is None:
            self._unavailable_reason = (
                f"the model registry at {self.tracking_uri} failed to resolve {self.model_name}@{self.alias}: {error}"
            )
        self._note_poll_problem(
            logging.WARNING,
            f"resolving {self.model_name}@{self.alias} failed; serving "
            f"{current.version if current else 'no model'}: {error}",
        )

    def _note_poll_problem(self, level: int, message: str) -> None:
        # A poll every few seconds would repeat the same problem; log it once until it changes.
        if message != self._last_poll_problem:
            logger.log(level, "%s", message)
            self._last_poll_problem = message

    # -- prediction ----------------------------------------------------------------------

    def body_too_large(self, size: int | None) -> JSONResponse:
        """Return the 413 response for a body over ``max_body_bytes``; ``size`` is None when unknown."""
        request_id = uuid.uuid4().hex
        self.metrics.observe_request(413, 0, {})
        stated = f"{size} bytes" if size is not None else f"more than {self.max_body_bytes} bytes"
        detail = {
            "type": "body_too_large",
            "loc": ["body"],
            "msg": f"the request body has {stated}, over the limit serving.max_body_bytes = "
            f"{self.max_body_bytes}; send fewer records per request",
        }
        logger.info("request %s rejected with 413: %s", request_id, detail["msg"])
        return JSONResponse({"detail": [detail]}, status_code=413, headers={"X-Request-ID": request_id})

    def predict(self, body: bytes, content_type: str = "application/json") -> JSONResponse:
        """Score a request body and return the HTTP response (200, 413, 415, 422, 500 or 503)."""
        request_id = uuid.uuid4().hex
        headers = {"X-Request-ID": request_id}
        model = self._model
        if model is None:
            headers["Retry-After"] = str(math.ceil(self.poll_seconds))
            self.metrics.observe_request(503, 0, {})
            return JSONResponse({"detail": self._unavailable_reason}, status_code=503, headers=headers)

        started = time.perf_counter()
        try:
            parsed = parse_request(body, model.inputs, content_type, self.max_records)
        except RequestValidationFailed as error:
            timings = _timings_ms(time.perf_counter() - started, 0.0, 0.0, 0.0)
            self._log_request(model, request_id, error.records, error.status_code, timings, [])
            logger.info("request %s rejected with %d: %s", request_id, error.status_code, error.errors[0]["msg"])
            return JSONResponse({"detail": error.errors}, status_code=error.status_code, headers=headers)
        parsed_at = time.perf_counter()

        try:
            probabilities, feature_seconds, inference_seconds = _score(model.pipeline, parsed.records, model.linear)
        except Exception:
            logger.exception(
                "request %s failed inside %s version %s with %d records",
                request_id,
                model.name,
                model.version,
                len(parsed.records),
            )
            timings = _timings_ms(parsed_at - started, time.perf_counter() - parsed_at, 0.0, 0.0)
            self._log_request(model, request_id, len(parsed.records), 500, timings, [])
            return JSONResponse(
                {"detail": f"scoring failed in model version {model.version}; the server log has request {request_id}"},
                status_code=500,
                headers=headers,
            )
        scored_at = time.perf_counter()

        predictions = []
        for flight_id, probability in zip(parsed.flight_ids, probabilities, strict=True):
            probability = float(probability)
            predictions.append(
                {
                    "flight_id": flight_id,
                    "probability": probability,
                    "delayed": int(probability >= self.decision_threshold),
                }
            )
        content = {
            "model_name": model.name,
            "model_version": model.version,
            "request_id": request_id,
            "predictions": predictions,
            "ignored_fields": parsed.ignored_fields,
        }
        finished = time.perf_counter()

        content["timings_ms"] = _timings_ms(
            parsed_at - started, feature_seconds, inference_seconds, finished - scored_at, total=finished - started
        )
        self._log_request(model, request_id, len(predictions), 200, content["timings_ms"], predictions)
        return JSONResponse(content, headers=headers)

    def _log_request(
        self,
        model: LoadedModel,
        request_id: str,
        records: int,
        status_code: int,
        timings: Mapping[str, float],
        predictions: list[dict[str, Any]],
    ) -> None:
        prediction_rows = [
            {
                "flight_id": prediction["flight_id"],
                "model_version": model.version,
                "probability": prediction["probability"],
                "decision": prediction["delayed"],
                "request_id": request_id,
            }
            for prediction in predictions
        ]
        timing_row = {
            "request_id": request_id,
            "model_version": model.version,
            "records": records,
            "status_code": status_code,
            "preprocessing_ms": timings["preprocessing"],
            "feature_ms": timings["feature_computation"],
            "inference_ms": timings["inference"],
            "postprocessing_ms": timings["postprocessing"],
            "total_ms": timings["total"],
        }
        self.metrics.observe_request(status_code, records, timings)
        self.monitoring.submit(LogEntry(predictions=prediction_rows, timing=timing_row))

    # -- status --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model_loaded": self._model is not None,
            "dropped_log_records": self.monitoring.dropped_records,
            "queued_log_entries": self.monitoring.queued_entries,
        }


def _timings_ms(
    preprocessing: float, features: float, inference: float, postprocessing: float, total: float | None = None
) -> dict[str, float]:
    """Convert stage durations in seconds to milliseconds rounded to 1 microsecond."""
    if total is None:
        total = preprocessing + features + inference + postprocessing
    return {
        "preprocessing": round(preprocessing * 1000, 3),
        "feature_computation": round(features * 1000, 3),
        "inference": round(inference * 1000, 3),
        "postprocessing": round(postprocessing * 1000, 3),
        "total": round(total * 1000, 3),
    }


# ---------------------------------------------------------------------------------------
# The FastAPI application
# ---------------------------------------------------------------------------------------


def create_app(
    model_name: str | None = None,
    tracking_uri: str | None = None,
    monitoring_url: str | None = None,
    poll_seconds: float = 10.0,
    log_queue_size: int = DEFAULT_LOG_QUEUE_SIZE,
    max_body_bytes: int | None = None,
    max_records: int | None = None,
) -> FastAPI:
    """Build the serving app, whose lifespan starts and stops the poller and the monitoring writer.

    Defaults: the model name from the config (or ``LOOPLINE_MODEL_NAME``), the tracking URI
    from ``LOOPLINE_MLFLOW_TRACKING_URI``, the store from ``LOOPLINE_MONITORING_DB_URL`` and
    the request limits from the config's ``serving`` section.
    The ``ModelServer`` is ``app.state.server``.

    NOTE: model loading resolves ``models:/`` URIs through MLflow's process-wide tracking and
    registry URIs, which this function sets. Two apps in one process must share a tracking URI.
    """
    config = cached_config()
    model_name = model_name or config.model_name
    tracking_uri = tracking_uri or settings.mlflow_tracking_uri()
    monitoring_url = monitoring_url or settings.monitoring_db_url()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)

    server = ModelServer(
        model_name=model_name,
        tracking_uri=tracking_uri,
        monitoring=MonitoringLog(monitoring_url, queue_size=log_queue_size),
        decision_threshold=config.serving.decision_threshold,
        poll_seconds=poll_seconds,
        max_body_bytes=max_body_bytes or config.serving.max_body_bytes,
        max_records=max_records or config.serving.max_records,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(server.start)
        try:
            yield
        finally:
            await run_in_threadpool(server.stop)

    app = FastAPI(title="Loopline model server", lifespan=lifespan)
    app.state.server = server

    @app.post("/predict", openapi_extra=_PREDICT_OPENAPI)
    async def predict(request: Request) -> JSONResponse:
        """Score one JSON record, a list of records or CSV rows with the champion model."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > server.max_body_bytes:
            return server.body_too_large(int(declared))
        # A chunked body has no length up front, so the limit is checked while it arrives.
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > server.max_body_bytes:
                return server.body_too_large(None)
        # Parsing and scoring are CPU work, so a worker thread runs them and the event loop stays
        # free for /health.
        return await run_in_threadpool(server.predict, bytes(body), request.headers.get("content-type", ""))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Return 200 while the process runs, with the monitoring log counters."""
        return server.health()

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Return 200 with the version when a model is loaded, else 503 with the reason."""
        model = server.model
        if model is None:
            return JSONResponse({"status": "not_ready", "detail": server.unavailable_reason}, status_code=503)
        return JSONResponse({"status": "ready", "model_name": model.name, "model_version": model.version})

    @app.get("/metrics")
    async def prometheus_metrics() -> PlainTextResponse:
        """Return the server's counters and stage latency histograms for Prometheus."""
        model = server.model
        version = float(model.version) if model is not None and model.version.isdigit() else 0.0
        text = server.metrics.render(
            gauges={"loopline_model_version": ("Version number of the serving model; 0 when none is loaded.", version)},
            dropped=lambda: server.monitoring.dropped_records,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/model")
    async def model_info() -> JSONResponse:
        """Describe the serving model version, or return 503 when none is loaded."""
        model = server.model
        if model is None:
            return JSONResponse({"detail": server.unavailable_reason}, status_code=503)
        return JSONResponse(model.describe())

    return app


def run(host: str = "127.0.0.1", port: int = 8000, poll_seconds: float = 10.0, access_log: bool = True) -> None:
    """Serve the app with uvicorn in one worker process until interrupted.

    ``access_log=False`` turns off uvicorn's line per request only. Validation, stage
    timings, the monitoring log and ``/metrics`` stay on.
    """
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(poll_seconds=poll_seconds)
    logger.info("starting model server on http://%s:%d (access log %s)", host, port, "on" if access_log else "off")
    uvicorn.run(app, host=host, port=port, workers=1, log_level="info", access_log=access_log)
