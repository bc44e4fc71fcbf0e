"""Instructions that change the image config: ENV, ARG, LABEL, WORKDIR, USER, CMD, ENTRYPOINT,
EXPOSE, SHELL, STOPSIGNAL, VOLUME, HEALTHCHECK, ONBUILD, MAINTAINER.

Each follows BuildKit's dispatcher: what is expanded, how shell form is wrapped in SHELL, which
history line it leaves. Only WORKDIR touches the filesystem (it creates the directory).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from executor.dockerfile.parse import Instruction
from executor.dockerfile.stages import parse_arg
from executor.durations import parse_duration_ns
from executor.instructions.directories import make_directories
from executor.instructions.state import StageState
from executor.passwd import UnknownUserError, resolve_identity
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


def apply_env(state: StageState, inst: Instruction) -> Step:
    pairs = _pairs(inst)
    env = state.expansion_env()  # every value sees the environment from before this ENV
    shown = []
    for key, raw in pairs:
        value = state.expand(inst, raw, env)
        state.config.set_env(state.expand(inst, key, env), value)
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
    return Step(None)


def apply_workdir(state: StageState, inst: Instruction) -> Step:
    path = state.absolute(state.expand(inst, inst.args[0])).rstrip("/") or "/"
    state.config.container["WorkingDir"] = path
    target = resolve_in_root(state.root, path)
    created = not target.exists()
    if created:
        _make_dirs(state, inst, target)
    return Step(f"WORKDIR {path}", touches_fs=created)


def _make_dirs(state: StageState, inst: Instruction, target: Path) -> None:
    """Create WORKDIR's directory owned by the current USER, as BuildKit does."""
    user = str(state.config.container.get("User") or "")
    uid = gid = 0
    if user:
        try:
            ident = resolve_identity(state.root, user)
        except UnknownUserError as exc:
            raise inst.error(str(exc)) from None
        uid, gid = ident.uid, ident.gid
    make_directories(target, uid, gid, root=state.root)


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
    names = list(inst.args) if inst.json else [
        word for arg in inst.args for word in state.expand_words(inst, arg)]
    for name in names:
        if not name.strip():
            raise inst.error("VOLUME specified can not be an empty string")
        volumes[name] = {}
    state.config.container["Volumes"] = volumes
    return Step(f"VOLUME {json.dumps(names)}")


def apply_onbuild(state: StageState, inst: Instruction) -> Step:
    trigger = inst.original.split(None, 1)[1] if " " in inst.original else ""
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
    flags = inst.flag_values(("interval", "timeout", "start-period", "start-interval",
                              "retries"))
    kind = inst.args[0].upper() if inst.args else ""
    if kind == "NONE":
        if len(inst.args) > 1 or flags:
            raise inst.error("HEALTHCHECK NONE takes no arguments")
        state.config.container["Healthcheck"] = {"Test": ["NONE"]}
        return Step("HEALTHCHECK NONE")
    if kind != "CMD" or len(inst.args) < 2:
        raise inst.error("HEALTHCHECK requires CMD or NONE (HEALTHCHECK [OPTIONS] CMD command)")
    test = ["CMD", *inst.args[1:]] if inst.json else ["CMD-SHELL", " ".join(inst.args[1:])]
    check: dict[str, object] = {"Test": test}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if flag in flags:
            check[key] = _duration_ns(inst, flag, flags[flag])
    if "retries" in flags:
        if not flags["retries"].isdigit():
            raise inst.error(f"invalid --retries: {flags['retries']}")
        check["Retries"] = int(flags["retries"])
    state.config.container["Healthcheck"] = check
    return Step(f"HEALTHCHECK {json.dumps(check)}")


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
