"""Benchmarks of kiln's hot paths on synthetic trees: ``python -m bench.run [--json] [--runs N]``.

Each scenario runs in a fresh interpreter (so its peak RSS is its own) over a tree this script
builds in a temporary directory and removes afterwards, and reports the median of ``--runs``
timed runs. ``tiny``, ``files`` and ``bigfile`` build whole Dockerfiles with kiln and with
buildah against a local registry (bench/builds.py), and ``files-cache`` builds ``files`` with
``--cache`` twice (cold, then warm from the cache); ``extract-*`` compare kiln, umoci and GNU
tar (bench/extract.py); ``floors-debian`` sets the seed build's own phases (extract, snapshot,
layer) beside their floors in CPU seconds (bench/floors.py), and ``floors-files`` those of the
``files`` build (the snapshot and layer of 50,000 new small files). Push memory has its own script:
``python -m bench.push``. Add a scenario by writing a function
``(workdir, runs) -> list[Result]`` and listing it in ``SCENARIOS``.

``python -m bench.run --kaniko PATH`` compares whole builds instead: kiln, kaniko (the executor
binary at PATH, run chrooted in a throwaway root, bench/kaniko.py) and buildah build the
``tiny``, ``files``, ``seed`` and ``app`` Dockerfiles of bench/builds.py cold, interleaved, from
the same local registry, and one table gives the medians, kiln's ratios to both, each builder's
own time (wall minus its RUN commands) and the no-op ``RUN true`` step of ``files``, with the
machine's load before and after.

``--scenario buildpack-deps`` (never run unless named: each build takes minutes) builds three
stages chained as Docker Hub's buildpack-deps images are, curl, then scm FROM it, then the full
development set FROM that, each one RUN of real apt installs from the Debian mirror, about
1.2 GB in the end. There apt and dpkg are most of the wall time and vary with the mirror and
the load, so the column to read is the own time: what is left is each builder's pull and
extraction, its snapshots, its layers (tar, gzip, two sha256 over 1.2 GB) and its work between
the stages (kaniko saves each stage, deletes the filesystem and unpacks the stage again; kiln
goes on in the same root). ``--logs DIR`` keeps each build's log with every line stamped, to
see where that time went.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from snapshot.compress import Compression
from snapshot.ignore import IgnoreList
from snapshot.layer import write_layer
from snapshot.snapshot import Snapshot, diff_snapshots, take_snapshot


@dataclass(frozen=True)
class Result:
    scenario: str
    tool: str
    seconds: float
    peak_rss_mb: float


def make_tree(root: Path, files: int, dirs: int) -> None:
    """``files`` small files spread over ``dirs`` leaf directories (ten parents above them)."""
    per_dir = max(1, files // dirs)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    made = 0
    for index in range(dirs):
        directory = root / f"d{index % 10:02d}" / f"s{index:04d}"
        directory.mkdir(parents=True)
        for number in range(per_dir):
            if made == files:
                return
            fd = os.open(directory / f"f{number:03d}.txt", flags, 0o644)
            os.write(fd, b"x" * (number % 64))
            os.close(fd)
            made += 1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def walk_diff_100k(workdir: Path, runs: int) -> list[Result]:
    """A no-op step on 100,000 files: walk the tree again and diff against the last walk.

    ``kiln`` is the default (the walk shared by one process per CPU, up to four);
    ``kiln-1proc`` walks in one process.
    """
    root = workdir / "root"
    make_tree(root, 100_000, 1000)
    ignore = IgnoreList(root=root, paths=frozenset(), globs=())
    results = []
    for tool, workers in (("kiln", None), ("kiln-1proc", 1)):
        last = take_snapshot(root, ignore)  # the step before's snapshot; warms the caches
        walks, diffs, totals = [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            new = take_snapshot(root, ignore, previous=last, workers=workers)
            walked = time.perf_counter()
            changes = diff_snapshots(last, new)
            done = time.perf_counter()
            assert changes.is_empty(), "the tree changed under the benchmark"
            walks.append(walked - started)
            diffs.append(done - walked)
            totals.append(done - started)
            del new
        peak = _peak_rss_mb()
        results += [Result("walk-diff-100k", tool, statistics.median(totals), peak),
                    Result("walk-diff-100k:walk", tool, statistics.median(walks), peak),
                    Result("walk-diff-100k:diff", tool, statistics.median(diffs), peak)]
    return results


def layer_10k(workdir: Path, runs: int) -> list[Result]:
    """A step that added 10,000 small files: write them as a gzip layer."""
    root = workdir / "root"
    make_tree(root, 10_000, 100)
    ignore = IgnoreList(root=root, paths=frozenset(), globs=())
    snapshot = take_snapshot(root, ignore)
    changes = diff_snapshots(Snapshot({}, 0), snapshot)
    times = []
    for run in range(runs):
        out = workdir / f"blobs-{run}"
        started = time.perf_counter()
        write_layer(root, changes, snapshot, out, Compression("gzip"))
        times.append(time.perf_counter() - started)
        shutil.rmtree(out)
    return [Result("layer-10k", "kiln", statistics.median(times), _peak_rss_mb())]


def _medians(scenario: str, samples: dict[str, list[tuple[float, float]]]) -> list[Result]:
    """One Result per tool: the median time, and the median of the peak RSS figures."""
    return [Result(scenario, tool, statistics.median(s for s, _ in runs),
                   statistics.median(r for _, r in runs)) for tool, runs in samples.items()]


def noop_100k(_workdir: Path, runs: int) -> list[Result]:
    """One no-op RUN step on a 100,000-file tree: clock wait, ``RUN true``, walk, diff; right
    after the tree was written, and in the steady state of later steps."""
    from bench.builds import noop_step_seconds

    first = [noop_step_seconds(100_000)[0] for _ in range(runs)]
    steady = noop_step_seconds(100_000, steps=runs + 1)[1:]
    return [Result("noop100k", "kiln", statistics.median(first), _peak_rss_mb()),
            Result("noop100k:steady", "kiln", statistics.median(steady), _peak_rss_mb())]


def _build_scenario(name: str) -> Callable[[Path, int], list[Result]]:
    """A whole-build scenario of bench/builds.py, run by kiln and by buildah, cold."""

    def run(_workdir: Path, runs: int) -> list[Result]:
        from bench.builds import Measurement, measure_builds

        samples: dict[str, list[tuple[float, float]]] = {"kiln": [], "buildah": []}

        def collect(m: Measurement) -> None:
            samples[m.tool].append((m.seconds, m.peak_rss_mb))

        measure_builds([name], list(samples), runs, collect)
        return _medians(name, samples)

    return run


def _extract_scenario(name: str) -> Callable[[Path, int], list[Result]]:
    """Extraction of one blob by kiln, umoci and GNU tar (bench/extract.py)."""

    def run(_workdir: Path, runs: int) -> list[Result]:
        from bench.extract import TOOLS, default_workdir, measure_extraction

        samples: dict[str, list[tuple[float, float]]] = {tool: [] for tool in TOOLS}
        measure_extraction([name], runs, default_workdir(),
                           lambda _s, tool, seconds: samples[tool].append((seconds, 0.0)))
        return [Result(r.scenario, r.tool, r.seconds, _peak_rss_mb() if r.tool == "kiln"
                       else float("nan")) for r in _medians(name, samples)]

    return run


def floors_debian(_workdir: Path, runs: int) -> list[Result]:
    """The seed build's own phases against their floors, in CPU seconds (bench/floors.py):
    ``seconds`` is CPU time here, and the tool is ``phase/tool``."""
    from bench.extract import default_workdir
    from bench.floors import measure_floors
    from tests.support.images import debian_layer

    samples: dict[str, list[tuple[float, float]]] = {}
    measure_floors(debian_layer(), runs, default_workdir(),
                   lambda phase, tool, cpu: samples.setdefault(f"{phase}/{tool}", []).append(
                       (cpu, float("nan"))))
    return _medians("floors-debian", samples)


def floors_files(_workdir: Path, runs: int) -> list[Result]:
    """The ``files`` build's own phases (a 50,000-file step) against their floors, in CPU
    seconds (bench/floors.py); the tool is ``phase/tool``."""
    from bench.extract import default_workdir
    from bench.floors import measure_file_floors

    samples: dict[str, list[tuple[float, float]]] = {}
    measure_file_floors(50_000, runs, default_workdir(),
                        lambda phase, tool, cpu: samples.setdefault(f"{phase}/{tool}", []).append(
                            (cpu, float("nan"))))
    return _medians("floors-files", samples)


def files_cache(_workdir: Path, runs: int) -> list[Result]:
    """The ``files`` build with --cache, cold and warm (bench/builds.py)."""
    from bench.builds import Measurement, measure_cached_rebuild

    samples: dict[str, list[tuple[float, float]]] = {"kiln-cold": [], "kiln-warm": []}

    def collect(m: Measurement) -> None:
        samples[m.tool].append((m.seconds, m.peak_rss_mb))

    measure_cached_rebuild(runs, collect)
    return _medians("files-cache", samples)


SCENARIOS: dict[str, Callable[[Path, int], list[Result]]] = {
    "walk-diff-100k": walk_diff_100k,
    "layer-10k": layer_10k,
    "noop100k": noop_100k,
    "tiny": _build_scenario("tiny"),
    "files": _build_scenario("files"),
    "bigfile": _build_scenario("bigfile"),
    "files-cache": files_cache,
    "extract-debian": _extract_scenario("extract-debian"),
    "extract-50k": _extract_scenario("extract-50k"),
    "floors-debian": floors_debian,
    "floors-files": floors_files,
}


def run_scenario_here(name: str, runs: int) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix=f"kiln-bench-{name}-"))
    try:
        return SCENARIOS[name](workdir, runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_scenario_in_child(name: str, runs: int) -> list[Result]:
    """Run one scenario in a fresh interpreter, so peak RSS is the scenario's alone."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--child", name, "--runs", str(runs)],
        check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    return [Result(**json.loads(line)) for line in completed.stdout.splitlines() if line]


def print_table(results: list[Result]) -> None:
    width = max([12, *(len(result.tool) for result in results)])
    print(f"{'scenario':<24} {'tool':<{width}} {'median s':>10} {'peak RSS MB':>12}")
    for result in results:
        print(f"{result.scenario:<24} {result.tool:<{width}} {result.seconds:>10.4f} "
              f"{result.peak_rss_mb:>12.1f}")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _secs(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def compare_builders(kaniko: Path, scenarios: list[str], runs: int, buildah: bool,
                     logs: Path | None = None) -> None:
    """The kiln / kaniko / buildah table (module docstring); progress goes to stderr."""
    from bench.builds import Measurement, measure_builds

    tools = ["kiln", "kaniko", *(["buildah"] if buildah else [])]
    samples: dict[tuple[str, str], list[Measurement]] = {}

    def collect(m: Measurement) -> None:
        samples.setdefault((m.scenario, m.tool), []).append(m)
        print(f"  {m.scenario:<6} {m.tool:<8} {m.seconds:7.2f} s  cpu {_secs(m.cpu_seconds):>6}"
              f"  own {_secs(m.own_seconds):>6}"
              f"  step {_secs(m.marked_step_seconds):>6}  {m.peak_rss_mb:6.0f} MB",
              file=sys.stderr, flush=True)

    before = _load()
    print(f"{before}; {runs} cold runs each, interleaved", file=sys.stderr, flush=True)
    measure_builds(scenarios, tools, runs, collect, kaniko, logs)
    after = _load()

    def median(scenario: str, tool: str, what: Callable[[Measurement], float | None]
               ) -> float | None:
        values = [v for m in samples.get((scenario, tool), []) if (v := what(m)) is not None]
        return statistics.median(values) if values else None

    print(f"kiln vs kaniko ({kaniko}) vs buildah: medians of {runs} cold runs, interleaved")
    print(f"before: {before}\nafter:  {after}")
    print("own: wall minus the RUN commands' own time (from the log lines, stamped as they "
          "arrive); cpu: user + system seconds of the builder's whole process tree, RUN "
          "commands included (hardly moved by the machine's load, unlike the wall time)")
    head = (f"{'scenario':<16} {'kiln s':>7} {'kaniko s':>8} {'buildah s':>9} "
            f"{'kiln/kaniko':>11} {'kiln/buildah':>12} {'own kiln':>8} {'own kaniko':>10} "
            f"{'own ratio':>9} {'cpu kiln':>8} {'cpu kaniko':>10} {'cpu ratio':>9} "
            f"{'RSS MB kiln/kaniko/buildah':>27}")
    print(head)
    rows: list[tuple[str, Callable[[Measurement], float | None]]] = [
        ("", lambda m: m.seconds), (" RUN true step", lambda m: m.marked_step_seconds)]
    for scenario in scenarios:
        for suffix, what in rows:
            times = {t: median(scenario, t, what) for t in ("kiln", "kaniko", "buildah")}
            if times["kiln"] is None:
                continue
            own = {t: median(scenario, t, lambda m: m.own_seconds) if not suffix else None
                   for t in ("kiln", "kaniko")}
            cpu = {t: median(scenario, t, lambda m: m.cpu_seconds) if not suffix else None
                   for t in ("kiln", "kaniko")}
            rss = "/".join(f"{v:.0f}" if v is not None else "-" for v in (
                median(scenario, t, lambda m: m.peak_rss_mb) if not suffix else None
                for t in ("kiln", "kaniko", "buildah")))
            print(f"{scenario + suffix:<16} {_secs(times['kiln']):>7} "
                  f"{_secs(times['kaniko']):>8} {_secs(times['buildah']):>9} "
                  f"{_ratio(times['kiln'], times['kaniko']):>11} "
                  f"{_ratio(times['kiln'], times['buildah']):>12} {_secs(own['kiln']):>8} "
                  f"{_secs(own['kaniko']):>10} {_ratio(own['kiln'], own['kaniko']):>9} "
                  f"{_secs(cpu['kiln']):>8} {_secs(cpu['kaniko']):>10} "
                  f"{_ratio(cpu['kiln'], cpu['kaniko']):>9} {rss if not suffix else '':>27}")
    print("own time by part (medians, s; from the log lines that begin each part):")
    for scenario in scenarios:
        for tool in ("kiln", "kaniko"):
            parts = [m.own_parts for m in samples.get((scenario, tool), []) if m.own_parts]
            names = list(dict.fromkeys(name for p in parts for name in p))
            if names:
                print(f"  {scenario:<16} {tool:<7} " + ", ".join(
                    f"{name} {statistics.median(p.get(name, 0.0) for p in parts):.2f}"
                    for name in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per scenario, for the median (5; 3 with --kaniko)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--scenario", action="append",
                        choices=sorted({*SCENARIOS, "seed", "app", "buildpack-deps", "remote"}),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kaniko", type=Path, metavar="PATH",
                        help="compare whole builds with this kaniko executor binary (and "
                        "buildah); --scenario then picks among tiny, files, seed, app and "
                        "buildpack-deps (not run unless named: minutes per build)")
    parser.add_argument("--no-buildah", action="store_true",
                        help="with --kaniko: leave buildah out (it is the slowest)")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="with --kaniko: keep every build's log in DIR, each line stamped "
                        "with the second it arrived")
    args = parser.parse_args(argv)
    if args.kaniko:
        from bench.builds import CHOOSABLE, COMPARED

        chosen = args.scenario or list(COMPARED)
        unknown = [name for name in chosen if name not in CHOOSABLE]
        if unknown:
            parser.error(f"with --kaniko, --scenario is one of {', '.join(CHOOSABLE)}")
        compare_builders(args.kaniko, chosen, args.runs or 3,
                         not args.no_buildah, args.logs)
        return 0
    args.runs = args.runs or 5
    whole = [name for name in args.scenario or () if name not in SCENARIOS]
    if whole:
        parser.error(f"--scenario {whole[0]} compares builders: it needs --kaniko PATH")
    if args.child:
        for result in run_scenario_here(args.child, args.runs):
            print(json.dumps(asdict(result)), flush=True)
        return 0
    results: list[Result] = []
    for name in args.scenario or list(SCENARIOS):
        scenario_results = run_scenario_in_child(name, args.runs)
        results.extend(scenario_results)
        if args.json:
            for result in scenario_results:
                print(json.dumps(asdict(result)), flush=True)
    if not args.json:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
