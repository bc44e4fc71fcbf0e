"""Layer compression and decompression: gzip through ISA-L, zstd through libzstd, or none.

Writers stream: a layer goes tar -> compressor -> file without ever being whole in memory, and the
compressors run in their own threads (ISA-L's threaded gzip writer, zstd's workers), so
compression overlaps with the tar being written. Both outputs are byte-stable: the gzip header has
no mtime and ISA-L's threaded writer compresses fixed-size blocks the same way whatever the number
of threads; zstd with one or more workers gives the same frame for any number of workers.

Readers turn every failure of a truncated or damaged stream into :class:`CorruptLayerError`.
libzstd's streaming reader ends quietly at a truncated frame, so the zstd reader follows the frame
structure (headers and block sizes, no decompression) as bytes pass and knows whether the stream
ended on a frame boundary.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

import isal.igzip
import isal.igzip_threaded
import zstandard

from snapshot.errors import CorruptLayerError

Algorithm = Literal["gzip", "zstd", "none"]
ALGORITHMS: tuple[Algorithm, ...] = ("gzip", "zstd", "none")

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}

# kaniko writes gzip through go-containerregistry, whose default is gzip.BestSpeed (1).
DEFAULT_GZIP_LEVEL = 1
DEFAULT_ZSTD_LEVEL = 3
BLOCK_SIZE = 1 << 20

# python-isal ships untyped functions; these names give them the types kiln relies on.
_open_threaded_gzip: Callable[..., BinaryIO] = isal.igzip_threaded.open
_IGzipFile: Callable[..., BinaryIO] = isal.igzip.IGzipFile  # type: ignore[assignment]


@dataclass(frozen=True)
class Compression:
    """How new layers are compressed.

    ``level`` is on the scale users know: 0-9 for gzip (zlib's), mapped onto ISA-L's 0-3;
    -7..22 for zstd. None is the default (gzip 1 like kaniko, zstd 3). ``threads`` is the number
    of compression workers, -1 for one per CPU (the output does not depend on it).
    """

    algorithm: Algorithm = "gzip"
    level: int | None = None
    threads: int = -1

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown compression {self.algorithm!r}; "
                             f"expected one of {', '.join(ALGORITHMS)}")
        if self.level is not None:
            low, high = {"gzip": (0, 9), "zstd": (-7, 22), "none": (0, 9)}[self.algorithm]
            if not low <= self.level <= high:
                raise ValueError(f"compression level {self.level} is out of range for "
                                 f"{self.algorithm} ({low}..{high})")

    @property
    def isal_level(self) -> int:
        """The ISA-L level (0-3) for a zlib-scale gzip level: 0-1 fast ... 7-9 best."""
        level = DEFAULT_GZIP_LEVEL if self.level is None else self.level
        return 0 if level == 0 else 1 if level <= 3 else 2 if level <= 6 else 3

    @property
    def zstd_level(self) -> int:
        return DEFAULT_ZSTD_LEVEL if self.level is None or self.level == 0 else self.level

    @property
    def worker_count(self) -> int:
        if self.threads > 0:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return os.cpu_count() or 1


@contextmanager
def compressed_writer(sink: BinaryIO, compression: Compression) -> Iterator[BinaryIO]:
    """A writable stream whose bytes reach ``sink`` compressed; finished (not closed) on exit.

    On an exception the stream is abandoned: what reached ``sink`` is not a valid stream.
    """
    if compression.algorithm == "none":
        yield sink
        return
    if compression.algorithm == "gzip":
        writer: BinaryIO = _open_threaded_gzip(sink, "wb", compresslevel=compression.isal_level,
                                           threads=compression.worker_count,
                                           block_size=BLOCK_SIZE)
    else:
        compressor = zstandard.ZstdCompressor(level=compression.zstd_level,
                                              threads=compression.worker_count,
                                              write_checksum=True)
        writer = cast(BinaryIO, compressor.stream_writer(sink, closefd=False,
                                                         write_size=BLOCK_SIZE))
    try:
        yield writer
    except BaseException:
        _close_quietly(writer)
        raise
    writer.close()  # writes the end of the stream; neither writer closes a file it was given


def _close_quietly(writer: BinaryIO) -> None:
    with contextlib.suppress(Exception):  # the first error is the one to report
        writer.close()


def detect_compression(first_bytes: bytes) -> Algorithm:
    """``gzip``, ``zstd`` or ``none`` (a plain tar) from a stream's first bytes (4 suffice)."""
    if first_bytes.startswith(GZIP_MAGIC):
        return "gzip"
    if first_bytes.startswith(ZSTD_MAGIC):
        return "zstd"
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if first_bytes.startswith(magic):
            raise CorruptLayerError(f"layer is {name}-compressed; kiln reads gzip, zstd and "
                                    "uncompressed layers")
    return "none"


def open_decompressed(stream: BinaryIO, algorithm: str) -> BinaryIO:
    """A readable stream of ``stream``'s content decompressed with ``algorithm``.

    ``algorithm`` is ``gzip``, ``zstd``, ``none`` or ``auto`` (by magic number). Reading a
    truncated or damaged stream raises :class:`CorruptLayerError`. Closing the result does not
    close ``stream``.
    """
    if algorithm == "auto":
        head = _read_exactly_up_to(stream, 6)
        stream = cast(BinaryIO, _Prefixed(head, stream))
        algorithm = detect_compression(head)
    if algorithm == "none":
        return stream
    if algorithm == "gzip":
        raw: io.RawIOBase = _GzipReader(stream)
    elif algorithm == "zstd":
        raw = _ZstdReader(stream)
    else:
        raise ValueError(f"unknown compression {algorithm!r}")
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=BLOCK_SIZE))


def _read_exactly_up_to(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Prefixed(io.RawIOBase):
    """``head`` (already read from ``stream``) followed by the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _CountingSource(io.RawIOBase):
    """``stream`` as a raw reader that counts bytes and, for zstd, follows the frames."""

    def __init__(self, stream: BinaryIO, frames: _ZstdFrameTracker | None = None) -> None:
        self._stream = stream
        self.frames = frames
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        count = len(data)
        buffer[:count] = data
        self.count += count
        if self.frames is not None and count:
            self.frames.feed(data)
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        if self.frames is not None and data:
            self.frames.feed(data)
        return data


class _GzipReader(io.RawIOBase):
    """ISA-L gzip; errors become CorruptLayerError.

    Decompression runs in the caller's thread: ISA-L inflates at over a GB/s, far faster than
    files are created, and a background reader would outlive a tar reader that stops at the
    end-of-archive marker.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._source = _CountingSource(stream)
        self._inner = _IGzipFile(fileobj=self._source, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            count: int = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        except EOFError:
            raise CorruptLayerError("gzip stream is truncated (it ends before its end-of-stream "
                                    "marker)") from None
        except (OSError, ValueError) as exc:
            raise CorruptLayerError(f"gzip stream is corrupt: {exc}") from None
        if count == 0 and self._source.count == 0:
            raise CorruptLayerError("gzip stream is empty")
        return count

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    """libzstd's streaming reader, plus the check it lacks: did the last frame end?"""

    def __init__(self, stream: BinaryIO) -> None:
        self._frames = _ZstdFrameTracker()
        self._source = _CountingSource(stream, self._frames)
        self._inner = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, self._source), read_size=BLOCK_SIZE, read_across_frames=True,
            closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            count = self._inner.readinto(buffer)
        except zstandard.ZstdError as exc:
            raise CorruptLayerError(f"zstd stream is corrupt: {exc}") from None
        if count == 0:
            self._check_complete()
        return count

    def _check_complete(self) -> None:
        while self._source.read(BLOCK_SIZE):  # anything libzstd left unread still counts
            pass
        self._frames.check_complete()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()  # type: ignore[no-untyped-call]
        super().close()


class _ZstdFrameTracker:
    """Follows zstd frames (RFC 8878) through their headers and block sizes, in any chunking."""

    def __init__(self) -> None:
        self._header = bytearray()  # the header bytes gathered so far
        self._need = 4              # header bytes wanted before the next step
        self._state = "magic"
        self._skip = 0              # content bytes to pass over
        self._checksum = False
        self._offset = 0
        self.frames = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if self._skip == 0 and self._state == "skippable":
                    self._state, self._need = "magic", 4
                continue
            take = min(self._need - len(self._header), end - pos)
            self._header += view[pos:pos + take]
            pos += take
            if len(self._header) == self._need:
                self._advance(bytes(self._header))
        self._offset += end

    def _advance(self, header: bytes) -> None:
        self._header.clear()
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if header == ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable-size", 4
            else:
                raise CorruptLayerError(f"zstd stream is corrupt: no frame magic number at "
                                        f"byte {self._offset}")
        elif state == "skippable-size":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = ("skippable", 0) if self._skip else ("magic", 4)
            self.frames += 1
        elif state == "descriptor":
            descriptor = header[0]
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            dictionary_id = (0, 1, 2, 4)[descriptor & 0x03]
            content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            rest = (0 if single_segment else 1) + dictionary_id + content_size
            self._state, self._need = "block", 3
            if rest:
                self._state, self._need = "frame-header", rest
        elif state == "frame-header":
            self._state, self._need = "block", 3
        elif state == "block":
            block = int.from_bytes(header, "little")
            last, kind, size = block & 1, (block >> 1) & 3, block >> 3
            if kind == 3:
                raise CorruptLayerError("zstd stream is corrupt: reserved block type")
            self._skip = 1 if kind == 1 else size
            if last:
                self._state, self._need = ("checksum", 4) if self._checksum else ("magic", 4)
                if not self._checksum:
                    self.frames += 1
        elif state == "checksum":
            self._state, self._need = "magic", 4
            self.frames += 1

    def check_complete(self) -> None:
        """Raise unless the bytes seen so far end exactly after a whole frame."""
        if self.frames == 0 and self._offset == 0:
            raise CorruptLayerError("zstd stream is empty")
        if self._state != "magic" or self._header or self._skip or self.frames == 0:
            raise CorruptLayerError(f"zstd stream is truncated (it ends inside a frame after "
                                    f"{self._offset} bytes)")
