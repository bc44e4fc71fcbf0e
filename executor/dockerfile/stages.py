"""From instructions to stages: FROM lines, global ARGs, stage names, ``--target``.

A Dockerfile is a list of stages, each starting at a FROM. ARGs declared before the first FROM
form the global scope: they may be used in FROM lines, and a stage sees one only after it
re-declares it with ``ARG NAME``. Stage names are case-insensitive, as in BuildKit.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field

from executor.dockerfile.expand import ExpansionError, expand_word
from executor.dockerfile.parse import Dockerfile, Instruction, Location
from executor.errors import DockerfileError, ImageError
from executor.image.model import Platform


@dataclass(frozen=True)
class Stage:
    """One FROM and the instructions under it; ``base_stage`` is set for ``FROM <stage>``."""

    index: int
    name: str | None
    base: str
    base_stage: int | None
    platform: str | None
    instructions: tuple[Instruction, ...]
    location: Location

    @property
    def display_name(self) -> str:
        return self.name or str(self.index)


@dataclass(frozen=True)
class BuildPlan:
    """The stages to build, in order, and the global ARG scope they start from."""

    dockerfile: Dockerfile
    stages: tuple[Stage, ...]
    global_args: Mapping[str, str]
    target: int
    build_args: Mapping[str, str] = field(default_factory=dict)
    #: TARGETPLATFORM, BUILDARCH, ...: what a stage's ``ARG NAME`` gets without a value.
    predefined: Mapping[str, str] = field(default_factory=dict)
    #: Names of the ARGs declared before the first FROM.
    global_names: frozenset[str] = frozenset()

    def stage_by_ref(self, ref: str) -> Stage | None:
        """The stage ``ref`` names (a name or an index), if it is one."""
        lowered = ref.lower()
        for stage in self.stages:
            if stage.name == lowered or (ref.isdigit() and stage.index == int(ref)):
                return stage
        return None


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    """BuildKit's automatic platform ARGs (usable in FROM without a declaration)."""
    args: dict[str, str] = {}
    for prefix, plat in (("TARGET", target), ("BUILD", build)):
        args[f"{prefix}PLATFORM"] = str(plat)
        args[f"{prefix}OS"] = plat.os
        args[f"{prefix}ARCH"] = plat.architecture
        args[f"{prefix}VARIANT"] = plat.variant or ""
    return args


def plan_build(dockerfile: Dockerfile, build_args: Mapping[str, str], target: str | None,
               platform: Platform) -> BuildPlan:
    """Split ``dockerfile`` into stages and resolve their bases against the global ARGs."""
    escape = dockerfile.escape
    scope = platform_args(platform, Platform())
    global_args: dict[str, str] = {}
    global_names: set[str] = set()
    stages: list[Stage] = []
    current: list[Instruction] = []
    header: Instruction | None = None

    def close_stage() -> None:
        if header is not None:
            stages.append(_make_stage(header, len(stages), tuple(current), stages,
                                      {**scope, **global_args}, escape))

    for inst in dockerfile.instructions:
        if inst.kind == "FROM":
            close_stage()
            header, current = inst, []
        elif header is None:
            if inst.kind != "ARG":
                raise inst.error(f"{inst.kind} must come after FROM (only ARG may come "
                                 "before the first FROM)")
            for name, default in parse_arg(inst, {**scope, **global_args}, escape):
                global_names.add(name)
                if name in build_args:
                    global_args[name] = build_args[name]
                elif default is not None:
                    global_args[name] = default
        else:
            _check_mount_from(inst)
            current.append(inst)
    close_stage()
    if not stages:
        raise DockerfileError(f"{dockerfile.path}:1", "no FROM instruction: nothing to build")
    target_index = len(stages) - 1
    if target is not None:
        found = next((s for s in stages if s.name == target.lower()), None)
        if found is None:
            raise DockerfileError(dockerfile.path,
                                  f'target stage "{target}" could not be found')
        target_index = found.index
    plan = BuildPlan(dockerfile, tuple(stages), global_args, target_index, dict(build_args),
                     scope, frozenset(global_names))
    check_cycles(plan)
    return plan


def stage_dependencies(plan: BuildPlan, stage: Stage) -> list[tuple[int, Instruction | None]]:
    """The stages ``stage`` reads: its base (None: the FROM line) and every literal
    ``--from``/``from=`` that names a stage, with the instruction that reads it."""
    deps: list[tuple[int, Instruction | None]] = []
    if stage.base_stage is not None:
        deps.append((stage.base_stage, None))
    for inst in stage.instructions:
        for ref in stage_references(inst):
            other = plan.stage_by_ref(ref) if "$" not in ref else None
            if other is not None:
                deps.append((other.index, inst))
    return deps


def check_cycles(plan: BuildPlan) -> None:
    """BuildKit resolves stages as a graph, so a stage may read a later one; a cycle (a stage
    reading itself, or a -> b -> a) is an error at the instruction that starts it."""
    state: dict[int, str] = {}

    def visit(index: int) -> tuple[int, Instruction | None] | None:
        state[index] = "open"
        for dep, inst in stage_dependencies(plan, plan.stages[index]):
            if state.get(dep) == "open":
                return dep, inst
            if dep not in state:
                found = visit(dep)
                if found is not None:
                    return found
        state[index] = "done"
        return None

    for stage in plan.stages:
        if stage.index in state:
            continue
        found = visit(stage.index)
        if found is not None:
            start, _ = found
            # Report at the start stage's own instruction that leads into the cycle.
            first = next((inst for dep, inst in stage_dependencies(plan, plan.stages[start])
                          if _reaches(plan, dep, start)), None)
            where = str(first.location if first is not None else plan.stages[start].location)
            raise DockerfileError(where, "circular dependency detected on stage: "
                                  f"{plan.stages[start].display_name}")


def check_defined_before(plan: BuildPlan, stages: list[Stage]) -> None:
    """A stage reads only stages defined above it: BuildKit converts stages in file order, so
    ``COPY --from`` or ``RUN --mount from=`` naming a later stage is an error (a cycle has
    already been reported by ``check_cycles``)."""
    for stage in stages:
        for inst in stage.instructions:
            for ref in stage_references(inst):
                other = plan.stage_by_ref(ref) if "$" not in ref else None
                if other is None or other.index < stage.index:
                    continue
                if inst.kind == "RUN":
                    raise inst.error(f'cannot mount from stage "{ref}" to '
                                     f'"{_mount_target(inst, ref)}", stage needs to be '
                                     "defined before current command")
                raise inst.error(f'cannot copy from stage "{ref}", it needs to be defined '
                                 f'before current stage "{stage.display_name}"')


def _mount_target(inst: Instruction, ref: str) -> str:
    """The target of the ``RUN --mount`` that reads ``ref`` (for the error message)."""
    for flag in inst.flags:
        name, _, value = flag[2:].partition("=")
        if name != "mount":
            continue
        fields = dict(f.partition("=")[::2] for f in value.split(","))
        fields = {k.strip().lower(): v for k, v in fields.items()}
        if fields.get("from") == ref:
            return fields.get("target") or fields.get("dst") or fields.get("destination") or ""
    return ""


def _reaches(plan: BuildPlan, start: int, goal: int) -> bool:
    seen: set[int] = set()
    pending = [start]
    while pending:
        index = pending.pop()
        if index == goal:
            return True
        if index in seen:
            continue
        seen.add(index)
        pending.extend(dep for dep, _ in stage_dependencies(plan, plan.stages[index]))
    return False


def build_order(plan: BuildPlan, wanted: set[int]) -> list[Stage]:
    """``wanted`` and every stage they read, each after the stages it reads (else in file
    order)."""
    order: list[Stage] = []
    placed: set[int] = set()

    def place(index: int) -> None:
        if index in placed:
            return
        placed.add(index)
        for dep, _ in sorted(stage_dependencies(plan, plan.stages[index]),
                             key=lambda d: d[0]):
            place(dep)
        order.append(plan.stages[index])

    for index in sorted(wanted):
        place(index)
    return order


# Build args Docker lets every RUN see without an ARG line, and never warns about.
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
              "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def unused_build_args(plan: BuildPlan, built: list[Stage]) -> list[str]:
    """The ``--build-arg`` names no ARG of the global scope or of a built stage declares."""
    declared = set(plan.global_names) | set(PROXY_ARGS)
    for stage in built:
        for inst in stage.instructions:
            if inst.kind == "ARG":
                declared.update(arg.partition("=")[0] for arg in inst.args)
    return sorted(name for name in plan.build_args if name not in declared)


def stage_references(inst: Instruction) -> list[str]:
    """The stage or image names an instruction reads from: ``COPY --from``, ``RUN --mount
    from=``; unexpanded."""
    refs: list[str] = []
    for flag in inst.flags:
        name, _, value = flag[2:].partition("=")
        if name == "from" and inst.kind in ("COPY", "ADD"):
            refs.append(value)
        elif name == "mount" and inst.kind == "RUN":
            for field_ in value.split(","):
                key, _, val = field_.partition("=")
                if key.strip().lower() == "from":
                    refs.append(val)
    return refs


def _check_mount_from(inst: Instruction) -> None:
    """``RUN --mount=from=$x`` is refused in every stage, used or not, as BuildKit's parser
    refuses it: ``from`` names a stage or an image as written, never through a variable."""
    if inst.kind != "RUN":
        return
    for flag in inst.flags:
        name, _, value = flag[2:].partition("=")
        if name != "mount":
            continue
        for field_ in next(csv.reader([value]), []):
            key, _, val = field_.partition("=")
            if key.lower() == "from" and "$" in val[:-1]:
                raise inst.error("'from' doesn't support variable expansion, define alias "
                                 "stage instead")


def _make_stage(inst: Instruction, index: int, body: tuple[Instruction, ...],
                earlier: list[Stage], scope: Mapping[str, str], escape: str) -> Stage:
    flags = inst.flag_values(("platform",))
    args = inst.args
    name: str | None = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _valid_stage_name(name):
            raise inst.error(f'invalid name for build stage: "{args[2]}", name can\'t start '
                             "with a number or contain symbols")
        if any(s.name == name for s in earlier):
            raise inst.error(f'duplicate stage name "{args[2]}"')
    elif len(args) != 1:
        raise inst.error("FROM requires either one or three arguments: FROM <image> "
                         "[AS <name>]")
    try:
        base = expand_word(args[0], scope, escape)
        platform = expand_word(flags["platform"], scope, escape) if "platform" in flags else None
    except ExpansionError as exc:
        raise inst.error(str(exc)) from None
    if not base:
        raise inst.error(f'base name ({args[0]}) should not be blank')
    if platform is not None:
        try:
            Platform.parse(platform)
        except ImageError as exc:
            raise inst.error(str(exc)) from None
    # FROM matches a stage name exactly as stored (lowercased): ``FROM Builder`` is an image
    # reference, as in BuildKit, where --from= and mount from= ignore case.
    base_stage = next((s.index for s in earlier if s.name == base), None)
    return Stage(index, name, base, base_stage, platform, body, inst.location)


def _valid_stage_name(name: str) -> bool:
    return bool(name) and name[0].isalpha() and all(c.isalnum() or c in "-_." for c in name)


def parse_arg(inst: Instruction, scope: Mapping[str, str],
              escape: str) -> list[tuple[str, str | None]]:
    """``ARG A=1 B`` as ``[("A", "1"), ("B", None)]``; defaults expanded in ``scope``.

    Names are taken as written, never expanded, and only a blank one is refused, as BuildKit
    does: ``ARG ${name}=value`` declares an ARG named ``${name}``.
    """
    out: list[tuple[str, str | None]] = []
    for arg in inst.args:
        name, eq, raw = arg.partition("=")
        if not name:
            raise inst.error("ARG names can not be blank")
        if not eq:
            out.append((name, None))
            continue
        try:
            out.append((name, expand_word(raw, scope, escape)))
        except ExpansionError as exc:
            raise inst.error(str(exc)) from None
    return out
