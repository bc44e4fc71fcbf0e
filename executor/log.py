"""Log lines in kaniko's shape (``INFO[0003] Taking snapshot of full filesystem...``).

CI log scrapers and people's habits are built on kaniko's logrus text format, so kiln prints the
same level tag and elapsed-seconds stamp; ``--log-format json`` gives one JSON object a line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

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
        return json_line(_JSON_LEVELS.get(record.levelno, "info"), record.getMessage(),
                         record.created)


def json_line(level: str, msg: str, created: float) -> str:
    """logrus's JSON fields, in its order."""
    return json.dumps({"level": level, "msg": msg,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))})


#: Set by ``setup_logging``: whether lines on stderr are JSON (``--log-format json``).
_JSON_OUTPUT = False


def error_line(text: str) -> str:
    """The last line of a failed build as printed: plain like kaniko's, or under
    ``--log-format json`` one JSON object like every other line, so a log collector that parses
    each line as JSON does not drop the one line that says why the build failed."""
    return json_line("error", text, time.time()) if _JSON_OUTPUT else text


def setup_logging(verbosity: str, log_format: str, timestamps: bool) -> None:
    """Configure the ``kiln`` logger for the CLI (stderr, kaniko's format)."""
    global _JSON_OUTPUT
    _JSON_OUTPUT = log_format == "json"
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


#: Seconds between "still waiting" lines while one network operation goes on.
HEARTBEAT_SECONDS = 30.0


@contextlib.contextmanager
def heartbeat(describe: Callable[[], str], every: float | None = None) -> Iterator[None]:
    """Log ``describe()`` at info level every ``every`` seconds while the block runs.

    A registry that stalls is waited for up to the read timeout (two minutes) before a retry
    line says anything; these lines keep the default log from going silent meanwhile, as a
    person watching a CI job would otherwise cancel a build that is only waiting.
    """
    interval = HEARTBEAT_SECONDS if every is None else every
    stop = threading.Event()
    started = time.monotonic()
    logger = logging.getLogger("kiln")

    def beat() -> None:
        while not stop.wait(interval):
            logger.info("%s (%.0fs so far)", describe(), time.monotonic() - started)

    thread = threading.Thread(target=beat, name="kiln-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


#: Seconds between progress lines of one layer transfer (at most; a shorter heartbeat wins).
PROGRESS_SECONDS = 10.0


class TransferMeter:
    """Bytes moved by one blob transfer, for its progress lines: ``Still uploading blob
    sha256:... to REGISTRY: 12.0 of 48.0 MB at 3.1 MB/s (4s so far)``.

    Written by the thread moving the bytes, read by the heartbeat's thread; an int's update is
    atomic in CPython, and a line that is a chunk behind is still true enough.
    """

    def __init__(self, verb: str, digest: str, registry: str, total: int) -> None:
        self.verb, self.digest, self.registry, self.total = verb, digest, registry, total
        self.done = 0
        self.started = time.monotonic()

    def restart(self) -> None:
        """A new attempt: count from zero again."""
        self.done = 0
        self.started = time.monotonic()

    def describe(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / 1e6 / elapsed if elapsed > 0 else 0.0
        place = "from" if self.verb == "downloading" else "to"
        return (f"Still {self.verb} blob {self.digest} {place} {self.registry}: "
                f"{self.done / 1e6:.1f} of {self.total / 1e6:.1f} MB at {rate:.1f} MB/s")
