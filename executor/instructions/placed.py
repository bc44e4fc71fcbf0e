"""RUN --mount without mount(2): each mount's content is put in place and taken away again.

In place, kiln is PID 1 of a pod's container: Docker's default capabilities, no CAP_SYS_ADMIN,
so no mount namespace and no mount. kiln then does what a mount would look like from inside:

- the target's own content, if the image has something there, is renamed aside (into the kiln
  dir, or beside the target when that is another filesystem) and renamed back afterwards, so it
  comes back exactly: same inodes, bytes, owners, modes and times. It always comes back, as
  from under a mount: over whatever is at the target then, and into parent directories made
  again if the command removed them (under a mount it could not have);
- a cache directory is renamed into place and back (the kiln dir is on the root filesystem, so a
  rename: no copy, whatever the cache's size); a bind's source is copied into place and the copy
  removed; a secret is written as a file and removed; a tmpfs is an empty directory, removed;
- mount points it had to create are removed again, and their parent's times restored.

Every step is written to a journal in the kiln dir *before* it is taken, and the journal shrinks
as steps are undone, so a build killed during a RUN and run again in the same container undoes
what is left first (:func:`recover`): the cache goes back to its store, a secret never stays, and
the image's own files return. Nothing of the mounts is ever in a snapshot, which is taken after.

Weaker than a mount (the README says so): the content is really at the target while the command
runs (another process of the same container sees it), and a read-only bind is a copy that root
may write to; the writes are discarded and reported, not refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from executor.errors import KilnError
from snapshot.errors import SnapshotError
from snapshot.rootpath import resolve_in_root

log = logging.getLogger("kiln")

JOURNAL = "mounts/journal.json"


class PlacementError(KilnError):
    """A mount could not be put in place, or a killed build's journal cannot be read; the
    message names the target (or the journal) and the cause."""


@dataclass(frozen=True)
class Placement:
    """What to put at ``target`` (a path in the image) for one command.

    ``how``: ``"cache"`` renames ``source`` (a cache directory) in and back; ``"owned"`` renames
    ``source`` (a scratch file or directory kiln made for this RUN) in and deletes it after;
    ``"copy"`` copies ``source`` in (owners kept) and deletes the copy after; ``"empty"`` makes
    an empty directory (mode 1777, as a tmpfs). ``readonly``: writes are reported as discarded.
    """

    target: str
    how: str
    source: Path | None = None
    readonly: bool = False


@dataclass
class Journal:
    """The undo steps of the placements in force, kept on disk in the kiln dir."""

    path: Path
    steps: list[dict[str, str | int]] = field(default_factory=list)

    def add(self, step: dict[str, str | int]) -> None:
        self.steps.append(step)
        self._write()

    def undo_all(self) -> list[str]:
        """Undo every step, last first; the journal shrinks as it goes. Returns the paths
        (relative to ``/``) whose stat the undoing moved without changing them. A step that
        fails stays in the journal and raises PlacementError naming its target."""
        touched: list[str] = []
        while self.steps:
            step = self.steps[-1]
            try:
                touched.extend(_undo(step))
                self.steps.pop()
                self._write()
            except OSError as exc:
                raise PlacementError(f"RUN --mount: undoing the mount of {_target_of(step)}: "
                                     f"{exc.strerror or exc}") from None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return touched

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        with open(temp, "w") as handle:
            json.dump(self.steps, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)


def recover(kiln_dir: Path) -> bool:
    """Undo what a killed build left in place (secrets, caches, moved-aside files).

    Returns True when there was something to undo.
    """
    path = kiln_dir / JOURNAL
    try:
        steps = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise PlacementError(f"cannot read {path}: {exc}") from None
    log.warning("Undoing the RUN --mount placements of an interrupted build (%s)", path)
    Journal(path, list(steps)).undo_all()
    return True


@contextlib.contextmanager
def placed(root: Path, kiln_dir: Path, placements: list[Placement],
           settled: list[str]) -> Iterator[None]:
    """Put ``placements`` in place (outer targets first) for the block; undone afterwards,
    whether the block fails or not. Paths the placing touched (stat moved, content restored)
    are appended to ``settled``, relative to ``root``."""
    journal = Journal(kiln_dir / JOURNAL)
    if journal.path.exists():
        recover(kiln_dir)
    fingerprints: list[tuple[Placement, Path, dict[str, tuple[int, ...]]]] = []
    try:
        for index, placement in enumerate(sorted(placements,
                                                 key=lambda p: p.target.count("/"))):
            point = _place(root, kiln_dir, index, placement, journal, settled)
            if placement.readonly:
                fingerprints.append((placement, point, _fingerprint(point)))
        yield
        for placement, point, before in fingerprints:
            if _fingerprint(point) != before:
                log.warning("RUN --mount target %s is read-only, but the command changed it; "
                            "the changes were discarded", placement.target)
    finally:
        touched = journal.undo_all()
        settled.extend(os.path.relpath(p, root) for p in touched
                       if p == str(root) or p.startswith(str(root).rstrip("/") + "/"))


def _place(root: Path, kiln_dir: Path, index: int, placement: Placement, journal: Journal,
           settled: list[str]) -> Path:
    try:
        point = resolve_in_root(root, placement.target)
    except SnapshotError as exc:
        raise PlacementError(f"RUN --mount target {placement.target}: {exc}") from None
    if point == root:
        raise PlacementError("RUN --mount: cannot mount over /")
    kiln_real = os.path.realpath(kiln_dir)
    if os.path.realpath(point) == kiln_real or os.path.realpath(point).startswith(
            kiln_real + "/"):
        raise PlacementError(f"RUN --mount target {placement.target} is inside kiln's own "
                             f"directory {kiln_dir}")
    if kiln_real.startswith(os.path.realpath(point).rstrip("/") + "/"):
        # Moved aside, the target would take kiln's directory (its journal, caches) with it.
        raise PlacementError(f"RUN --mount target {placement.target} holds kiln's own "
                             f"directory {kiln_dir}")
    target = placement.target
    holder = _existing_ancestor(point)
    info = os.lstat(holder)
    journal.add({"undo": "times", "path": str(holder), "atime": info.st_atime_ns,
                 "mtime": info.st_mtime_ns, "target": target})
    settled.append(os.path.relpath(holder, root))
    if os.path.lexists(point):
        aside = kiln_dir / "mounts" / f"aside-{index}"
        _remove(aside)
        journal.add({"undo": "restore", "from": str(aside), "to": str(point), "target": target})
        try:
            _rename(point, aside)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EBUSY):
                raise _error(placement, exc) from None
            if exc.errno == errno.EBUSY:
                raise PlacementError(f"RUN --mount target {placement.target} is a mount point "
                                     "of the container; kiln cannot move it aside") from None
            # The target is on another filesystem than the kiln dir: hold it beside itself.
            journal.steps.pop()
            aside = point.parent / f".kiln-aside-{index}-{point.name}"
            _remove(aside)
            journal.add({"undo": "restore", "from": str(aside), "to": str(point),
                         "target": target})
            _rename(point, aside)
        settled.append(os.path.relpath(point, root))
    else:
        _make_parents(root, point, journal, target)
    try:
        _put(placement, point, journal)
    except OSError as exc:
        raise _error(placement, exc) from None
    return point


def _put(placement: Placement, point: Path, journal: Journal) -> None:
    target = placement.target
    if placement.how == "cache":
        assert placement.source is not None
        journal.add({"undo": "move", "from": str(point), "to": str(placement.source),
                     "target": target})
        _move(placement.source, point)
        return
    journal.add({"undo": "remove", "path": str(point), "target": target})
    if placement.how == "empty":
        point.mkdir(mode=0o755)
        os.chmod(point, 0o1777)
    elif placement.how == "owned":
        assert placement.source is not None
        _move(placement.source, point)
    else:
        assert placement.source is not None
        copy_exact(placement.source, point)


def _existing_ancestor(point: Path) -> Path:
    probe = point.parent
    while not os.path.lexists(probe):
        probe = probe.parent
    return probe


def _make_parents(root: Path, point: Path, journal: Journal, target: str) -> None:
    missing = []
    probe = point.parent
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir() or probe.is_symlink():
        raise PlacementError(f"RUN --mount target /{point.relative_to(root)}: "
                             f"/{probe.relative_to(root)} is not a directory")
    for path in reversed(missing):
        journal.add({"undo": "rmdir", "path": str(path), "target": target})
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)


def _undo(step: dict[str, str | int]) -> list[str]:
    """Undo one journal step; safe to repeat and safe when the step was never taken."""
    kind = step["undo"]
    if kind == "remove":
        _remove(Path(str(step["path"])))
    elif kind == "rmdir":
        with contextlib.suppress(OSError):
            os.rmdir(str(step["path"]))
    elif kind == "times":
        with contextlib.suppress(OSError):
            os.utime(str(step["path"]), ns=(int(step["atime"]), int(step["mtime"])),
                     follow_symlinks=False)
        return [str(step["path"])]
    elif kind == "move":
        source, dest = Path(str(step["from"])), Path(str(step["to"]))
        if not os.path.lexists(source):
            return []
        if os.path.lexists(dest):
            # A cache whose store was made again meanwhile: the store wins.
            _remove(source)
            return []
        _move(source, dest)
        return [str(dest)]
    elif kind == "restore":
        return _restore(Path(str(step["from"])), Path(str(step["to"])))
    return []


def _restore(aside: Path, point: Path) -> list[str]:
    """Put the image's own content back at ``point``, as it comes out from under a mount:
    over whatever is there, and into the parent directories if the command removed them."""
    if not os.path.lexists(aside):
        return []
    _remove(point)
    missing = []
    probe = point.parent
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if not stat.S_ISDIR(os.lstat(probe).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(probe))
    for path in reversed(missing):
        path.mkdir(mode=0o755)
    _move(aside, point)
    return [str(point)]


def _target_of(step: dict[str, str | int]) -> str:
    """The mount target a journal step serves (a journal of an older kiln: its host path)."""
    return str(step.get("target") or step.get("to") or step.get("path"))


def _rename(source: Path, dest: Path) -> None:
    os.rename(source, dest)


def _move(source: Path, dest: Path) -> None:
    """Rename; across filesystems, copy exactly and remove the source."""
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_exact(source, dest)
        _remove(source)


def _remove(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def copy_exact(source: Path, dest: Path) -> None:
    """Copy a file or tree with modes, times and owners (what a bind mount would show)."""
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, dest, symlinks=True)
        for directory, dirs, files in os.walk(source):
            rel = os.path.relpath(directory, source)
            for name in (".", *dirs, *files):
                src = os.path.normpath(os.path.join(directory, name))
                dst = os.path.normpath(os.path.join(dest, rel, name))
                info = os.lstat(src)
                os.lchown(dst, info.st_uid, info.st_gid)
                if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                    os.chmod(dst, stat.S_IMODE(info.st_mode))  # after chown, which drops suid
        shutil.copystat(source, dest)
    else:
        shutil.copy2(source, dest, follow_symlinks=True)
        info = os.stat(source)
        os.chown(dest, info.st_uid, info.st_gid)
        os.chmod(dest, stat.S_IMODE(info.st_mode))


def _fingerprint(point: Path) -> dict[str, tuple[int, ...]]:
    """Each path under ``point`` with its stat: enough to tell that a command wrote there."""
    found: dict[str, tuple[int, ...]] = {}
    for path in _tree(point):
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_uid, info.st_gid, info.st_size,
                           info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    return found


def _tree(point: Path) -> Iterator[str]:
    yield str(point)
    if os.path.isdir(point) and not os.path.islink(point):
        for directory, dirs, files in os.walk(point):
            for name in (*dirs, *files):
                yield os.path.join(directory, name)


def _error(placement: Placement, exc: OSError) -> PlacementError:
    return PlacementError(f"RUN --mount target {placement.target}: {exc.strerror or exc}")
