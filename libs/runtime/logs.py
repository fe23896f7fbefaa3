"""Structured logging: one line per event, `key=value` fields, never print.

`setup_logging` is called once by each entry point. Loggers add context with
`extra={"request_id": ..., "instance_id": ...}`; those fields are appended.
"""

from __future__ import annotations

import logging
import sys
import time

_CONTEXT_FIELDS = ("request_id", "instance_id", "component")


class KeyValueFormatter(logging.Formatter):
    """`2026-01-01T00:00:00.000Z INFO tandem.worker: message request_id=... instance_id=...`."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {record.getMessage()}"
        )
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line += f" {field}={value}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", component: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    if component is not None:
        handler.addFilter(_ComponentFilter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO drowns our own lines.
    for noisy in ("aiohttp.access", "nats", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _ComponentFilter(logging.Filter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "component"):
            record.component = self.component
        return True
