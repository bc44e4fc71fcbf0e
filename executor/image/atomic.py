"""Files that appear whole or not at all: written beside their target, renamed when complete.

Every file kiln leaves for another process to read (an OCI layout's index, a docker tarball,
a blob in a cache) goes through here, so a crash, a full disk or a digest that does not match
leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
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
