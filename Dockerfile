# One image for every Loopline service in docker-compose.yaml: the Airflow components,
# the Celery workers, the MLflow tracking server and the model server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    LOOPLINE_HOME=/var/lib/loopline \
    LOOPLINE_CONFIG=/opt/loopline/include/config/loopline.yaml

RUN useradd --create-home --uid 50000 loopline

WORKDIR /opt/loopline

# requirements.txt pins the local profile. The production stack also needs the Celery
# executor, which the local profile does not install. requirements.txt is passed as
# constraints, so the provider cannot change a pinned version.
COPY requirements.txt ./
RUN pip install -r requirements.txt \
    && pip install -c requirements.txt apache-airflow-providers-celery==3.26.0

# An editable install keeps the package in /opt/loopline, next to include/config, where
# loopline.settings looks for the repository root.
COPY pyproject.toml ./
COPY include ./include
RUN pip install --no-deps -e .

COPY dags ./dags
COPY plugins ./plugins

# Named volumes mounted on these folders start with this ownership.
RUN mkdir -p "$AIRFLOW_HOME/logs" "$AIRFLOW_HOME/auth" "$LOOPLINE_HOME" /var/lib/mlflow/artifacts \
    && chown -R loopline "$AIRFLOW_HOME" "$LOOPLINE_HOME" /var/lib/mlflow

USER loopline
