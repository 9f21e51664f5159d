"""The server's monitoring log: predictions and request timings written off the hot path."""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from typing import Any

from loopline.monitoring import store

logger = logging.getLogger(__name__)

DEFAULT_LOG_QUEUE_SIZE = 10_000

@dataclasses.dataclass(frozen=True)
class LogEntry:
    """The monitoring rows of one request: its predictions (maybe none) and its timing row."""

    predictions: list[dict[str, Any]]
    timing: dict[str, Any]

    @property
    def row_count(self) -> int:
        return len(self.predictions) + 1


class _RateLimitedWarning:
    """A warning logged at most once per interval, with the count of repeats suppressed in between."""

    def __init__(self, interval_seconds: float = 60.0):
        self._interval = interval_seconds
        self._last_logged = -math.inf
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_logged < self._interval:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._last_logged = now
        if suppressed:
            message += " (%d similar warnings suppressed in the last %.0f s)"
            args = (*args, suppressed, self._interval)
        logger.warning(message, *args)


class MonitoringLog:
    """Writer of online predictions and request timings to the monitoring store, off the request path.

    ``submit`` never blocks: it puts one ``LogEntry`` per request on a bounded queue, and one
    background thread writes the entries in batches. When the queue is full or a write
    fails, the rows are dropped and counted in ``dropped_records``, and a rate-limited
    warning is logged. ``stop`` writes what is still queued, waiting at most its timeout.
    """

    def __init__(
        self,
        url: str,
        queue_size: int = DEFAULT_LOG_QUEUE_SIZE,
        batch_size: int = 200,
        idle_wait_seconds: float = 0.5,
    ):
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.url = url
        self.queue_size = queue_size
        self._queue: queue.Queue[LogEntry] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._idle_wait = idle_wait_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter_lock = threading.Lock()
        self._dropped = 0
        self._written = 0
        self._full_warning = _RateLimitedWarning()
        self._write_warning = _RateLimitedWarning()

    @property
    def dropped_records(self) -> int:
        """Rows (predictions and timings) dropped since start because the queue was full or a write failed."""
        return self._dropped

    @property
    def written_records(self) -> int:
        return self._written

    @property
    def queued_entries(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loopline-monitoring-log", daemon=True)
        self._thread.start()
        logger.info("monitoring log writer started (queue size %d)", self.queue_size)

    def stop(self, timeout: float = 10.0) -> None:
        """Write the queued entries and stop the writer, waiting at most ``timeout`` seconds."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "monitoring log writer did not finish within %.0f s; %d queued entries are lost",
                timeout,
                self._queue.qsize(),
            )
        else:
            logger.info(
                "monitoring log writer stopped: %d records written, %d dropped", self._written, self._dropped
            )
        self._thread = None

    def submit(self, entry: LogEntry) -> bool:
        """Queue the rows of one request; return False when the queue is full and they are dropped."""
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._count_dropped(entry.row_count)
            self._full_warning.warning(
                "monitoring log queue is full (%d entries): dropped %d records of request %s; "
                "%d records dropped so far",
                self.queue_size,
                entry.row_count,
                entry.timing.get("request_id"),
                self._dropped,
            )
            return False
        return True

    def _count_dropped(self, rows: int) -> None:
        with self._counter_lock:
            self._dropped += rows

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                return

    def _next_batch(self) -> list[LogEntry]:
        try:
            batch = [self._queue.get(timeout=self._idle_wait)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[LogEntry]) -> None:
        prediction_rows = [row for entry in batch for row in entry.predictions]
        timing_rows = [entry.timing for entry in batch]
        # Predictions and timings are two transactions, so a failure in one drops only its rows.
        for kind, rows, insert in (
            ("predictions", prediction_rows, store.insert_online_predictions),
            ("request timings", timing_rows, store.insert_request_timings),
        ):
            if not rows:
                continue
            try:
                insert(store.get_engine(self.url), rows)
            except Exception as error:  # a down store must never stop the writer thread
                self._count_dropped(len(rows))
                self._write_warning.warning(
                    "writing %d %s rows to the monitoring store failed, so they are dropped "
                    "(%d records dropped so far): %s",
                    len(rows),
                    kind,
                    self._dropped,
                    error,
                )
            else:
                with self._counter_lock:
                    self._written += len(rows)
