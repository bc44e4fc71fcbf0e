"""One byte stream made in parts by forked helpers, and read back here in order.

Why: a layer of tens of thousands of small files costs about ten microseconds of Python per
file (open, check, read, header), and the GIL keeps threads from sharing that; processes can.
So the stream is cut into parts beforehand (whole entries each, by the caller), part ``i`` is
made by producer ``i % n`` (this process is producer 0, the others forked helpers), and this
process reads the helpers' parts from their pipes in turn, making its own in between. A
helper runs ahead of the reader by what its pipe holds, which is a few parts.

The bytes come back exactly as the producing function yields them, so the stream does not
depend on how many helpers made it. Wire format, helper to reader: frames of a 4-byte
little-endian length and that many bytes; a length of 0 ends a part; ``0xFFFFFFFF`` is a
failure, followed by a :mod:`marshal` ``(kind, message)`` pair, raised here as that
:class:`SnapshotError` kind. A helper that dies raises :class:`HelperLost`, for the caller to
make the whole stream again alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import marshal
import os
import signal
from collections.abc import Callable, Generator, Iterator
from typing import BinaryIO

from snapshot.errors import SnapshotError, StorageError
from snapshot.forking import fork_helper

_PIPE_SIZE = 1 << 20
_END = (0).to_bytes(4, "little")
_FAILED = 0xFFFF_FFFF
_ERRORS: dict[str, type[SnapshotError]] = {"StorageError": StorageError,
                                           "SnapshotError": SnapshotError}


class HelperLost(Exception):
    """A helper ended without finishing its parts: the stream is incomplete."""


def ordered_parts(parts: int, produce: Callable[[int], Iterator[bytes]],
                  helpers: int) -> Generator[bytes, None, None]:
    """The bytes of ``produce(0)``, ``produce(1)``, ... ``produce(parts - 1)``, in order,
    made by this process and up to ``helpers`` forked ones."""
    producers = min(helpers, parts - 1) + 1 if helpers > 0 else 1
    helpers_by_producer: dict[int, tuple[int, int]] = {}  # -> (pipe's read end, pid)
    try:
        for producer in range(1, producers):
            read_end, write_end = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            others = tuple(fd for fd, _ in helpers_by_producer.values())
            pid = fork_helper(
                functools.partial(_helper_main, produce, range(producer, parts, producers),
                                  write_end),
                close=(read_end, *others))
            os.close(write_end)
            if pid is None:  # no more processes to be had: this one makes those parts
                os.close(read_end)
                break
            helpers_by_producer[producer] = (read_end, pid)
        streams = {producer: os.fdopen(fd, "rb", buffering=_PIPE_SIZE, closefd=False)
                   for producer, (fd, _) in helpers_by_producer.items()}
        for index in range(parts):
            stream = streams.get(index % producers)
            if stream is None:
                yield from produce(index)
            else:
                yield from _read_part(stream)
    finally:
        for read_end, pid in helpers_by_producer.values():
            _stop(read_end, pid)


def _stop(read_end: int, pid: int) -> None:
    """Close a helper's pipe and reap it; one still running (the reader stopped early) is
    killed first, not waited for."""
    os.close(read_end)
    with contextlib.suppress(ChildProcessError):  # PID 1 may have reaped it already
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _read_part(stream: BinaryIO) -> Iterator[bytes]:
    read = stream.read
    while True:
        head = read(4)
        if len(head) < 4:
            raise HelperLost()
        size = int.from_bytes(head, "little")
        if size == 0:
            return
        if size == _FAILED:
            try:
                kind, message = marshal.loads(read())
            except (EOFError, ValueError, TypeError):
                raise HelperLost() from None
            raise _ERRORS.get(kind, SnapshotError)(message)
        data = read(size)
        if len(data) < size:
            raise HelperLost()
        yield data


def _helper_main(produce: Callable[[int], Iterator[bytes]], indices: range,
                 write_end: int) -> None:
    """A helper's whole life: make its parts and send them, or the error that stopped it."""
    try:
        for index in indices:
            for data in produce(index):
                if data:
                    _write_all(write_end, len(data).to_bytes(4, "little"))
                    _write_all(write_end, data)
            _write_all(write_end, _END)
    except SnapshotError as exc:
        with contextlib.suppress(OSError):
            _write_all(write_end, _FAILED.to_bytes(4, "little")
                       + marshal.dumps((type(exc).__name__, str(exc))))
    except BrokenPipeError:
        pass  # the reader stopped (an error of its own): nothing left to do


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
