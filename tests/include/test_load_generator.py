"""The load generator's payload formats, against a small recording HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loopline.serving.load_generator import run_load


class _RecordingHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path, body))
        payload = json.dumps({"predictions": [0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        pass


@pytest.fixture()
def recording_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_payload_loopline_posts_record(recording_server):
    records = [{"flight_id": "a", "distance": 100.0}]
    summary = run_load(_url(recording_server), records, concurrency=1, requests=2)

    assert summary["statuses"] == {"200": 2}
    assert summary["payload_format"] == "loopline"
    assert recording_server.received == [("/predict", records[0])] * 2


def test_payload_mlflow_wraps_dataframe_records(recording_server):
    records = [{"flight_id": "a", "distance": 100.0}, {"flight_id": "b", "distance": None}]
    summary = run_load(_url(recording_server), records, concurrency=1, requests=2, payload_format="mlflow")

    assert summary["statuses"] == {"200": 2}
    assert summary["versions"] == {}
    assert recording_server.received == [
        ("/invocations", {"dataframe_records": [records[0]]}),
        ("/invocations", {"dataframe_records": [records[1]]}),
    ]


def test_payload_unknown_format_rejected():
    with pytest.raises(ValueError, match="unknown payload_format 'csv'"):
        run_load("http://127.0.0.1:1", [{"x": 1}], concurrency=1, requests=1, payload_format="csv")
