"""Small files of a layer, made by forked helpers while the extracting process reads on.

Why: applying a layer of many small files is two kinds of work of about equal size: reading the
stream and deciding where each entry may go (Python, in :mod:`snapshot.extract`), and the four
system calls that make each file (the kernel). In one process they take turns, and GNU tar,
whose gzip runs in a second process, was faster. So the reading process keeps every decision
(each path is resolved and checked there, exactly as before) and hands helpers only the leaf
work, in batches through pipes: create this new file at this verified path, write these bytes,
set its owner, mode and times. Helpers never create directories or links and never remove
anything, so they cannot change how a later path resolves; the extractor waits for them
(:meth:`FileWriters.settle`) before it touches a path they may still be writing.

Wire format, both ways: a 4-byte little-endian length, then a :mod:`marshal` payload. To a
helper: a list of files, or None ("report"). From a helper: ``(failure, chown_refused)``, each
None or ``(entry name, strerror)``; a helper reports once per None, and once, then exits, when
a file fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import marshal
import os
import signal
from typing import Any

from snapshot.forking import fork_helper

# O_EXCL never follows a symlink in the last component and fails on anything already there, so
# a file is always a new inode: data never goes through an existing symlink or hardlink.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_BATCH_FILES = 64
_BATCH_BYTES = 256 << 10
_PIPE_SIZE = 1 << 20

FileJob = tuple[str, str, bytes, int, int, int, int, int, int, bool, bool]
"""``(host path, entry name, data, create mode, uid, gid, mode, atime_ns, mtime_ns, chown,
chmod)``: chown and chmod say whether the new file needs them (see ``_Extractor.needs``)."""


class WriterFailed(Exception):
    """A helper could not make a file (``name`` is its entry) or died (``name`` is None)."""

    def __init__(self, name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


class FileWriters:
    """Forked helpers that make files handed to them, in order per helper."""

    def __init__(self, helpers: list[tuple[int, int, int]]) -> None:
        self._helpers = helpers  # (pid, jobs write end, reports read end)
        self._batch: list[FileJob] = []
        self._batch_bytes = 0
        self._current = 0  # the helper taking the files of the current directory
        self._directory = ""
        self.chown_refused: tuple[str, str] | None = None

    @classmethod
    def start(cls, count: int) -> FileWriters | None:
        """Fork up to ``count`` helpers; None when not even one could be had."""
        helpers: list[tuple[int, int, int]] = []
        for _ in range(count):
            jobs_r, jobs_w = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(jobs_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            reports_r, reports_w = os.pipe()
            others = tuple(fd for _, w, r in helpers for fd in (w, r))
            pid = fork_helper(functools.partial(_helper_main, jobs_r, reports_w),
                              close=(jobs_w, reports_r, *others))
            os.close(jobs_r)
            os.close(reports_w)
            if pid is None:
                os.close(jobs_w)
                os.close(reports_r)
                break
            helpers.append((pid, jobs_w, reports_r))
        return cls(helpers) if helpers else None

    def submit(self, job: FileJob, directory: str) -> None:
        """Hand over a file of ``directory``. A directory's files go to one helper: creating
        files in one directory takes that directory's lock, so two helpers there take turns."""
        if directory != self._directory:
            self._flush()
            self._current = (self._current + 1) % len(self._helpers)
            self._directory = directory
        self._batch.append(job)
        self._batch_bytes += len(job[2])
        if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        payload = marshal.dumps(self._batch)
        self._batch, self._batch_bytes = [], 0
        self._send(self._current, payload)

    def _send(self, index: int, payload: bytes) -> None:
        jobs_w = self._helpers[index][1]
        view = memoryview(len(payload).to_bytes(4, "little") + payload)
        try:
            while view:
                view = view[os.write(jobs_w, view):]
        except BrokenPipeError:
            self._report(index)  # it failed and said why, or died: either raises
            raise WriterFailed(None, "a file-writing helper process stopped") from None

    def settle(self) -> None:
        """Return once every file handed over so far exists; raises :class:`WriterFailed`."""
        self._flush()
        report = marshal.dumps(None)
        for index in range(len(self._helpers)):
            self._send(index, report)
        for index in range(len(self._helpers)):
            self._report(index)

    def _report(self, index: int) -> None:
        pid, _, reports_r = self._helpers[index]
        size = _read_exactly(reports_r, 4)
        payload = _read_exactly(reports_r, int.from_bytes(size, "little")) if size else b""
        try:
            failure, chown_refused = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            raise WriterFailed(None, f"a file-writing helper process (pid {pid}) died"
                               ) from None
        if chown_refused is not None and self.chown_refused is None:
            self.chown_refused = chown_refused
        if failure is not None:
            raise WriterFailed(*failure)

    def stop(self, *, kill: bool = True) -> None:
        """Let the helpers exit, and reap them; ``kill`` ends them at once (after a failure,
        what they still hold is not wanted)."""
        helpers, self._helpers = self._helpers, []
        for pid, jobs_w, reports_r in helpers:
            os.close(jobs_w)  # a helper reading finds the end of its jobs and exits
            os.close(reports_r)
            if kill:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # PID 1 may have reaped it already
                os.waitpid(pid, 0)


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from ``fd``, or fewer if the writer is gone."""
    parts, have = [], 0
    while have < size:
        chunk = os.read(fd, size - have)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _helper_main(jobs_r: int, reports_w: int) -> None:
    """A helper's whole life: make the files of each batch, report when asked, stop at EOF."""
    chown_refused: tuple[str, str] | None = None
    with open(jobs_r, "rb", buffering=1 << 20) as jobs:
        while size := jobs.read(4):
            batch: Any = marshal.loads(jobs.read(int.from_bytes(size, "little")))
            if batch is None:
                _send_report(reports_w, None, chown_refused)
                continue
            for job in batch:
                try:
                    refused = _make_file(*job)
                except Exception as e:  # whatever it is, the parent says it, naming the entry
                    reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
                    _send_report(reports_w, (job[1], reason), chown_refused)
                    return
                if refused is not None and chown_refused is None:
                    chown_refused = (job[1], refused)


def _make_file(host: str, _name: str, data: bytes, create_mode: int, uid: int, gid: int,
               mode: int, atime_ns: int, mtime_ns: int, chown: bool, chmod: bool) -> str | None:
    """Create one file; returns chown's error text when chown was refused (rootless)."""
    refused = None
    fd = os.open(host, CREATE_FLAGS, create_mode)
    try:
        if data:
            view = memoryview(data)
            while view:  # more than one write only on a short write
                view = view[os.write(fd, view):]
        if chown:
            try:
                os.fchown(fd, uid, gid)
            except PermissionError as e:
                refused = e.strerror
        if chmod:
            os.fchmod(fd, mode)  # after chown, which clears setuid and setgid
        os.utime(fd, ns=(atime_ns, mtime_ns))
    finally:
        os.close(fd)
    return refused


def _send_report(reports_w: int, failure: tuple[str, str] | None,
                 chown_refused: tuple[str, str] | None) -> None:
    payload = marshal.dumps((failure, chown_refused))
    view = memoryview(len(payload).to_bytes(4, "little") + payload)
    while view:
        view = view[os.write(reports_w, view):]
