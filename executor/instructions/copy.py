"""COPY (and ADD's local part): Docker's source and destination rules, owners and modes.

The rules BuildKit applies, in one place (each checked against BuildKit v0.32):

- a directory source copies its contents; several sources need a destination ending in ``/``;
  a relative destination is under WORKDIR; a source that is a symlink is followed, and the copy
  keeps the name the source was given (``COPY --from=t /link /d/`` writes ``/d/link``);
- a wildcard that matches nothing is skipped, though its directory must exist; a COPY fails
  for a missing source that is not a wildcard (a COPY whose only source is a wildcard matching
  nothing copies nothing). BuildKit sends only the context paths some COPY names, so there a
  wildcard's directory holding nothing any COPY matches is missing too; kiln sees the whole
  context and copies nothing instead of failing;
- owners: from the build context everything is root's (kaniko #2921 kept the context's
  owners); ``--from`` a stage or an image keeps each file's owner and group (moby#38599,
  kaniko #1806); ``--chown`` overrides both, and also owns every directory the COPY creates
  on the way to its destination (kaniko #1524);
- modes and mtimes come from the source unless ``--chmod`` (octal, or symbolic such as
  ``u+x,g-w`` applied to each file's own mode); an octal ``--chmod`` gives the directories it
  creates that mode too (tonistiigi/fsutil#228);
- hard links inside one copied directory stay hard links (from the context and from
  ``--from``); symlinks inside a copied tree stay links; FIFOs and device nodes are copied as
  nodes;
- ``--from`` copies extended attributes (``security.capability`` survives in Docker's image);
  context files' attributes are not sent with the build context, so they are not copied;
- a copied directory never merges through a non-directory of the image, nor a file or link
  replace a directory of the image: both fail, as in Docker ("cannot copy to non-directory",
  moby/buildkit#2626), as does a file standing where a destination directory must be created.

``--parents`` keeps each source's path (below a ``/./`` pivot, if any) under the destination;
``--exclude`` leaves out paths matching a ``.dockerignore``-style pattern, matched against the
path relative to the context (or the ``--from`` root) and relative to the copied directory.

``--link`` (without ``--chmod``): BuildKit copies onto an empty tree and lays that layer over the
image, so every directory on the way to the destination is in the layer as if just created
(root's, or ``--chown``'s, mode 0755) and replaces the metadata below; a file copied to a path
without a trailing ``/`` replaces a directory standing there; nothing of the image is merged
through. kiln does the same, except where the destination passes through a symlink of the
image: BuildKit's layer then holds a real directory that replaces the link (``COPY --link f
/bin/`` on a usr-merged image replaces ``/bin -> usr/bin``), and kiln refuses with an error
instead of building that broken image. With ``--chmod``, BuildKit's ``--link`` gives what a
plain COPY gives, and so does kiln.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import posixpath
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from executor.context import DockerIgnore, IgnorePattern, wildcard_directory
from executor.dockerfile.expand import ExpansionError, expand_word
from executor.dockerfile.parse import Instruction, strip_heredoc_tabs
from executor.errors import ContextError
from executor.instructions import archive
from executor.instructions.directories import NotADirectory, make_directories, remove_path
from executor.instructions.metadata import Step
from executor.instructions.state import StageState
from executor.passwd import UnknownUserError, owner_ids
from executor.patterns import PatternError
from snapshot.errors import SnapshotError, storage_errors
from snapshot.filecopy import copy_data
from snapshot.rootpath import resolve_in_root

log = logging.getLogger("kiln")

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
    """Owner and mode applied to what COPY writes (chmod None: keep the source's bits).

    ``keep_source_owner``: COPY --from without --chown, where every file keeps its own owner
    and only the directories the COPY creates are root's.
    """

    uid: int = 0
    gid: int = 0
    chmod: Chmod | None = None
    keep_source_owner: bool = False

    def ids_for(self, info: os.stat_result) -> tuple[int, int]:
        if self.keep_source_owner:
            return info.st_uid, info.st_gid
        return self.uid, self.gid

    def mode_for(self, info: os.stat_result) -> int:
        if self.chmod is None:
            return stat.S_IMODE(info.st_mode)
        return self.chmod.apply(info.st_mode, stat.S_ISDIR(info.st_mode))

    @property
    def created_dir_mode(self) -> int:
        """The mode of a directory the COPY creates: 0755, or an octal --chmod's bits."""
        if self.chmod is not None and self.chmod.octal is not None:
            return self.chmod.octal
        return 0o755


@dataclass(frozen=True)
class Placement:
    """How one COPY writes: owners and modes, xattrs (``--from`` only), and ``fresh`` for
    ``--link`` without ``--chmod`` (as if on an empty tree: replace, never merge)."""

    owner: Ownership
    xattrs: bool = False
    fresh: bool = False


class CopyConflict(Exception):
    """What a COPY would write meets something of the image it must not replace."""


@dataclass(frozen=True)
class Source:
    """One thing to copy: a file or directory on this machine, and how to treat it.

    ``context_rel`` is the path in the build context (``.dockerignore`` applies below it), or
    None for other sources; ``keep_rel`` is the path ``--parents`` keeps under the
    destination; ``unpack`` is set for an ADD archive that is extracted, not copied;
    ``origin`` is the directory ``rel`` is relative to (the context, or a ``--from`` root).
    """

    host: Path
    rel: str
    context_rel: str | None = None
    keep_rel: str | None = None
    unpack: bool = False
    origin: Path | None = None


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
        excludes=_exclude_patterns(inst, excludes),
        flags=flags,
    )


def _exclude_patterns(inst: Instruction, values: list[str]) -> DockerIgnore:
    """The ``--exclude`` values, each one ``.dockerignore`` pattern; a bad one names itself."""
    found: list[IgnorePattern] = []
    for value in values:
        try:
            pattern = IgnorePattern.parse(value)
        except PatternError as exc:
            raise inst.error(f"invalid --exclude pattern {value!r}: {exc}") from None
        if pattern is not None:
            found.append(pattern)
    return DockerIgnore(tuple(found))


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
        written = place_sources(state, inst, request, found)
    return Step(history_line(inst), touches_fs=True, written=written_paths(state, written))


def written_paths(state: StageState, written: list[Path]) -> tuple[str, ...] | None:
    """``Step.written`` for the host paths a COPY or ADD wrote: relative to the root (None
    if one is not under it, which would be a mistake, and the full snapshot then covers)."""
    out = []
    for path in written:
        try:
            out.append(path.relative_to(state.root).as_posix())
        except ValueError:
            return None
    return tuple(out)


def history_line(inst: Instruction) -> str:
    return f"{inst.original.rstrip()} # buildkit".split("\n", 1)[0]


def place_sources(state: StageState, inst: Instruction, request: CopyRequest,
                  found: list[Source]) -> list[Path]:
    """Copy (or extract) every source to the destination, by Docker's rules; return the host
    paths at or under which it wrote (:attr:`Step.written`): besides them it changed only the
    directories above them (created, or entries added) and other names of hard links."""
    dest = request.dest
    if (len(found) > 1 or request.parents) and not dest.endswith("/"):
        if len(found) > 1:
            raise inst.error(f"When using {inst.kind} with more than one source file, the "
                             "destination must be a directory and end with a /")
        dest += "/"
    placement = Placement(request.owner, xattrs=request.from_ref is not None,
                          fresh=request.link and request.owner.chmod is None)
    if placement.fresh:
        _check_link_destination(state, inst, dest)
    written: list[Path] = []
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
                directory = _ensure_dir(state, target.rstrip("/") or "/", placement)
                written.append(directory)
                _extract(state, inst, source.host, directory)
            else:
                written += _copy_source(state, request, placement, source, target)
                if request.parents and source.keep_rel and source.origin is not None:
                    _copy_kept_directories(state, placement, source, dest)
        except ContextError as exc:
            raise inst.error(str(exc)) from None
        except (CopyConflict, SnapshotError) as exc:
            raise inst.error(str(exc)) from None
        except NotADirectory as exc:
            raise inst.error(f"cannot copy to non-directory: {_shown(state, exc.path)}") \
                from None
    return _under_destination(state, dest, written) if request.parents else written


def _under_destination(state: StageState, dest: str, written: list[Path]) -> list[Path]:
    """``--parents``: each written path as the child of the destination it is under. The
    kept paths of many sources have many parents but few of those, and the snapshot walks a
    few wide paths faster than many narrow ones in many places."""
    try:
        base = resolve_in_root(state.root, dest.rstrip("/") or "/")
    except SnapshotError:
        return written
    out = []
    for path in written:
        try:
            parts = path.relative_to(base).parts
        except ValueError:
            parts = ()
        out.append(base / parts[0] if parts else path)
    return out


def _copy_kept_directories(state: StageState, placement: Placement, source: Source,
                           dest: str) -> None:
    """``--parents``: the directories of the kept path are copies of the source's own
    directories (owner, mode), as BuildKit copies them, not directories it creates. Those above
    the source keep the time their new entries gave them: BuildKit copies their metadata
    before their contents; a directory source itself takes its times too, set after."""
    assert source.origin is not None and source.keep_rel is not None
    rel = posixpath.normpath(source.rel.lstrip("/"))
    keep = source.keep_rel
    prefix = rel[:len(rel) - len(keep)]
    parts = keep.split("/")
    count = len(parts) if source.host.is_dir() else len(parts) - 1
    for index in range(count, 0, -1):  # deepest first: a parent's mtime is set after its child
        sub = "/".join(parts[:index])
        origin_dir = resolve_in_root(source.origin, prefix + sub)
        target = resolve_in_root(state.root, dest.rstrip("/") + "/" + sub)
        if origin_dir.is_dir() and target.is_dir() and not target.is_symlink():
            _apply_metadata(target, origin_dir, os.stat(origin_dir), placement,
                            times=index == len(parts))


def _shown(state: StageState, host: Path) -> str:
    """The image path of ``host``, a path under the root, for messages."""
    return "/" + host.relative_to(state.root).as_posix()


def _extract(state: StageState, inst: Instruction, archive_path: Path, directory: Path) -> None:
    """ADD's extraction of a local archive; entries the ignore list kept out are reported.

    The ignore list holds the build container's mount points and kiln's own directory: in
    place they cannot (or must not) be written, so an archive entry there is left out, and
    the user is told in one line rather than finding the file missing from the image.
    """
    try:
        skipped = archive.extract_archive(
            archive_path, directory, archive.IgnoredBelow(state.ignore, state.root, directory))
    except SnapshotError as exc:
        raise inst.error(f"{inst.kind}: {exc}") from None
    if skipped:
        prefix = os.path.relpath(directory, state.root)
        shown = ["/" + (f"{prefix}/{name}" if prefix != "." else name) for name in skipped]
        more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
        log.warning("%s: %s %s: not written: %s%s (under a mount point of the build "
                    "container or an ignored path, which kiln never writes)", inst.location,
                    inst.kind, archive_path.name, shown[0], more)


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
        try:
            uid, gid = owner_ids(state.root, state.expand(inst, flags["chown"]))
        except UnknownUserError as exc:
            raise inst.error(str(exc)) from None
    chmod = None
    if "chmod" in flags:
        text = state.expand(inst, flags["chmod"])
        try:
            chmod = Chmod.parse(text)
        except ValueError:
            raise inst.error(f'invalid --chmod value "{text}"') from None
    return Ownership(uid, gid, chmod,
                     keep_source_owner="from" in flags and "chown" not in flags)


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
        if source.startswith("<<-"):
            content = strip_heredoc_tabs(content)  # before expansion, as BuildKit's parser
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
        if not matches and not glob.has_magic(pattern):
            raise inst.error(f"{inst.kind} --from={request.from_ref}: {source}: no such file "
                             "or directory")
        prefix = wildcard_directory(pattern)
        if not matches and prefix and not resolve_in_root(other, prefix).is_dir():
            raise inst.error(f"{inst.kind} --from={request.from_ref}: {source}: /{prefix}: no "
                             "such directory")
        return [Source(resolve_in_root(other, rel), rel, keep_rel=_keep(rel, base),
                       origin=other) for rel in matches
                if not _excluded(request, rel, None)]
    try:
        found = state.context.sources(pattern, str(inst.location))
    except ContextError as exc:
        raise inst.error(str(exc).split(": ", 1)[1]) from None
    return [Source(host, rel, context_rel=rel, keep_rel=_keep(rel, base),
                   origin=state.context.root)
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


def _copy_source(state: StageState, request: CopyRequest, placement: Placement,
                 source: Source, dest: str) -> list[Path]:
    """Copy one source; return the host paths at or under which it wrote (resolved)."""
    host = source.host
    info = os.stat(host)  # the named source itself is followed, as BuildKit follows it
    if stat.S_ISDIR(info.st_mode):
        existed = _is_dir_in_root(state, dest.rstrip("/") or "/")
        target = _ensure_dir(state, dest.rstrip("/") or "/", placement)
        _copy_tree(state, request, placement, source, target)
        names = os.listdir(host)
        # Into a directory that was there (the root, /usr/bin): only the names copied; it
        # is one of the directories above them. One just made, or nothing copied: itself.
        return [target / name for name in names] if existed and names else [target]
    # On an empty tree (--link) a path without a trailing slash is the file's own name.
    into_dir = dest.endswith("/") or (not placement.fresh and _is_dir_in_root(state, dest))
    name = posixpath.basename(source.rel.rstrip("/")) or host.name  # the name as given
    path = (dest.rstrip("/") + "/" + name) if into_dir else dest
    parent, name = path.rsplit("/", 1)
    directory = _ensure_dir(state, parent or "/", placement)
    target = directory / name
    if target.is_symlink() and not placement.fresh:
        # The destination named is a link of the image: written through, the link kept
        # (a dangling link's target is created), as BuildKit writes it.
        target = resolve_in_root(state.root, path)
        _ensure_dir(state, _shown(state, target.parent), placement)
    if placement.fresh and target.is_dir() and not target.is_symlink():
        log.warning("%s is a directory in the image; COPY --link writes the file in its "
                    "place, as Docker does (end the destination with / to copy into it)",
                    _shown(state, target))
    _copy_file(state, host, target, info, placement)
    return [target]


def _is_dir_in_root(state: StageState, path: str) -> bool:
    try:
        return resolve_in_root(state.root, path).is_dir()
    except SnapshotError:
        return False


def _ensure_dir(state: StageState, path: str, placement: Placement) -> Path:
    """The host directory for image path ``path``, creating missing parents like BuildKit.

    Created directories are ``--chown``'s (root's without it) with mode 0755 or an octal
    ``--chmod``'s. On an empty tree (``--link``) every directory on the way is as if created,
    and a file standing in the way is replaced.
    """
    owner = placement.owner
    target = resolve_in_root(state.root, path)
    make_directories(target, owner.uid, owner.gid, root=state.root,
                     mode=owner.created_dir_mode, replace=placement.fresh)
    if placement.fresh:
        directory = state.root
        for part in target.relative_to(state.root).parts:
            directory = directory / part
            os.lchown(directory, owner.uid, owner.gid)
            os.chmod(directory, owner.created_dir_mode)
    return target


def _copy_tree(state: StageState, request: CopyRequest, placement: Placement, source: Source,
               dst: Path) -> None:
    """Copy the contents of ``source`` into the directory ``dst`` (not following symlinks).

    ``dst`` itself keeps its metadata (kaniko #550 changed /tmp's mode on ``COPY dir /tmp``);
    directory metadata is applied last, so copying children does not disturb their mtimes.
    Files that are hard links of each other in the source are hard links in the copy.
    """
    src = source.host
    context_rel = source.context_rel
    directories: list[tuple[Path, os.stat_result]] = []
    linked: dict[tuple[int, int], Path] = {}
    made: set[Path] = set()
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
            if rel_dir.parts and out_dir not in made:
                # The parents of a file re-included below an excluded directory, as
                # extracting Docker's context tar would make them; never through a link.
                _make_reincluded_parents(state, dst, rel_dir, placement)
                made.add(out_dir)
            if stat.S_ISDIR(info.st_mode):
                _make_tree_dir(state, target, placement)
                directories.append((target, info))
                continue
            key = (info.st_dev, info.st_ino)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1 and key in linked:
                _clear_for_file(state, target, placement)
                os.link(linked[key], target)
                continue
            _copy_file(state, entry, target, info, placement)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                linked[key] = target
    for target, info in reversed(directories):
        _apply_metadata(target, src / target.relative_to(dst), info, placement)
    # The destination keeps its owner and mode, but takes the source directory's times, new
    # or not, as BuildKit's copy gives them (COPY dir /tmp/ gives /tmp the mtime of dir).
    top = os.stat(src)
    os.utime(dst, ns=(top.st_atime_ns, top.st_mtime_ns), follow_symlinks=False)


def _make_reincluded_parents(state: StageState, dst: Path, rel_dir: Path,
                             placement: Placement) -> None:
    """Each directory from ``dst`` down to ``dst/rel_dir`` as :func:`_make_tree_dir` makes
    one: an excluded directory is not copied, so nothing else stops an image symlink there
    (``pkg -> /etc``) from taking the re-included file out of the root."""
    owner = placement.owner
    directory = dst
    for part in rel_dir.parts:
        directory = directory / part
        if os.path.lexists(directory) and (directory.is_symlink() or not directory.is_dir()):
            _make_tree_dir(state, directory, placement)  # refused, or replaced on --link
        elif not os.path.lexists(directory):
            make_directories(directory, owner.uid, owner.gid, root=state.root)


def _make_tree_dir(state: StageState, target: Path, placement: Placement) -> None:
    """A directory of a copied tree: merged into an existing directory, never through a
    file or link of the image (on an empty tree, ``--link``, that file or link goes)."""
    if os.path.lexists(target) and (target.is_symlink() or not target.is_dir()):
        if not placement.fresh:
            kind = "a symlink" if target.is_symlink() else "a file"
            raise CopyConflict(f"cannot copy to non-directory: {_shown(state, target)} "
                               f"({kind} in the image)")
        target.unlink()
    if not os.path.lexists(target):
        target.mkdir()


def _clear_for_file(state: StageState, target: Path, placement: Placement) -> None:
    """Make room for a file or link at ``target``: a directory of the image is never
    replaced by one (except on an empty tree, ``--link``)."""
    if not os.path.lexists(target):
        return
    if target.is_dir() and not target.is_symlink() and not placement.fresh:
        raise CopyConflict(f"cannot replace directory {_shown(state, target)} with a file "
                           "or link")
    remove_path(target)


def _context_path(context_rel: str, rel: str) -> str:
    return rel if context_rel in ("", ".") else f"{context_rel.strip('/')}/{rel}"


def _copy_file(state: StageState, src: Path, target: Path, info: os.stat_result,
               placement: Placement) -> None:
    if _already_there(src, target, info, placement):
        return
    _clear_for_file(state, target, placement)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(src), target)
    elif stat.S_ISREG(info.st_mode):
        with storage_errors(target, "copy to"), open(src, "rb") as reader, \
                open(target, "xb") as writer:
            copy_data(reader.fileno(), writer.fileno())  # in the kernel, not through Python
    elif stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        os.mknod(target, info.st_mode, info.st_rdev)  # copied as the node it is, as BuildKit
    else:
        raise ContextError(f"{src.name}: cannot copy a socket")
    _apply_metadata(target, src, info, placement)


def _already_there(src: Path, target: Path, info: os.stat_result, placement: Placement) -> bool:
    """Whether ``target`` is already the regular file the copy would make: same content, owner,
    mode, size and mtime to the nanosecond (a file an earlier COPY brought, copied again by
    ``COPY . .``). It is then left alone, so the layer does not hold it twice: BuildKit's differ
    leaves such a file out (it compares metadata and mtimes; kiln compares content too)."""
    if not stat.S_ISREG(info.st_mode) or placement.xattrs:
        return False
    try:
        there = os.lstat(target)
    except OSError:
        return False
    if not stat.S_ISREG(there.st_mode) or (
            there.st_size, there.st_mtime_ns, (there.st_uid, there.st_gid),
            stat.S_IMODE(there.st_mode)) != (
            info.st_size, info.st_mtime_ns, placement.owner.ids_for(info),
            placement.owner.mode_for(info)):
        return False
    with open(src, "rb") as a, open(target, "rb") as b:
        while chunk := a.read(1 << 20):
            if chunk != b.read(len(chunk)):
                return False
    return True


def _apply_metadata(target: Path, src: Path, info: os.stat_result,
                    placement: Placement, *, times: bool = True) -> None:
    owner = placement.owner
    os.lchown(target, *owner.ids_for(info))
    if not stat.S_ISLNK(info.st_mode):
        # chown clears setuid bits, so the mode goes on after it.
        os.chmod(target, owner.mode_for(info))
    if placement.xattrs:
        _copy_xattrs(src, target)  # after chown, which drops security.capability
    if times:
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(src: Path, target: Path) -> None:
    """Copy the extended attributes this process may set (trusted.* needs CAP_SYS_ADMIN;
    links take no user.* attributes)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            os.setxattr(target, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError:
            continue
