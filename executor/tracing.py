"""OpenTelemetry traces of a build, sent over OTLP/HTTP when an endpoint is configured.

kaniko's fork traces builds (``KANIKO_TELEMETRY_ENDPOINT``); people also set the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``. A trace has one ``build`` span, a span per stage under it, a
span per instruction under its stage, and spans for the work the build report times (pull,
extract, run, snapshot, layer, push) under whichever of those was open. The
``BuildRecorder`` of :mod:`executor.report` drives this: the build tells the recorder what
happens, the recorder tells the trace, so build.py has no tracing calls of its own.

Off by default, and free when off: :func:`start_tracing` reads the environment and returns
``None`` without importing ``opentelemetry`` (a few hundred milliseconds and many modules) unless
an endpoint is set. No Dockerfile text goes into a span unless ``KILN_TELEMETRY_INCLUDE_COMMANDS=1``
(a RUN line may carry a token); build-arg and secret values never do.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: The traces URL's variable (used as is), then base URLs ``/v1/traces`` is appended to.
_TRACES_VARIABLE = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
_BASE_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "KANIKO_TELEMETRY_ENDPOINT")
INCLUDE_COMMANDS_VARIABLE = "KILN_TELEMETRY_INCLUDE_COMMANDS"

Attributes = Mapping[str, str | int | float | bool]


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL the environment asks for, or ``None``: tracing is off."""
    if environ.get(_TRACES_VARIABLE):
        return environ[_TRACES_VARIABLE]
    for name in _BASE_VARIABLES:
        if environ.get(name):
            base = environ[name].rstrip("/")
            return base if base.endswith("/v1/traces") else base + "/v1/traces"
    return None


def include_commands(environ: Mapping[str, str]) -> bool:
    return environ.get(INCLUDE_COMMANDS_VARIABLE, "") in ("1", "true", "yes")


def start_tracing() -> BuildTrace | None:
    """A trace of this build when an endpoint is set; imports OpenTelemetry only then."""
    endpoint = traces_endpoint(os.environ)
    if endpoint is None:
        return None
    try:
        return BuildTrace(endpoint, include_commands(os.environ))
    except ImportError as exc:  # an image without the extra: the build goes on untraced
        logging.getLogger("kiln").warning(
            "Tracing to %s is not possible: %s (install kiln[otel]); building without it",
            endpoint, exc)
        return None


class BuildTrace:
    """The spans of one build. Spans are opened and closed by the build's thread, in nesting
    order (a stack); spans timed by download threads are recorded whole, under the stage."""

    def __init__(self, endpoint: str, with_commands: bool) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        _route_sdk_log()
        self.with_commands = with_commands
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                    or "kiln"})
        self._provider: TracerProvider = TracerProvider(resource=resource,
                                                        shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer: Tracer = self._provider.get_tracer("kiln")
        self._build: Span = self._tracer.start_span("build")
        self._stack: list[Span] = [self._build]
        self._stage: Span = self._build
        self._requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def open(self, name: str, attributes: Attributes | None = None, *,
             stage: bool = False) -> Span:
        """Start a span under the innermost open one."""
        from opentelemetry import trace

        span = self._tracer.start_span(name, context=trace.set_span_in_context(self._stack[-1]),
                                       attributes=attributes)
        self._stack.append(span)
        if stage:
            self._stage = span
        return span

    def close(self, span: Span, failed: bool = False) -> None:
        if failed:
            from opentelemetry.trace import StatusCode

            span.set_status(StatusCode.ERROR)
        span.end()
        if self._stack[-1] is span:
            self._stack.pop()
        if span is self._stage:
            self._stage = self._build

    def annotate(self, attributes: Attributes) -> None:
        """Add attributes to the innermost open span."""
        self._stack[-1].set_attributes(attributes)

    def record(self, name: str, seconds: float, attributes: Attributes,
               innermost: bool = False) -> None:
        """A span that just ended after ``seconds``: from any thread, under the open stage, or
        from the build's thread, with ``innermost``, under the innermost open span."""
        from opentelemetry import trace

        end = time.time_ns()
        parent = self._stack[-1] if innermost else self._stage
        span = self._tracer.start_span(name, context=trace.set_span_in_context(parent),
                                       attributes=attributes,
                                       start_time=end - int(seconds * 1e9))
        span.end(end_time=end)

    def count_request(self, registry: str) -> None:
        """One HTTP request to ``registry`` (for ``kiln.registry.requests.<registry>``)."""
        with self._lock:
            self._requests[registry] += 1

    def finish(self, succeeded: bool) -> None:
        """End every open span (the build's last); :meth:`flush` sends them."""
        with self._lock:
            counts: dict[str, Any] = {f"kiln.registry.requests.{host}": n
                                      for host, n in self._requests.items()}
        self._build.set_attributes({"kiln.succeeded": succeeded, **counts})
        while len(self._stack) > 1:
            self.close(self._stack[-1], failed=True)
        self.close(self._build, failed=not succeeded)

    def flush(self) -> None:
        """Send what is left; the exporter's timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by
        default) bounds the wait for an endpoint that is down."""
        self._provider.shutdown()


class _ToKilnLog(logging.Handler):
    """The SDK's complaints (an endpoint that is down) as kiln warnings, in kiln's log format
    (``--log-format json`` included), instead of bare lines from Python's last resort."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("kiln").warning("Tracing: %s", record.getMessage())


def _route_sdk_log() -> None:
    sdk = logging.getLogger("opentelemetry")
    if not any(isinstance(h, _ToKilnLog) for h in sdk.handlers):
        sdk.addHandler(_ToKilnLog(logging.WARNING))
        sdk.propagate = False
