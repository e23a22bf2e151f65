"""Metrics (Prometheus text format at ``/metrics``) and logs (text or JSON lines).

``pictor serve`` runs several server processes; each counts its own requests into
files under ``PROMETHEUS_MULTIPROC_DIR`` (set by the serve command before the processes
start, emptied at each start), and ``/metrics`` adds them up, whichever process answers
the scrape (prometheus_client's multiprocess mode). Without that variable (a single
process, tests) the counters live in memory.

Metrics:

* ``pictor_http_requests_total{route,method,status}`` and
  ``pictor_http_request_duration_seconds{route,method}`` (histogram): every HTTP request,
  by the route's name (``qido-studies``, ``wado-frames``, ...; ``unmatched`` for unknown
  paths), so the label set stays small;
* ``pictor_ingest_instances_total{outcome}`` (stored, already-stored, failed) and
  ``pictor_ingest_bytes_total``: what STOW-RS, DIMSE C-STORE and the importer commit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from app.asgi import StatusRecorder

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("pictor_http_requests", "HTTP requests answered", ["route", "method", "status"])
DURATION = Histogram(
    "pictor_http_request_duration_seconds",
    "Time from the request's arrival to the end of its answer",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGESTED = Counter("pictor_ingest_instances", "Instances offered for storage", ["outcome"])
INGESTED_BYTES = Counter("pictor_ingest_bytes", "Bytes of newly stored instances")
INGEST_FAILURES = Counter(
    "pictor_ingest_failures", "Instances not stored, by Failure Reason (hex)", ["reason"]
)
DIMSE_ASSOCIATIONS = Counter(
    "pictor_dimse_associations", "DIMSE associations, by outcome", ["outcome"]
)
DIMSE_ACTIVE = Gauge(
    "pictor_dimse_connections", "DIMSE connections open now", multiprocess_mode="livesum"
)
DIMSE_OPERATIONS = Counter("pictor_dimse_operations", "DIMSE requests, by service", ["service"])
CODEC_QUEUE = Gauge(
    "pictor_codec_queue",
    "Decode, transcode and render jobs waiting for or in a codec worker",
    multiprocess_mode="livesum",
)

#: the scope key a handler below the framework (the frames fast path) sets to name itself
ROUTE_KEY = "pictor.route"

access_log = logging.getLogger("pictor.access")


def record_ingest(outcome: str, size: int = 0, reason: int | None = None) -> None:
    INGESTED.labels(outcome).inc()
    if size:
        INGESTED_BYTES.inc(size)
    if reason is not None:
        INGEST_FAILURES.labels(f"{reason:04X}").inc()


def metrics_text() -> bytes:
    """The current values, all server processes together."""
    if os.environ.get(MULTIPROC_VARIABLE):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def _route(scope: Any) -> str:
    name = scope.get(ROUTE_KEY)
    if name:
        return str(name)
    handler = scope.get("route_handler")
    return str(getattr(handler, "name", None) or "unmatched")


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request (outermost, so that
    errors and CORS preflights count too), and writes the access log line when asked."""

    def __init__(self, app: Callable[..., Awaitable[None]], access: bool) -> None:
        self.app = app
        self.access = access
        # the labelled children, looked up once (prometheus_client's labels() costs a few
        # microseconds per call: a tenth of a stored frame's answer)
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            status = recorder.status
            elapsed = time.perf_counter() - start
            route, method = _route(scope), scope["method"]
            key = (route, method, str(status))
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = REQUESTS.labels(*key)
            counter.inc()
            timer = self._timers.get(key[:2])
            if timer is None:
                timer = self._timers[key[:2]] = DURATION.labels(route, method)
            timer.observe(elapsed)
            if self.access:
                client = scope.get("client") or ("", 0)
                access_log.info(
                    "%s %s %s",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0],
                        "method": method,
                        "path": scope["path"],
                    },
                )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    _standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in self._standard and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once per process: text for people, JSON lines for log
    collectors (``--log-format json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, OneLineReconnects) for f in pool_log.filters):
        pool_log.addFilter(OneLineReconnects())


class OneLineReconnects(logging.Filter):
    """asyncpg's pool logs each failed reconnection with a full traceback, twice a
    second per process while the database is down (issue #19: "the log filling"). One
    line, with the reason, says as much; at most one every ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        return True


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """uvicorn's own loggers through the root handler :func:`setup_logging` installed
    (so they take its format)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"level": level.upper(), "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
