"""The build report: log lines at the end of a build, ``--report FILE`` as JSON, kaniko's
``BENCHMARK_FILE``, and ``--log-format json``, on a realistic multi-stage build with --cache."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.kiln import ExecutorRun, run_executor_on, write_context
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text())

DOCKERFILE = """\
FROM {base} AS builder
WORKDIR /src
RUN mkdir -p out && head -c 300000 /dev/urandom > out/blob.bin && echo built > out/version
COPY app.txt /src/
FROM {base}
ENV MODE=prod
COPY --from=builder /src/out /app/
RUN ls /app > /app/listing
CMD ["cat", "/app/version"]
"""


def build(tmp: Path, name: str, base: str, registry: Registry, *args: str,
          env: dict[str, str | None] | None = None) -> ExecutorRun:
    context = write_context(tmp / "context", DOCKERFILE.format(base=base),
                            {"app.txt": "app\n"})
    return run_executor_on(str(context), tmp / f"root-{name}", "--destination",
                           f"{registry.host}/report/app:{name}", "--insecure",
                           "--insecure-pull", "--cache", "--cache-repo",
                           f"{registry.host}/report/cache", *args, env=env)


@pytest.fixture(scope="module")
def builds(busybox_image: str, registry: Registry,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same build twice: the second takes its RUN layers from the cache."""
    tmp = tmp_path_factory.mktemp("report")
    first = build(tmp, "first", busybox_image, registry, "--report", str(tmp / "first.json"),
                  env={"BENCHMARK_FILE": str(tmp / "benchmark.json")})
    assert first.exit_code == 0, first.stderr
    second = build(tmp, "second", busybox_image, registry, "--report", str(tmp / "second.json"),
                   "--log-format", "json")
    assert second.exit_code == 0, second.stderr
    return {"first": first, "second": second, "tmp": tmp}


def report_lines(stderr: str) -> list[str]:
    lines = [re.sub(r"^INFO\[\d+\] ", "", line) for line in stderr.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Build report:"))
    return lines[start:]


def test_the_log_ends_with_one_line_per_step_phases_and_memory(builds: dict[str, Any]) -> None:
    lines = report_lines(builds["first"].stderr)
    assert lines[0].startswith("Build report: 7 steps, built in ")
    steps = lines[1:8]
    assert [line.split()[0] for line in steps] == [f"Dockerfile:{n}" for n in
                                                   (2, 3, 4, 6, 7, 8, 9)]
    run = steps[1]
    assert "RUN mkdir -p out && head -c 300000" in run
    # out/, out/blob.bin, out/version: /src itself only saw its times move, no change
    # (296 KiB: 300,000 bytes of data and a 512-byte header each, no PAX record since mtimes
    # are whole seconds in the tar)
    assert re.search(r"layer \d+\.\d KiB \(29\d\.\d KiB uncompressed\), 3 files changed, "
                     r"cache miss\]$", run), run
    assert steps[3].endswith("ENV MODE=prod  [no layer]")
    assert re.fullmatch(r"Phases: pull [\d.]+s, extract [\d.]+s, run [\d.]+s, snapshot [\d.]+s, "
                        r"layer [\d.]+s, push [\d.]+s", lines[8])
    assert re.fullmatch(r"Peak memory: kiln [\d.]+ MiB(, RUN processes [\d.]+ [KM]iB)?",
                        lines[9])


def test_the_report_file_matches_its_schema(builds: dict[str, Any]) -> None:
    report = json.loads((builds["tmp"] / "first.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["succeeded"] is True
    run = report["steps"][1]
    assert run["location"] == "Dockerfile:3" and run["cache"] == "miss"
    assert run["layer"]["uncompressedBytes"] > 300000
    assert run["layer"]["compressedBytes"] > 0 and run["layer"]["filesChanged"] == 3
    assert report["phases"]["run"] > 0 and report["phases"]["push"] > 0


def test_a_second_build_reports_its_run_steps_as_cache_hits(builds: dict[str, Any]) -> None:
    report = json.loads((builds["tmp"] / "second.json").read_text())
    jsonschema.validate(report, SCHEMA)
    runs = [s for s in report["steps"] if s["instruction"].startswith("RUN")]
    assert [s["cache"] for s in runs] == ["hit", "hit"]
    assert runs[0]["layer"]["compressedBytes"] > 290000  # the cached layer's blob
    assert runs[0]["layer"]["uncompressedBytes"] is None


def test_benchmark_file_has_kaniko_timing_categories_in_nanoseconds(
        builds: dict[str, Any]) -> None:
    benchmark = json.loads((builds["tmp"] / "benchmark.json").read_text())
    assert set(benchmark) == {"Retrieving Source Image", "FS Unpacking", "Command",
                              "Snapshotting FS", "Writing tar file", "Total Push Time",
                              "Total Build Time"}
    assert all(isinstance(v, int) for v in benchmark.values())
    assert benchmark["Total Build Time"] > benchmark["Command"] > 1_000_000  # > 1 ms
    assert "Benchmark file written at" in builds["first"].stderr


def test_json_log_format_makes_every_line_one_object_with_logrus_fields(
        builds: dict[str, Any]) -> None:
    lines = builds["second"].stderr.splitlines()
    objects = [json.loads(line) for line in lines]
    assert all(set(o) == {"level", "msg", "time"} for o in objects)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", o["time"]) for o in objects)
    assert any(o["msg"].startswith("Build report: 7 steps") for o in objects)


FAILED_REPORT: list[Path] = []


@pytest.fixture(scope="module")
def failed(busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> ExecutorRun:
    """A build whose RUN fails, with JSON logs; its report is ``FAILED_REPORT`` there."""
    tmp = tmp_path_factory.mktemp("report-failed")
    FAILED_REPORT.append(tmp / "report.json")
    context = write_context(tmp / "context", f"FROM {busybox_image}\nCOPY app.txt /\n"
                            "RUN exit 3\n", {"app.txt": "app\n"})
    return run_executor_on(str(context), tmp / "root", "--no-push", "--insecure-pull",
                           "--log-format", "json", "--report", str(tmp / "report.json"))


def test_a_failed_build_reports_its_steps_up_to_the_failure(failed: ExecutorRun) -> None:
    assert failed.exit_code == 3, failed.stderr
    msgs = [json.loads(line)["msg"] for line in failed.stderr.splitlines()]
    start = next(i for i, m in enumerate(msgs) if m.startswith("Build report:"))
    assert msgs[start].startswith("Build report: 2 steps, failed in ")
    assert msgs[start + 1].startswith("  Dockerfile:2 ")
    # The compressed size moves by a byte with the file's mtime in the tar header; the tar is
    # the file's header and one block of data, then the two zero blocks that end it.
    assert re.search(r"COPY app\.txt /  \[layer \d+ B \(2\.0 KiB uncompressed\), "
                     r"1 files changed\]$", msgs[start + 1]), msgs[start + 1]
    assert msgs[start + 2].startswith("  Dockerfile:3 ")
    assert msgs[start + 2].endswith("RUN exit 3  [no layer]")


def test_a_failed_builds_report_file_says_so(failed: ExecutorRun) -> None:
    report = json.loads(FAILED_REPORT[-1].read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["succeeded"] is False
    assert [s["location"] for s in report["steps"]] == ["Dockerfile:2", "Dockerfile:3"]


def test_a_failed_builds_error_line_is_json_too(failed: ExecutorRun) -> None:
    last = json.loads(failed.stderr.splitlines()[-1])
    assert last["level"] == "error"
    assert last["msg"].startswith("error building image: ")
