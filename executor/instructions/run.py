"""RUN: execute a command in the filesystem being built, as BuildKit would.

Shell form runs under SHELL (``/bin/sh -c``); exec form runs argv as written, found on the
image's PATH; heredocs follow BuildKit's three cases. The environment is the image's ENV plus
the ARGs in scope; the user and groups come from the image's passwd and group files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile

from executor.dockerfile.parse import Instruction
from executor.dockerfile.stages import PROXY_ARGS
from executor.errors import BuildStepError
from executor.instructions.directories import NotADirectory, make_directories
from executor.instructions.metadata import Step
from executor.instructions.mounts import MountSpec, parse_mount, prepared_mounts
from executor.instructions.state import DEFAULT_PATH, StageState
from executor.namespaces import can_isolate_network, can_mount
from executor.passwd import UnknownUserError, resolve_identity
from executor.sandbox import Identity
from snapshot.rootpath import resolve_in_root

log = logging.getLogger("kiln")

_HEREDOC_ONLY = re.compile(r"^<<(-?)(['\"]?)([A-Za-z0-9_]+)\2$")


def apply_run(state: StageState, inst: Instruction) -> Step:
    """Run the command; a non-zero exit fails the build at the instruction's line."""
    flags = inst.flag_values(("mount", "network", "security"), repeatable=("mount",))
    network = state.expand(inst, flags.get("network", "default"))
    if network not in ("default", "none", "host"):
        raise inst.error(f'unsupported network mode "{network}": expected default, none or '
                         "host")
    security = state.expand(inst, flags.get("security", "sandbox"))
    if security != "sandbox":
        raise inst.error(f"RUN --security={security}: kiln does not grant insecure "
                         "entitlements" if security == "insecure" else
                         f"RUN --security={security}: expected sandbox or insecure")
    specs = mount_specs(state, inst)
    network = _network_in_place(state, network)
    # In a pod (no CAP_SYS_ADMIN) mounts are emulated by placing their content (placed.py).
    emulate = bool(specs) and state.sandbox.in_place and not can_mount()
    argv, script = _command(state, inst)
    env = _environment(state)
    user = str(state.config.container.get("User") or "")
    try:
        identity = resolve_identity(state.root, user)
    except UnknownUserError as exc:
        raise inst.error(str(exc)) from None
    env.setdefault("HOME", identity.home)
    _ensure_workdir(state, inst, identity)
    if script is not None:
        argv = _with_script(state, script)
    log.info("Cmd: %s", argv[0])
    log.info("Args: [%s]", " ".join(argv[1:]))
    log.info("Running: [%s]", " ".join(argv))
    try:
        with prepared_mounts(state, inst, specs, emulate=emulate) as mounts:
            env.update(mounts.env)
            code = state.sandbox.run(argv, env=env, cwd=state.workdir, identity=identity,
                                     mounts=mounts.mounts, network=network)
        settled = tuple(mounts.settled)
    except FileNotFoundError:
        raise inst.error(f"RUN: executable file not found: {argv[0]}") from None
    except OSError as exc:
        raise inst.error(f"RUN could not start {argv[0]}: {exc.strerror or exc}") from None
    except subprocess.SubprocessError:
        needs = "RUN --mount" if specs else "RUN --network=none"
        raise inst.error(f"{needs}: could not set up the command's namespaces (in place, kiln "
                         "needs CAP_SYS_ADMIN for them)") from None
    finally:
        if script is not None:
            _remove_script(state, argv[0])
    if code != 0:
        raise BuildStepError(str(inst.location), f"RUN exited with code {code}",
                             exit_code=code if 0 < code < 256 else 1)
    return Step(_history(state, inst, argv if script is None else []), touches_fs=True,
                settled=(*settled, *state.sandbox.settled_paths()))


def _network_in_place(state: StageState, network: str) -> str:
    """``--network=none`` in a pod that forbids a network namespace runs with the pod's
    network, with one warning: it only changes hermeticity, never what the build means."""
    if network != "none" or not state.sandbox.in_place or can_isolate_network():
        return network
    log.warning("RUN --network=none: this container may not create a network namespace (no "
                "CAP_SYS_ADMIN); the command runs with the container's network")
    return "default"


def mount_specs(state: StageState, inst: Instruction) -> list[MountSpec]:
    """The RUN's ``--mount`` values, expanded and parsed; a bad one fails at its line."""
    specs = []
    for name, value in inst.flag_list(("mount", "network", "security")):
        if name == "mount":
            try:
                specs.append(parse_mount(state.expand(inst, value), state.workdir))
            except ValueError as exc:
                raise inst.error(str(exc)) from None
    return specs


def _command(state: StageState, inst: Instruction) -> tuple[list[str], str | None]:
    """argv to run, and the body of a ``#!`` heredoc that must be run as a file."""
    if inst.json:
        if not inst.args:
            raise inst.error("RUN requires a command")
        return list(inst.args), None
    text = " ".join(inst.args)
    if inst.heredocs:
        match = _HEREDOC_ONLY.match(text.strip())
        if match and len(inst.heredocs) == 1:
            body = inst.heredocs[0].content
            if match.group(1) == "-":
                body = _strip_tabs(body)
            if body.startswith("#!"):
                return [], body
            return [*state.shell, body], None
        # Anything else (``cat <<EOF > f``, several heredocs): the shell reads the heredocs.
        text = inst.original.split(None, 1)[1] if " " in inst.original else text
        text = _drop_flags(text, inst.flags)
    return [*state.shell, text], None


def _strip_tabs(body: str) -> str:
    return "".join(line.lstrip("\t") for line in body.splitlines(keepends=True))


def _drop_flags(text: str, flags: tuple[str, ...]) -> str:
    for flag in flags:
        text = text.replace(flag, "", 1)
    return text.lstrip()


def _ensure_workdir(state: StageState, inst: Instruction, identity: Identity) -> None:
    """Create the working directory if an earlier step removed it, as BuildKit's executor
    does before every RUN: it and its missing parents, mode 0755, owned by the RUN's user."""
    target = resolve_in_root(state.root, state.workdir)
    if not os.path.lexists(target):
        try:
            make_directories(target, identity.uid, identity.gid, root=state.root)
        except NotADirectory as exc:
            shown = "/" + exc.path.relative_to(state.root).as_posix()
            raise inst.error(f"cannot create the working directory {state.workdir}: {shown} "
                             "is not a directory") from None


def _environment(state: StageState) -> dict[str, str]:
    """ENV over ARGs (as for expansion), over the proxy build args, which need no ARG line.

    No HOSTNAME: BuildKit's RUN environment has none (Docker's containers get one at run time).
    """
    env = {name: state.plan.build_args[name] for name in PROXY_ARGS
           if name in state.plan.build_args}
    env.update(state.expansion_env())
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _with_script(state: StageState, body: str) -> list[str]:
    """Write a ``#!`` heredoc to a temporary file in the root and run that file."""
    fd, path = tempfile.mkstemp(prefix=".kiln-heredoc-", dir=state.root)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.chmod(path, 0o755)
    return ["/" + os.path.basename(path)]


def _remove_script(state: StageState, inner_path: str) -> None:
    if inner_path.startswith("/.kiln-heredoc-"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state.root, inner_path.lstrip("/")))


def _history(state: StageState, inst: Instruction, argv: list[str]) -> str:
    """BuildKit's created_by: ``RUN |N K=V ... /bin/sh -c cmd # buildkit`` (N build args)."""
    used = {k: v for k, v in state.args.items() if state.config.env_value(k) is None}
    prefix = ""
    if used:
        prefix = f"|{len(used)} " + " ".join(f"{k}={v}" for k, v in sorted(used.items())) + " "
    shown = " ".join(argv) if argv else _drop_flags(inst.original.split(None, 1)[1],
                                                       inst.flags)
    return f"RUN {prefix}{shown} # buildkit"
