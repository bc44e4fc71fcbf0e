"""COPY (and ADD's local part): Docker's source and destination rules, owners and modes.

The rules BuildKit applies, in one place: a directory source copies its contents; several
sources need a destination ending in ``/``; a relative destination is under WORKDIR; files are
owned by root unless ``--chown`` says otherwise (kaniko #2921 kept the context's owners);
permission bits and mtimes come from the source unless ``--chmod`` (octal, or symbolic such as
``u+x,g-w``, applied to each file's own mode); parent directories that COPY creates get
``--chown``'s owner (kaniko #1524); symlinks inside a copied tree stay links.

``--parents`` keeps each source's path (below a ``/./`` pivot, if any) under the destination;
``--exclude`` leaves out paths matching a ``.dockerignore``-style pattern, matched against the
path relative to the context (or the ``--from`` root) and relative to the copied directory.

``--link``: BuildKit copies into an empty layer that is later laid over the image, so for a
single-platform build the result equals a plain COPY, except where the destination path passes
through a symlink in the image: BuildKit's layer then holds a real directory that replaces the
link when the image is unpacked (``COPY --link f /bin/`` on a usr-merged image replaces
``/bin -> usr/bin``). kiln refuses that case with an error instead of building a broken image,
and otherwise treats ``--link`` as COPY.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from executor.context import DockerIgnore
from executor.dockerfile.expand import ExpansionError, expand_word
from executor.dockerfile.parse import Instruction
from executor.errors import ContextError
from executor.instructions import archive
from executor.instructions.directories import make_directories
from executor.instructions.metadata import Step
from executor.instructions.state import StageState
from executor.passwd import UnknownUserError, lookup_group, lookup_user
from snapshot.errors import SnapshotError
from snapshot.filecopy import copy_data
from snapshot.rootpath import resolve_in_root

COPY_FLAGS = ("from", "chown", "chmod", "link", "parents", "exclude")


@dataclass(frozen=True)
class Chmod:
    """A ``--chmod`` value: octal bits, or symbolic clauses applied to each file's mode."""

    text: str
    octal: int | None
    clauses: tuple[tuple[str, str, str], ...] = ()  # (who, op, perms)

    @classmethod
    def parse(cls, text: str) -> Chmod:
        """Parse ``0755`` or ``u+x,g-w,o=r``; ValueError for anything else."""
        if re.fullmatch(r"[0-7]{1,4}", text):
            return cls(text, int(text, 8))
        clauses: list[tuple[str, str, str]] = []
        for clause in text.split(","):
            match = _CLAUSE.fullmatch(clause)
            if not match:
                raise ValueError(text)
            who = match.group(1) or "a"
            for op, perms in _ACTION.findall(match.group(2)):
                clauses.append((who, op, perms))
        return cls(text, None, tuple(clauses))

    def apply(self, mode: int, is_dir: bool) -> int:
        """The permission bits for a file whose current bits are ``mode``."""
        if self.octal is not None:
            return self.octal
        mode = stat.S_IMODE(mode)
        for who, op, perms in self.clauses:
            mask = 0
            for w in who:
                mask |= _WHO[w]
            bits = 0
            for p in perms:
                if p == "X":
                    if is_dir or mode & 0o111:
                        bits |= 0o111
                else:
                    bits |= _PERM[p]
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
        return mode


_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=][rwxXst]*)+)")
_ACTION = re.compile(r"([-+=])([rwxXst]*)")
_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}
_PERM = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}


@dataclass(frozen=True)
class Ownership:
    """Owner and mode applied to what COPY writes (chmod None: keep the source's bits)."""

    uid: int = 0
    gid: int = 0
    chmod: Chmod | None = None

    def mode_for(self, info: os.stat_result) -> int:
        if self.chmod is None:
            return stat.S_IMODE(info.st_mode)
        return self.chmod.apply(info.st_mode, stat.S_ISDIR(info.st_mode))


@dataclass(frozen=True)
class Source:
    """One thing to copy: a file or directory on this machine, and how to treat it.

    ``context_rel`` is the path in the build context (``.dockerignore`` applies below it), or
    None for other sources; ``keep_rel`` is the path ``--parents`` keeps under the
    destination; ``unpack`` is set for an ADD archive that is extracted, not copied.
    """

    host: Path
    rel: str
    context_rel: str | None = None
    keep_rel: str | None = None
    unpack: bool = False


@dataclass
class CopyRequest:
    """A COPY or ADD line with its words expanded and its flags read."""

    sources: list[str]
    dest: str
    owner: Ownership
    from_ref: str | None
    parents: bool
    link: bool
    excludes: DockerIgnore
    flags: dict[str, str] = field(default_factory=dict)


def read_request(state: StageState, inst: Instruction, allowed: tuple[str, ...]) -> CopyRequest:
    """Expand the words of a COPY/ADD line and check its flags."""
    flags = inst.flag_values(allowed, repeatable=("exclude",))
    args = [a if a.startswith("<<") else state.expand(inst, a) for a in inst.args]
    if len(args) < 2:
        raise inst.error(f"{inst.kind} requires at least two arguments, but got {len(args)}")
    *sources, dest_raw = args
    excludes = [state.expand(inst, value) for name, value in inst.flag_list(allowed)
                if name == "exclude"]
    return CopyRequest(
        sources=sources,
        dest=state.absolute(dest_raw),
        owner=_ownership(state, inst, flags),
        from_ref=state.expand(inst, flags["from"]) if "from" in flags else None,
        parents=_boolean(inst, flags, "parents"),
        link=_boolean(inst, flags, "link"),
        excludes=DockerIgnore.from_text("\n".join(excludes)),
        flags=flags,
    )


def _boolean(inst: Instruction, flags: dict[str, str], name: str) -> bool:
    value = flags.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise inst.error(f"invalid value {flags[name]!r} for --{name}: expected true or false")
    return value in ("true", "1")


def apply_copy(state: StageState, inst: Instruction) -> Step:
    request = read_request(state, inst, COPY_FLAGS)
    with tempfile.TemporaryDirectory(prefix="kiln-copy-", dir=state.scratch_dir) as scratch:
        found: list[Source] = []
        for source in request.sources:
            found.extend(collect_sources(state, inst, request, source, Path(scratch)))
        place_sources(state, inst, request, found)
    return Step(history_line(inst), touches_fs=True)


def history_line(inst: Instruction) -> str:
    return f"{inst.original.rstrip()} # buildkit".split("\n", 1)[0]


def place_sources(state: StageState, inst: Instruction, request: CopyRequest,
                  found: list[Source]) -> None:
    """Copy (or extract) every source to the destination, by Docker's rules."""
    dest = request.dest
    if (len(found) > 1 or request.parents) and not dest.endswith("/"):
        if len(found) > 1:
            raise inst.error(f"When using {inst.kind} with more than one source file, the "
                             "destination must be a directory and end with a /")
        dest += "/"
    if request.link:
        _check_link_destination(state, inst, dest)
    for source in found:
        target = dest
        if request.parents and source.keep_rel:
            keep = source.keep_rel
            if source.host.is_dir() and not source.host.is_symlink():
                target = dest.rstrip("/") + "/" + keep + "/"
            else:
                parent = posixpath.dirname(keep)
                target = dest.rstrip("/") + ("/" + parent if parent else "") + "/"
        try:
            if source.unpack:
                directory = _ensure_dir(state, target.rstrip("/") or "/", request.owner)
                archive.extract_archive(
                    source.host, directory,
                    archive.IgnoredBelow(state.ignore, state.root, directory))
            else:
                _copy_source(state, inst, request, source, target)
        except ContextError as exc:
            raise inst.error(str(exc)) from None


def _check_link_destination(state: StageState, inst: Instruction, dest: str) -> None:
    """``--link`` must not pass through a symlink of the image (see the module docstring)."""
    parts = [p for p in dest.split("/") if p]
    if not dest.endswith("/"):
        parts = parts[:-1]
    current = state.root
    for part in parts:
        current = current / part
        if current.is_symlink():
            shown = "/" + str(current.relative_to(state.root))
            raise inst.error(f"{inst.kind} --link: the destination passes through {shown}, a "
                             "symlink in the image; BuildKit would replace the link with a "
                             f"directory. Use {inst.kind} without --link")
        if not current.exists():
            return


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
    chmod = None
    if "chmod" in flags:
        text = state.expand(inst, flags["chmod"])
        try:
            chmod = Chmod.parse(text)
        except ValueError:
            raise inst.error(f'invalid --chmod value "{text}"') from None
    return Ownership(uid, gid, chmod)


def collect_sources(state: StageState, inst: Instruction, request: CopyRequest, source: str,
                    scratch: Path) -> list[Source]:
    """The files and directories one source word names (a heredoc, a --from path or glob, or
    a context path or glob)."""
    if source.startswith("<<"):
        heredocs = {h.name: h for h in inst.heredocs}
        name = source.lstrip("<-").strip("'\"")
        doc = heredocs.get(name)
        if doc is None:
            raise inst.error(f"heredoc {source} has no body")
        path = scratch / name
        content = doc.content
        if not any(q in source for q in "'\""):
            # BuildKit expands build variables in the body unless the delimiter is quoted.
            try:
                content = expand_word(content, state.expansion_env(), state.escape,
                                      process_quotes=False)
            except ExpansionError as exc:
                raise inst.error(f"heredoc {source}: {exc}") from None
        path.write_text(content)
        path.chmod(0o644)
        return [Source(path, name, keep_rel=name)]
    base, pattern = _pivot(source)
    if request.from_ref is not None:
        if state.source_root is None:
            raise inst.error(f"{inst.kind} --from is not available here")
        other = state.source_root(inst, request.from_ref)
        matches = _glob_in_root(other, pattern)
        if not matches:
            raise inst.error(f"{inst.kind} --from={request.from_ref}: {source}: no such file "
                             "or directory")
        return [Source(resolve_in_root(other, rel), rel,
                       keep_rel=_keep(rel, base)) for rel in matches
                if not _excluded(request, rel, None)]
    try:
        found = state.context.sources(pattern, str(inst.location))
    except ContextError as exc:
        raise inst.error(str(exc).split(": ", 1)[1]) from None
    return [Source(host, rel, context_rel=rel, keep_rel=_keep(rel, base))
            for rel, host in found if not _excluded(request, rel, None)]


def _pivot(source: str) -> tuple[str, str]:
    """``src/./pkg/x`` -> (``src``, ``src/pkg/x``): --parents keeps what follows the pivot."""
    if "/./" in source:
        base, rest = source.split("/./", 1)
        return posixpath.normpath(base.lstrip("/")) if base.strip("/") else "", \
            f"{base}/{rest}"
    return "", source


def _keep(rel: str, base: str) -> str:
    rel = posixpath.normpath(rel.lstrip("/"))
    if rel == ".":
        return ""
    if base and base != "." and (rel == base or rel.startswith(base + "/")):
        return rel[len(base):].lstrip("/")
    return rel


def _excluded(request: CopyRequest, rel: str, inner: str | None) -> bool:
    """--exclude: ``rel`` is context-relative; ``inner`` is relative to a copied directory."""
    if not request.excludes.patterns:
        return False
    rel = posixpath.normpath(rel.lstrip("/"))
    return request.excludes.excluded(rel) or (
        inner is not None and request.excludes.excluded(inner))


def _glob_in_root(root: Path, pattern: str) -> list[str]:
    """Paths under ``root`` matching ``pattern``, every symlink resolved inside ``root``."""
    parts = [p for p in posixpath.normpath("/" + pattern).split("/") if p]
    if not glob.has_magic(pattern):
        rel = "/".join(parts)
        return [rel] if os.path.lexists(resolve_in_root(root, rel)) else []
    current = [""]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following: list[str] = []
        for prefix in current:
            if not glob.has_magic(part):
                candidate = f"{prefix}/{part}" if prefix else part
                if os.path.lexists(resolve_in_root(root, candidate, follow_final=not last)):
                    following.append(candidate)
                continue
            directory = resolve_in_root(root, prefix)
            try:
                names = sorted(os.listdir(directory))
            except (NotADirectoryError, FileNotFoundError):
                continue
            following.extend(f"{prefix}/{n}" if prefix else n
                             for n in fnmatch.filter(names, part))
        current = following
    return current


def _copy_source(state: StageState, inst: Instruction, request: CopyRequest, source: Source,
                 dest: str) -> None:
    host = source.host
    info = os.stat(host)  # the named source itself is followed, as BuildKit follows it
    owner = request.owner
    if stat.S_ISDIR(info.st_mode):
        target = _ensure_dir(state, dest.rstrip("/") or "/", owner)
        _copy_tree(state, request, source, target)
        return
    into_dir = dest.endswith("/") or _is_dir_in_root(state, dest)
    path = (dest.rstrip("/") + "/" + host.name) if into_dir else dest
    parent, name = path.rsplit("/", 1)
    directory = _ensure_dir(state, parent or "/", owner)
    _copy_file(host, directory / name, info, owner)


def _is_dir_in_root(state: StageState, path: str) -> bool:
    try:
        return resolve_in_root(state.root, path).is_dir()
    except SnapshotError:
        return False


def _ensure_dir(state: StageState, path: str, owner: Ownership) -> Path:
    """The host directory for image path ``path``, creating missing parents like BuildKit."""
    target = resolve_in_root(state.root, path)
    make_directories(target, owner.uid, owner.gid, root=state.root, replace_file=True)
    return target


def _copy_tree(state: StageState, request: CopyRequest, source: Source, dst: Path) -> None:
    """Copy the contents of ``source`` into the directory ``dst`` (not following symlinks).

    ``dst`` itself keeps its metadata (kaniko #550 changed /tmp's mode on ``COPY dir /tmp``);
    directory metadata is applied last, so copying children does not disturb their mtimes.
    """
    owner = request.owner
    src = source.host
    context_rel = source.context_rel
    directories: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        base = Path(dirpath)
        rel_dir = base.relative_to(src)
        out_dir = dst / rel_dir
        for name in sorted(dirnames + filenames):
            rel = (rel_dir / name).as_posix()
            skip = (context_rel is not None
                    and state.context.ignore.excluded(_context_path(context_rel, rel)))
            if not skip and request.excludes.patterns:
                skip = _excluded(request, _context_path(source.rel, rel), rel)
            entry = base / name
            if skip:
                if name in dirnames and not (
                        context_rel is not None and state.context.ignore.reincludes_below(
                            _context_path(context_rel, rel))):
                    dirnames.remove(name)
                continue  # an excluded directory that is entered is itself not copied
            info = os.lstat(entry)
            target = out_dir / name
            if not out_dir.is_dir():
                # The parents of a file re-included below an excluded directory, as
                # extracting Docker's context tar would make them.
                make_directories(out_dir, owner.uid, owner.gid, root=state.root)
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
    return rel if context_rel in ("", ".") else f"{context_rel.strip('/')}/{rel}"


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
            copy_data(reader.fileno(), writer.fileno())  # in the kernel, not through Python
    else:
        raise ContextError(f"{src.name}: cannot copy a special file (device, FIFO or socket)")
    _apply_metadata(target, info, owner)


def _apply_metadata(target: Path, info: os.stat_result, owner: Ownership) -> None:
    os.lchown(target, owner.uid, owner.gid)
    if not stat.S_ISLNK(info.st_mode):
        # chown clears setuid bits, so the mode goes on after it.
        os.chmod(target, owner.mode_for(info))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
