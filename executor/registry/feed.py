"""A blob download that another thread reads while it is still being written.

Why: a base image's biggest layer is usually its first, and kiln used to download it whole
before extracting any of it, so pulling it cost the download plus the extraction, one after
the other. kaniko extracts straight from the registry's stream. Here the download still goes
to its file first (verified, renamed into place, kept for the base-image cache and for a
retry), and the extraction follows that file a little behind the download: it reads what has
been written and waits for more.

The downloading thread tells a :class:`DownloadFeed` what it does (a new file begun, bytes
written, done, failed); a :class:`FollowingReader` in the extracting thread reads through it.
A download that starts over (a broken connection retried from the beginning, into a new file)
makes the reader raise :class:`DownloadRestarted`: what it passed on came from the abandoned
attempt, so the extraction must begin again from the finished file. Memory stays at one read's
worth: the bytes wait on disk, not in a queue.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path


class DownloadRestarted(Exception):
    """The download being followed began again in a new file: start over from the blob."""


class DownloadFailed(Exception):
    """The download being followed failed; the downloading thread raises the reason."""


class DownloadFeed:
    """What a download has written so far; updated by the downloader, waited on by a reader."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._path: str | None = None
        self._attempt = 0
        self._written = 0
        self._finished: str | None = None  # the blob's final path, once it is there
        self._failed = False

    # -- the downloading thread --------------------------------------------------------------

    def begin(self, path: str) -> None:
        """A download attempt starts writing ``path`` from its first byte."""
        with self._changed:
            self._path, self._written = path, 0
            self._attempt += 1
            self._changed.notify_all()

    def wrote(self, count: int) -> None:
        """``count`` more bytes are in the file (written through to the kernel)."""
        with self._changed:
            self._written += count
            self._changed.notify_all()

    def finish(self, path: Path) -> None:
        """The blob is complete and verified at ``path`` (downloaded now, or found there)."""
        with self._changed:
            self._finished = os.fspath(path)
            self._changed.notify_all()

    def fail(self) -> None:
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    # -- the reading thread ------------------------------------------------------------------

    def wait_for_file(self, gone: tuple[str, int] | None = None) -> tuple[str, int, bool]:
        """``(path, attempt, finished)`` of the file to read, once there is one: the blob
        itself when it is complete, else the file the current attempt writes.

        ``gone`` is a file the caller found missing with its attempt (renamed into place, or
        removed by a failed attempt): wait until the download has moved on from it.
        """
        with self._changed:
            while self._finished is None and not self._failed and (
                    self._path is None or (self._path, self._attempt) == gone):
                self._changed.wait()
            if self._finished is not None:
                return self._finished, self._attempt, True
            if self._failed:
                raise DownloadFailed()
            assert self._path is not None
            return self._path, self._attempt, False

    def wait_for_bytes(self, attempt: int, offset: int) -> int | None:
        """Bytes readable at ``offset`` of attempt ``attempt``'s file; None when the blob is
        complete and ``offset`` is its end."""
        with self._changed:
            while True:
                if self._failed:
                    raise DownloadFailed()
                if self._attempt != attempt:
                    raise DownloadRestarted()
                if self._written > offset:
                    return self._written - offset
                if self._finished is not None:
                    return None
                self._changed.wait()


class FollowingReader(io.RawIOBase):
    """Reads a blob through its :class:`DownloadFeed`, waiting for bytes not written yet."""

    def __init__(self, feed: DownloadFeed) -> None:
        self._feed = feed
        self._fd = -1
        self._attempt = 0
        self._complete = False  # reading the finished blob itself: its end is the end
        self._offset = 0
        #: Whether a read met :class:`DownloadRestarted` (readers above may wrap the error).
        self.restarted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if self._fd < 0:
            self._open()
        wanted = size if size >= 0 else 1 << 20
        if not self._complete:
            try:
                available = self._feed.wait_for_bytes(self._attempt, self._offset)
            except DownloadRestarted:
                self.restarted = True
                raise
            if available is None:
                return b""
            wanted = min(wanted, available)
        data = os.pread(self._fd, wanted, self._offset)
        self._offset += len(data)
        return data

    def _open(self) -> None:
        """Open the file to follow; one renamed or removed before it could be opened was
        finished or abandoned, and the feed knows which."""
        gone: tuple[str, int] | None = None
        while True:
            path, attempt, complete = self._feed.wait_for_file(gone)
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if complete:
                    raise
                gone = (path, attempt)
                continue
            self._attempt, self._complete = attempt, complete
            return

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
