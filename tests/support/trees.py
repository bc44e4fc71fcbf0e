"""A directory tree as a runtime sees it, for comparing two extractions of the same image."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path


def metadata_tree(top: Path, *, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """What a runtime sees below ``top``: kind, mode, owner, size, content, link, xattrs."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            xattrs = () if stat.S_ISLNK(st.st_mode) else tuple(sorted(
                (key, os.getxattr(path, key)) for key in os.listxattr(path)
                if key.startswith("user.")))
            mtime = st.st_mtime_ns if dir_mtimes or not stat.S_ISDIR(st.st_mode) else None
            found[os.path.relpath(path, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, mtime, content, xattrs)
    return found


def tar_of(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of regular files (name -> content), mode 0644, in the given order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
