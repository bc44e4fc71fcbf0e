"""COPY and ADD of local files: Docker's source and destination rules, owners and modes.

The rules BuildKit applies, in one place: a directory source copies its contents; several
sources need a destination ending in ``/``; a relative destination is under WORKDIR; files are
owned by root unless ``--chown`` says otherwise (kaniko #2921 kept the context's owners);
permission bits and mtimes come from the source unless ``--chmod``; parent directories that
COPY creates get ``--chown``'s owner (kaniko #1524); symlinks inside a copied tree stay links.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from executor.dockerfile.parse import Instruction
from executor.errors import ContextError
from executor.instructions.metadata import Step
from executor.instructions.state import StageState
from executor.passwd import UnknownUserError, lookup_group, lookup_user
from snapshot.rootpath import resolve_in_root

_COPY_FLAGS = ("from", "chown", "chmod", "link", "parents", "exclude")
_NOT_YET = ("link", "parents", "exclude")


@dataclass(frozen=True)
class Ownership:
    """Owner and mode applied to what COPY writes (None: keep the default / the source's)."""

    uid: int = 0
    gid: int = 0
    chmod: int | None = None


def apply_copy(state: StageState, inst: Instruction) -> Step:
    flags = inst.flag_values(_COPY_FLAGS)
    for name in _NOT_YET:
        if name in flags:
            raise inst.error(f"{inst.kind} --{name} is not supported yet")
    args = [a if a.startswith("<<") else state.expand(inst, a) for a in inst.args]
    if len(args) < 2:
        raise inst.error(f"{inst.kind} requires at least two arguments, but got {len(args)}")
    *sources, dest_raw = args
    owner = _ownership(state, inst, flags)
    dest = state.absolute(dest_raw)
    with tempfile.TemporaryDirectory(prefix="kiln-heredoc-") as scratch:
        found = _collect_sources(state, inst, flags, sources, Path(scratch))
        if len(found) > 1 and not dest.endswith("/"):
            raise inst.error(f"When using {inst.kind} with more than one source file, the "
                             "destination must be a directory and end with a /")
        for rel, host, check_ignore in found:
            _copy_source(state, rel if check_ignore else None, host, dest, owner)
    return Step(f"{inst.original.rstrip()} # buildkit".split("\n", 1)[0], touches_fs=True)


def apply_add(state: StageState, inst: Instruction) -> Step:
    """ADD of local files and directories; URLs and archive extraction come later."""
    flags = inst.flag_values((*_COPY_FLAGS, "checksum", "keep-git-dir", "unpack"))
    for arg in inst.args[:-1]:
        value = state.expand(inst, arg)
        if "://" in value or value.startswith("git@"):
            raise inst.error(f"ADD from a URL ({value}) is not supported yet")
        if not flags.get("from") and _is_archive(state, value):
            raise inst.error(f"ADD of the archive {value} (auto-extraction) is not supported "
                             "yet; use COPY and RUN tar")
    for name in ("checksum", "keep-git-dir", "unpack"):
        if name in flags:
            raise inst.error(f"ADD --{name} is not supported yet")
    return apply_copy(state, inst)


def _is_archive(state: StageState, source: str) -> bool:
    path = state.context.root / source.lstrip("/")
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(262)
    return (head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
            or head[:4] == b"\x28\xb5\x2f\xfd" or head[257:262] == b"ustar")


def _ownership(state: StageState, inst: Instruction, flags: dict[str, str]) -> Ownership:
    uid = gid = 0
    if "chown" in flags:
        spec = state.expand(inst, flags["chown"])
        user, _, group = spec.partition(":")
        try:
            if user.isdigit():
                uid = int(user)
            else:
                entry = lookup_user(state.root, user)
                if entry is None:
                    raise inst.error(f"unable to find user {user}: no matching entries in "
                                     "passwd file")
                uid, gid = entry.uid, entry.gid
            if group:
                gid = lookup_group(state.root, group)
            elif user.isdigit():
                gid = uid
        except UnknownUserError as exc:
            raise inst.error(str(exc)) from None
    mode = None
    if "chmod" in flags:
        try:
            mode = int(flags["chmod"], 8)
        except ValueError:
            raise inst.error(f"invalid --chmod value {flags['chmod']!r}: expected octal "
                             "permissions such as 0755") from None
        if mode > 0o7777:
            raise inst.error(f"invalid --chmod value {flags['chmod']!r}")
    return Ownership(uid, gid, mode)


def _collect_sources(state: StageState, inst: Instruction, flags: dict[str, str],
                     sources: list[str], scratch: Path) -> list[tuple[str, Path, bool]]:
    """(relative path, host path, apply .dockerignore below it) for every source."""
    heredocs = {h.name: h for h in inst.heredocs}
    found: list[tuple[str, Path, bool]] = []
    for source in sources:
        if source.startswith("<<"):
            name = source.lstrip("<-").strip("'\"")
            doc = heredocs.get(name)
            if doc is None:
                raise inst.error(f"heredoc {source} has no body")
            path = scratch / name
            path.write_text(doc.content)
            path.chmod(0o644)
            found.append((name, path, False))
        elif "from" in flags:
            if state.source_root is None:
                raise inst.error("COPY --from is not available here")
            other = state.source_root(inst, state.expand(inst, flags["from"]))
            host = resolve_in_root(other, source)
            if not os.path.lexists(host):
                raise inst.error(f"COPY --from={flags['from']}: {source}: no such file or "
                                 "directory")
            found.append((source, host, False))
        else:
            try:
                found.extend((rel, host, True) for rel, host in
                             state.context.sources(source, str(inst.location)))
            except ContextError as exc:
                raise inst.error(str(exc).split(": ", 1)[1]) from None
    return found


def _copy_source(state: StageState, context_rel: str | None, host: Path, dest: str,
                 owner: Ownership) -> None:
    info = os.stat(host)  # the named source itself is followed, as BuildKit follows it
    if stat.S_ISDIR(info.st_mode):
        target = _ensure_dir(state, dest.rstrip("/") or "/", owner)
        _copy_tree(state, context_rel, host, target, owner)
        return
    into_dir = dest.endswith("/") or resolve_in_root(state.root, dest).is_dir()
    path = (dest.rstrip("/") + "/" + host.name) if into_dir else dest
    parent, name = path.rsplit("/", 1)
    directory = _ensure_dir(state, parent or "/", owner)
    _copy_file(host, directory / name, info, owner)


def _ensure_dir(state: StageState, path: str, owner: Ownership) -> Path:
    """The host directory for image path ``path``, creating missing parents like BuildKit."""
    target = resolve_in_root(state.root, path)
    missing: list[Path] = []
    probe = target
    while not os.path.lexists(probe) and probe != state.root:
        missing.append(probe)
        probe = probe.parent
    if os.path.lexists(probe) and not probe.is_dir():
        probe.unlink()
        missing.append(probe)
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        os.lchown(directory, owner.uid, owner.gid)
    return target


def _copy_tree(state: StageState, context_rel: str | None, src: Path, dst: Path,
               owner: Ownership) -> None:
    """Copy the contents of ``src`` into the directory ``dst`` (not following symlinks).

    ``dst`` itself keeps its metadata (kaniko #550 changed /tmp's mode on ``COPY dir /tmp``);
    directory metadata is applied last, so copying children does not disturb their mtimes.
    """
    directories: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        base = Path(dirpath)
        rel_dir = base.relative_to(src)
        out_dir = dst / rel_dir
        for name in sorted(dirnames + filenames):
            rel = (rel_dir / name).as_posix()
            if context_rel is not None and state.context.ignore.excluded(
                    _context_path(context_rel, rel)):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            entry = base / name
            info = os.lstat(entry)
            target = out_dir / name
            if stat.S_ISDIR(info.st_mode):
                if os.path.lexists(target) and not target.is_dir():
                    target.unlink()
                if not os.path.lexists(target):
                    target.mkdir()
                directories.append((target, info))
            else:
                _copy_file(entry, target, info, owner)
    for target, info in reversed(directories):
        _apply_metadata(target, info, owner)


def _context_path(context_rel: str, rel: str) -> str:
    return rel if context_rel in ("", ".") else f"{context_rel}/{rel}"


def _copy_file(src: Path, target: Path, info: os.stat_result, owner: Ownership) -> None:
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(src), target)
    elif stat.S_ISREG(info.st_mode):
        with open(src, "rb") as reader, open(target, "xb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
    else:
        raise ContextError(f"{src}: cannot copy a special file (device, FIFO or socket)")
    _apply_metadata(target, info, owner)


def _apply_metadata(target: Path, info: os.stat_result, owner: Ownership) -> None:
    os.lchown(target, owner.uid, owner.gid)
    if not stat.S_ISLNK(info.st_mode):
        # chown clears setuid bits, so the mode goes on after it.
        os.chmod(target, owner.chmod if owner.chmod is not None else stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
