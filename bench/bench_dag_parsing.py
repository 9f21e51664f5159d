"""DAG parsing: import time of each DAG file in dags/ vs a minimal TaskFlow DAG, one fresh interpreter per measurement.

Each measurement starts a new Python process that times ``runpy.run_path`` of one file,
the way Airflow's DAG processor imports it, from the first import of ``airflow.sdk`` to
the DAG object. Interpreter start-up is not counted. Files are measured in interleaved
rounds so that load on the machine affects them alike. ``airflow.sdk`` alone is measured
the same way, since it takes most of a small DAG file's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

MINIMAL_DAG = '''"""A minimal TaskFlow DAG: the baseline of the DAG parsing benchmark."""
import datetime as dt

from airflow.sdk import dag, task


@dag(schedule=None, start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), catchup=False, tags=["bench"])
def minimal_taskflow():
    @task
    def extract() -> int:
        return 1

    @task
    def load(value: int) -> None:
        print(value)

    load(extract())


minimal_taskflow()
'''

# Run in the fresh interpreter: time the import of one file, print seconds as JSON.
TIMER = """
import json, runpy, sys, time
started = time.perf_counter()
if sys.argv[1] == "airflow.sdk":
    import airflow.sdk
else:
    runpy.run_path(sys.argv[1], run_name="bench_dag")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def measure(target: str, environment: dict[str, str]) -> float:
    completed = subprocess.run(
        [sys.executable, "-c", TIMER, target], env=environment, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"importing {target} failed with exit code {completed.returncode}: {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh-interpreter measurements per file (default: %(default)s)")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()

    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    minimal = common.WORK_DIR / "minimal_taskflow_dag.py"
    minimal.write_text(MINIMAL_DAG)
    dag_files = sorted((common.REPO_ROOT / "dags").glob("*.py"))
    targets = {"airflow.sdk (import only)": "airflow.sdk", "minimal TaskFlow DAG": str(minimal)}
    targets.update({f"dags/{path.name}": str(path) for path in dag_files})

    with tempfile.TemporaryDirectory(prefix="loopline-bench-airflow-") as airflow_home:
        environment = {
            **os.environ,
            "AIRFLOW_HOME": airflow_home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(common.REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(common.REPO_ROOT / "plugins"),
            "PYTHONPATH": os.pathsep.join([str(common.REPO_ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
            "LOOPLINE_HOME": str(Path(airflow_home) / "loopline"),
        }
        # One warm-up import per target fills the OS page cache and writes .pyc files.
        for target in targets.values():
            measure(target, environment)
        samples: dict[str, list[float]] = {label: [] for label in targets}
        for _ in range(args.rounds):
            for label, target in targets.items():
                samples[label].append(measure(target, environment))

    medians = {label: statistics.median(values) for label, values in samples.items()}
    baseline = medians["minimal TaskFlow DAG"]
    files = {
        label: {"median_s": medians[label], "min_s": min(samples[label]), "max_s": max(samples[label]), "ratio": medians[label] / baseline}
        for label in targets
    }
    dag_ratios = {label: value["ratio"] for label, value in files.items() if label.startswith("dags/")}
    goal_met = max(dag_ratios.values()) <= 1.2
    profile = None
    if not goal_met:
        slowest = max(dag_ratios, key=dag_ratios.get)
        out = args.profile_dir / f"dag-parsing-{Path(slowest).stem}.svg"
        out.parent.mkdir(parents=True, exist_ok=True)
        completed = subprocess.run(
            [str(common.PEERS_VENV / "bin" / "py-spy"), "record", "--rate", "1000", "--format", "flamegraph", "--output", str(out),
             "--", sys.executable, "-c", TIMER, targets[slowest]],
            env=environment | {"AIRFLOW_HOME": tempfile.mkdtemp(prefix="loopline-bench-airflow-")},
            capture_output=True, text=True, check=False,
        )
        profile = str(out.relative_to(common.REPO_ROOT)) if out.is_file() else f"py-spy failed: {completed.stdout[-300:]}"

    common.write_result(
        "dag_parsing",
        {"rounds": args.rounds, "files": files, "max_dag_ratio": max(dag_ratios.values()), "goal_met": goal_met, "profile": profile},
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
