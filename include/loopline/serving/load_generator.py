"""A load generator for the model server, run as its own process.

It sends single-record ``POST /predict`` requests from a fixed number of threads, each
with its own HTTP connection, and prints one JSON summary: requests by status, model
versions seen, transport errors, throughput and latency percentiles. It runs for a number
of requests, or until a stop file appears once a minimum number has been sent, so a test
can change the server (for example move the champion alias) while the load runs.

    python -m loopline.serving.load_generator --url http://127.0.0.1:8000 \\
        --records records.json --concurrency 8 --requests 5000

``--payload-format mlflow`` wraps each record as ``{"dataframe_records": [record]}`` and
posts it to ``/invocations``, the request shape of MLflow's scoring server
(``mlflow models serve``), so the same generator loads both servers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np


# Request path and body of one record, per payload format.
PAYLOAD_FORMATS: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "loopline": ("/predict", lambda record: record),
    "mlflow": ("/invocations", lambda record: {"dataframe_records": [record]}),
}


class _Results:
    """Counters shared by the sender threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.transport_errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.sent = 0


def run_load(
    url: str,
    records: list[dict[str, Any]],
    concurrency: int,
    requests: int | None = None,
    min_requests: int = 0,
    stop_file: pathlib.Path | None = None,
    timeout: float = 30.0,
    payload_format: str = "loopline",
) -> dict[str, Any]:
    """Send single-record requests from ``concurrency`` threads and return the summary.

    With ``requests`` the run ends after that many; with ``stop_file`` it ends once the
    file exists and at least ``min_requests`` were sent. Records are sent in turn, shaped
    by ``payload_format`` (a key of ``PAYLOAD_FORMATS``).
    """
    if requests is None and stop_file is None:
        raise ValueError("requests and stop_file are both None; set one, otherwise the load never ends")
    if not records:
        raise ValueError("records is empty; pass at least one record to send")
    if payload_format not in PAYLOAD_FORMATS:
        raise ValueError(f"unknown payload_format {payload_format!r}; use one of {sorted(PAYLOAD_FORMATS)}")
    path, wrap = PAYLOAD_FORMATS[payload_format]
    bodies = [wrap(record) for record in records]
    results = _Results()
    started = threading.Event()

    def next_index() -> int | None:
        with results.lock:
            if requests is not None and results.sent >= requests:
                return None
            if stop_file is not None and results.sent >= min_requests and stop_file.exists():
                return None
            results.sent += 1
            return results.sent - 1

    def send() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            started.set()
            while (index := next_index()) is not None:
                sent_at = time.perf_counter()
                try:
                    response = client.post(path, json=bodies[index % len(bodies)])
                except httpx.TransportError as error:
                    with results.lock:
                        results.transport_errors[type(error).__name__] += 1
                    continue
                elapsed = time.perf_counter() - sent_at
                # MLflow's scoring server returns {"predictions": [...]} without a version.
                version = response.json().get("model_version") if response.status_code == 200 else None
                with results.lock:
                    results.statuses[str(response.status_code)] += 1
                    results.latencies.append(elapsed)
                    if version is not None:
                        results.versions[str(version)] += 1

    threads = [threading.Thread(target=send, name=f"load-{number}") for number in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    started.wait()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - began

    latencies_ms = np.asarray(results.latencies) * 1000.0
    answered = len(latencies_ms)
    summary: dict[str, Any] = {
        "url": url,
        "payload_format": payload_format,
        "concurrency": concurrency,
        "requests": results.sent,
        "statuses": dict(results.statuses),
        "versions": dict(results.versions),
        "transport_errors": dict(results.transport_errors),
        "duration_s": round(duration, 3),
        "throughput_rps": round(answered / duration, 1) if duration > 0 else None,
    }
    for name, quantile in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
        summary[name] = round(float(np.percentile(latencies_ms, quantile)), 3) if answered else None
    summary["max_ms"] = round(float(latencies_ms.max()), 3) if answered else None
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--records", required=True, type=pathlib.Path, help="JSON file with a list of records")
    parser.add_argument("--concurrency", type=int, default=8, help="sender threads (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests")
    parser.add_argument("--stop-file", type=pathlib.Path, default=None, help="stop once this file exists")
    parser.add_argument("--min-requests", type=int, default=0, help="send at least this many before the stop file counts")
    parser.add_argument(
        "--payload-format",
        choices=sorted(PAYLOAD_FORMATS),
        default="loopline",
        help="loopline: the record as a JSON object to /predict; mlflow: {\"dataframe_records\": [record]} "
        "to /invocations (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    records = json.loads(args.records.read_text())
    # The parent process waits for this line before it changes anything on the server.
    print(json.dumps({"event": "started"}), flush=True)
    summary = run_load(
        args.url,
        records,
        concurrency=args.concurrency,
        requests=args.requests,
        min_requests=args.min_requests,
        stop_file=args.stop_file,
        payload_format=args.payload_format,
    )
    print(json.dumps({"event": "finished", **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
