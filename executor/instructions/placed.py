"""RUN --mount without mount(2): each mount's content is put in place and taken away again.

In place, kiln is PID 1 of a pod's container: Docker's default capabilities, no CAP_SYS_ADMIN,
so no mount namespace and no mount. kiln then does what a mount would look like from inside:

- the target's own content, if the image has something there, is renamed aside (into the kiln
  dir, or, when that is another filesystem, to the top of the target's own filesystem, out of
  reach of a command that removes the target's parents) and renamed back afterwards, so it
  comes back exactly: same inodes, bytes, owners, modes and times. It always comes back, as
  from under a mount: over whatever is at the target then, and into parent directories made
  again if the command removed them (under a mount it could not have);
- a cache directory is renamed into place and back (when the kiln dir is on the root's
  filesystem: no copy, whatever the cache's size; copied when it is a volume); a bind's source
  is copied into place and the copy
  removed; a secret is written as a file and removed; a tmpfs is an empty directory, removed;
- mount points it had to create are removed again, and their parent's times restored.

Every step is written to a journal in the kiln dir *before* it is taken, and the journal shrinks
as steps are undone, so a build killed during a RUN and run again in the same container undoes
what is left first (:func:`recover`): the cache goes back to its store, a secret never stays, and
the image's own files return. Each step records the inode it placed or moved aside, and a
later build undoes a step only where that very inode still is: a kiln dir on a kept volume
outlives the container's root, and its journal must take nothing from the fresh root of a
restarted container (a rename only ever moves within one filesystem, so an aside found with its
recorded inode proves the filesystem is the one the journal was written for). What kiln makes
at a target is made under a name of its own and renamed there once journaled with its inode,
so a build killed at any point leaves nothing the journal cannot account for. Nothing of the
mounts is ever in a snapshot, which is taken after.

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
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
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
    """The undo steps of the placements in force, kept on disk in the kiln dir.

    Each step names the inode it acts on (``ino``): what kiln moved aside, made or put in
    place. A build that replays the journal of a killed one acts only on those very inodes,
    so a journal that outlived its root (a kiln dir on a kept volume, a container restarted
    with a fresh ``/``) takes nothing away from the root it finds instead.
    """

    path: Path
    steps: list[dict[str, str | int]] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)

    def add(self, step: dict[str, str | int]) -> None:
        self.steps.append(step)
        self._write()

    def undo_all(self, *, verify: bool = False) -> list[str]:
        """Undo every step, last first; the journal shrinks as it goes. Returns the paths
        (relative to ``/``) whose stat the undoing moved without changing them. A step that
        fails stays in the journal and raises PlacementError naming its target.

        ``verify`` (a journal another process wrote): a step whose path holds another inode
        than the one it recorded is not undone; its target is added to ``left_alone``."""
        touched: list[str] = []
        while self.steps:
            step = self.steps[-1]
            try:
                if verify and not _still_placed(step):
                    self.left_alone.append(_target_of(step))
                else:
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

    Only what is still exactly what that build placed is undone (:meth:`Journal.undo_all`);
    the rest of the journal is discarded with a warning that names it. Returns True when
    there was a journal.
    """
    path = kiln_dir / JOURNAL
    try:
        steps = json.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        raise PlacementError(f"cannot read {path}: {exc}") from None
    journal = Journal(path, _checked_steps(path, steps))
    if any(os.path.lexists(_path_of(step)) and _still_placed(step) for step in journal.steps):
        log.warning("Undoing the RUN --mount placements of an interrupted build (%s)", path)
    journal.undo_all(verify=True)
    if journal.left_alone:
        shown = ", ".join(dict.fromkeys(journal.left_alone))
        log.warning("Discarding RUN --mount journal %s for %s: what is there is not what the "
                    "interrupted build placed (the journal was written for another root "
                    "filesystem, as after a container restart with a kept kiln dir, or the "
                    "command replaced it); left alone", path, shown)
    return True


_KEYS = {"remove": ("path",), "rmdir": ("path",), "times": ("path", "atime", "mtime"),
         "move": ("from", "to"), "restore": ("from", "to")}


def _checked_steps(path: Path, steps: object) -> list[dict[str, str | int]]:
    """The steps of a journal read from disk, each with what its undoing needs."""
    if not isinstance(steps, list) or not all(
            isinstance(step, dict) and step.get("undo") in _KEYS
            and all(key in step for key in _KEYS[step["undo"]]) for step in steps):
        raise PlacementError(f"cannot read {path}: not a journal of RUN --mount steps")
    return steps


def _path_of(step: dict[str, str | int]) -> str:
    """The path a step's undoing acts on first: the one whose inode it recorded."""
    return str(step["from"] if step["undo"] in ("move", "restore") else step["path"])


def _still_placed(step: dict[str, str | int]) -> bool:
    """Whether undoing ``step`` can only touch what kiln placed: its path is empty (undoing
    is then a no-op), holds the very inode the step recorded, or has a name of that build's
    own (:func:`_made_in_place`). A step without an inode (a journal of an older kiln)
    cannot tell, and so acts on nothing that is there."""
    if step.get("unique"):
        return True
    try:
        info = os.lstat(_path_of(step))
    except FileNotFoundError:
        return True
    return "ino" in step and info.st_ino == step["ino"]


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
                 "mtime": info.st_mtime_ns, "target": target, "ino": info.st_ino})
    settled.append(os.path.relpath(holder, root))
    if os.path.lexists(point):
        _move_aside(root, kiln_dir / "mounts" / f"aside-{index}", index, point, journal,
                    placement, settled)
        settled.append(os.path.relpath(point, root))
    else:
        _make_parents(root, point, journal, target)
    try:
        _put(placement, point, journal)
    except OSError as exc:
        raise _error(placement, exc) from None
    return point


def _move_aside(root: Path, held: Path, index: int, point: Path, journal: Journal,
                placement: Placement, settled: list[str]) -> None:
    """Rename the image's own content at ``point`` out of the command's way, to ``held`` in
    the kiln dir, or, when that is another filesystem (a pod's volume), to the highest
    directory of ``point``'s own filesystem: the root's top, as a rule. Not beside the
    target: a command that removes the target's parent (``rm -rf /var/cache``, which a real
    mount would have stopped) would take the image's content with it."""
    ino = os.lstat(point).st_ino
    candidates = [held, *(directory / f".kiln-aside-{index}-{point.name}"
                          for directory in reversed(point.parents)
                          if directory.is_relative_to(root))]
    for aside in candidates:
        outside = aside.parent not in (held.parent, point.parent)
        if outside:  # the holder's times are journaled already
            info = os.lstat(aside.parent)
            journal.add({"undo": "times", "path": str(aside.parent), "atime": info.st_atime_ns,
                         "mtime": info.st_mtime_ns, "target": placement.target,
                         "ino": info.st_ino})
        _remove(aside)
        journal.add({"undo": "restore", "from": str(aside), "to": str(point),
                     "target": placement.target, "ino": ino})
        try:
            _rename(point, aside)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise PlacementError(f"RUN --mount target {placement.target} is a mount point "
                                     "of the container; kiln cannot move it aside") from None
            if exc.errno != errno.EXDEV or aside.parent == point.parent:
                raise _error(placement, exc) from None
            del journal.steps[-2 if outside else -1:]  # another filesystem: one level down
            continue
        if outside:
            settled.append(os.path.relpath(aside.parent, root))
        return


def _put(placement: Placement, point: Path, journal: Journal) -> None:
    target = placement.target
    if placement.how == "empty":
        _made_in_place(point, journal, {"undo": "remove", "path": str(point), "target": target},
                       _make_tmpfs)
        return
    assert placement.source is not None
    source = placement.source
    if placement.how == "copy":
        _made_in_place(point, journal, {"undo": "remove", "path": str(point), "target": target},
                       lambda made: copy_exact(source, made))
        return
    step: dict[str, str | int] = (
        {"undo": "move", "from": str(point), "to": str(source), "target": target}
        if placement.how == "cache" else {"undo": "remove", "path": str(point), "target": target})
    journal.add({**step, "ino": os.lstat(source).st_ino})  # a rename keeps the inode
    try:
        os.rename(source, point)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        journal.steps.pop()  # the kiln dir is another filesystem: a copy, a new inode
        _made_in_place(point, journal, step, lambda made: copy_exact(source, made))
        _remove(source)


def _made_in_place(point: Path, journal: Journal, step: dict[str, str | int],
                   make: Callable[[Path], None]) -> None:
    """Make ``point`` by ``make`` under a name of this build's own beside it, and rename it
    into place once ``step`` (its undoing) is journaled with its inode: so nothing is ever at
    ``point`` that the journal cannot prove kiln put there. The name's own step removes a
    half-made copy of a killed build; no other build or image can have that name."""
    made = point.parent / f".kiln-placing-{secrets.token_hex(8)}"
    journal.add({"undo": "remove", "path": str(made), "target": str(step["target"]),
                 "unique": 1})
    make(made)
    journal.add({**step, "ino": os.lstat(made).st_ino})
    os.rename(made, point)


def _make_tmpfs(path: Path) -> None:
    path.mkdir(mode=0o755)
    os.chmod(path, 0o1777)


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)


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
        _made_in_place(path, journal, {"undo": "rmdir", "path": str(path), "target": target},
                       _make_dir)


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
    """Rename; across filesystems, copy exactly under a name of its own beside ``dest``,
    rename that to ``dest`` and remove the source: ``dest`` is never half a copy (a cache
    going back to its store on a volume, when the build is killed during the copy)."""
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dest.parent / f".kiln-partial-{dest.name}"  # a killed build's goes now
        _remove(partial)
        try:
            copy_exact(source, partial)
        except BaseException:
            _remove(partial)
            raise
        os.rename(partial, dest)
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
