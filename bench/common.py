"""Shared helpers of the benchmark scripts: real data, timing, results files, the peers' environment.

Every script writes one JSON file into the results folder (``bench/.work/results``, or the
folder given with ``--results``). ``bench/report.py`` turns those files into
``docs/benchmarks.md``, so every number in the table comes from a run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = WORK_DIR / "results"
PEERS_VENV = BENCH_DIR / ".venv-peers"
PEERS_REQUIREMENTS = BENCH_DIR / "peers-requirements.txt"

# The 20 drift and transform features: the feature set's 14 numerical and 5 categorical
# ones, plus the flight number as a 15th numerical column.
NUMERICAL = [
    "sched_dep_hour",
    "day_of_week",
    "distance",
    "plane_age",
    "plane_seats",
    "plane_engines",
    "temp",
    "dewp",
    "humid",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
    "flight",
]
CATEGORICAL = ["carrier", "origin", "dest", "plane_manufacturer", "plane_engine"]


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write one benchmark's result as JSON, with the command line that produced it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]).replace(f"{REPO_ROOT}/", ""),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **payload,
    }
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def time_calls(function: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Call ``function`` ``repeats`` times and return the median, minimum and maximum in seconds."""
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        durations.append(time.perf_counter() - started)
    return {
        "median_s": statistics.median(durations),
        "min_s": min(durations),
        "max_s": max(durations),
        "repeats": repeats,
    }


def real_flights() -> "pd.DataFrame":  # noqa: F821 - pandas loads lazily
    """Return every 2013 flight of the flight feed, cached as Parquet in ``bench/.work``.

    The first call replays all 365 days through ``loopline.sources.flight_feed`` (about a
    minute on 2 cores); later calls read the cache.
    """
    import pandas as pd

    from loopline import sources

    cache = WORK_DIR / "flights-2013.parquet"
    if cache.is_file():
        return pd.read_parquet(cache)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    days = [sources.FIRST_DAY + dt.timedelta(days=offset) for offset in range((sources.LAST_DAY - sources.FIRST_DAY).days + 1)]
    frame = pd.concat([sources.flight_feed(day) for day in days], ignore_index=True)
    frame.to_parquet(cache, index=False)
    return frame


def resample(frame: "pd.DataFrame", rows: int, seed: int) -> "pd.DataFrame":  # noqa: F821
    """Draw ``rows`` rows with replacement, reproducibly."""
    import numpy as np

    positions = np.random.default_rng(seed).integers(0, len(frame), size=rows)
    return frame.iloc[positions].reset_index(drop=True)


def machine() -> dict[str, Any]:
    """Describe the machine and the main environment's versions."""
    from importlib import metadata

    packages = {}
    for name in ("apache-airflow", "mlflow", "great-expectations", "pandas", "numpy", "scipy", "scikit-learn", "fastapi", "uvicorn"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "load_average_at_start": os.getloadavg(),
    }


def peers_python() -> Path:
    """Create the peers' virtual environment from ``peers-requirements.txt`` if needed; return its Python.

    The peers pin packages that clash with Loopline's (Evidently 0.7.23 needs pandas < 3),
    so they get their own environment, made with uv like the main one.
    """
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if stamp.is_file() and stamp.stat().st_mtime >= PEERS_REQUIREMENTS.stat().st_mtime:
        return python
    uv = ["uv"] if _has_uv() else [sys.executable, "-m", "uv"]
    if not python.exists():
        subprocess.run([*uv, "venv", str(PEERS_VENV), "--python", "3.11"], check=True)
    subprocess.run([*uv, "pip", "install", "--python", str(python), "-r", str(PEERS_REQUIREMENTS)], check=True)
    stamp.touch()
    return python


def _has_uv() -> bool:
    from shutil import which

    return which("uv") is not None


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 (bind port 0 and read it back)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def profile_call(function: Callable[[], Any], out: Path, rate: int = 250) -> Path | None:
    """Run ``function`` once under py-spy (from the peers' environment), writing a flame graph SVG.

    py-spy attaches to this process by pid, so the profile shows the same code path that
    was timed. Returns None, with the reason printed, when py-spy cannot attach.
    """
    import signal

    py_spy = PEERS_VENV / "bin" / "py-spy"
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(os.getpid()), "--rate", str(rate), "--format", "flamegraph", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(1.0)  # py-spy needs a moment to attach before the code of interest runs
    try:
        function()
    finally:
        recorder.send_signal(signal.SIGINT)
        output, _ = recorder.communicate(timeout=60)
    if not out.is_file():
        print(f"py-spy wrote no profile to {out}: {output.strip()[-500:]}", flush=True)
        return None
    return out


def profile_process(pid: int, out: Path, seconds: float, rate: int = 250) -> subprocess.Popen:
    """Start py-spy recording another process (a server) for ``seconds``; return the recorder."""
    py_spy = PEERS_VENV / "bin" / "py-spy"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max(1, round(seconds))),
         "--format", "flamegraph", "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def current_rss_bytes() -> int:
    """Return this process's resident set size now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux 4.0 and later)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size since the last ``reset_peak_rss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")
