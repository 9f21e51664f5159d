"""The loopline command's registry errors: a registry that is down or never responds.

An unknown version is tested in test_registry.py, where a registry with versions exists.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

# Generous for a 2-core machine: the command itself imports MLflow and pandas in about 5 s.
MAX_COMMAND_SECONDS = 45


def _closed_port() -> int:
    """Return a loopback port that nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_loopline(args: list[str], tracking_uri: str, home) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LOOPLINE_HOME": str(home), "LOOPLINE_MLFLOW_TRACKING_URI": tracking_uri}
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "loopline.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=MAX_COMMAND_SECONDS * 2,
    )


@pytest.mark.parametrize("args", [["promote", "3", "--reason", "test"], ["rollback", "--reason", "test"]])
def test_unreachable_registry_one_line_error(args, tmp_path):
    """A closed port fails within seconds, exit code 1, one line naming the URI and the fix."""
    uri = f"http://127.0.0.1:{_closed_port()}"

    started = time.monotonic()
    result = _run_loopline(args, uri, tmp_path)
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert elapsed < MAX_COMMAND_SECONDS
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{args[0]} failed: cannot reach the MLflow registry at {uri} (Connection refused)")
    assert "LOOPLINE_MLFLOW_TRACKING_URI" in line
    assert result.stdout == ""


def test_silent_registry_times_out(tmp_path, monkeypatch, capsys):
    """A server that accepts connections but never responds fails after the request timeout."""
    import mlflow

    from loopline import cli

    previous_uris = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("LOOPLINE_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("LOOPLINE_MLFLOW_TRACKING_URI", uri)

        try:
            code = cli.main(["rollback", "--reason", "test"])
        finally:
            # The command points MLflow at the silent server; later tests get the old URIs back.
            mlflow.set_tracking_uri(previous_uris[0])
            mlflow.set_registry_uri(previous_uris[1])

    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        f"rollback failed: cannot reach the MLflow registry at {uri} (no response within 1 s); start it "
        "with `make services`, or set LOOPLINE_MLFLOW_TRACKING_URI to a running tracking server"
    )


def test_history_needs_no_registry(tmp_path):
    """history reads the audit log in LOOPLINE_HOME, so a registry that is down does not matter."""
    result = _run_loopline(["history"], f"http://127.0.0.1:{_closed_port()}", tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"no alias moves recorded yet in {tmp_path / 'registry_audit.jsonl'}"


def test_error_cause_shortens_mlflow_message():
    from mlflow.exceptions import MlflowException

    from loopline import registry

    refused = MlflowException(
        "API request to http://127.0.0.1:1/api/2.0/mlflow/registered-models/search failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api (Caused by "
        "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=1): Failed to establish a new connection: "
        "[Errno 111] Connection refused\"))"
    )
    assert registry.error_cause(refused) == "Connection refused"
    assert registry.error_cause(MlflowException("first line\nsecond line")) == "first line"
    assert registry.error_cause(MlflowException("x" * 500)) == "x" * registry.MAX_CAUSE_CHARS
