"""Instructions that change the image config: ENV, ARG, LABEL, WORKDIR, USER, CMD, ENTRYPOINT,
EXPOSE, SHELL, STOPSIGNAL, VOLUME, HEALTHCHECK, ONBUILD, MAINTAINER.

Each follows BuildKit's dispatcher: what is expanded, how shell form is wrapped in SHELL, which
history line it leaves. Only WORKDIR touches the filesystem (it creates the directory).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from executor.dockerfile.parse import Instruction, onbuild_trigger
from executor.dockerfile.stages import parse_arg
from executor.durations import parse_duration_ns
from executor.instructions.directories import NotADirectory, make_directories
from executor.instructions.state import StageState, clean_path
from executor.passwd import file_owner
from snapshot.rootpath import resolve_in_root


@dataclass(frozen=True)
class Step:
    """What an instruction did: its history line (None: no history) and if the FS may differ."""

    history: str | None
    touches_fs: bool = False
    # Paths (relative to the root) whose stat the step moved without changing them: a RUN
    # --mount's target and parents, renamed aside and back. A ctime-only difference there is
    # not a change for the layer.
    settled: tuple[str, ...] = ()
    # Paths (relative to the root, reached through real directories) at or under which the
    # step wrote everything it wrote, for a step that ran no process (COPY, ADD): the snapshot
    # then walks only these (snapshot.take_partial_snapshot). None: not known, walk it all.
    written: tuple[str, ...] | None = None


def apply_env(state: StageState, inst: Instruction) -> Step:
    pairs = _pairs(inst)
    env = state.expansion_env()  # every value sees the environment from before this ENV
    shown = []
    for key, raw in pairs:
        value = state.expand(inst, raw, env)
        name = state.expand(inst, key, env)
        state.config.set_env(name, value)
        state.args_over_env.discard(name)
        shown.append(f"{key}={value}")
    return Step("ENV " + " ".join(shown))


def apply_label(state: StageState, inst: Instruction) -> Step:
    labels = dict(state.config.container.get("Labels") or {})
    shown = []
    for key, raw in _pairs(inst):
        name, value = state.expand(inst, key), state.expand(inst, raw)
        labels[name] = value
        shown.append(f"{name}={value}")
    state.config.container["Labels"] = labels
    return Step("LABEL " + " ".join(shown))


def apply_maintainer(state: StageState, inst: Instruction) -> Step:
    state.config.data["author"] = " ".join(inst.args)
    return Step("MAINTAINER " + " ".join(inst.args))


def apply_arg(state: StageState, inst: Instruction) -> Step:
    """Bring an ARG into scope: its build-arg value, else its default, else the global one."""
    for name, default in parse_arg(inst, state.expansion_env(), state.escape):
        if name in state.plan.build_args:
            state.args[name] = state.plan.build_args[name]
        elif default is not None:
            state.args[name] = default
        elif name in state.plan.global_args:
            state.args[name] = state.plan.global_args[name]
        elif name in state.plan.predefined:
            state.args[name] = state.plan.predefined[name]
        else:
            continue
        state.args_over_env.add(name)
    return Step(None)


def workdir_value(current: str, path: str) -> str:
    """WORKDIR's value in the config, as BuildKit's ``NormalizeWorkdir`` makes it.

    An absolute path is kept as written, trailing slash and all (``WORKDIR /tmp/`` gives
    ``/tmp/``); a relative one is joined to the current directory and cleaned; an empty one
    (a variable that expanded to nothing) leaves the current directory as it is.
    """
    if path.startswith("/"):
        return path
    if not path:
        return current or "/"
    return clean_path(posixpath.join(clean_path(current or "/"), path))


def apply_workdir(state: StageState, inst: Instruction) -> Step:
    current = str(state.config.container.get("WorkingDir") or "")
    path = workdir_value(current, state.expand(inst, inst.args[0]))
    state.config.container["WorkingDir"] = path
    target = resolve_in_root(state.root, clean_path(path))
    if not target.exists():
        _make_dirs(state, inst, target)
    # BuildKit commits a layer for every WORKDIR but "/" (as written), an empty one if the
    # directory exists.
    return Step(f"WORKDIR {path}", touches_fs=path != "/")


def _make_dirs(state: StageState, inst: Instruction, target: Path) -> None:
    """Create WORKDIR's directory owned by the current USER, as BuildKit does (a file in
    the way fails, as BuildKit's mkdir does)."""
    uid, gid = file_owner(state.root, str(state.config.container.get("User") or ""))
    try:
        make_directories(target, uid, gid, root=state.root)
    except NotADirectory as exc:
        shown = "/" + exc.path.relative_to(state.root).as_posix()
        raise inst.error(f"WORKDIR {inst.args[0]}: {shown} is not a directory") from None


def apply_user(state: StageState, inst: Instruction) -> Step:
    user = state.expand(inst, inst.args[0])
    state.config.container["User"] = user
    return Step(f"USER {user}")


def _command(state: StageState, inst: Instruction) -> list[str]:
    """Exec form as written; shell form wrapped in SHELL (``/bin/sh -c``)."""
    if inst.json:
        return list(inst.args)
    return [*state.shell, " ".join(inst.args)]


def apply_cmd(state: StageState, inst: Instruction) -> Step:
    cmd = _command(state, inst)
    state.config.container["Cmd"] = cmd
    state.cmd_set = True
    return Step(f"CMD {json.dumps(cmd)}")


def apply_entrypoint(state: StageState, inst: Instruction) -> Step:
    entrypoint = _command(state, inst)
    state.config.container["Entrypoint"] = entrypoint
    if not state.cmd_set:
        # An inherited CMD was written for the old entrypoint (Dockerfile reference).
        state.config.container["Cmd"] = None
    return Step(f"ENTRYPOINT {json.dumps(entrypoint)}")


_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(\w+))?$")


def apply_expose(state: StageState, inst: Instruction) -> Step:
    ports = dict(state.config.container.get("ExposedPorts") or {})
    added = []
    for arg in inst.args:
        for spec in state.expand_words(inst, arg):
            match = _PORT.match(spec)
            if not match:
                raise inst.error(f"invalid containerPort: {spec}")
            start = int(match.group(1))
            end = int(match.group(2) or start)
            proto = (match.group(3) or "tcp").lower()
            if proto not in ("tcp", "udp", "sctp"):
                raise inst.error(f"invalid proto: {match.group(3)}")
            if end < start or end > 65535:
                raise inst.error(f"invalid port range: {spec}")
            for port in range(start, end + 1):
                ports[f"{port}/{proto}"] = {}
                added.append(f"{port}/{proto}")
    state.config.container["ExposedPorts"] = ports
    return Step("EXPOSE " + " ".join(f"map[{p}:{{}}]" for p in added))


def apply_shell(state: StageState, inst: Instruction) -> Step:
    if not inst.json:
        raise inst.error("SHELL requires the arguments to be in JSON form")
    state.config.container["Shell"] = list(inst.args)
    return Step(f"SHELL {json.dumps(list(inst.args))}")


def apply_stopsignal(state: StageState, inst: Instruction) -> Step:
    signal = state.expand(inst, inst.args[0])
    if not _valid_signal(signal):
        raise inst.error(f"invalid signal: {signal}")
    state.config.container["StopSignal"] = signal
    return Step(f"STOPSIGNAL {signal}")


# Linux signal names as moby's signal.SignalMap knows them (without the SIG prefix).
_SIGNALS = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    "XFSZ", "RTMIN", "RTMAX"})


def _valid_signal(text: str) -> bool:
    """A signal number, or a name (``SIGTERM``, ``TERM``, ``RTMIN+3``) as Docker parses it."""
    if text.isdigit():
        return 0 < int(text) <= 64
    name = text.upper().removeprefix("SIG")
    match = re.fullmatch(r"(RTMIN\+|RTMAX-)(\d+)", name)
    if match:
        return 1 <= int(match.group(2)) <= 15
    return name in _SIGNALS


def apply_volume(state: StageState, inst: Instruction) -> Step:
    volumes = dict(state.config.container.get("Volumes") or {})
    # BuildKit expands each word alone, JSON form too, and never splits what it expanded to.
    names = [state.expand(inst, arg) for arg in inst.args]
    for name in names:
        if not name.strip():
            raise inst.error("VOLUME specified can not be an empty string")
        volumes[name] = {}
    state.config.container["Volumes"] = volumes
    return Step(f"VOLUME {json.dumps(names)}")


def apply_onbuild(state: StageState, inst: Instruction) -> Step:
    trigger = onbuild_trigger(inst)
    if inst.sub_kind in ("ONBUILD", "FROM", "MAINTAINER"):
        raise inst.error(f"{inst.sub_kind} isn't allowed as an ONBUILD trigger")
    onbuild = list(state.config.container.get("OnBuild") or [])
    onbuild.append(trigger)
    state.config.container["OnBuild"] = onbuild
    return Step(f"ONBUILD {trigger}")


def _duration_ns(inst: Instruction, flag: str, text: str) -> int:
    try:
        return parse_duration_ns(text)
    except ValueError:
        raise inst.error(f"invalid duration for --{flag}: {text}") from None


def apply_healthcheck(state: StageState, inst: Instruction) -> Step:
    check = healthcheck_config(inst)
    state.config.container["Healthcheck"] = check
    if check == {"Test": ["NONE"]}:
        return Step("HEALTHCHECK NONE")
    return Step(f"HEALTHCHECK {json.dumps(check)}")


#: Docker's shortest healthcheck duration; anything shorter but zero is refused, as BuildKit does.
_MINIMUM_HEALTHCHECK_NS = 1_000_000


def healthcheck_config(inst: Instruction) -> dict[str, object]:
    """The config's ``Healthcheck`` for a HEALTHCHECK instruction.

    Zero is "not set" in Docker's config (its fields are omitempty): a flag given as zero
    leaves its field out, as BuildKit writes it.
    """
    flags = inst.flag_values(("interval", "timeout", "start-period", "start-interval",
                              "retries"))
    kind = inst.args[0].upper() if inst.args else ""
    if kind == "NONE":
        if len(inst.args) > 1 or flags:
            raise inst.error("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD" or len(inst.args) < 2:
        raise inst.error("HEALTHCHECK requires CMD or NONE (HEALTHCHECK [OPTIONS] CMD command)")
    test = ["CMD", *inst.args[1:]] if inst.json else ["CMD-SHELL", " ".join(inst.args[1:])]
    check: dict[str, object] = {"Test": test}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if flag in flags and (value := _duration_ns(inst, flag, flags[flag])):
            if value < _MINIMUM_HEALTHCHECK_NS:
                raise inst.error(f'Interval "{flag}" cannot be less than 1ms')
            check[key] = value
    if "retries" in flags:
        if not flags["retries"].isdigit():
            raise inst.error(f"invalid --retries: {flags['retries']}")
        if retries := int(flags["retries"]):
            check["Retries"] = retries
    return check


def _pairs(inst: Instruction) -> list[tuple[str, str]]:
    """``KEY VALUE`` pairs as the parser split them (it normalises both ENV forms)."""
    args = list(inst.args)
    if len(args) % 2:
        raise inst.error(f"{inst.kind} requires KEY=VALUE pairs")
    pairs = list(zip(args[0::2], args[1::2], strict=True))
    for key, _ in pairs:
        if not key:
            raise inst.error(f"{inst.kind} names must not be empty")
    return pairs
