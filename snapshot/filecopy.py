"""File contents copied by the kernel: ``copy_file_range``, else ``sendfile``, else read/write.

A COPY of a big file, a layer blob stored in a docker tarball or an OCI layout: the bytes only
move from one file to another, so they need not pass through Python at all. ``copy_file_range``
moves them inside the kernel (and shares the blocks on filesystems that can); ``sendfile``
does nearly as well where it is refused (across filesystems on older kernels); the read/write
loop is the last resort. Either way the copy starts at each file's current offset and leaves
both offsets after what was copied, as ``read`` and ``write`` would.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

_CHUNK = 1 << 30  # bytes asked of the kernel at once (it may move fewer)
_BUFFER = 1 << 20  # bytes per read in the last-resort loop

# Errors that mean "this way of copying does not work for these files", not "the copy failed".
_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                          errno.EBADF, errno.EPERM, errno.ETXTBSY})


def copy_data(source: int, target: int, size: int | None = None) -> int:
    """Copy ``size`` bytes (None: up to the end) from fd ``source`` to fd ``target``.

    Returns the bytes copied; with ``size``, fewer only when ``source`` ended first.
    """
    copied = 0
    for way in (_copy_file_range, _sendfile):
        try:
            return copied + way(source, target, size, copied)
        except _Unsupported as exc:
            copied = exc.copied  # a way may fail after some bytes: go on from there
    return copied + _read_write(source, target, None if size is None else size - copied)


class _Unsupported(Exception):
    def __init__(self, copied: int) -> None:
        super().__init__()
        self.copied = copied


def _copy_file_range(source: int, target: int, size: int | None, done: int) -> int:
    return _kernel_loop(lambda count: os.copy_file_range(source, target, count),
                        size, done)


def _sendfile(source: int, target: int, size: int | None, done: int) -> int:
    # sendfile(2) with a NULL offset reads from, and advances, the source's file offset.
    return _kernel_loop(lambda count: os.sendfile(target, source, None, count), size, done)


def _kernel_loop(move: Callable[[int], int], size: int | None, done: int) -> int:
    """Call ``move(count)`` until ``size`` bytes (after ``done``) moved or the source ended."""
    copied = 0
    while size is None or done + copied < size:
        want = _CHUNK if size is None else min(_CHUNK, size - done - copied)
        try:
            moved = move(want)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                raise _Unsupported(done + copied) from None
            raise
        if moved == 0:
            break
        copied += moved
    return copied


def _read_write(source: int, target: int, size: int | None) -> int:
    copied = 0
    while size is None or copied < size:
        data = os.read(source, _BUFFER if size is None else min(_BUFFER, size - copied))
        if not data:
            break
        view = memoryview(data)
        while view:
            view = view[os.write(target, view):]
        copied += len(data)
    return copied
