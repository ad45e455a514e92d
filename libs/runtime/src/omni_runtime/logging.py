"""Logs: JSON lines for machines (containers, files, pipes), short readable lines on a terminal.

A JSON line carries the trace id and, when set, the run id of the work in hand; a console line is
``HH:MM:SS service LEVEL message run=<id>``. Which one: see :func:`choose_format`."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

run_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("omni_run_id", default=None)

_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    run_id = run_id_var.get()
    if run_id:
        fields["run_id"] = run_id
    for key, value in record.__dict__.items():
        if key not in _STD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class ConsoleFormatter(logging.Formatter):
    """One short line for a person: ``HH:MM:SS service LEVEL message run=<id>``; a traceback, when
    there is one, follows on its own lines."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")  # the reader's local time
        line = f"{ts} {self.service} {record.levelname} {record.getMessage()}"
        run_id = run_id_var.get() or record.__dict__.get("run_id")
        if run_id:
            line += f" run={run_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LOG_FORMAT_ENV = "OMNI_LOG_FORMAT"
FORMATS = ("auto", "console", "json")


def choose_format(fmt: str = "auto", *, stream: TextIO | None = None) -> str:
    """``console`` or ``json``. A setting other than ``auto`` wins; then ``OMNI_LOG_FORMAT`` (what
    ``omni run`` passes to the services it starts, whose stderr is not the terminal's); then
    ``console`` when ``stream`` (stderr) is a terminal, else ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        fmt = os.environ.get(LOG_FORMAT_ENV, "").strip().lower() or "auto"
        if fmt not in FORMATS:
            fmt = "auto"
    if fmt == "auto":
        out = stream if stream is not None else sys.stderr
        fmt = "console" if out.isatty() else "json"
    return fmt


def setup_logging(service: str, level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = choose_format(fmt, stream=sys.stderr) == "json"
    handler.setFormatter(JsonFormatter(service) if use_json else ConsoleFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log every request at INFO drown the service's own lines.
    for noisy in ("aiohttp.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
