"""Fuzzing the conformance corpus: hostile Dockerfiles and .dockerignore files end in one line.

Mutants of every case's Dockerfile (and random .dockerignore files) go through the input side of
a build (decode, parse, stage resolution, word expansion, ignore patterns, COPY source
matching) in a separate process, and a smaller sample is built for real by ``executor
--no-push`` in sandbox mode. Each must succeed or fail with a one-line error, never a traceback,
and no input (all under 100 KB) may take more than 10 s or 500 MB. The mutator is seeded, so a
failure reproduces with ``python -m tests.fuzz.mutate SEED COUNT``; every bug it found is a
unit case in tests/unit (test_patterns.py, test_dockerfile_parse.py, test_expand.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz.mutate import CASES, MAX_INPUT, corpus, mutate, mutate_ignore

INPUT_SIDE_COUNT = int(os.environ.get("KILN_FUZZ_INPUTS", "1500"))
BUILD_COUNT = int(os.environ.get("KILN_FUZZ_BUILDS", "8"))
SEED = int(os.environ.get("KILN_FUZZ_SEED", "18"))  # 18: the issue this test answers
MAX_SECONDS = 10.0
MAX_RSS_BYTES = 500 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def test_mutated_inputs_end_in_one_line_quickly_and_in_bounded_memory() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.mutate", str(SEED), str(INPUT_SIDE_COUNT)],
        cwd=REPO, capture_output=True, text=True, timeout=INPUT_SIDE_COUNT * 0.2 + 60,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    peak = records.pop()["max_rss_kb"] * 1024
    bugs = [r for r in records if r["outcome"] == "bug"]
    slow = [(r["index"], r["case"], round(r["seconds"], 1)) for r in records
            if r["seconds"] > MAX_SECONDS]
    outcomes = {kind: sum(r["outcome"] == kind for r in records) for kind in ("ok", "error")}
    print(f"fuzz: {len(records)} inputs in {time.monotonic() - started:.1f} s, {outcomes}, "
          f"slowest {max(r['seconds'] for r in records):.2f} s, peak RSS {peak >> 20} MiB")
    assert len(records) == INPUT_SIDE_COUNT
    assert not bugs, json.dumps(bugs[:3], indent=1)[:6000]
    assert not slow
    assert peak < MAX_RSS_BYTES


def _buildable_cases() -> list[tuple[Path, bytes]]:
    """Cases that need nothing but the busybox base (no parent image, HTTP server, secrets)."""
    found = []
    for case, data in corpus():
        if any(p.name.startswith("_") for p in case.iterdir()) or b"@" in data:
            continue
        found.append((case, data))
    return found


def _copy_context(case: Path, into: Path) -> None:
    shutil.copytree(case, into, symlinks=True,
                    ignore=shutil.ignore_patterns("case.toml"))


@pytest.mark.e2e
def test_mutated_dockerfiles_build_or_fail_in_one_line(tmp_path: Path,
                                                       busybox_image: str) -> None:
    rng = random.Random(SEED)
    cases = _buildable_cases()
    donors = [data for _, data in corpus()]
    results = []
    failures: list[str] = []
    for index in range(BUILD_COUNT):
        case, original = rng.choice(cases)
        data = mutate(rng, original, donors, edits=1, repeat=20)  # so that some still build
        assert len(data) <= MAX_INPUT
        work = tmp_path / str(index)
        _copy_context(case, work / "context")
        (work / "context" / "Dockerfile").write_bytes(data)
        if rng.random() < 0.3:
            (work / "context" / ".dockerignore").write_text(mutate_ignore(rng))
        command = [sys.executable, "-m", "executor.cli", "--context", str(work / "context"),
                   "--dockerfile", str(work / "context" / "Dockerfile"),
                   "--root", str(work / "root"), "--kaniko-dir", str(work / "kiln"),
                   "--no-push", "--insecure-pull", "--build-arg", f"BASE={busybox_image}"]
        started = time.monotonic()
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        seconds = time.monotonic() - started
        # ru_maxrss of the largest child waited for so far: the builds and their RUNs.
        peak = _children_peak_rss()
        last = [line for line in stderr.splitlines() if line.strip()][-1:] or [""]
        results.append((case.name, child.returncode, round(seconds, 1), last[0][:160]))
        if "Traceback" in stderr or (child.returncode != 0
                                     and not last[0].startswith("error building image: ")):
            failures.append(f"{case.name} mutant {index} ({data[:2000]!r}):\n{stderr[-3000:]}")
        if seconds > MAX_SECONDS or peak > MAX_RSS_BYTES:
            failures.append(f"{case.name} mutant {index}: {seconds:.1f} s, {peak >> 20} MiB")
    print("fuzz builds:", *results, sep="\n  ")
    assert not failures, "\n\n".join(failures)


def _children_peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def test_the_corpus_is_there() -> None:
    assert len(list(CASES.glob("*/Dockerfile"))) > 100
    assert os.path.isdir(CASES)
