"""Whole-build benchmarks: kiln against buildah on the same Dockerfile and the same registry.

Each scenario is built cold (fresh root and kiln dir; fresh buildah storage, so the base image
is pulled every time) and build-only (kiln ``--no-push``; buildah ``build``), as the reference
figures in ``shared/test-environment.md`` were measured. Peak RSS is the largest resident set
of the build process tree, read from ``getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import (
    make_busybox_rootfs,
    push_layout,
    write_busybox_layout,
    write_debian_layout,
)
from tests.support.registry import Registry

# Runs argv with its output on this process's stdout, then writes the peak RSS (KiB) and the
# CPU seconds (user + system) of everything it waited for to the file named first.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL).returncode\n"
    "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(f'{r.ru_maxrss} {r.ru_utime + r.ru_stime}')\n"
    "sys.exit(code)\n"
)

def _apt_install(packages: str) -> str:
    """One RUN installing ``packages`` from the Debian mirror, leaving no apt lists behind."""
    return ("RUN set -eux; apt-get update; DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {packages}; rm -rf /var/lib/apt/lists/*\n")


#: Dockerfiles by scenario: ``{base}`` is busybox, ``{debian}`` Debian bookworm minbase.
#: ``ENV BENCH=done`` after the last RUN marks where that step ends in every builder's log.
SCENARIOS: dict[str, str] = {
    "tiny": "FROM {base}\nRUN echo hello\nCOPY random.bin /random.bin\n",
    "files": (
        "FROM {base}\n"
        "RUN mkdir /files && awk 'BEGIN {{ for (i = 0; i < 50000; i++) "
        "{{ f = \"/files/f\" i; print i > f; close(f) }} }}'\n"
        "RUN true\n"
        "ENV BENCH=done\n"
    ),
    "seed": (
        "FROM {debian}\n"
        "RUN apt-get update\n"
        "RUN DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3\n"
        "COPY app /app\n"
    ),
    # A service built in a full stage and shipped in a slim one: sources and vendored
    # dependencies copied in, a "compiler" reading all of them and writing one big binary
    # (half of it incompressible, as machine code nearly is), then only the binary and its
    # assets copied into busybox.
    "app": (
        "FROM {debian} AS build\n"
        "WORKDIR /src\n"
        "COPY . .\n"
        "RUN mkdir -p /out && find . -name '*.go' | sort | xargs cat > /out/server.o "
        "&& head -c 20000000 /dev/urandom >> /out/server.o "
        "&& gzip -1 -c /out/server.o > /out/server && rm /out/server.o && chmod 755 /out/server\n"
        "RUN mkdir -p /out/assets && cp -r static/. /out/assets/\n"
        "FROM {base}\n"
        "COPY --from=build /out/server /usr/local/bin/server\n"
        "COPY --from=build /out/assets /srv/assets\n"
        "USER 1000\n"
        "ENTRYPOINT [\"/usr/local/bin/server\"]\n"
    ),
    "bigfile": "FROM {base}\nRUN head -c 2147483648 /dev/urandom > /big.bin\n",
    # The Debian base from a registry at the far end of a link of about 30 MB/s (every blob
    # through a proxy that sends 64 KiB, then pauses), as a CI job pulling from a hub sees it:
    # how much of the pull the builder hides behind extraction.
    "remote": "FROM {debian_remote}\nRUN true\n",
    # Three stages chained as Docker Hub's buildpack-deps images are (curl, then scm on it,
    # then the full development set on that), each one RUN of real apt installs from the
    # Debian mirror: about 1.2 GB in the end, most of it written by the last stage.
    "buildpack-deps": (
        "FROM {debian} AS curl\n"
        + _apt_install("ca-certificates curl gnupg netbase wget")
        + "FROM curl AS scm\n"
        + _apt_install("git mercurial openssh-client subversion procps")
        + "FROM scm AS full\n"
        + _apt_install(
            "autoconf automake bzip2 default-libmysqlclient-dev dpkg-dev file g++ gcc "
            "imagemagick libbz2-dev libc6-dev libcurl4-openssl-dev libdb-dev libevent-dev "
            "libffi-dev libgdbm-dev libglib2.0-dev libgmp-dev libjpeg-dev libkrb5-dev "
            "liblzma-dev libmagickcore-dev libmagickwand-dev libmaxminddb-dev libncurses5-dev "
            "libncursesw5-dev libpng-dev libpq-dev libreadline-dev libsqlite3-dev libssl-dev "
            "libtool libwebp-dev libxml2-dev libxslt-dev libyaml-dev make patch unzip "
            "xz-utils zlib1g-dev")
    ),
}

#: The scenarios ``python -m bench.run --kaniko`` compares, in order.
COMPARED = ("tiny", "files", "seed", "app")
#: The remote link's pause after each 64 KiB piece of a blob.
REMOTE_PAUSE_S = 0.002

#: What ``--kaniko`` may also be asked for by name (the chain takes minutes per build).
CHOOSABLE = (*COMPARED, "remote", "buildpack-deps")


@dataclass(frozen=True)
class Measurement:
    scenario: str
    tool: str
    seconds: float
    peak_rss_mb: float
    #: Seconds the RUN commands themselves took, from the log (None: not measurable).
    run_seconds: float | None = None
    #: CPU seconds (user + system) of the builder and everything it ran: unlike the wall
    #: time, it hardly depends on what else the machine is doing.
    cpu_seconds: float | None = None
    #: Seconds of the step marked by ``ENV BENCH=done`` (the last RUN), from the log.
    marked_step_seconds: float | None = None
    #: The builder's own time by part (:func:`own_time_parts`), from the log.
    own_parts: dict[str, float] | None = None

    @property
    def own_seconds(self) -> float | None:
        """Wall time minus the RUN commands' own work: what the builder itself spent."""
        return None if self.run_seconds is None else self.seconds - self.run_seconds


@dataclass(frozen=True)
class Timed:
    """One build's wall time, peak RSS and output lines, each with when it arrived."""

    seconds: float
    peak_rss_mb: float
    lines: list[tuple[float, str]]
    cpu_seconds: float = 0.0


def _timed(argv: list[str]) -> Timed:
    """Run ``argv`` (stdout and stderr merged), stamping each output line as it arrives.

    Both kiln and kaniko write their log unbuffered, so the stamps time their steps to the
    millisecond where their own stamps give whole seconds.
    """
    with tempfile.NamedTemporaryFile(prefix="kiln-bench-rss-") as rss_file:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _RSS_WRAPPER, rss_file.name, *argv],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines = [(time.perf_counter() - started,
                  _ANSI.sub("", raw.decode(errors="replace")).rstrip("\n"))
                 for raw in proc.stdout]
        code = proc.wait()
        elapsed = time.perf_counter() - started
        if code != 0:
            tail = "\n".join(text for _, text in lines[-30:])
            raise RuntimeError(f"{argv[0]} failed with code {code}:\n{tail}")
        rss_kib, cpu = Path(rss_file.name).read_text().split()
        return Timed(elapsed, int(rss_kib) / 1024, lines, float(cpu))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # kaniko colours its level tags
_LOG_LINE = re.compile(r"^(INFO|WARN|ERRO|DEBU|FATA)\[")


def run_command_seconds(lines: list[tuple[float, str]]) -> float | None:
    """Time spent inside RUN commands by kiln or kaniko: each ``Running: [...]`` log line to
    the next log line (the command's own output, unformatted, comes in between)."""
    total, started = 0.0, None
    seen = False
    for stamp, text in lines:
        if not _LOG_LINE.match(text):
            continue
        if started is not None:
            total += stamp - started
            started = None
        if "] Running: [" in text:
            started, seen = stamp, True
    return total if seen else None


#: Log messages (kiln's and kaniko's, which say the same) that begin a part of a builder's own
#: work; a line matching none goes on with the part before it.
_OWN_PARTS = (
    ("Retrieving image", "pull"),
    ("Unpacking rootfs", "unpack"),
    ("Taking snapshot of full filesystem", "snapshot+layer"),
    ("Building stage", "between stages"),
    ("Storing source image", "between stages"),
    ("Deleting filesystem", "between stages"),
    ("Skipping push", "exit"),
)


def own_time_parts(lines: list[tuple[float, str]], total: float) -> dict[str, float] | None:
    """A builder's own time (``total`` minus its RUN commands) split by what its log says it
    was doing: from each log line to the next, the part the latest line in ``_OWN_PARTS``
    began (``start-up`` before any; the RUN commands, ``Running: [...]`` to the next log
    line, left out); after the last line, ``exit``. None for a log with no RUN."""
    parts: dict[str, float] = {}
    part, since, seen = "start-up", 0.0, False
    for stamp, text in lines:
        if not _LOG_LINE.match(text):
            continue
        if part != "run":
            parts[part] = parts.get(part, 0.0) + stamp - since
        since = stamp
        if "] Running: [" in text:
            part, seen = "run", True
            continue
        if part == "run":
            part = "between steps"  # what follows a RUN is named by the next line, if at all
        part = next((name for message, name in _OWN_PARTS if message in text), part)
    if part != "run":
        parts[part] = parts.get(part, 0.0) + total - since
    return {name: round(seconds, 3) for name, seconds in parts.items()} if seen else None


def marked_step_seconds(lines: list[tuple[float, str]]) -> float | None:
    """Seconds from the log line announcing the last ``RUN true`` to the ``ENV BENCH=done``
    line after it: that step's command, snapshot and layer (any builder's log)."""
    run_at = None
    for stamp, text in lines:
        if text.rstrip().endswith("RUN true"):
            run_at = stamp
        elif "ENV BENCH=done" in text and run_at is not None:
            return stamp - run_at
    return None


def _measurement(scenario: str, tool: str, timed: Timed) -> Measurement:
    runs = run_command_seconds(timed.lines) if tool in ("kiln", "kaniko") else None
    return Measurement(scenario, tool, timed.seconds, timed.peak_rss_mb, run_seconds=runs,
                       cpu_seconds=timed.cpu_seconds,
                       marked_step_seconds=marked_step_seconds(timed.lines),
                       own_parts=(own_time_parts(timed.lines, timed.seconds)
                                  if tool in ("kiln", "kaniko") else None))


def _context(scenario: str, bases: dict[str, str], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(SCENARIOS[scenario].format(**bases))
    if scenario == "tiny":
        with open(directory / "random.bin", "wb") as out:
            for _ in range(100):
                out.write(os.urandom(1 << 20))
    elif scenario == "seed":
        _write_sources(directory / "app", packages=20, files=25)
    elif scenario == "app":
        _write_sources(directory, packages=60, files=25)
        _write_sources(directory / "vendor", packages=200, files=15)
        for index in range(200):
            (directory / "static" / f"img{index // 50}").mkdir(parents=True, exist_ok=True)
            (directory / "static" / f"img{index // 50}" / f"a{index}.bin").write_bytes(
                os.urandom(20_000))
    return directory


def _write_sources(root: Path, packages: int, files: int) -> None:
    """``packages`` directories of ``files`` source files each (a few KB of text apiece)."""
    for p in range(packages):
        package = root / f"pkg{p:03d}"
        package.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            body = "".join(f"func f{p}_{f}_{line}(x int) int {{ return x*{line} + {p} }}\n"
                           for line in range(60 + (p * f) % 40))
            (package / f"file{f:02d}.go").write_text(f"package pkg{p}\n\n{body}")


def kiln_build(context: Path, work: Path, *push: str) -> tuple[float, float]:
    """A cold kiln build; ``push`` replaces ``--no-push`` (``--destination ... --cache``)."""
    timed = _kiln(context, work, list(push or ("--no-push",)))
    return timed.seconds, timed.peak_rss_mb


def _kiln(context: Path, work: Path, output: list[str]) -> Timed:
    root, kiln_dir = work / "root", work / "kiln"
    try:
        return _timed([sys.executable, "-m", "executor.cli", "--context", str(context),
                       "--dockerfile", str(context / "Dockerfile"), "--root", str(root),
                       "--kaniko-dir", str(kiln_dir), *output, "--insecure-pull"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(kiln_dir, ignore_errors=True)


def _kiln_to_tar(context: Path, work: Path, destination: str) -> Timed:
    """kiln as the comparison runs it: build only, the image written as a tarball."""
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _kiln(context, work, ["--no-push", "--destination", destination,
                                     "--tar-path", str(out / "image.tar")])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _kaniko(binary: Path, context: Path, work: Path, destination: str) -> Timed:
    """A cold kaniko build (``bench/kaniko.py``): fresh sandbox root, image as a tarball."""
    from bench.kaniko import kaniko_argv, remove_root

    root, out = work / "root", work / "out"
    try:
        return _timed(kaniko_argv(binary, root, context, out, destination))
    finally:
        remove_root(root)
        shutil.rmtree(out, ignore_errors=True)


def buildah_build(context: Path, work: Path) -> tuple[float, float]:
    timed = _buildah(context, work)
    return timed.seconds, timed.peak_rss_mb


def _buildah(context: Path, work: Path) -> Timed:
    work.mkdir(parents=True, exist_ok=True)
    storage, runroot = work / "storage", work / "runroot"
    policy = work / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    buildah = f"buildah --storage-driver vfs --root {storage} --runroot {runroot}"
    script = (
        f"{buildah} build --isolation chroot --layers --format docker "
        f"--signature-policy {policy} --tls-verify=false "
        f"-f {context}/Dockerfile -t bench:latest {context}; code=$?; "
        f"{buildah} rmi -a -f >/dev/null 2>&1; exit $code"
    )
    try:
        return _timed(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


@contextmanager
def busybox_registry(debian: bool = False) -> Iterator[dict[str, str]]:
    """A registry on loopback holding the busybox test base image (and, with ``debian``, the
    Debian minbase one); yields their references as ``base`` and ``debian``, and the Debian
    one through a slow link (see ``remote``) as ``debian_remote``."""
    from tests.support.fault_proxy import Fault, FaultProxy

    with tempfile.TemporaryDirectory(prefix="kiln-bench-reg-") as scratch:
        registry = Registry(Path(scratch) / "registry").start()
        proxy = FaultProxy(registry.url).start()
        proxy.add(Fault("GET", r"/blobs/sha256:", action="slow", stall=REMOTE_PAUSE_S,
                        times=1 << 30))
        try:
            refs = {"base": f"{registry.host}/bench/busybox:latest",
                    "debian": f"{registry.host}/bench/debian:bookworm",
                    "debian_remote": f"{proxy.host}/bench/debian:bookworm"}
            write_busybox_layout(Path(scratch) / "layout", "latest")
            push_layout(Path(scratch) / "layout", "latest", refs["base"])
            if debian:
                write_debian_layout(Path(scratch) / "debian", "bookworm")
                push_layout(Path(scratch) / "debian", "bookworm", refs["debian"])
            yield refs
        finally:
            proxy.stop()
            registry.stop()


def compile_kiln() -> None:
    """Write kiln's bytecode before timing it, as ``pip install`` does in the executor image.

    Without it, and with ``PYTHONDONTWRITEBYTECODE`` set (as on the machines the bench runs
    on), every build compiles all of kiln's modules from source first: 0.1 s of CPU that no
    installed kiln spends.
    """
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", "executor", "snapshot"],
                   cwd=repo, check=True)


def measure_builds(scenarios: list[str], tools: list[str], runs: int,
                   report: Callable[[Measurement], None], kaniko: Path | None = None,
                   logs: Path | None = None) -> None:
    """Build every scenario ``runs`` times with every tool, cold, interleaved (run 1 of each
    tool, then run 2 of each, the order rotating), and report each measurement; with
    ``logs``, each build's output is kept there, every line stamped with when it arrived
    (``SCENARIO-TOOL-RUN.log``), to see where a builder's own time went."""
    compile_kiln()
    needs_debian = any("{debian" in SCENARIOS[s] for s in scenarios)
    with busybox_registry(needs_debian) as bases, \
            tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        destination = bases["base"].split("/", 1)[0] + "/bench/out:latest"
        builders: dict[str, Callable[[Path, Path], Timed]] = {
            "kiln": lambda c, w: _kiln_to_tar(c, w, destination),
            "buildah": _buildah,
        }
        if kaniko is not None:
            builders["kaniko"] = lambda c, w: _kaniko(kaniko, c, w, destination)
        for scenario in scenarios:
            context = _context(scenario, bases, Path(tmp) / scenario / "context")
            for run in range(runs):
                for i in range(len(tools)):
                    tool = tools[(i + run) % len(tools)]
                    try:
                        timed = builders[tool](context, Path(tmp) / scenario / tool)
                    except RuntimeError as exc:  # one failed build leaves a gap, not no table
                        print(f"{scenario}: {tool} failed: {exc}", file=sys.stderr, flush=True)
                        continue
                    if logs is not None:
                        logs.mkdir(parents=True, exist_ok=True)
                        (logs / f"{scenario}-{tool}-{run + 1}.log").write_text("".join(
                            f"{stamp:9.3f} {text}\n" for stamp, text in timed.lines))
                    report(_measurement(scenario, tool, timed))


def measure_cached_rebuild(runs: int, report: Callable[[Measurement], None]) -> None:
    """The ``files`` build with ``--cache`` into an empty cache repository (cold: it runs and
    stores both RUNs), then again on a fresh root and kiln dir (warm: both come from the
    cache), as a CI job building an unchanged Dockerfile would; both push the image."""
    compile_kiln()
    with busybox_registry() as bases, tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        context = _context("files", bases, Path(tmp) / "context")
        registry = bases["base"].split("/", 1)[0]
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
