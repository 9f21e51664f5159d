"""Run every benchmark in turn and write docs/benchmarks.md from their results (``make bench``).

Each benchmark is its own script in bench/ with its own size parameters. This runner starts
them one after another, never in parallel, because they would compete for the same cores.
When one fails, it goes on with the next and records the failure in the table.

    python bench/run_all.py [--only drift,features] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
import report

# Name and script of each benchmark, in the order of the table.
BENCHMARKS = [
    ("serving", "bench_serving.py"),
    ("drift", "bench_drift.py"),
    ("features", "bench_features.py"),
    ("dag_parsing", "bench_dag_parsing.py"),
    ("backfill", "bench_backfill.py"),
    ("registry", "bench_registry.py"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--profile-dir", type=Path, default=common.REPO_ROOT / "docs" / "profiles")
    args = parser.parse_args()
    selected = args.only.split(",") if args.only else [name for name, _ in BENCHMARKS]
    unknown = sorted(set(selected) - {name for name, _ in BENCHMARKS})
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {[name for name, _ in BENCHMARKS]}")

    started = time.time()
    run_info = {"machine": common.machine(), "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))}
    peers_python = common.peers_python()
    run_info["peers"] = json.loads(
        subprocess.run(
            [str(peers_python), "-c", "import json; from importlib import metadata as m; "
             "print(json.dumps({n: m.version(n) for n in ('evidently', 'pandas', 'numpy', 'scipy', 'py-spy')}))"],
            capture_output=True, text=True, check=True,
        ).stdout
    )

    # Results and profiles of an earlier run must not show up as this run's.
    shutil.rmtree(common.RESULTS_DIR, ignore_errors=True)
    common.RESULTS_DIR.mkdir(parents=True)
    if args.profile_dir.is_dir():
        for old in args.profile_dir.glob("*.svg"):
            old.unlink()

    outcomes = {}
    for name, script in BENCHMARKS:
        if name not in selected:
            continue
        print(f"== {name}: {script}", flush=True)
        began = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, str(common.BENCH_DIR / script), "--results", str(common.RESULTS_DIR), "--profile-dir", str(args.profile_dir)],
            cwd=common.BENCH_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        seconds = time.perf_counter() - began
        if completed.stderr:
            sys.stderr.write(completed.stderr[-20000:])
        outcomes[name] = {"exit_code": completed.returncode, "seconds": seconds, "stderr_tail": completed.stderr[-1500:] if completed.returncode else ""}
        print(f"== {name}: exit code {completed.returncode} after {seconds:.0f} s", flush=True)

    run_info["wall_s"] = time.time() - started
    run_info["load_average_at_end"] = os.getloadavg()
    run_info["outcomes"] = outcomes
    run_info["command"] = "make bench" if os.environ.get("LOOPLINE_BENCH_FROM_MAKE") else " ".join([Path(sys.executable).name, *sys.argv])
    results = {path.stem: json.loads(path.read_text()) for path in sorted(common.RESULTS_DIR.glob("*.json"))}
    args.out.write_text(report.render(run_info, results))
    print(f"wrote {args.out} ({run_info['wall_s']:.0f} s in all)", flush=True)
    return 0 if all(outcome["exit_code"] == 0 for outcome in outcomes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
