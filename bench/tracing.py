"""What tracing costs a build: ``python -m bench.tracing [--runs N] [--json]``.

The same two-stage build, pushed to a local registry, with tracing off (no endpoint set) and on
(``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at the tests' OTLP/HTTP receiver on loopback),
interleaved so the machine's load hits both alike; prints the median wall times, their
difference and the number of spans each traced build sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.builds import busybox_registry, compile_kiln
from tests.support.otlp_receiver import otlp_receiver

DOCKERFILE = (
    "FROM {base} AS build\n"
    "WORKDIR /src\n"
    "COPY data.bin /src/\n"
    "RUN mkdir /out && cp /src/data.bin /out/ && echo built > /out/version\n"
    "FROM {base}\n"
    "COPY --from=build /out /app\n"
    "ENV MODE=prod\n"
    "RUN ls /app > /app/listing\n"
)
_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
              "KANIKO_TELEMETRY_ENDPOINT")


def _build(context: Path, work: Path, destination: str, endpoint: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    root, kiln_dir = work / "root", work / "kiln"
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "executor.cli", "--context", str(context),
                        "--root", str(root), "--kaniko-dir", str(kiln_dir),
                        "--destination", destination, "--insecure", "--insecure-pull"],
                       env=env, check=True, capture_output=True)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(kiln_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    compile_kiln()
    times: dict[str, list[float]] = {"off": [], "on": []}
    spans: list[int] = []
    with (busybox_registry() as refs, otlp_receiver() as receiver,
          tempfile.TemporaryDirectory(prefix="kiln-bench-trace-") as scratch):
        context = Path(scratch) / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=refs["base"]))
        (context / "data.bin").write_bytes(os.urandom(4 << 20))
        destination = refs["base"].replace("busybox:latest", "traced:latest")
        for _ in range(args.runs):
            times["off"].append(_build(context, Path(scratch) / "w", destination, None))
            receiver.clear()
            times["on"].append(_build(context, Path(scratch) / "w", destination,
                                      receiver.base_url))
            spans.append(len(receiver.spans))
    medians = {mode: statistics.median(seconds) for mode, seconds in times.items()}
    if args.json:
        print(json.dumps({"runs": times, "medians": medians, "spans": spans}))
        return
    print(f"{'tracing':8} {'median s':>9}  runs")
    for mode, seconds in times.items():
        print(f"{mode:8} {medians[mode]:9.3f}  " + " ".join(f"{s:.3f}" for s in seconds))
    print(f"difference {medians['on'] - medians['off']:+.3f}s "
          f"({(medians['on'] / medians['off'] - 1) * 100:+.1f}%), spans per build {spans}")


if __name__ == "__main__":
    main()
