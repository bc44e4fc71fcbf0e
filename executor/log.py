"""Log lines in kaniko's shape (``INFO[0003] Taking snapshot of full filesystem...``).

CI log scrapers and people's habits are built on kaniko's logrus text format, so kiln prints the
same level tag and elapsed-seconds stamp; ``--log-format json`` gives one JSON object a line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {
    "panic": logging.CRITICAL, "fatal": logging.CRITICAL, "error": logging.ERROR,
    "warn": logging.WARNING, "warning": logging.WARNING, "info": logging.INFO,
    "debug": logging.DEBUG, "trace": logging.DEBUG,
}

_TAGS = {logging.CRITICAL: "FATA", logging.ERROR: "ERRO", logging.WARNING: "WARN",
         logging.INFO: "INFO", logging.DEBUG: "DEBU"}


_JSON_LEVELS = {logging.CRITICAL: "fatal", logging.ERROR: "error", logging.WARNING: "warning",
                logging.INFO: "info", logging.DEBUG: "debug"}


class KanikoTextFormatter(logging.Formatter):
    """``LEVL[SSSS] message``, seconds since start, or a full timestamp when asked."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        tag = _TAGS.get(record.levelno, "INFO")
        if self.timestamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        else:
            stamp = f"{int(record.relativeCreated // 1000):04d}"
        return f"{tag}[{stamp}] {record.getMessage()}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``{"level": "info", "msg": ..., "time": ...}`` like logrus."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "level": _JSON_LEVELS.get(record.levelno, "info"),
            "msg": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        })


def setup_logging(verbosity: str, log_format: str, timestamps: bool) -> None:
    """Configure the ``kiln`` logger for the CLI (stderr, kaniko's format)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (JsonFormatter() if log_format == "json"
                                    else KanikoTextFormatter(timestamps))
    handler.setFormatter(formatter)
    # Modules log as "kiln" or under their own module names (executor.*, snapshot.*).
    for name in ("kiln", "executor", "snapshot"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(LEVELS[verbosity])
        logger.propagate = False
