"""Backfill: the data pipeline over N days in two parallel workers vs N times one day's run.

What is measured: the data pipeline's own task functions (``loopline.pipeline``:
extract_flights, validate_flights with the Great Expectations suite, build_features,
land_labels), in their DAG order, over one temporary LOOPLINE_HOME with its SQLite
monitoring store. Airflow's scheduler, task runner and metadata database are not in the
loop, so the numbers are the product's work per day, not Airflow's overhead.

* one day's run: a fresh Python process that runs one day's four steps, timed from
  process start to exit. Imports are included, because a single day's run pays them.
  The figure is the median of ``--single-samples`` different days;
* the backfill: ``--workers`` processes, each taking every ``workers``-th day, started
  together, timed from the first start to the last exit.

The ratio is backfill wall time / (N x one day's run). The warm time per day inside a
worker is reported too, so the part due to parallelism and the part due to paying the
imports once per worker can be separated.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

FIRST_DAY = dt.date(2013, 1, 2)


def run_days(days: list[dt.date]) -> list[float]:
    """Run the pipeline steps of each day in order; return each day's duration in seconds."""
    from loopline import pipeline
    from loopline.config import load_config

    config = load_config()
    durations = []
    for day in days:
        started = time.perf_counter()
        pipeline.extract_flights(day, config)
        pipeline.validate_flights(day, config)
        pipeline.build_features(day, config)
        pipeline.land_labels(day, config)
        durations.append(time.perf_counter() - started)
    return durations


def start_worker(days: list[dt.date], home: Path) -> subprocess.Popen:
    environment = {**os.environ, "LOOPLINE_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
    for name in ("LOOPLINE_MLFLOW_TRACKING_URI", "LOOPLINE_MONITORING_DB_URL"):
        environment.pop(name, None)
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", ",".join(day.isoformat() for day in days)],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen) -> list[float]:
    output, _ = worker.communicate()
    if worker.returncode != 0:
        raise RuntimeError(f"backfill worker failed with exit code {worker.returncode}; its log is above")
    return json.loads(output.strip().splitlines()[-1])["durations_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=90, help="days in the backfill (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="parallel worker processes (default: %(default)s)")
    parser.add_argument("--single-samples", type=int, default=3, help="single-day runs timed (default: %(default)s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()

    if args.worker is not None:
        durations = run_days([dt.date.fromisoformat(text) for text in args.worker.split(",")])
        print(json.dumps({"durations_s": durations}), flush=True)
        return 0

    days = [FIRST_DAY + dt.timedelta(days=offset) for offset in range(args.days)]
    with tempfile.TemporaryDirectory(prefix="loopline-bench-backfill-") as folder:
        home = Path(folder)

        single = []
        for day in days[:: max(1, len(days) // args.single_samples)][: args.single_samples]:
            started = time.perf_counter()
            finish(start_worker([day], home))
            single.append(time.perf_counter() - started)
        single_day = statistics.median(single)

        started = time.perf_counter()
        workers = [start_worker(days[index :: args.workers], home) for index in range(args.workers)]
        per_day = [duration for worker in workers for duration in finish(worker)]
        backfill = time.perf_counter() - started

        ratio = backfill / (args.days * single_day)
        goal_met = ratio <= 0.6
        profile = None
        if not goal_met:
            out = args.profile_dir / "backfill-worker.svg"
            out.parent.mkdir(parents=True, exist_ok=True)
            environment = {**os.environ, "LOOPLINE_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
            subprocess.run(
                [str(common.PEERS_VENV / "bin" / "py-spy"), "record", "--rate", "200", "--format", "flamegraph", "--output", str(out),
                 "--", sys.executable, __file__, "--worker", ",".join(day.isoformat() for day in days[:10])],
                env=environment, capture_output=True, check=False,
            )
            profile = str(out.relative_to(common.REPO_ROOT)) if out.is_file() else None

    common.write_result(
        "backfill",
        {
            "days": args.days,
            "first_day": days[0].isoformat(),
            "workers": args.workers,
            "single_day_s": single_day,
            "single_day_samples_s": single,
            "serial_estimate_s": args.days * single_day,
            "backfill_s": backfill,
            "warm_day_median_s": statistics.median(per_day),
            "ratio": ratio,
            # Against N warm days in one process: the gain from parallelism alone.
            "ratio_vs_warm_serial": backfill / (args.days * statistics.median(per_day)),
            "goal_met": goal_met,
            "profile": profile,
        },
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
