"""Files that appear whole or not at all: written beside their target, renamed when complete.

Every file kiln leaves for another process to read (an OCI layout's index, a docker tarball,
a blob in a cache) goes through here, so a crash, a full disk or a digest that does not match
leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from snapshot.ignore import mount_points_under


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[IO[bytes]]:
    """A file that becomes ``target`` (mode 0644) when the block succeeds and vanishes when it
    fails, whatever the exception."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed or removed below
        dir=target.parent, prefix=f".{target.name}.", delete=False)
    try:
        with handle:
            yield handle
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_atomically(target: Path, data: bytes) -> None:
    """``target`` holds ``data``, or what it held before."""
    with replacing(target) as handle:
        handle.write(data)


@contextlib.contextmanager
def output_file(target: Path) -> Iterator[IO[bytes]]:
    """A file for another program (``--tar-path``, ``--digest-file``): whole or not at all where
    it can be, and written in place where a rename cannot reach it.

    ``/dev/stdout`` or a FIFO is a stream to write to, not a file to replace, and
    ``/dev/termination-log`` (kaniko's documented digest file in Kubernetes) is a file
    bind-mounted into the container, which a rename cannot replace (EBUSY).
    """
    try:
        in_place = not stat.S_ISREG(os.stat(target).st_mode) or is_mount_point(target)
    except FileNotFoundError:
        in_place = False
    if in_place:
        with open(target, "wb") as handle:
            yield handle
        return
    with replacing(target) as handle:
        yield handle


def write_output(target: Path, data: bytes) -> None:
    """``target`` holds ``data`` (see :func:`output_file`)."""
    with output_file(target) as handle:
        handle.write(data)


def is_mount_point(path: Path) -> bool:
    """True when something is mounted at ``path``: a file bind-mounted from the same
    filesystem has its parent's device, so ``os.path.ismount`` cannot tell."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    return os.path.basename(real) in mount_points_under(os.path.dirname(real))
