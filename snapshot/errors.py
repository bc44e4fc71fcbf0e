"""Errors of the filesystem layer: a layer that cannot be applied, a path that cannot be walked.

``snapshot`` knows nothing of Dockerfiles or registries, so these carry the layer and the entry,
and the executor adds the instruction around them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class SnapshotError(Exception):
    """A filesystem failure the user can act on; ``str()`` is one line naming the path."""


class UnsafeLayerError(SnapshotError):
    """A layer entry that would write outside the root or over an ignored path."""


class CorruptLayerError(SnapshotError):
    """A layer stream that is truncated, not a tar, or whose digest does not match."""


class StorageError(SnapshotError):
    """Reading or writing a file failed for a reason of the machine's, not the input's: a full
    disk (ENOSPC), an I/O error, a read-only filesystem, a path that is a directory.

    Python's ``OSError`` names no file when a ``write`` fails (and a temporary file when a
    rename does), and is raised in whatever thread met it; this names the place the user knows.
    """


def os_error_reason(exc: OSError) -> str:
    """The OS's words for ``exc`` (``No space left on device``), without Python's ``[Errno]``."""
    return exc.strerror or str(exc) or type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError`` nothing named a place for: the file(s) it names, if any,
    and the OS's reason."""
    files = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None]
    reason = os_error_reason(exc)
    return f"{' -> '.join(files)}: {reason}" if files else reason


@contextlib.contextmanager
def storage_errors(place: str | os.PathLike[str], doing: str = "write") -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into ``StorageError("cannot DOING PLACE: why")``.

    One mechanism for every place kiln writes (COPY, layers, downloads, outputs), so a full disk
    gives one line naming the place wherever it strikes. Wrap only file operations: network
    libraries raise ``OSError`` subclasses too, and those are not the disk's fault.
    """
    try:
        yield
    except SnapshotError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot {doing} {os.fspath(place)}: {os_error_reason(exc)}") \
            from exc
