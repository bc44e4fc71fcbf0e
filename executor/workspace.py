"""Temporary state directories of sandbox builds run without ``--kaniko-dir``, and the removal
of the ones a killed build left behind.

A build removes its directory when it ends, but SIGKILL (an OOM kill, a CI job's timeout) ends
it with no chance to; each left directory holds the base image's layers, so a machine that kills
builds now and then fills ``/tmp``. Each directory therefore holds a lock file, locked with
``flock`` for as long as its build runs. The kernel drops the lock when the process dies, however
it dies, so a later build can tell a directory nobody holds from one a running build uses, with
no PID that could have been reused.

Only what kiln made is ever removed: a directory in the temporary directory, named
``kiln-workspace-*``, owned by this user, holding the lock file, with the lock free and no
mount point inside.
"""

from __future__ import annotations

import contextlib
import fcntl
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


def _remove_if_abandoned(path: Path) -> bool:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not one of ours, or one being set up
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a running build holds it
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
