"""Resolving an image path to a host path under the root, as a process chrooted there would.

In sandbox mode the root is a directory on the host, and the image's symlinks (``/var/run ->
/run``, or a hostile ``/etc -> /``) must resolve inside it, never to the host's files. Absolute
link targets restart at the root and ``..`` stops at the root, exactly as after ``chroot``.
"""

from __future__ import annotations

import os
from pathlib import Path

from snapshot.errors import SnapshotError

_MAX_LINKS = 40  # the kernel's limit for one lookup (ELOOP)


def resolve_in_root(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """The host path under ``root`` that ``path`` names inside the image.

    Every symlink met on the way is followed with chroot semantics; the last component is
    followed only when ``follow_final`` (a COPY destination that is a symlink to a directory
    copies into that directory). The result never lies outside ``root``.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    followed = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if (pending or follow_final) and os.path.islink(candidate):
            followed += 1
            if followed > _MAX_LINKS:
                raise SnapshotError(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
