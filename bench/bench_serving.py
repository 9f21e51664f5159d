"""Online scoring: Loopline's model server vs `mlflow models serve` vs a bare FastAPI app, one champion.

A temporary LOOPLINE_HOME contains an MLflow SQLite store with one registered champion
(trained on real days by ``bench_registry.prepare``). Each server runs alone, in its own
process on 127.0.0.1, with one uvicorn worker; the load generator
(``python -m loopline.serving.load_generator``) runs in another process and sends
single-record requests at a fixed concurrency, after a warm-up. Servers:

* Loopline: ``loopline serve`` with signature validation, stage timings, Prometheus
  metrics and the monitoring log on; once with uvicorn's access log (the default) and
  once with ``--no-access-log``;
* MLflow: ``mlflow models serve -m models:/<name>@champion --env-manager local``, whose
  pyfunc returns the class (``predict``) for each record;
* bare: ``bench/bare_app.py``, the same fitted numbers applied with NumPy, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import common

SERVE_DAY = "2013-01-20"


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {process.returncode} before it was ready")
        for path in ("/ready", "/ping"):
            try:
                if httpx.get(url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    raise TimeoutError(f"server at {url} was not ready within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(url: str, records: Path, concurrency: int, requests: int, payload_format: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "loopline.serving.load_generator", "--url", url, "--records", str(records),
         "--concurrency", str(concurrency), "--requests", str(requests), "--payload-format", payload_format],
        capture_output=True, text=True, check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def server_commands(port: int, model_name: str) -> dict[str, tuple[list[str], str]]:
    loopline = [str(Path(sys.executable).parent / "loopline"), "serve", "--host", "127.0.0.1", "--port", str(port), "--poll-seconds", "3600"]
    return {
        "loopline": (loopline, "loopline"),
        "loopline_no_access_log": ([*loopline, "--no-access-log"], "loopline"),
        "mlflow": (
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{model_name}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            "mlflow",
        ),
        "bare": ([sys.executable, str(common.BENCH_DIR / "bare_app.py"), "--port", str(port)], "loopline"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per server (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="load generator threads (default: %(default)s)")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()

    import datetime as dt

    import pandas as pd

    import bench_registry
    from loopline.sources import flight_feed

    with tempfile.TemporaryDirectory(prefix="loopline-bench-serving-") as folder:
        os.environ["LOOPLINE_HOME"] = folder
        for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL", "LOOPLINE_MODEL_NAME"):
            os.environ.pop(name, None)
        config, _, _, _ = bench_registry.prepare(Path(folder))
        from loopline import settings

        frame = flight_feed(dt.date.fromisoformat(SERVE_DAY))[["flight_id", *config.feature_set.features]]
        records = [{key: (None if pd.isna(value) else value) for key, value in row.items()} for row in frame.to_dict("records")]
        records_path = Path(folder) / "records.json"
        records_path.write_text(json.dumps(records))
        # `mlflow models serve` starts `uvicorn` from PATH, so the venv's bin folder goes first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        environment = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri(), "PATH": path}

        results = {}
        for name, (command, payload_format) in server_commands(0, config.model_name).items():
            port = common.free_port()
            command = _with_port(command, port)
            url = f"http://127.0.0.1:{port}"
            log_path = Path(folder) / f"{name}.log"
            with log_path.open("w") as log:
                process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(url, process)
                load(url, records_path, args.concurrency, args.warmup, payload_format)
                results[name] = load(url, records_path, args.concurrency, args.requests, payload_format)
                results[name]["server_pid_rss_mib"] = _rss_mib(process.pid)
                if name == "loopline_no_access_log":
                    # A profile of Loopline's server under the same load, kept only if a goal is missed.
                    seconds = max(3.0, results[name]["duration_s"])
                    recorder = common.profile_process(process.pid, args.profile_dir / "serving-loopline.svg", seconds)
                    time.sleep(1.0)
                    load(url, records_path, args.concurrency, args.requests, payload_format)
                    recorder.wait(timeout=seconds + 60)
            except Exception:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                stop(process)

    loopline, mlflow_side, bare = results["loopline"], results["mlflow"], results["bare"]
    ratios = {
        "throughput_vs_mlflow": loopline["throughput_rps"] / mlflow_side["throughput_rps"],
        "p99_vs_mlflow": loopline["p99_ms"] / mlflow_side["p99_ms"],
        "p50_vs_bare": loopline["p50_ms"] / bare["p50_ms"],
        "p99_vs_bare": loopline["p99_ms"] / bare["p99_ms"],
        "no_access_log_throughput_vs_mlflow": results["loopline_no_access_log"]["throughput_rps"] / mlflow_side["throughput_rps"],
        "no_access_log_p99_vs_mlflow": results["loopline_no_access_log"]["p99_ms"] / mlflow_side["p99_ms"],
        "no_access_log_p50_vs_bare": results["loopline_no_access_log"]["p50_ms"] / bare["p50_ms"],
    }
    goals = {
        "throughput_20x_mlflow": ratios["throughput_vs_mlflow"] >= 20,
        "p99_twentieth_of_mlflow": ratios["p99_vs_mlflow"] <= 1 / 20,
        "within_2x_bare": ratios["p50_vs_bare"] <= 2 and ratios["p99_vs_bare"] <= 2,
    }
    profile_path = args.profile_dir / "serving-loopline.svg"
    if all(goals.values()) and profile_path.is_file():
        profile_path.unlink()
    profile = str(profile_path.relative_to(common.REPO_ROOT)) if profile_path.is_file() else None

    common.write_result(
        "serving",
        {
            "concurrency": args.concurrency,
            "requests": args.requests,
            "warmup": args.warmup,
            "servers": results,
            "ratios": ratios,
            "goals": goals,
            "goal_met": all(goals.values()),
            "profile": profile,
        },
        args.results,
    )
    return 0


def _with_port(command: list[str], port: int) -> list[str]:
    """Replace the value after --port, -p or the bare app's --port with ``port``."""
    command = list(command)
    for flag in ("--port", "-p"):
        if flag in command:
            command[command.index(flag) + 1] = str(port)
    return command


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


if __name__ == "__main__":
    raise SystemExit(main())
