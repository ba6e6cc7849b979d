"""Structured logging: one JSON object per line, naming job/round/combiner/client.

Usage::

    log = get_logger("combiner", job="mnist", combiner="c0")
    log.info("update accepted", round=3, client="client-1")
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_CONTEXT_FIELDS = ("job", "round", "attempt", "combiner", "client", "task")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "component": record.name.removeprefix("fedkube."),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None) or {}
        for key in _CONTEXT_FIELDS:
            if key in fields and fields[key] is not None:
                out[key] = fields[key]
        for key, value in fields.items():
            if key not in out and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Logger:
    """A logger carrying context fields; keyword arguments add more per call."""

    def __init__(self, logger: logging.Logger, fields: dict[str, Any]) -> None:
        self._logger = logger
        self.fields = fields

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._logger, {**self.fields, **fields})

    def _log(self, level: int, msg: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, msg, exc_info=exc_info, extra={"fields": {**self.fields, **fields}}
            )

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, False, fields)

    def error(self, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info, fields)


def get_logger(component: str, **fields: Any) -> Logger:
    return Logger(logging.getLogger(f"fedkube.{component}"), fields)


def setup_logging(level: str = "info", stream: Any = None) -> None:
    """JSON lines on stderr (or `stream`) for the fedkube loggers."""
    root = logging.getLogger("fedkube")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
