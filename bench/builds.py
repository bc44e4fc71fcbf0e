"""Whole-build benchmarks: kiln against buildah on the same Dockerfile and the same registry.

Each scenario is built cold (fresh root and kiln dir; fresh buildah storage, so the base image
is pulled every time) and build-only (kiln ``--no-push``; buildah ``build``), as the reference
figures in ``shared/test-environment.md`` were measured. Peak RSS is the largest resident set
of the build process tree, read from ``getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import make_busybox_rootfs, push_layout, write_busybox_layout
from tests.support.registry import Registry

# Runs argv, then prints the peak RSS (KiB) of everything it waited for.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)

SCENARIOS: dict[str, str] = {
    "tiny": "FROM {base}\nRUN echo hello\nCOPY random.bin /random.bin\n",
    "files": (
        "FROM {base}\n"
        "RUN mkdir /files && awk 'BEGIN {{ for (i = 0; i < 50000; i++) "
        "{{ f = \"/files/f\" i; print i > f; close(f) }} }}'\n"
        "RUN true\n"
    ),
    "bigfile": "FROM {base}\nRUN head -c 2147483648 /dev/urandom > /big.bin\n",
}


@dataclass(frozen=True)
class Measurement:
    scenario: str
    tool: str
    seconds: float
    peak_rss_mb: float


def _timed(argv: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *argv], capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed with code {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed, int(proc.stdout.strip().splitlines()[-1]) / 1024


def _context(scenario: str, base: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(SCENARIOS[scenario].format(base=base))
    if scenario == "tiny":
        with open(directory / "random.bin", "wb") as out:
            for _ in range(100):
                out.write(os.urandom(1 << 20))
    return directory


def kiln_build(context: Path, work: Path, *push: str) -> tuple[float, float]:
    """A cold kiln build; ``push`` replaces ``--no-push`` (``--destination ... --cache``)."""
    root, kiln_dir = work / "root", work / "kiln"
    try:
        return _timed([sys.executable, "-m", "executor.cli", "--context", str(context),
                       "--dockerfile", str(context / "Dockerfile"), "--root", str(root),
                       "--kaniko-dir", str(kiln_dir), *(push or ("--no-push",)),
                       "--insecure-pull"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(kiln_dir, ignore_errors=True)


def buildah_build(context: Path, work: Path) -> tuple[float, float]:
    work.mkdir(parents=True, exist_ok=True)
    storage, runroot = work / "storage", work / "runroot"
    policy = work / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    buildah = f"buildah --storage-driver vfs --root {storage} --runroot {runroot}"
    script = (
        f"{buildah} build --isolation chroot --layers --format docker "
        f"--signature-policy {policy} --tls-verify=false -q "
        f"-f {context}/Dockerfile -t bench:latest {context}; code=$?; "
        f"{buildah} rmi -a -f >/dev/null 2>&1; exit $code"
    )
    try:
        return _timed(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


@contextmanager
def busybox_registry() -> Iterator[str]:
    """A registry on loopback holding the busybox test base image; yields its reference."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-reg-") as scratch:
        registry = Registry(Path(scratch) / "registry").start()
        try:
            ref = f"{registry.host}/bench/busybox:latest"
            write_busybox_layout(Path(scratch) / "layout", "latest")
            push_layout(Path(scratch) / "layout", "latest", ref)
            yield ref
        finally:
            registry.stop()


def measure_builds(scenarios: list[str], tools: list[str], runs: int,
                   report: Callable[[Measurement], None]) -> None:
    """Run every (scenario, tool) ``runs`` times and report each measurement."""
    builders = {"kiln": kiln_build, "buildah": buildah_build}
    with busybox_registry() as base, tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        for scenario in scenarios:
            context = _context(scenario, base, Path(tmp) / scenario / "context")
            for tool in tools:
                for _ in range(runs):
                    seconds, rss = builders[tool](context, Path(tmp) / scenario / tool)
                    report(Measurement(scenario, tool, seconds, rss))


def measure_cached_rebuild(runs: int, report: Callable[[Measurement], None]) -> None:
    """The ``files`` build with ``--cache`` into an empty cache repository (cold: it runs and
    stores both RUNs), then again on a fresh root and kiln dir (warm: both come from the
    cache), as a CI job building an unchanged Dockerfile would; both push the image."""
    with busybox_registry() as base, tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        context = _context("files", base, Path(tmp) / "context")
        registry = base.split("/", 1)[0]
        for run in range(runs):
            push = ("--cache", "--insecure", "--destination",
                    f"{registry}/bench/cached{run}:1")
            for tool in ("kiln-cold", "kiln-warm"):
                seconds, rss = kiln_build(context, Path(tmp) / tool, *push)
                report(Measurement("files-cache", tool, seconds, rss))


def noop_step_seconds(files: int = 100_000, steps: int = 1) -> list[float]:
    """``steps`` no-op RUN steps on a tree of ``files`` files: clock wait, RUN true, walk,
    diff. The first comes right after the tree was written (as a ``RUN true`` after a big
    RUN); the later ones are the steady state of a long build."""
    from executor.sandbox import Identity, Sandbox
    from snapshot.ignore import IgnoreList
    from snapshot.snapshot import diff_snapshots, take_snapshot, wait_for_clock_tick

    with tempfile.TemporaryDirectory(prefix="kiln-bench-noop-") as tmp:
        root = make_busybox_rootfs(Path(tmp) / "root")
        for d in range(files // 100):
            directory = root / "data" / f"d{d:04d}"
            directory.mkdir(parents=True)
            for f in range(100):
                (directory / f"f{f:03d}").write_bytes(b"x")
        ignore = IgnoreList.for_build(root, kiln_dir=Path(tmp) / "kiln",
                                      extra=["/proc", "/dev", "/sys"])
        before = take_snapshot(root, ignore)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            wait_for_clock_tick(before)
            Sandbox(root, in_place=False).run(["/bin/true"], env={"PATH": "/bin"}, cwd="/",
                                              identity=Identity())
            after = take_snapshot(root, ignore)
            changes = diff_snapshots(before, after)
            times.append(time.perf_counter() - started)
            if not changes.is_empty():
                raise RuntimeError(f"a no-op step changed something: {changes}")
            before = after
        return times
