"""Snapshots of the root and the changes between two of them: stat first, exact always.

Kaniko re-reads every byte of the filesystem after each step, or trusts mtimes and loses changes.
kiln compares what ``lstat`` says and nothing else: an entry changed when any field differs, and
``ctime``, which every write, chmod, chown, link, rename and xattr change moves and which user
space cannot set, catches what mtime tricks hide. What is left is git's "racy clean" problem (a
change in the same clock tick as the snapshot keeps the old ctime), which
:func:`wait_for_clock_tick` closes before each step.

The walk is the hot loop of every build step (100,000 files is a small image), so it is written
for speed: ``scandir`` on directory file descriptors so each ``lstat`` is a ``fstatat`` on a
name, one C call (``attrgetter``) to pull the stat fields, entries as tuples that compare in C,
and whole ignored directories pruned instead of asking about every file beneath them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import marshal
import os
import posixpath
import signal
import tempfile
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from snapshot.errors import SnapshotError
from snapshot.forking import default_workers, fork_helper
from snapshot.ignore import IgnoreList

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000
S_IFSOCK = 0o140000

# CLOCK_REALTIME_COARSE (Linux ABI value; Python 3.11's time module does not name it). Inode
# timestamps come from this clock, so it tells what ctime a write made now would get.
CLOCK_REALTIME_COARSE: int = getattr(time, "CLOCK_REALTIME_COARSE", 5)


class FileEntry(NamedTuple):
    """What ``lstat`` said about one path; equal entries mean an unchanged path.

    A tuple so that comparing two snapshots is a C loop and building 100,000 of them is cheap.
    """

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int
    link_target: str | None

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR

    @property
    def is_file(self) -> bool:
        return self.mode & S_IFMT == S_IFREG

    @property
    def is_symlink(self) -> bool:
        return self.mode & S_IFMT == S_IFLNK


@dataclass
class Snapshot:
    """Every non-ignored path under a root, and the coarse clock when the walk began."""

    entries: dict[str, FileEntry]
    taken_ns: int
    root: Path | None = None


@dataclass
class Changes:
    """What a step changed, in the order a layer writes it.

    ``upserts``: paths to write (new or changed; a directory only when it is new or its type,
    mode, owner or device changed); ``deletions``: paths that need a whiteout. Both are sorted
    with :func:`layer_order`.
    """

    upserts: list[str] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.upserts or self.deletions)


def layer_order(path: str) -> str:
    """Sort key: depth-first by component, as a tar of a directory walk lists entries.

    NUL sorts below every byte a file name may hold, so ``a/b`` comes right after ``a`` and
    before ``a-c``: a directory's entries follow it, and the same changes give the same order.
    """
    return path.replace("/", "\0")


_stat_fields = attrgetter("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns",
                          "st_ctime_ns", "st_ino", "st_dev", "st_nlink", "st_rdev")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def take_snapshot(root: Path, ignore: IgnoreList, *, previous: Snapshot | None = None,
                  workers: int | None = None) -> Snapshot:
    """Walk ``root`` with ``lstat`` only (never reading a file) into a :class:`Snapshot`.

    Sockets are left out: an image cannot hold one, so a socket is as good as no file. A
    directory that cannot be read raises :class:`SnapshotError` (a silent gap would lose
    changes); an entry that vanishes during the walk is simply not there.

    ``workers`` is how many processes share a large walk (see :func:`_walk_in_parallel`);
    None picks one per CPU this process may use, up to four; 1 walks in this process only.
    ``previous``, the snapshot of the step before, changes no result: helper processes send
    back only what differs from it, which is most of their cost. It defaults to the last
    snapshot of the same root, while something still holds it (the build loop does).
    """
    taken_ns = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    root_str = os.fspath(root)
    entries: dict[str, FileEntry] = {}
    if previous is None:
        last = _last_snapshot.get(root_str)
        previous = last() if last is not None else None
    helpers = (default_workers() if workers is None else workers) - 1
    # The walk makes 100,000s of tuples that hold no references: the cyclic GC would only scan
    # them over and over (a tenth of the walk's time) and can never free any.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if helpers > 0:
            _walk_in_parallel(root_str, ignore, entries, helpers,
                              previous.entries if previous is not None else {})
        else:
            _walk(root_str, ignore, entries, [""])
    finally:
        if gc_was_enabled:
            gc.enable()
    snapshot = Snapshot(entries, taken_ns, Path(root_str))
    _last_snapshot[root_str] = weakref.ref(snapshot)
    return snapshot


# The last snapshot of each root, held weakly: only an optimisation for the next walk.
_last_snapshot: dict[str, weakref.ref[Snapshot]] = {}


def _walk(root_str: str, ignore: IgnoreList, entries: dict[str, FileEntry],
          pending: list[str]) -> None:
    """Depth-first from the directories in ``pending`` (``""`` is the root)."""
    while pending:
        _scan(root_str, pending.pop(), ignore, entries, pending)


def _scan(root_str: str, rel_dir: str, ignore: IgnoreList, entries: dict[str, FileEntry],
          pending: list[str]) -> None:
    """Record one directory's entries in ``entries`` and its subdirectories in ``pending``."""
    try:
        dir_fd = os.open(os.path.join(root_str, rel_dir) if rel_dir else root_str, _DIR_FLAGS)
    except FileNotFoundError:
        if not rel_dir:
            raise SnapshotError(f"cannot snapshot {root_str}: it does not exist") from None
        return  # removed while the walk was under way
    except OSError as exc:
        raise _walk_error(rel_dir, exc) from None
    try:
        _scan_directory(dir_fd, rel_dir, ignore, entries, pending)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise _walk_error(rel_dir, exc) from None
        # Something vanished mid-listing: redo this directory one entry at a time.
        _scan_directory_carefully(dir_fd, rel_dir, ignore, entries, pending)
    finally:
        os.close(dir_fd)


# Below this many directories to share out, a walk is too small to be worth a fork.
_UNITS_PER_WORKER = 16
_MAX_TOKENS = 4096  # of each kind; 4-byte tokens: 32 KiB, which a pipe takes without blocking


def _walk_in_parallel(root_str: str, ignore: IgnoreList, entries: dict[str, FileEntry],
                      helpers: int, previous: dict[str, FileEntry]) -> None:
    """Share the walk with ``helpers`` forked processes; the kernel's lstat work runs on all CPUs.

    Each ``lstat`` costs more in the kernel than in Python, and threads cannot share the
    Python half (the GIL is handed over at every call), so processes do: this one walks the
    top of the tree breadth-first until there are enough directories to share, puts one
    token per group of them in a pipe, forks, and every process takes tokens until none are
    left and walks those subtrees. Helpers send their entries back as ``marshal`` data: the
    paths of entries equal to ``previous`` (which this process already holds, and the helper
    has as a copy-on-write image) and the full entries of the others. A helper that dies
    leaves this process to walk the whole tree again alone: slower, never wrong.

    A big directory (``_BIG_DIRECTORY`` bytes of entries or more, by its own size: thousands
    of files side by side, as a build's output or a cache often is) would be one unit that a
    single process stats alone while the others wait; so its names are listed here and shared
    out in slices of ``_SLICE`` names, each stat'ed by whoever takes it (subdirectories found
    in a slice are walked by the same process).
    """
    pending = [""]
    big: list[str] = []
    target = _UNITS_PER_WORKER * (helpers + 1)
    while pending and len(pending) + len(big) < target:
        level, pending = pending, []
        for rel_dir in level:
            if rel_dir and entries[rel_dir].size >= _BIG_DIRECTORY:
                big.append(rel_dir)
            else:
                _scan(root_str, rel_dir, ignore, entries, pending)
    big += [rel_dir for rel_dir in pending if entries[rel_dir].size >= _BIG_DIRECTORY]
    pending = [rel_dir for rel_dir in pending if entries[rel_dir].size < _BIG_DIRECTORY]
    listed = [(rel_dir, _names_kept(root_str, rel_dir, ignore)) for rel_dir in big]
    # Slices of at least _SLICE names, and few enough that every token fits in the pipe.
    size = max(_SLICE, -(-sum(len(names) for _, names in listed) // _MAX_TOKENS))
    slices = [(rel_dir, names[start:start + size]) for rel_dir, names in listed
              for start in range(0, len(names), size)]
    if len(pending) + len(slices) < 2:
        for rel_dir, names in slices:
            _scan_names(root_str, rel_dir, names, entries, pending)
        _walk(root_str, ignore, entries, pending)
        return
    units = pending
    groups = min(len(units), _MAX_TOKENS)
    tokens_r, tokens_w = os.pipe()
    try:
        # Slices first: they are the big pieces, best started early.
        order = [*range(groups, groups + len(slices)), *range(groups)]
        os.write(tokens_w, b"".join(i.to_bytes(4, "little") for i in order))
    finally:
        os.close(tokens_w)  # no writer left: an empty pipe reads as end-of-file
    children: list[tuple[int, int]] = []
    try:
        for _ in range(helpers):
            result_r, result_w = os.pipe()
            pid = fork_helper(functools.partial(_helper_main, root_str, ignore, units, groups,
                                                tokens_r, result_w, previous, slices),
                              close=(result_r, *(r for _, r in children)))
            os.close(result_w)
            if pid is None:
                os.close(result_r)
                break  # no more processes to be had: walk with those there are
            children.append((pid, result_r))
        _walk_tokens(root_str, ignore, units, groups, tokens_r, entries, slices)
        new = tuple.__new__
        while children:
            pid, result_r = children.pop()
            result = _collect(pid, result_r)
            if result is None:  # the helper died: its share is lost, so walk it all here
                entries.clear()
                _walk(root_str, ignore, entries, [""])
                return
            error, unchanged, changed = result
            if error is not None:
                raise SnapshotError(error)
            if unchanged:
                for path in unchanged.split("\0"):
                    entries[path] = previous[path]
            for values in changed:
                entries[values[0]] = new(FileEntry, values)
    finally:
        os.close(tokens_r)
        for pid, result_r in children:  # only after an error: stop and reap the rest
            os.close(result_r)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def _walk_tokens(root_str: str, ignore: IgnoreList, units: list[str], groups: int,
                 tokens_r: int, entries: dict[str, FileEntry],
                 slices: list[tuple[str, list[str]]]) -> None:
    """Take tokens until none are left: below ``groups`` a group of ``units`` to walk, above
    it one of ``slices`` to stat (and the subdirectories found there to walk)."""
    while token := os.read(tokens_r, 4):  # a pipe hands each 4-byte token to one reader
        group = int.from_bytes(token, "little")
        if group < groups:
            _walk(root_str, ignore, entries, units[group::groups])
        else:
            rel_dir, names = slices[group - groups]
            pending: list[str] = []
            _scan_names(root_str, rel_dir, names, entries, pending)
            _walk(root_str, ignore, entries, pending)


# A directory whose own size says it holds thousands of entries (ext4: about 4,000 to 8,000
# names; tmpfs: 6,500) is shared out by name, in slices of this many names.
_BIG_DIRECTORY = 128 * 1024
_SLICE = 2048


def _names_kept(root_str: str, rel_dir: str, ignore: IgnoreList) -> list[str]:
    """The names in ``rel_dir`` that the ignore list does not leave out."""
    skip = ignore.ignored_names_in(rel_dir)
    glob = ignore.glob_at_depth(rel_dir.count("/") + 2)
    try:
        names = os.listdir(os.path.join(root_str, rel_dir))
    except FileNotFoundError:
        return []  # removed while the walk was under way
    except OSError as exc:
        raise _walk_error(rel_dir, exc) from None
    prefix = rel_dir + "/"
    return [name for name in names if name not in skip
            and (glob is None or not glob(prefix + name))]


def _scan_names(root_str: str, rel_dir: str, names: list[str],
                entries: dict[str, FileEntry], pending: list[str]) -> None:
    """Record the entries ``names`` of ``rel_dir`` (already filtered by the ignore list), and
    their subdirectories in ``pending``; a name that vanished since it was listed is skipped,
    as the walk skips anything removed while it runs."""
    try:
        dir_fd = os.open(os.path.join(root_str, rel_dir), _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _walk_error(rel_dir, exc) from None
    prefix = rel_dir + "/"
    new = tuple.__new__
    fields = _stat_fields
    entry_type = FileEntry
    lstat = os.stat
    try:
        for name in names:
            try:
                stat = fields(lstat(name, dir_fd=dir_fd, follow_symlinks=False))
                kind = stat[0] & 0o170000
                target = os.readlink(name, dir_fd=dir_fd) if kind == 0o120000 else None
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _walk_error(prefix + name, exc) from None
            if kind == 0o140000:  # a socket: an image cannot hold one
                continue
            rel = prefix + name
            entries[rel] = new(entry_type, (rel, *stat, target))
            if kind == 0o040000:
                pending.append(rel)
    finally:
        os.close(dir_fd)


def _helper_main(root_str: str, ignore: IgnoreList, units: list[str], groups: int,
                 tokens_r: int, result_w: int, previous: dict[str, FileEntry],
                 slices: list[tuple[str, list[str]]]) -> None:
    """A forked helper's whole life: walk tokens, send entries (or the error)."""
    found: dict[str, FileEntry] = {}
    try:
        _walk_tokens(root_str, ignore, units, groups, tokens_r, found, slices)
        unchanged: list[str] = []
        changed: list[tuple[Any, ...]] = []
        previous_get = previous.get
        for path, entry in found.items():
            if previous_get(path) == entry:
                unchanged.append(path)
            else:
                changed.append(tuple(entry))  # marshal takes tuples, not subclasses
        # A path never holds NUL, so one joined string carries them all.
        payload = marshal.dumps((None, "\0".join(unchanged), changed))
    except SnapshotError as exc:
        payload = marshal.dumps((str(exc), "", []))
    view = memoryview(payload)
    while view:
        view = view[os.write(result_w, view):]


def _collect(pid: int, result_r: int) -> tuple[str | None, str, list[tuple[Any, ...]]] | None:
    """A helper's ``(error, unchanged paths, changed entries)``; None if it died silently."""
    chunks = []
    try:
        while chunk := os.read(result_r, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(result_r)
        with contextlib.suppress(ChildProcessError):  # PID 1 may have reaped it already
            os.waitpid(pid, 0)
    try:
        error, unchanged, changed = marshal.loads(b"".join(chunks))
    except (EOFError, ValueError, TypeError):
        return None
    return error, unchanged, changed


def _scan_directory(dir_fd: int, rel_dir: str, ignore: IgnoreList,
                    entries: dict[str, FileEntry], pending: list[str]) -> None:
    """The hot loop: one ``fstatat`` and one tuple per entry, nothing else when possible.

    Constants are literals and names are locals here: each global lookup in this loop costs
    a few milliseconds per 100,000 entries.
    """
    prefix = rel_dir + "/" if rel_dir else ""
    skip = ignore.ignored_names_in(rel_dir)
    glob = ignore.glob_at_depth(rel_dir.count("/") + 2 if rel_dir else 1)
    new = tuple.__new__
    fields = _stat_fields
    entry_type = FileEntry
    readlink = os.readlink
    subdirs_from = len(pending)
    try:
        with os.scandir(dir_fd) as scan:
            for item in scan:
                name = item.name
                if skip and name in skip:
                    continue
                rel = prefix + name
                if glob is not None and glob(rel):
                    continue
                stat = fields(item.stat(follow_symlinks=False))
                kind = stat[0] & 0o170000
                if kind == 0o100000:  # regular file
                    entries[rel] = new(entry_type, (rel, *stat, None))
                elif kind == 0o040000:  # directory
                    entries[rel] = new(entry_type, (rel, *stat, None))
                    pending.append(rel)
                elif kind == 0o120000:  # symlink
                    entries[rel] = new(entry_type, (rel, *stat, readlink(name, dir_fd=dir_fd)))
                elif kind != 0o140000:  # not a socket: a device or a FIFO
                    entries[rel] = new(entry_type, (rel, *stat, None))
    except OSError:
        # Undo this directory's part, for the careful pass to do again.
        del pending[subdirs_from:]
        depth = len(prefix)
        for rel in [rel for rel in entries if rel.startswith(prefix) and "/" not in rel[depth:]]:
            del entries[rel]
        raise


def _scan_directory_carefully(dir_fd: int, rel_dir: str, ignore: IgnoreList,
                              entries: dict[str, FileEntry], pending: list[str]) -> None:
    """Like :func:`_scan_directory`, tolerating entries that vanish while it looks."""
    prefix = rel_dir + "/" if rel_dir else ""
    skip = ignore.ignored_names_in(rel_dir)
    glob = ignore.glob_at_depth(rel_dir.count("/") + 2 if rel_dir else 1)
    os.lseek(dir_fd, 0, os.SEEK_SET)
    with os.scandir(dir_fd) as scan:
        names = [item.name for item in scan]
    for name in names:
        rel = prefix + name
        if name in skip or (glob is not None and glob(rel)):
            continue
        try:
            stat = _stat_fields(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
            kind = stat[0] & S_IFMT
            target = os.readlink(name, dir_fd=dir_fd) if kind == S_IFLNK else None
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _walk_error(rel, exc) from None
        if kind == S_IFSOCK:
            continue
        entries[rel] = FileEntry._make((rel, *stat, target))
        if kind == S_IFDIR:
            pending.append(rel)


def _walk_error(rel: str, exc: OSError) -> SnapshotError:
    where = "/" + rel if rel else "/ (the root)"
    return SnapshotError(f"cannot snapshot {where}: {exc.strerror or exc}")


def diff_snapshots(old: Snapshot, new: Snapshot) -> Changes:
    """What changed from ``old`` to ``new``, as BuildKit's layers say it.

    - A file, link or node is an upsert when it is new or any stat field differs.
    - A directory is an upsert when it is new, or its type, mode, owner or device number
      changed: not for times, size or link count alone, which move whenever a child comes or
      goes (a temporary file made and removed leaves no trace). BuildKit's overlayfs differ
      compares directories so; the layer writes a changed entry's parent directories anyway.
    - A directory deleted and made again is compared like any other, and each child of the old
      one that is gone gets its own whiteout: BuildKit's layers have no opaque markers.
    - A deleted path gets a whiteout unless something above it already hides it: a deleted
      ancestor, or an ancestor that is no longer a directory (a whiteout under a path that is
      now a symlink would be followed into the symlink's target when the layer is applied;
      kaniko #2308).
    """
    before, after = old.entries, new.entries
    if before == after:
        return Changes()
    upserts: list[str] = []
    before_get = before.get
    for path, entry in after.items():
        previous = before_get(path)
        if previous is None or (previous != entry and (
                entry.mode & S_IFMT != S_IFDIR or _directory_changed(previous, entry))):
            upserts.append(path)
    deleted = before.keys() - after.keys()
    deletions = [path for path in deleted if not _hidden_by_ancestor(path, deleted, after)]
    upserts.sort(key=layer_order)
    deletions.sort(key=layer_order)
    return Changes(upserts, deletions)


def _directory_changed(previous: FileEntry, entry: FileEntry) -> bool:
    """Whether a directory's own metadata changed: what BuildKit compares (mode with the type
    bits, owner, device), not its times, size or link count."""
    return (previous.mode, previous.uid, previous.gid, previous.rdev) != (
        entry.mode, entry.uid, entry.gid, entry.rdev)


def settle_ctimes(old: Snapshot, new: Snapshot, paths: tuple[str, ...]) -> Snapshot:
    """``old`` with the ctime of ``new`` for each of ``paths`` whose stat differs in ctime only.

    For paths a step moved and put back itself (a RUN --mount emulated without mount(2):
    its target renamed aside and back, its parent's times restored): ctime is the one field
    user space cannot restore, and alone it would put an unchanged directory in the layer.
    """
    if not paths:
        return old
    entries = old.entries
    copied = False
    for rel in paths:
        rel = rel.strip("/")
        if rel in ("", "."):
            continue
        before, after = entries.get(rel), new.entries.get(rel)
        if before is None or after is None or before == after:
            continue
        if before._replace(ctime_ns=after.ctime_ns) == after:
            if not copied:
                entries, copied = dict(entries), True
            entries[rel] = after
    return Snapshot(entries, old.taken_ns, old.root) if copied else old


def _hidden_by_ancestor(path: str, deleted: set[str], after: dict[str, FileEntry]) -> bool:
    parent = path
    while True:
        cut = parent.rfind("/")
        if cut < 0:
            return False
        parent = parent[:cut]
        if parent in deleted:
            return True
        entry = after.get(parent)
        if entry is not None and entry.mode & S_IFMT != S_IFDIR:
            return True


# -- the racy rule -------------------------------------------------------------------------

_granularity_by_dev: dict[int, int] = {}
_GRANULARITIES = (2_000_000_000, 1_000_000_000, 100_000_000, 10_000_000, 1_000_000, 1_000)


def wait_for_clock_tick(snapshot: Snapshot) -> None:
    """Return once any change made from now on gets a ctime newer than the snapshot's walk.

    A write in the same coarse-clock tick as the walk (a few ms; a whole second on some
    filesystems) could leave a file with the ctime, size and mtime the walk recorded, and the
    change would be lost. After this returns, a fresh timestamp, truncated to the filesystem's
    granularity, is strictly greater than ``snapshot.taken_ns``, the coarse clock when the walk
    began, and so newer than every ctime the walk saw. Usually returns at once: the walk itself
    takes longer than a tick.
    """
    granularity = timestamp_granularity(snapshot.root)
    taken = snapshot.taken_ns
    while True:
        now = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
        if now - now % granularity > taken:
            return
        next_granule = taken - taken % granularity + granularity
        time.sleep(max(next_granule - now, 1_000_000) / 1e9)


def timestamp_granularity(directory: Path | None) -> int:
    """The ctime granularity in ns of the filesystem holding ``directory`` (1 = full ns).

    Measured once per filesystem by changing a probe file's ctime until it has taken a few
    distinct values; a filesystem that stores whole seconds only ever shows multiples of 1e9.
    """
    place = os.fspath(directory) if directory is not None else tempfile.gettempdir()
    try:
        dev = os.stat(place).st_dev
    except OSError:
        dev, place = -1, tempfile.gettempdir()
    cached = _granularity_by_dev.get(dev)
    if cached is None:
        cached = _granularity_by_dev[dev] = _measure_granularity(place)
    return cached


def _measure_granularity(place: str) -> int:
    try:
        fd, probe = tempfile.mkstemp(prefix=".kiln-clock-", dir=place)
    except OSError:
        fd, probe = tempfile.mkstemp(prefix=".kiln-clock-")
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 5.0
        mode = 0o600
        while len(seen) < 3 and time.monotonic() < deadline:
            mode ^= 0o040
            os.fchmod(fd, mode)  # a chmod moves ctime and nothing else
            seen.add(os.fstat(fd).st_ctime_ns)
            time.sleep(0.001)
    finally:
        os.close(fd)
        os.unlink(probe)
    for candidate in _GRANULARITIES:
        if len(seen) > 1 and all(value % candidate == 0 for value in seen):
            return candidate
    # A few distinct values that are not all round: nanosecond timestamps. With fewer than two
    # values in five seconds the clock is coarser than anything above: play safe.
    return 1 if len(seen) > 1 else 2_000_000_000


# -- partial snapshots ---------------------------------------------------------------------

def take_partial_snapshot(root: Path, ignore: IgnoreList, previous: Snapshot,
                          touched: Iterable[str]) -> Snapshot | None:
    """``previous`` brought up to date where a step wrote, without walking the rest of the root.

    For a step that ran no process (COPY, ADD): only what it wrote can differ from
    ``previous``. ``touched`` names, relative to ``root``, every path at or under which the
    step wrote (it may name more; it must not name less), each reached through real
    directories only (the step resolved symlinks itself). Then the root differs from
    ``previous`` only

    - at and under each touched path: walked again, and what was there before is dropped;
    - in the directories above one: entries added or replaced move their mtime, ctime and
      link count. Each is stat'ed again; one that is no longer the directory ``previous``
      knew (just created, or replaced) is walked as a whole, as if it had been named;
    - in the other names of a file with several hard links that the step replaced, removed
      or linked again: their link count and ctime moved. Each is stat'ed again. (A link the
      step made to a file elsewhere and removed again would move that file's ctime unseen:
      COPY and ADD link only what they wrote themselves.)

    The result is what :func:`take_snapshot` would give, entry for entry. None where that
    cannot be vouched for and a full walk must be taken instead: the root itself touched, a
    touched path below something that is not a directory, a path gone that must be there.
    """
    taken_ns = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    root_str = os.fspath(root)
    try:
        entries = _brought_up_to_date(root_str, ignore, previous.entries, touched)
    except (OSError, SnapshotError):
        return None  # the full walk will say what is wrong, if anything is
    if entries is None:
        return None
    snapshot = Snapshot(entries, taken_ns, Path(root_str))
    _last_snapshot[root_str] = weakref.ref(snapshot)
    return snapshot


def _brought_up_to_date(root_str: str, ignore: IgnoreList, before: dict[str, FileEntry],
                        touched: Iterable[str]) -> dict[str, FileEntry] | None:
    """The entries of :func:`take_partial_snapshot`, or None."""
    roots = _walk_roots(root_str, ignore, before, touched)
    if roots is None:
        return None
    walk_roots, ancestors = roots
    entries = dict(before)
    dropped = _drop_under(entries, walk_roots)
    if dropped is None:
        return None
    entries.update(ancestors)
    fresh: dict[str, FileEntry] = {}
    pending: list[str] = []
    for rel in walk_roots:
        if ignore.is_ignored(rel):
            continue
        entry = _lstat_entry(root_str, rel)
        if entry is None:
            continue  # the step removed it, or named a path it did not write
        fresh[rel] = entry
        if entry.mode & S_IFMT == S_IFDIR:
            pending.append(rel)
    _walk(root_str, ignore, fresh, pending)
    if not _restat_hard_links(root_str, entries, dropped, fresh):
        return None
    entries.update(fresh)
    return entries


def _walk_roots(root_str: str, ignore: IgnoreList, before: dict[str, FileEntry],
                touched: Iterable[str]) -> tuple[list[str], dict[str, FileEntry]] | None:
    """The top-most paths to walk again, and the fresh entries of the directories above them.

    A directory above a touched path that is not the one ``before`` held (created by the
    step, or put in the place of something else) becomes the path walked: all it holds is new.
    """
    named: set[str] = set()
    for raw in touched:
        rel = posixpath.normpath("/" + raw).strip("/")
        if not rel:
            return None  # the whole root: nothing to save
        named.add(rel)
    ancestors: dict[str, FileEntry] = {}
    walk: set[str] = set()
    for rel in _top_most(named):  # what a step wrote below a path it wrote is in that path
        parts = rel.split("/")
        chosen = rel
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if ignore.is_ignored(above):
                break  # the walk never sees it, nor anything below it
            entry = ancestors.get(above) or _lstat_entry(root_str, above)
            if entry is None or entry.mode & S_IFMT != S_IFDIR:
                return None  # written below a path that is not a directory: a mistake
            ancestors[above] = entry
            old = before.get(above)
            if (old is None or old.mode & S_IFMT != S_IFDIR or old.ino != entry.ino
                    or old.dev != entry.dev):
                chosen = above
                break
        walk.add(chosen)
    top = _top_most(walk)
    kept = set(top)
    return top, {rel: entry for rel, entry in ancestors.items()
                 if rel not in kept and not _is_below_any(rel, kept)}


def _top_most(paths: set[str]) -> list[str]:
    """``paths`` without those below another of them, in layer order."""
    top: list[str] = []
    for rel in sorted(paths, key=layer_order):  # a path's descendants follow it
        if not top or not rel.startswith(top[-1] + "/"):
            top.append(rel)
    return top


def _is_below_any(rel: str, paths: set[str]) -> bool:
    cut = rel.rfind("/")
    while cut > 0:
        rel = rel[:cut]
        if rel in paths:
            return True
        cut = rel.rfind("/")
    return False


def _drop_under(entries: dict[str, FileEntry],
                walk_roots: list[str]) -> dict[str, FileEntry] | None:
    """Remove from ``entries`` every path at or under one of ``walk_roots``; return them.

    A snapshot holds a path only with its parent directory, so only walk roots that were
    directories can have entries below them (a COPY into a new /app needs no search at all).
    Those are found by one pass of ``startswith`` (a C loop) over the keys: with a tuple of
    the directories when they are few, else once per parent of theirs with a set lookup of
    the next name. None when they have too many parents for that to beat a full walk.
    """
    dropped = {rel: entries.pop(rel) for rel in walk_roots if rel in entries}
    directories = [rel for rel, entry in dropped.items() if entry.mode & S_IFMT == S_IFDIR]
    if not directories:
        return dropped
    below: list[str] = []
    if len(directories) <= _FEW_DIRECTORIES:
        prefixes = tuple(rel + "/" for rel in directories)
        below = [rel for rel in entries if rel.startswith(prefixes)]
    else:
        by_parent: dict[str, set[str]] = {}
        for rel in directories:
            parent, _, name = rel.rpartition("/")
            by_parent.setdefault(parent + "/" if parent else "", set()).add(name)
        if len(by_parent) > _MAX_PARENTS:
            return None
        for prefix, names in by_parent.items():
            n = len(prefix)
            below += [rel for rel in entries
                      if rel.startswith(prefix) and rel[n:].partition("/")[0] in names]
    # Walk roots never nest, so no key is under two of them.
    dropped.update((rel, entries.pop(rel)) for rel in below)
    return dropped


# Up to this many directories, one tuple of prefixes: ``startswith`` tries each in turn.
_FEW_DIRECTORIES = 16
# More distinct parents than this of the directories a step wrote over: a full walk is as quick.
_MAX_PARENTS = 32


def _lstat_entry(root_str: str, rel: str) -> FileEntry | None:
    """The entry the walk would record for ``rel``; None if it is missing or a socket."""
    path = os.path.join(root_str, rel)
    try:
        stat = _stat_fields(os.lstat(path))
        target = os.readlink(path) if stat[0] & S_IFMT == S_IFLNK else None
    except FileNotFoundError:
        return None
    if stat[0] & S_IFMT == S_IFSOCK:
        return None
    return FileEntry._make((rel, *stat, target))


def _restat_hard_links(root_str: str, entries: dict[str, FileEntry],
                       dropped: dict[str, FileEntry], fresh: dict[str, FileEntry]) -> bool:
    """Stat again the names, outside the walked paths, of files with several links that the
    step replaced, removed or linked (their link count and ctime moved); False if one of
    them is gone, which only a step that wrote elsewhere could have done."""
    inodes = {(e.dev, e.ino) for e in (*dropped.values(), *fresh.values())
              if e.nlink > 1 and e.mode & S_IFMT != S_IFDIR}
    if not inodes:
        return True
    numbers = {ino for _, ino in inodes}
    others = [rel for rel, e in entries.items()
              if e[7] in numbers and (e.dev, e.ino) in inodes and e.mode & S_IFMT != S_IFDIR]
    for rel in others:
        entry = _lstat_entry(root_str, rel)
        if entry is None:
            return False
        entries[rel] = entry
    return True
