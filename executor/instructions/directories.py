"""Directories an instruction creates in the image, the way BuildKit creates them.

COPY's destination parents, WORKDIR and the parents of a re-included ``.dockerignore`` path
are all made the same way: each missing directory from the nearest existing one down, owned by
the instruction's owner (``--chown``, or the USER for WORKDIR; kaniko #1524 left created
parents owned by root), mode 0755 whatever the umask, or the mode of an octal ``--chmod``
(BuildKit gives the directories a ``COPY --chmod=0750`` creates 0750 too).

A non-directory standing where a directory must go is an error, as in BuildKit ("not a
directory"), except for ``COPY --link``, whose layer is made on an empty tree and so replaces it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class NotADirectory(Exception):
    """A file or link stands where a directory must be created (``path`` is its host path)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def make_directories(target: Path, uid: int, gid: int, *, root: Path, mode: int = 0o755,
                     replace: bool = False) -> list[Path]:
    """Create ``target`` and its missing parents below ``root``; return the ones created.

    A non-directory on the way raises NotADirectory, or is removed first with ``replace``.
    """
    missing: list[Path] = []
    probe = target
    while not os.path.lexists(probe) and probe != root:
        missing.append(probe)
        probe = probe.parent
    if probe != root and (probe.is_symlink() or not probe.is_dir()):
        if not replace:
            raise NotADirectory(probe)
        remove_path(probe)
        missing.append(probe)
    for directory in reversed(missing):
        directory.mkdir(mode=mode & 0o777)
        os.lchown(directory, uid, gid)
        os.chmod(directory, mode)  # after chown, which clears setgid; whatever the umask
    return missing


def remove_path(path: Path) -> None:
    """Remove a file, link or whole directory tree (the link itself, never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
