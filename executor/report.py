"""The build report: where a build's time went, step by step and phase by phase.

A CI engineer reading a slow or failed job has only the log; the report at its end says which
step took the time, how big each layer is and what came from the cache, and how much memory the
build needed. The build passes one ``BuildRecorder`` around and tells it what happens; this
module turns that into log lines, ``--report FILE`` (JSON) and kaniko's ``BENCHMARK_FILE``
(seconds per timing category, as Go's ``time.Duration`` in nanoseconds, so dashboards made for
kaniko keep working).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported only when tracing is on (executor.tracing.start_tracing)
    from executor.tracing import Attributes, BuildTrace

log = logging.getLogger("kiln")

#: The phases, in the order a build goes through them. ``pull``: base layers and manifests
#: downloaded (summed over parallel downloads); ``extract``: layers applied to a root;
#: ``run``: instructions applied (RUN commands, COPY/ADD file copies); ``snapshot``: the root
#: walked for changes; ``layer``: changes tarred, compressed and written; ``push``: the image
#: written to its destinations and outputs.
PHASES = ("pull", "extract", "run", "snapshot", "layer", "push")

#: kaniko's timing categories (pkg/timing, written to BENCHMARK_FILE): ours that match each.
_BENCHMARK_CATEGORIES = {"pull": "Retrieving Source Image", "extract": "FS Unpacking",
                         "run": "Command", "snapshot": "Snapshotting FS",
                         "layer": "Writing tar file", "push": "Total Push Time"}
SCHEMA_VERSION = 1


@dataclass
class StepRecord:
    """One instruction: what it was, where, how long, and the layer it made (if any)."""

    stage: int
    instruction: str
    location: str
    seconds: float = 0.0
    #: ``None`` when the step made no layer (ENV, a metadata step, --single-snapshot).
    layer_compressed_bytes: int | None = None
    layer_uncompressed_bytes: int | None = None
    files_changed: int | None = None
    #: ``hit`` or ``miss`` with --cache for a RUN; ``None`` when the cache was not asked.
    cache: str | None = None


@dataclass
class BuildRecorder:
    """Collects a build's timings; thread-safe where downloads run in parallel."""

    started: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    steps: list[StepRecord] = field(default_factory=list)
    total_seconds: float | None = None
    succeeded: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _current: StepRecord | None = field(default=None, repr=False)
    #: The OpenTelemetry trace these hooks also feed (``None``: tracing is off).
    trace: BuildTrace | None = None

    def add(self, phase: str, seconds: float, span: Attributes | None = None) -> None:
        """Add ``seconds`` to ``phase``; with ``span``, also a span of that work that just
        ended (``<phase> layer``, from any thread) carrying those attributes."""
        with self._lock:
            self.phases[phase] += seconds
        if self.trace is not None and span is not None:
            self.trace.record(f"{phase} layer", seconds, span)

    def span(self, name: str, seconds: float, attributes: Attributes) -> None:
        """Work of the build's thread that just ended, for the trace only (its time is in the
        open phase already), under the innermost open span."""
        if self.trace is not None:
            self.trace.record(name, seconds, attributes, innermost=True)

    @contextlib.contextmanager
    def phase(self, name: str, span: Attributes | None = None) -> Iterator[None]:
        """Time the block into phase ``name`` (a span ``name`` with attributes ``span``)."""
        with self._span(name, span):
            started = time.monotonic()
            try:
                yield
            finally:
                self.add(name, time.monotonic() - started)

    @contextlib.contextmanager
    def stage(self, index: int, name: str) -> Iterator[None]:
        """The build works on stage ``index`` meanwhile (only the trace needs to know)."""
        with self._span(f"stage {name}", {"kiln.stage.index": index, "kiln.stage.name": name},
                        stage=True):
            yield

    @contextlib.contextmanager
    def step(self, stage: int, instruction: str, location: str) -> Iterator[StepRecord]:
        """Time one instruction; what it writes is attributed to it meanwhile."""
        record = StepRecord(stage, instruction, location)
        kind = instruction.split(None, 1)[0].upper() if instruction.strip() else "?"
        attributes: dict[str, str | int] = {"kiln.instruction.kind": kind,
                                            "kiln.instruction.location": location,
                                            "kiln.stage.index": stage}
        if self.trace is not None and self.trace.with_commands:
            attributes["kiln.instruction.text"] = instruction
        with self._span(f"{kind} {location}", attributes):
            self.steps.append(record)
            self._current = record
            started = time.monotonic()
            try:
                yield record
            finally:
                record.seconds = time.monotonic() - started
                self._current = None

    def layer(self, compressed: int, uncompressed: int | None, files: int | None,
              digest: str | None = None) -> None:
        """The current step made a layer (a layer from the cache: sizes not known here)."""
        if self._current is not None:
            self._current.layer_compressed_bytes = compressed
            self._current.layer_uncompressed_bytes = uncompressed
            self._current.files_changed = files
        if self.trace is not None:
            attributes: dict[str, str | int] = {"kiln.layer.compressed_bytes": compressed}
            if uncompressed is not None:
                attributes["kiln.layer.uncompressed_bytes"] = uncompressed
            if files is not None:
                attributes["kiln.layer.files_changed"] = files
            if digest is not None:
                attributes["kiln.layer.digest"] = digest
            self.trace.annotate(attributes)

    def cache(self, hit: bool) -> None:
        """The current step was looked up in the layer cache."""
        if self._current is not None:
            self._current.cache = "hit" if hit else "miss"
        if self.trace is not None:
            self.trace.annotate({"kiln.cache.hit": hit})

    def finish(self, succeeded: bool) -> None:
        self.total_seconds = time.monotonic() - self.started
        self.succeeded = succeeded
        if self.trace is not None:
            self.trace.finish(succeeded)

    @contextlib.contextmanager
    def _span(self, name: str, attributes: Attributes | None,
              stage: bool = False) -> Iterator[None]:
        if self.trace is None:
            yield
            return
        span = self.trace.open(name, attributes, stage=stage)
        try:
            yield
        except BaseException:
            self.trace.close(span, failed=True)
            raise
        self.trace.close(span)

    # -- output ------------------------------------------------------------------------

    def as_json(self) -> dict[str, object]:
        """The ``--report`` document (its shape: tests/e2e/report.schema.json)."""
        return {
            "schemaVersion": SCHEMA_VERSION,
            "succeeded": self.succeeded,
            "totalSeconds": round(self.total_seconds or 0.0, 3),
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
            "steps": [_step_json(s) for s in self.steps],
            "peakMemoryBytes": peak_memory(),
        }

    def benchmark_json(self) -> dict[str, int]:
        """kaniko's BENCHMARK_FILE: category -> nanoseconds (Go's JSON of a Duration)."""
        out = {category: int(self.phases[name] * 1e9)
               for name, category in _BENCHMARK_CATEGORIES.items()}
        out["Total Build Time"] = int((self.total_seconds or 0.0) * 1e9)
        return out

    def lines(self) -> list[str]:
        """The report as log lines: a header, one line per step, phases, memory."""
        width = max((len(s.location) for s in self.steps), default=0)
        out = [f"Build report: {len(self.steps)} steps, "
               f"{'built' if self.succeeded else 'failed'} in {self.total_seconds or 0.0:.2f}s"]
        out += [_step_line(s, width) for s in self.steps]
        out.append("Phases: " + ", ".join(f"{name} {seconds:.2f}s"
                                          for name, seconds in self.phases.items()))
        memory = peak_memory()
        # Children kiln waited for (RUN's process runs under a forked helper; 0 when none
        # was waited for here, so nothing is said rather than a misleading 0 B).
        children = (f", RUN processes {_size(memory['children'])}" if memory["children"]
                    else "")
        out.append(f"Peak memory: kiln {_size(memory['kiln'])}{children}")
        return out

    def publish(self, report_file: Path | None) -> None:
        """Log the report, write ``--report`` and ``$BENCHMARK_FILE``; a file that cannot be
        written is a warning, never a failed build (kaniko does the same for its file)."""
        for line in self.lines():
            log.info("%s", line)
        if report_file is not None:
            _write(report_file, self.as_json(), "--report")
        benchmark = os.environ.get("BENCHMARK_FILE", "")
        # "false" was kaniko's integration tests' way to turn it off.
        if (benchmark and benchmark != "false"
                and _write(Path(benchmark), self.benchmark_json(), "BENCHMARK_FILE")):
            log.info("Benchmark file written at %s", benchmark)
        if self.trace is not None:  # last: an endpoint that is down never delays the report
            self.trace.flush()


def peak_memory() -> dict[str, int]:
    """Peak resident memory in bytes: kiln's own, and the largest of its waited-for children
    (RUN commands, git, helpers). Linux reports ``ru_maxrss`` in KiB."""
    return {"kiln": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def _step_json(step: StepRecord) -> dict[str, object]:
    data = asdict(step)
    return {"stage": data["stage"], "instruction": data["instruction"],
            "location": data["location"], "seconds": round(step.seconds, 3),
            "layer": None if step.layer_compressed_bytes is None else {
                "compressedBytes": step.layer_compressed_bytes,
                "uncompressedBytes": step.layer_uncompressed_bytes,
                "filesChanged": step.files_changed},
            "cache": step.cache}


def _step_line(step: StepRecord, width: int) -> str:
    text = step.instruction.split("\n", 1)[0]
    if len(text) > 60:
        text = text[:59] + "…"
    if step.layer_compressed_bytes is None:
        layer = "no layer"
    elif step.layer_uncompressed_bytes is None:
        layer = f"layer {_size(step.layer_compressed_bytes)} from the cache"
    else:
        layer = (f"layer {_size(step.layer_compressed_bytes)} "
                 f"({_size(step.layer_uncompressed_bytes or 0)} uncompressed), "
                 f"{step.files_changed} files changed")
    cache = f", cache {step.cache}" if step.cache else ""
    return f"  {step.location:<{width}}  {step.seconds:7.2f}s  {text}  [{layer}{cache}]"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _write(path: Path, document: object, what: str) -> bool:
    try:
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        log.warning("Unable to write %s %s: %s", what, path, exc.strerror or exc)
        return False
    return True
