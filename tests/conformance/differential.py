"""Differential check: random valid Dockerfiles built by kiln and by BuildKit, compared.

The corpus only holds what someone thought to write down; this finds what no one did. Each
case is drawn from a seeded generator (so a difference can be rebuilt from its seed): a context
of files with assorted modes, owners and links, and a Dockerfile of one to three stages whose
instructions, flags, paths, owners and modes are drawn from the shapes users write (RUN that
creates, changes and removes files; COPY from the context and from stages with --chown,
--chmod, --link and wildcards; WORKDIR, USER, ENV, ARG, LABEL ...). Both images are described
the way the conformance suite describes them and diffed. Every difference found is to become a
fixed case in ``cases/``.

    scripts/differential [--count N] [--seed S] [--keep DIR]
    scripts/differential --case DIR [DIR...]     # compare given case directories instead
    scripts/differential --cold ...              # BuildKit without its cache, for timing
    scripts/differential --layers [--dump DIR] [--all-fields] ...  # the layer tars too
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conformance.harness import (
    Builder,
    Case,
    Environment,
    buildkit_builder,
    describe_base,
    kiln_builder,
    load_case,
    run_case,
    serve_case_files,
)
from tests.support.buildkit import BuildKit, BuildKitMissing
from tests.support.compare import diff_descriptions
from tests.support.images import push_layout, write_busybox_layout
from tests.support.layers import diff_layer, fetch_layers, layer_count, show_layer
from tests.support.registry import Registry

OWNERS = ("0:0", "1000:1000", "10001", "65534:65534", "1:2", "root", "nobody:nogroup")
MODES = ("0644", "0755", "0600", "0700", "0444", "0555", "1777", "4755", "2755")
NAMES = ("a", "b", "c.txt", "d.sh", "e.conf", "f.py", "g", "h.json")
LABEL_VALUES = ("v", '"a b"', "$PATH")
DIRS = ("/app", "/opt/x", "/srv/data/sub", "/usr/local/share/k", "/w", "/tmp/t", "/var/lib/q")


@dataclass
class Draft:
    """A Dockerfile being drawn: its lines, the context files, the stages so far."""

    rng: random.Random
    lines: list[str] = field(default_factory=list)
    context: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (text, mode)
    stages: list[str] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # absolute paths made in this stage

    def pick(self, seq: tuple[str, ...] | list[str]) -> str:
        return self.rng.choice(seq)

    def new_path(self) -> str:
        path = f"{self.pick(DIRS)}/{self.pick(NAMES)}"
        self.made.append(path)
        return path


def _context_file(d: Draft) -> str:
    name = f"src/{d.pick(('one', 'two', 'deep/three', 'deep/er/four'))}{d.pick(('.txt', '.sh'))}"
    d.context.setdefault(name, (f"{name} {d.rng.randrange(1000)}\n",
                                int(d.pick(("0644", "0755", "0600")), 8)))
    return name


def _run_creates(d: Draft) -> str:
    path = d.new_path()
    parent = path.rsplit("/", 1)[0]
    steps = [f"mkdir -p {parent}", f"echo {d.rng.randrange(1 << 16)} > {path}"]
    if d.rng.random() < 0.5:
        steps.append(f"chmod {d.pick(MODES)} {path}")
    if d.rng.random() < 0.5:
        owner = d.pick(("0:0", "1000:1000", "65534:65534", "1:2"))
        steps.append(f"chown {owner} {path}")
    if d.rng.random() < 0.3:
        steps.append(f"ln {path} {path}.hard")
        d.made.append(f"{path}.hard")
    if d.rng.random() < 0.3:
        steps.append(f"ln -s {path} {path}.sym")
    return "RUN " + " && ".join(steps)


def _run_changes(d: Draft) -> str:
    if not d.made:
        return _run_creates(d)
    path = d.pick(d.made)
    action = d.pick(("rm -f {p}", "chmod {m} {p}", "echo more >> {p}", "touch {p}",
                     "chown {o} {p}", "rm -rf $(dirname {p})", "mv {p} {p}.moved"))
    return "RUN " + action.format(p=path, m=d.pick(MODES), o=d.pick(("1:1", "0:0", "1000:1000")))


def _copy_context(d: Draft) -> str:
    sources = [_context_file(d) for _ in range(d.rng.randint(1, 3))]
    if d.rng.random() < 0.3:
        sources = [d.pick(("src/*.txt", "src/deep", "src/*.sh", "src/deep/*"))]
    flags = []
    if d.rng.random() < 0.4:
        flags.append(f"--chown={d.pick(OWNERS)}")
    if d.rng.random() < 0.3:
        flags.append(f"--chmod={d.pick(('0755', '0640', '0600', '0444'))}")
    if d.rng.random() < 0.15:
        flags.append("--link")
    dest = d.pick(DIRS) + d.pick(("/", "/new/", ""))
    if len(sources) > 1 or any("*" in s for s in sources) or dest.endswith("/"):
        dest = dest.rstrip("/") + "/"
    return " ".join(["COPY", *flags, *sources, dest])


def _copy_from_stage(d: Draft) -> str:
    if not d.stages:
        return _copy_context(d)
    stage = d.pick(d.stages)
    src = d.pick(DIRS)
    flags = [f"--from={stage}"]
    if d.rng.random() < 0.3:
        flags.append(f"--chown={d.pick(OWNERS)}")
    if d.rng.random() < 0.1:
        flags.append("--link")
    return " ".join(["COPY", *flags, src, d.pick(DIRS) + "/"])


def _metadata(d: Draft) -> str:
    return d.pick((
        f"WORKDIR {d.pick(DIRS)}",
        f"WORKDIR {d.pick(('rel', 'rel/sub', '../up'))}",
        f"USER {d.pick(('1000', '1000:1000', '65534', 'root', '0:0', 'nobody'))}",
        f"ENV K{d.rng.randrange(5)}={d.pick(('v', 'a b', '$PATH:/x', '${K1:-d}'))}",
        f"ARG A{d.rng.randrange(3)}={d.pick(('x', 'y z'))}",
        f"LABEL l{d.rng.randrange(5)}={d.pick(LABEL_VALUES)}",
        f"EXPOSE {d.rng.randrange(1, 9000)}/{d.pick(('tcp', 'udp'))}",
        f"CMD [\"{d.pick(('sh', 'cat'))}\"]",
        f"STOPSIGNAL {d.pick(('SIGTERM', '9', 'SIGKILL'))}",
    ))


def _run_as_root_again(d: Draft) -> str:
    return "USER 0"


GENERATORS: tuple[tuple[float, Callable[[Draft], str]], ...] = (
    (3, _run_creates), (2, _run_changes), (3, _copy_context), (2, _copy_from_stage),
    (2, _metadata),
)


def draw_case(seed: int) -> tuple[str, dict[str, tuple[str, int]]]:
    """The Dockerfile and context files of case ``seed``."""
    d = Draft(random.Random(seed))
    d.lines.append("ARG BASE")
    weights = [w for w, _ in GENERATORS]
    for index in range(d.rng.randint(1, 3)):
        name = f"s{index}"
        parent = d.pick(d.stages) if d.stages and d.rng.random() < 0.3 else "$BASE"
        d.lines.append(f"FROM {parent} AS {name}")
        d.made = []
        for _ in range(d.rng.randint(2, 7)):
            generator = d.rng.choices([g for _, g in GENERATORS], weights)[0]
            d.lines.append(generator(d))
            if d.lines[-1].startswith("USER") and d.lines[-1] not in ("USER root", "USER 0"):
                # Later RUNs create files where only root may: go back, as Dockerfiles do.
                d.lines.append(_run_as_root_again(d))
        d.stages.append(name)
    return "\n".join(d.lines) + "\n", d.context


def write_case(directory: Path, seed: int) -> Case:
    """Case ``seed`` as a directory the conformance harness can build."""
    dockerfile, files = draw_case(seed)
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(dockerfile)
    chmod = {}
    for rel, (text, mode) in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
        chmod[rel] = f"{mode:04o}"
    # BuildKit builds only the stages the target needs; kiln too with this flag (kaniko's
    # default builds every stage, which only matters when an unused one fails).
    return Case(name=f"diff-{seed}", directory=directory, chmod=chmod, skip_unused_stages=True)


def _timed(builder: Builder, spent: list[float]) -> Builder:
    """``builder``, adding the seconds each build (and push) takes to ``spent``."""
    def build(*args: Any) -> tuple[int, str, str]:
        started = time.monotonic()
        try:
            return builder(*args)
        finally:
            spent.append(time.monotonic() - started)
    return build


def _layer_report(env: Environment, name: str, dump: Path | None, all_fields: bool) -> str:
    """Differences between BuildKit's and kiln's layer tars of case ``name`` (the base image's
    layer left out), one line each."""
    base_layers = layer_count(env.base)
    images = {tag: list(fetch_layers(f"{env.registry_host}/conformance/{name}:{tag}",
                                     base_layers)) for tag in ("buildkit", "kiln")}
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        for tag, layers in images.items():
            lines = [line for i, layer in enumerate(layers) for line in show_layer(i, layer)]
            (dump / f"{name}.{tag}.txt").write_text("\n".join(lines) + "\n")
    reference, ours = images["buildkit"], images["kiln"]
    if len(reference) != len(ours):
        return f"layers: buildkit {len(reference)}, kiln {len(ours)}"
    return "\n".join(line for i, (want, got) in enumerate(zip(reference, ours, strict=True))
                     for line in diff_layer(i, want, got, mtimes=all_fields,
                                            compression=all_fields))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="the first case's seed")
    parser.add_argument("--keep", type=Path, help="copy each differing case here")
    parser.add_argument("--cold", action="store_true",
                        help="empty BuildKit's cache before each of its builds (for timing)")
    parser.add_argument("--case", type=Path, nargs="+", default=[],
                        help="case directories (as in cases/) to compare instead of random ones")
    parser.add_argument("--layers", action="store_true",
                        help="also compare the layer tars entry by entry (names, order, "
                             "headers, PAX records, whiteouts, empty layers)")
    parser.add_argument("--dump", type=Path,
                        help="with --layers: write both listings of each case here")
    parser.add_argument("--all-fields", action="store_true",
                        help="with --layers: also mtime values and the compressed bytes' size "
                             "and gzip header, which differ by nature (README)")
    args = parser.parse_args(argv)
    if args.case:
        args.count = len(args.case)
    differing: list[int] = []
    failed_both = 0
    times: dict[str, list[float]] = {"kiln": [], "buildkit": []}
    with tempfile.TemporaryDirectory(prefix="kiln-differential-") as tmp_name:
        tmp = Path(tmp_name)
        registry = Registry(tmp / "registry").start()
        try:
            with BuildKit(tmp / "buildkit") as buildkit, serve_case_files() as http_url:
                write_busybox_layout(tmp / "layout", "latest")
                base = push_layout(tmp / "layout", "latest",
                                   f"{registry.host}/test/busybox:latest")
                env = Environment(registry.host, base, http_url,
                                  describe_base(base, registry.host, tmp / "base"))
                for index, seed in enumerate(range(args.seed, args.seed + args.count)):
                    case = (load_case(args.case[index].resolve()) if args.case
                            else write_case(tmp / "cases" / f"diff-{seed}", seed))
                    outcomes = {}
                    for tag, builder in (("buildkit", buildkit_builder(buildkit)),
                                         ("kiln", kiln_builder)):
                        if tag == "buildkit" and args.cold:
                            buildkit.prune()
                        spent: list[float] = []
                        outcomes[tag] = run_case(case, env, tmp / tag / case.name,
                                                 _timed(builder, spent), tag)
                        times[tag].append(sum(spent))
                    reference, ours = outcomes["buildkit"], outcomes["kiln"]
                    if reference.exit_code and ours.exit_code:
                        failed_both += 1
                        print(f"{case.name}: both refuse it\n  buildkit: {reference.error_line}"
                              f"\n  kiln: {ours.error_line}", flush=True)
                        continue
                    if bool(reference.exit_code) != bool(ours.exit_code):
                        report = (f"buildkit: {reference.error_line or 'built'}\n"
                                  f"kiln: {ours.error_line or 'built'}")
                    else:
                        assert reference.description and ours.description
                        report = diff_descriptions(reference.description, ours.description)
                        if args.layers:
                            report = "\n".join(filter(None, [report, _layer_report(
                                env, case.name, args.dump, args.all_fields)]))
                    if report:
                        differing.append(seed)
                        print(f"--- {case.name} differs:\n"
                              f"{(case.directory / 'Dockerfile').read_text()}{report}\n",
                              flush=True)
                        if args.keep:
                            shutil.copytree(case.directory, args.keep / case.name,
                                            dirs_exist_ok=True)
                    else:
                        print(f"{case.name}: equal", flush=True)
        except BuildKitMissing as exc:
            print(f"differential: {exc}", file=sys.stderr)
            return 2
        finally:
            registry.stop()
    med = {k: sorted(v)[len(v) // 2] if v else 0.0 for k, v in times.items()}
    print(f"{args.count} Dockerfiles, {len(differing)} differ ({differing}), "
          f"{failed_both} refused by both; median build and push: kiln {med['kiln']:.2f} s, "
          f"BuildKit {med['buildkit']:.2f} s")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
