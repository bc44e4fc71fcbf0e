"""What a killed build leaves behind, and its removal: temporary state directories of sandbox
builds run without ``--kaniko-dir``, and unfinished files (downloads, layers) in a kiln dir.

A build removes its directory when it ends, but SIGKILL (an OOM kill, a CI job's timeout) ends
it with no chance to; each left directory holds the base image's layers, so a machine that kills
builds now and then fills ``/tmp``. Each directory therefore holds a lock file, locked with
``flock`` for as long as its build runs, and so does each unfinished file while it is written.
The kernel drops the lock when the process dies, however it dies, so a later build can tell
what nobody holds from what a running build uses, with no PID that could have been reused.

Only what kiln made is ever removed: a directory in the temporary directory, named
``kiln-workspace-*``, owned by this user, holding the lock file, with the lock free and no
mount point inside; a regular file in the kiln dir named as kiln names its unfinished files,
with its lock free. A directory or anything else bearing such a name is not kiln's.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from snapshot.ignore import mount_points_under

log = logging.getLogger("kiln")

PREFIX = "kiln-workspace-"
LOCK_NAME = ".kiln-workspace.lock"


@contextlib.contextmanager
def temporary_workspace(parent: Path | None = None) -> Iterator[Path]:
    """A new directory under ``parent`` (the temporary directory), held for the block and
    removed after it; directories of builds that died first are removed on the way in."""
    parent = parent or Path(tempfile.gettempdir())
    remove_abandoned(parent)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    lock = _hold(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


def _hold(path: Path) -> int:
    """Create the lock file already locked: made under another name, locked, then renamed, so
    no other build can ever see it unlocked while this one runs."""
    staging = path / f"{LOCK_NAME}.new"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(staging, path / LOCK_NAME)
    return fd


def remove_abandoned(parent: Path) -> list[Path]:
    """Remove the workspaces under ``parent`` that no running build holds; returns them."""
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if _remove_if_abandoned(path):
                removed.append(path)
    if removed:
        log.info("Removed %d workspace(s) left by builds that were killed: %s", len(removed),
                 " ".join(str(p) for p in removed))
    return removed


def remove_stale_partials(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Delete the unfinished files (names matching ``patterns``: ``*.partial`` downloads,
    ``.layer-*.tmp`` layers) that builds killed mid-way left in ``directory``.

    A file another build sharing the directory is writing is locked, and left alone.
    """
    removed: list[Path] = []
    try:
        candidates = [p for p in directory.iterdir()
                      if any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns)]
    except OSError:
        return removed
    for path in candidates:
        fd = _lock_if_abandoned(path)
        if fd is None:
            continue
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        except OSError:
            pass  # made a directory since, say: no longer the file that was locked
        finally:
            os.close(fd)
    if removed:
        log.info("Removed %d unfinished file(s) a stopped build left in %s", len(removed),
                 directory)
    return removed


def _lock_if_abandoned(path: Path) -> int | None:
    """The regular file ``path`` opened and locked, when no running build holds its lock;
    None when one does, when it is gone, or when it is no regular file (so not kiln's: a
    directory takes a ``flock`` too, and would pass for an abandoned file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # not one of ours, or one being set up
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError:  # BlockingIOError: a running build holds it
        pass
    os.close(fd)
    return None


def _remove_if_abandoned(path: Path) -> bool:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    fd = _lock_if_abandoned(path / LOCK_NAME)
    if fd is None:
        return False
    try:
        if _has_mounts_under(path):
            log.warning("Not removing %s, left by a killed build: something is mounted in it",
                        path)
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _has_mounts_under(path: Path) -> bool:
    """True when a mount point lies in ``path``: removing it would reach into another
    filesystem (a bind mount left by a RUN --mount)."""
    return bool(mount_points_under(os.path.realpath(path)))
