"""Shared test set-up: every test session gets its own state folder and Airflow home.

Nothing a test writes lands in the developer's ``.loopline`` folder, and MLflow never
falls back to ``./mlflow.db``: the tracking URI is set to a SQLite file in the session folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SESSION_HOME = Path(os.environ.get("LOOPLINE_TEST_HOME", "/tmp")) / f"loopline-tests-{os.getpid()}"

# Set before any test module imports Airflow or Loopline, because both read them at import.
os.environ["LOOPLINE_HOME"] = str(SESSION_HOME)
os.environ["AIRFLOW_HOME"] = str(SESSION_HOME / "airflow")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{SESSION_HOME / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL", "LOOPLINE_CONFIG", "LOOPLINE_MODEL_NAME"):
    os.environ.pop(name, None)
sys.path.insert(0, str(REPO_ROOT / "plugins"))


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's state folder unless LOOPLINE_KEEP_TEST_HOME is set."""
    import shutil

    if not os.environ.get("LOOPLINE_KEEP_TEST_HOME"):
        shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the session's Airflow metadata database (SQLite) once."""
    import subprocess

    (SESSION_HOME / "airflow").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=300)
    return SESSION_HOME / "airflow" / "airflow.db"


@contextlib.contextmanager
def _state_home(path: Path):
    """Point LOOPLINE_HOME at ``path`` inside the block, with the config and store caches cleared."""
    from loopline.config import cached_config
    from loopline.monitoring import store as monitoring_store

    saved = dict(os.environ)
    os.environ["LOOPLINE_HOME"] = str(path)
    cached_config.cache_clear()
    monitoring_store.get_engine.cache_clear()
    try:
        yield path
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cached_config.cache_clear()
        monitoring_store.get_engine.cache_clear()


def _land_days(config, days: list[dt.date]) -> None:
    """Store the clean flights, features and labels of ``days``, and the labels due the day after.

    Validation has its own tests, so the raw rows are stored as clean without it.
    """
    from loopline import pipeline, store

    for day in days:
        pipeline.extract_flights(day, config)
        store.write_partition(store.read_partition(store.RAW_FLIGHTS, day), pipeline.CLEAN_FLIGHTS, day)
        pipeline.build_features(day, config)
        pipeline.land_labels(day, config)
    pipeline.land_labels(days[-1] + dt.timedelta(days=1), config)


@pytest.fixture(scope="session")
def state_home():
    """Return a context manager that moves Loopline's state folder for a module's fixture."""
    return _state_home


@pytest.fixture(scope="session")
def land_days():
    """Return a function that stores real partitions and labels of the days given."""
    return _land_days


@contextlib.contextmanager
def _postgres_database(prefix: str):
    """Create a uniquely named PostgreSQL database on loopback, yield its URL, then drop it.

    Skips the test when PostgreSQL is not reachable on 127.0.0.1:5432.
    """
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 does not answer: {str(error).splitlines()[0]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_database():
    """Return a context manager that yields the URL of a fresh PostgreSQL database."""
    return _postgres_database
