"""Environment variables that locate Loopline's state and services.

Each variable is declared once here with its default and meaning. The local profile needs
none of them set: everything lives under one state folder (``LOOPLINE_HOME``). The
production profile sets the URLs to PostgreSQL and the MLflow tracking server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The repository root: include/loopline/settings.py -> parents[2].
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EnvVar:
    """One environment variable with its default and a one-line description."""

    name: str
    default: str | None
    doc: str

    def get(self) -> str | None:
        value = os.environ.get(self.name)
        if value is None or value == "":
            return self.default
        return value


LOOPLINE_HOME = EnvVar(
    "LOOPLINE_HOME",
    str(REPO_ROOT / ".loopline"),
    "State folder of the local profile: data partitions, SQLite databases, MLflow artifacts, logs.",
)
LOOPLINE_CONFIG = EnvVar(
    "LOOPLINE_CONFIG",
    str(REPO_ROOT / "include" / "config" / "loopline.yaml"),
    "Path of the versioned pipeline config (feature set, training, registry, monitoring rules).",
)
LOOPLINE_MLFLOW_TRACKING_URI = EnvVar(
    "LOOPLINE_MLFLOW_TRACKING_URI",
    None,
    "MLflow tracking URI; defaults to sqlite:///<LOOPLINE_HOME>/mlflow/mlflow.db.",
)
LOOPLINE_MONITORING_DB_URL = EnvVar(
    "LOOPLINE_MONITORING_DB_URL",
    None,
    "SQLAlchemy URL of the monitoring store; defaults to sqlite:///<LOOPLINE_HOME>/monitoring.db.",
)
LOOPLINE_MODEL_NAME = EnvVar(
    "LOOPLINE_MODEL_NAME",
    None,
    "Registered model name; overrides registry.model_name from the config file.",
)


# SQLAlchemy connect args for Airflow's SQLite metadata database in the local profile,
# named by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS in scripts/env.sh. SQLite's default
# 5 s busy timeout is too short while the scheduler writes: creating a backfill then fails
# with "database is locked", and Airflow 3.3 deletes the half-created runs under the
# scheduler, which crashes it.
AIRFLOW_SQLITE_CONNECT_ARGS = {"timeout": 60}


def home() -> Path:
    """Return the state folder, created on first use."""
    path = Path(LOOPLINE_HOME.get()).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Return the root folder of landing files, partitions and the feature store."""
    return home() / "data"


def mlflow_tracking_uri() -> str:
    uri = LOOPLINE_MLFLOW_TRACKING_URI.get()
    if uri:
        return uri
    folder = home() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    """Return the artifact location for experiments created against a local SQLite store."""
    folder = home() / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def monitoring_db_url() -> str:
    url = LOOPLINE_MONITORING_DB_URL.get()
    if url:
        return url
    return f"sqlite:///{home() / 'monitoring.db'}"
