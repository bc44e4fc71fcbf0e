"""OpenTelemetry traces of a build, received by a real OTLP/HTTP receiver on loopback: one
trace, stages under the build, instructions under their stage, children within their parents,
no secret and no Dockerfile text unless asked; and no OpenTelemetry at all when not asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.kiln import ExecutorRun, run_executor_on, write_context
from tests.support.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

SECRET = "s3cr3t-token-value-4711"
BUILD_ARG = "build-arg-value-0815"

DOCKERFILE = """\
FROM {base} AS builder
ARG TOKEN_ARG
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /count
RUN echo "$TOKEN_ARG" | wc -c > /argcount
FROM {base}
COPY --from=builder /count /argcount /out/
ENV MODE=prod
"""


def traced_build(tmp: Path, name: str, base: str, registry: Registry,
                 env: dict[str, str | None]) -> ExecutorRun:
    context = write_context(tmp / f"context-{name}", DOCKERFILE.format(base=base))
    (tmp / "token").write_text(SECRET)
    return run_executor_on(str(context), tmp / f"root-{name}", "--destination",
                           f"{registry.host}/trace/app:{name}", "--insecure", "--insecure-pull",
                           "--secret", f"id=token,src={tmp / 'token'}",
                           "--build-arg", f"TOKEN_ARG={BUILD_ARG}", env=env)


def no_otel_env() -> dict[str, str | None]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": None, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None,
            "KANIKO_TELEMETRY_ENDPOINT": None, "KILN_TELEMETRY_INCLUDE_COMMANDS": None}


@pytest.fixture(scope="module")
def traced(busybox_image: str, registry: Registry,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("trace")
    with otlp_receiver() as receiver:
        run = traced_build(tmp, "std", busybox_image, registry,
                           {**no_otel_env(), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url})
        assert run.exit_code == 0, run.stderr
        spans = list(receiver.spans)
        raw = list(receiver.raw)
    return {"spans": spans, "raw": raw, "tmp": tmp}


def by_name(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


def test_trace_is_one_build_span_with_stages_under_it(traced: dict[str, Any]) -> None:
    spans: list[ReceivedSpan] = traced["spans"]
    assert len({s.trace_id for s in spans}) == 1
    build = by_name(spans, "build")
    assert build.parent_id == "" and build.service == "kiln"
    assert build.attributes["kiln.succeeded"] is True
    for name in ("stage builder", "stage 1"):
        assert by_name(spans, name).parent_id == build.span_id


def test_instruction_spans_sit_under_their_stage(traced: dict[str, Any]) -> None:
    spans: list[ReceivedSpan] = traced["spans"]
    builder, final = by_name(spans, "stage builder"), by_name(spans, "stage 1")
    run = by_name(spans, "RUN Dockerfile:3")
    assert run.parent_id == builder.span_id
    assert run.attributes["kiln.instruction.kind"] == "RUN"
    assert run.attributes["kiln.instruction.location"] == "Dockerfile:3"
    assert str(run.attributes["kiln.layer.digest"]).startswith("sha256:")
    assert int(run.attributes["kiln.layer.uncompressed_bytes"]) > 0  # type: ignore[call-overload]
    copy = by_name(spans, "COPY Dockerfile:6")
    assert copy.parent_id == final.span_id
    assert {s.parent_id for s in spans if s.name in ("run", "snapshot", "layer")
            and s.parent_id == run.span_id}


def test_base_layer_pulls_and_extractions_have_digest_and_bytes(traced: dict[str, Any],
                                                                 registry: Registry) -> None:
    spans: list[ReceivedSpan] = traced["spans"]
    stage_ids = {s.span_id for s in spans if s.name.startswith("stage ")}
    pulls = [s for s in spans if s.name == "pull layer"]
    extracts = [s for s in spans if s.name == "extract layer"]
    assert pulls and extracts
    for span in pulls + extracts:
        assert span.parent_id in stage_ids
        assert str(span.attributes["kiln.layer.digest"]).startswith("sha256:")
        assert int(span.attributes["kiln.layer.compressed_bytes"]) > 0  # type: ignore[call-overload]
    assert pulls[0].attributes["kiln.registry"] == registry.host
    push = by_name(spans, "push")
    assert push.parent_id == by_name(spans, "build").span_id



def test_each_pushed_layer_has_a_span_under_push(traced: dict[str, Any],
                                                 registry: Registry) -> None:
    spans: list[ReceivedSpan] = traced["spans"]
    push = by_name(spans, "push")
    pushes = [s for s in spans if s.name == "push layer"]
    assert pushes and all(s.parent_id == push.span_id for s in pushes)
    assert all(s.attributes["kiln.registry"] == registry.host for s in pushes)
    copied = by_name(spans, "COPY Dockerfile:6").attributes["kiln.layer.digest"]
    uploaded = [s for s in pushes if s.attributes["kiln.layer.digest"] == copied]
    assert uploaded and uploaded[0].attributes["kiln.bytes"] == \
        uploaded[0].attributes["kiln.layer.compressed_bytes"]


def test_build_span_counts_registry_requests(traced: dict[str, Any],
                                             registry: Registry) -> None:
    build = by_name(traced["spans"], "build")
    assert int(build.attributes[f"kiln.registry.requests.{registry.host}"]) > 2  # type: ignore[call-overload]


def test_children_lie_within_their_parents(traced: dict[str, Any]) -> None:
    spans: list[ReceivedSpan] = traced["spans"]
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        assert span.start_ns <= span.end_ns, span.name
        if span.parent_id:
            parent = by_id[span.parent_id]
            assert parent.start_ns <= span.start_ns and span.end_ns <= parent.end_ns, \
                (span.name, parent.name)
    build = by_name(spans, "build")
    stages = [s for s in spans if s.name.startswith("stage ")]
    assert sum(s.end_ns - s.start_ns for s in stages) <= build.end_ns - build.start_ns


def test_no_secret_build_arg_or_dockerfile_text_is_sent(traced: dict[str, Any]) -> None:
    everything = b"".join(traced["raw"])
    assert SECRET.encode() not in everything
    assert BUILD_ARG.encode() not in everything
    assert b"wc -c" not in everything
    assert not any("kiln.instruction.text" in s.attributes for s in traced["spans"])


def test_commands_are_sent_when_asked_and_kaniko_variable_works(
        busybox_image: str, registry: Registry, tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        run = traced_build(tmp_path, "kaniko", busybox_image, registry,
                           {**no_otel_env(), "KANIKO_TELEMETRY_ENDPOINT": receiver.base_url,
                            "KILN_TELEMETRY_INCLUDE_COMMANDS": "1"})
        assert run.exit_code == 0, run.stderr
        spans = list(receiver.spans)
        everything = b"".join(receiver.raw)
    run_span = by_name(spans, "RUN Dockerfile:4")
    text = 'RUN echo "$TOKEN_ARG" | wc -c > /argcount'
    assert run_span.attributes["kiln.instruction.text"] == text
    assert SECRET.encode() not in everything and BUILD_ARG.encode() not in everything


def test_failed_build_ends_its_trace_with_an_error(busybox_image: str, tmp_path: Path,
                                                   registry: Registry) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN exit 3\n")
    with otlp_receiver() as receiver:
        run = run_executor_on(str(context), tmp_path / "root", "--no-push", "--insecure-pull",
                              env={**no_otel_env(),
                                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                                   receiver.base_url + "/v1/traces"})
        assert run.exit_code != 0
        spans = list(receiver.spans)
    assert by_name(spans, "build").status_code == 2  # STATUS_CODE_ERROR
    assert by_name(spans, "RUN Dockerfile:2").status_code == 2


def test_build_without_endpoint_never_imports_opentelemetry(busybox_image: str,
                                                            tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    script = ("import sys\n"
              "from executor.cli import main\n"
              "try:\n"
              "    main()\n"
              "except SystemExit as exc:\n"
              "    code = exc.code\n"
              "else:\n"
              "    code = 0\n"
              "print('OTEL', sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
              "sys.exit(code)\n")
    env = {k: v for k, v in {**os.environ, **no_otel_env()}.items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", script, "--context", str(context),
                           "--root", str(tmp_path / "root"), "--no-push", "--insecure-pull"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "OTEL []" in proc.stdout, proc.stdout


def test_endpoint_down_is_a_warning_after_the_report_never_a_failed_build(
        busybox_image: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    with otlp_receiver() as receiver:
        closed = receiver.base_url  # the port is free again once the receiver stops
    run = run_executor_on(str(context), tmp_path / "root", "--no-push", "--insecure-pull",
                          env={**no_otel_env(), "OTEL_EXPORTER_OTLP_ENDPOINT": closed,
                               "OTEL_EXPORTER_OTLP_TIMEOUT": "2"})
    assert run.exit_code == 0, run.stderr
    lines = run.stderr.splitlines()
    report = next(i for i, line in enumerate(lines) if "Build report:" in line)
    warnings = [i for i, line in enumerate(lines) if "Tracing: " in line]
    assert warnings and min(warnings) > report
    assert all(lines[i].startswith("WARN[") for i in warnings)


def test_cache_hits_and_misses_are_on_the_run_spans(busybox_image: str, registry: Registry,
                                                    tmp_path: Path) -> None:
    context = write_context(tmp_path / "context",
                            f"FROM {busybox_image}\nRUN echo cached > /c\n")
    found: list[object] = []
    with otlp_receiver() as receiver:
        for name in ("cold", "warm"):
            receiver.clear()
            run = run_executor_on(str(context), tmp_path / f"root-{name}", "--destination",
                                  f"{registry.host}/trace/cached:{name}", "--insecure",
                                  "--insecure-pull", "--cache", "--cache-repo",
                                  f"{registry.host}/trace/cache",
                                  env={**no_otel_env(),
                                       "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url})
            assert run.exit_code == 0, run.stderr
            found.append(by_name(receiver.spans, "RUN Dockerfile:2").attributes["kiln.cache.hit"])
    assert found == [False, True]
