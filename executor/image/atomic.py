"""Files that appear whole or not at all: written beside their target, renamed when complete.

Every file kiln leaves for another process to read (an OCI layout's index, a docker tarball,
a blob in a cache) goes through here, so a crash, a full disk or a digest that does not match
leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


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


def write_output(target: Path, data: bytes) -> None:
    """A small file for another program (``--digest-file``): whole or not at all where it can
    be, and written in place where a rename cannot reach it.

    ``/dev/stdout`` or a FIFO is a stream to write to, not a file to replace, and
    ``/dev/termination-log`` (kaniko's documented digest file in Kubernetes) is a file
    bind-mounted into the container, which a rename cannot replace (EBUSY).
    """
    try:
        kind = os.stat(target).st_mode
    except FileNotFoundError:
        kind = stat.S_IFREG
    if not stat.S_ISREG(kind):
        _write_in_place(target, data)
        return
    try:
        write_atomically(target, data)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        _write_in_place(target, data)


def _write_in_place(target: Path, data: bytes) -> None:
    with open(target, "wb") as handle:
        handle.write(data)
