"""Directories an instruction creates in the image, the way BuildKit creates them.

COPY's destination parents, WORKDIR and the parents of a re-included ``.dockerignore`` path
are all made the same way: each missing directory from the nearest existing one down, mode
0755 whatever the umask, owned by the instruction's owner (``--chown``, or the USER for
WORKDIR; kaniko #1524 left created parents owned by root).
"""

from __future__ import annotations

import os
from pathlib import Path


def make_directories(target: Path, uid: int, gid: int, *, root: Path,
                     replace_file: bool = False) -> None:
    """Create ``target`` and its missing parents below ``root``.

    With ``replace_file``, a non-directory standing where a directory must go is removed
    first, as COPY replaces it.
    """
    missing: list[Path] = []
    probe = target
    while not os.path.lexists(probe) and probe != root:
        missing.append(probe)
        probe = probe.parent
    if replace_file and os.path.lexists(probe) and not probe.is_dir():
        probe.unlink()
        missing.append(probe)
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        os.lchown(directory, uid, gid)
