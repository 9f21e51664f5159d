"""docker-compose.yaml, checked with the Compose client's ``config`` when a client is installed.

``config`` resolves the file and the env file without a Docker engine. The checks: the
stack resolves with every secret set, refuses to resolve with the empty values of
``.env.example``, publishes ports on 127.0.0.1 only, and sends training to its own workers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY")


def _compose_command() -> list[str] | None:
    """Return the Compose client: the docker plugin if it works, else docker-compose."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE = _compose_command()
pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="no Compose client: neither `docker compose` nor `docker-compose` is installed"
)


def _config(env_file: Path) -> subprocess.CompletedProcess:
    assert COMPOSE is not None
    return subprocess.run(
        [*COMPOSE, "--env-file", str(env_file), "-f", str(REPO_ROOT / "docker-compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_resolves_with_secrets_set(tmp_path: Path) -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    filled = "\n".join(f"{line}test-value-1" if line.rstrip("=") in SECRETS else line for line in example.splitlines())
    env_file = tmp_path / ".env"
    env_file.write_text(filled + "\n")

    result = _config(env_file)

    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker", "airflow-worker-training", "mlflow", "model-server"} <= set(services)
    assert services["airflow-worker"]["command"][-2:] == ["--queues", "default"]
    assert "--queues" in services["airflow-worker-training"]["command"]
    assert "training" in services["airflow-worker-training"]["command"]
    for name, service in services.items():
        assert "healthcheck" in service or name in ("airflow-init", "postgres-init"), name
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_compose_refuses_empty_secrets() -> None:
    result = _config(REPO_ROOT / ".env.example")

    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stdout + result.stderr
