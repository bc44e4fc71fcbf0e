"""Reading a layer's tar stream: one header at a time, ustar, PAX and GNU, with bounds.

The read side of extraction, kept apart from applying entries (:mod:`snapshot.extract`), as
umoci keeps its tar reading apart from its unpacking. Parsed here rather than through
:mod:`tarfile` (several times slower per entry): the stream is read once with a 1 MiB buffer
and never held in memory, and everything a hostile stream could use to make kiln hold
gigabytes (extended headers, names) is bounded. Every problem is one line naming the layer and
the entry after which the stream went wrong.
"""

from __future__ import annotations

import base64
import functools
import os
import urllib.parse
import zlib
from collections.abc import Callable
from typing import BinaryIO

from snapshot.errors import CorruptLayerError

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20
# PAX and GNU long-name headers of one entry, and all global PAX headers, together; real ones
# are a few KiB. A bound, so a hostile stream cannot make us hold gigabytes of "headers".
_MAX_EXTENDED_HEADERS = 16 << 20
_NO_ID = 0xFFFF_FFFF  # (uid_t) -1: chown's "no change", so no owner can be it
_SHOWN_NAME = 120  # characters of a name an error message shows

# Entry types (the typeflag byte).
REG, AREG, CONT = ord("0"), 0, ord("7")
LNK, SYM, CHR, BLK, DIR, FIFO = (ord(c) for c in "123456")
_PAX, _GLOBAL_PAX, _GNU_LONGNAME, _GNU_LONGLINK = (ord(c) for c in "xgLK")
_EXTENDED = frozenset((_PAX, _GLOBAL_PAX, _GNU_LONGNAME, _GNU_LONGLINK))
_POSIX_MAGIC = b"ustar\x00"
# The ustar header: name [0:100], mode uid gid [100:124], size mtime [124:148], chksum
# [148:156], typeflag [156], linkname [157:257], magic [257:263], version, uname, gname,
# devmajor [329:337], devminor [337:345], prefix [345:500] (GNU keeps atime and ctime there).


def show_name(name: str) -> str:
    """``name`` quoted for a one-line message: control characters escaped, long names cut."""
    if len(name) > _SHOWN_NAME:
        name = name[:_SHOWN_NAME] + "…"
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return '"' + text.translate(_ESCAPES) + '"'


_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {ord('"'): '\\"'}


# --- reading the stream ---------------------------------------------------------------------


class TarHeader:
    """One entry of the stream, with its PAX and GNU extensions folded in."""

    __slots__ = ("atime_ns", "devmajor", "devminor", "gid", "kind", "linkname", "mode",
                 "mtime_ns", "name", "size", "uid", "xattrs")

    def __init__(self, name: str, kind: int, mode: int, uid: int, gid: int, size: int,
                 mtime_ns: int, linkname: str) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.atime_ns = mtime_ns
        self.linkname = linkname
        self.devmajor = 0
        self.devminor = 0
        self.xattrs: dict[str, bytes] | None = None


class TarReader:
    """Headers of a ustar / PAX / GNU tar stream, one at a time, with a bounded buffer."""

    def __init__(self, stream: BinaryIO, layer: str) -> None:
        self._stream = stream
        self._layer = layer
        self._buf = b""
        self._pos = 0
        self._pending = 0  # data and padding of the current entry not consumed yet
        self._global_pax: dict[bytes, bytes] = {}
        self._global_size = 0
        self._last = ""  # name of the last entry, for messages

    # Buffer primitives.

    def _read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as e:  # zlib.error, EOFError, OSError, zstd errors: one line, no trace
            raise CorruptLayerError(
                f"layer {self._layer}: cannot read the layer stream: {one_line(e)}") from e

    def _take(self, size: int) -> bytes:
        """The next ``size`` bytes, or fewer when the stream ends first."""
        pos = self._pos
        if len(self._buf) - pos >= size:
            self._pos = pos + size
            return self._buf[pos:pos + size]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        while have < size:
            chunk = self._read(max(_CHUNK, size - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if have <= size:
            self._buf, self._pos = b"", 0
            return data
        self._buf, self._pos = data, size
        return data[:size]

    def _skip(self, size: int, write: Callable[[memoryview | bytes], None] | None = None
              ) -> None:
        """Step over the next ``size`` bytes, handing each piece of them to ``write`` if
        given."""
        pos = self._pos
        avail = len(self._buf) - pos
        if avail >= size:
            if write is not None:
                write(memoryview(self._buf)[pos:pos + size])
            self._pos = pos + size
            return
        if avail and write is not None:
            write(memoryview(self._buf)[pos:])
        size -= avail
        self._buf, self._pos = b"", 0
        while size > 0:
            chunk = self._read(_CHUNK)
            if not chunk:
                raise self._truncated()
            if len(chunk) > size:
                if write is not None:
                    write(memoryview(chunk)[:size])
                self._buf, self._pos = chunk, size
                return
            if write is not None:
                write(chunk)
            size -= len(chunk)

    def copy_to(self, fd: int, size: int) -> None:
        """Write the current entry's ``size`` data bytes to ``fd`` and step over its padding."""
        self._pending = 0
        pad = -size % _BLOCK
        pos = self._pos
        if len(self._buf) - pos >= size + pad:  # the common case: a small file, in the buffer
            data = memoryview(self._buf)[pos:pos + size]
            written = os.write(fd, data)
            if written != size:
                _write_all(fd, data[written:])
            self._pos = pos + size + pad
            return
        self._skip(size, functools.partial(_write_all, fd))
        if pad:
            self._skip(pad)

    def take_data(self, size: int) -> bytes:
        """The current entry's ``size`` data bytes (a small file's), stepping over its padding."""
        self._pending = 0
        pad = -size % _BLOCK
        pos = self._pos
        if len(self._buf) - pos >= size + pad:
            self._pos = pos + size + pad
            return self._buf[pos:pos + size]
        data = self._take(size)
        if len(data) < size:
            raise self._truncated()
        if pad:
            self._skip(pad)
        return data

    def _drain(self) -> None:
        """Read to the end, so that whoever hashes the stream as it passes sees all of it."""
        self._buf, self._pos = b"", 0
        while self._read(_CHUNK):
            pass

    def _truncated(self) -> CorruptLayerError:
        where = f"after entry {show_name(self._last)}" if self._last else "in the first header"
        return CorruptLayerError(f"layer {self._layer}: truncated: the stream ends {where}")

    def _corrupt(self, problem: str) -> CorruptLayerError:
        where = f"after entry {show_name(self._last)}" if self._last else "at the first header"
        return CorruptLayerError(f"layer {self._layer}: not a valid tar stream {where}: {problem}")

    # Headers.

    def next(self) -> TarHeader | None:
        """The next entry's header, or None at the end of the archive."""
        if self._pending:
            self._skip(self._pending)
            self._pending = 0
        pax: dict[bytes, bytes] | None = None
        long_name = long_link = None
        extended = 0
        while True:
            block = self._take(_BLOCK)
            if len(block) < _BLOCK:
                if not block and pax is None and long_name is None and long_link is None:
                    # The end-of-archive blocks are missing; Go's reader and tarfile accept
                    # that, and a cut download is caught by the digest of the blob.
                    self._drain()
                    return None
                raise self._truncated()
            if block == _ZERO_BLOCK:
                following = self._take(_BLOCK)
                if following.count(0) != len(following):
                    raise self._corrupt("a lone zero block inside the archive")
                self._drain()
                return None
            try:
                numbers = _numbers(block)
            except ValueError:
                numbers = None
            if numbers is None or not _checksum_matches(block, numbers[5]):
                raise self._corrupt("a header whose checksum does not match (not a tar?)")
            size = numbers[3]
            if size < 0:
                raise self._corrupt("a header with a bad size")
            kind = block[156]
            if kind not in _EXTENDED:
                break
            extended += size
            if kind == _GLOBAL_PAX:
                self._global_size += size
            if max(extended, self._global_size) > _MAX_EXTENDED_HEADERS:
                raise self._corrupt(f"extended headers of more than {_MAX_EXTENDED_HEADERS} "
                                    "bytes")
            data = self._take(size + (-size % _BLOCK))
            if len(data) < size:
                raise self._truncated()
            data = data[:size]
            if kind in (_PAX, _GLOBAL_PAX):
                try:
                    records = _parse_pax(data)
                except ValueError as e:
                    raise self._corrupt(f"a bad PAX header ({e})") from None
                if kind == _GLOBAL_PAX:
                    self._global_pax.update(records)
                else:
                    pax = records if pax is None else pax | records
            elif kind == _GNU_LONGNAME:
                long_name = data.split(b"\0", 1)[0]
            else:
                long_link = data.split(b"\0", 1)[0]
        try:
            header = self._build(block, numbers, kind, pax, long_name, long_link)
        except _BadHeader as e:
            raise self._corrupt(str(e)) from None
        except ValueError:  # a numeric field or PAX value that is not a number, bad base64
            raise self._corrupt("a header with a malformed field") from None
        self._last = header.name
        self._pending = header.size + (-header.size % _BLOCK)
        return header

    def _build(self, block: bytes, numbers: tuple[int, ...], kind: int,
               pax: dict[bytes, bytes] | None, long_name: bytes | None,
               long_link: bytes | None) -> TarHeader:
        mode, uid, gid, size, mtime, _ = numbers
        if long_name is not None:
            raw_name = long_name
        else:
            end = block.find(0, 0, 100)
            raw_name = block[:end] if end >= 0 else block[:100]
            if block[345] and block[257:263] == _POSIX_MAGIC:  # a ustar name prefix
                end = block.find(0, 345, 500)
                raw_name = block[345:end if end >= 0 else 500] + b"/" + raw_name
        if long_link is not None:
            raw_link = long_link
        elif kind in (SYM, LNK):
            end = block.find(0, 157, 257)
            raw_link = block[157:end if end >= 0 else 257]
        else:
            raw_link = b""
        if kind == AREG and raw_name.endswith(b"/"):
            kind = DIR  # pre-POSIX tars mark directories by the trailing slash only
        header = TarHeader(raw_name.decode("utf-8", "surrogateescape"), kind, mode & 0o7777,
                         uid, gid, size, mtime * 1_000_000_000,
                         raw_link.decode("utf-8", "surrogateescape"))
        if self._global_pax:
            pax = self._global_pax if pax is None else self._global_pax | pax
        if pax:  # rare: most entries are plain ustar headers
            _fold_pax(header, pax)
        if not (0 <= header.uid < _NO_ID and 0 <= header.gid < _NO_ID):
            # Only PAX and base-256 numbers reach this far; chown would take -1 as "leave it".
            raise _BadHeader(f"an owner {header.uid}:{header.gid} out of range")
        if kind in (CHR, BLK):
            header.devmajor = _number(block[329:337])
            header.devminor = _number(block[337:345])
        return header


def _fold_pax(header: TarHeader, pax: dict[bytes, bytes]) -> None:
    """Let the PAX records of an entry override its ustar fields."""
    for key, value in pax.items():
        if key == b"path":
            header.name = value.decode("utf-8", "surrogateescape")
        elif key == b"linkpath":
            header.linkname = value.decode("utf-8", "surrogateescape")
        elif key == b"size":
            header.size = int(value)
        elif key == b"uid":
            header.uid = int(value)
        elif key == b"gid":
            header.gid = int(value)
        elif key == b"mtime":
            header.mtime_ns = _pax_time_ns(value)
            if b"atime" not in pax:
                header.atime_ns = header.mtime_ns
        elif key == b"atime":
            header.atime_ns = _pax_time_ns(value)
        elif key.startswith(b"SCHILY.xattr."):
            header.xattrs = header.xattrs or {}
            header.xattrs[key[13:].decode("utf-8", "surrogateescape")] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            header.xattrs = header.xattrs or {}
            attr = urllib.parse.unquote_to_bytes(key[17:])
            header.xattrs[attr.decode("utf-8", "surrogateescape")] = base64.b64decode(
                value + b"=" * (-len(value) % 4))
        elif key.startswith(b"GNU.sparse."):
            raise _BadHeader("a sparse file, which layers do not use")
    if header.size < 0:
        raise _BadHeader("a header with a bad size")


class _BadHeader(ValueError):
    """A header that parses but describes something a layer cannot hold."""


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field[-1] in (0, 32):  # digits, then a NUL or a space: nearly every field there is
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    if field[0] & 0x80:
        value = int.from_bytes(bytes((field[0] & 0x7F,)) + field[1:], "big")
        if field[0] & 0x40:  # 0xff...: a negative two's-complement number
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.split(b"\0", 1)[0]
    return int(text, 8) if text.strip() else 0


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` of a 512-byte block, five times faster.

    Adler-32's low half is 1 + the sum of the bytes modulo 65521, and 256 bytes sum to at most
    65280, so each half of the block gives its sum exactly.
    """
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _numbers(block: bytes) -> tuple[int, ...]:
    """mode, uid, gid, size, mtime and checksum of a header, which lie side by side.

    Fields are octal digits ended by a NUL or a space, so one split finds all six; anything
    else (base-256, a field without its terminator, an empty one) takes the slow way.
    """
    tokens = block[100:156].replace(b"\0", b" ").split()
    if len(tokens) == 6:
        try:
            mode, uid, gid, size, mtime, checksum = tokens
            return (int(mode, 8), int(uid, 8), int(gid, 8), int(size, 8), int(mtime, 8),
                    int(checksum, 8))
        except ValueError:
            pass
    return tuple(_number(block[start:end]) for start, end in _NUMERIC_FIELDS)


_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156))


def _checksum_matches(block: bytes, stored: int) -> bool:
    field = block[148:156]
    unsigned = _byte_sum(block) - sum(field) + 8 * 32  # the field itself counts as spaces
    if stored == unsigned:
        return True
    # Old Sun and BSD tars summed signed chars; tarfile and Go accept both.
    high = sum(1 for b in block if b & 0x80) - sum(1 for b in field if b & 0x80)
    return stored == unsigned - 256 * high


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """``"%d %s=%s\\n"`` records; an empty value removes the key (POSIX)."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            break
        space = data.find(b" ", pos, pos + 24)
        if space < 0:
            raise ValueError("record without a length")
        length = int(data[pos:space])
        if length <= space - pos or pos + length > end or data[pos + length - 1] != 0x0A:
            raise ValueError("record of a wrong length")
        key, eq, value = data[space + 1:pos + length - 1].partition(b"=")
        if not eq:
            raise ValueError("record without '='")
        records[key] = value
        pos += length
    return records


def _pax_time_ns(value: bytes) -> int:
    """``1700000000.123456789`` -> nanoseconds, exactly (no float in between)."""
    text = value.decode("ascii")
    negative = text.startswith("-")
    seconds, _, fraction = text.lstrip("-").partition(".")
    if not (seconds or fraction) or not (seconds + fraction).isdigit():
        raise ValueError(f"a bad PAX time {text!r}")
    ns = int(seconds or "0") * 1_000_000_000 + int((fraction + "000000000")[:9])
    return -ns if negative else ns


def _write_all(fd: int, data: memoryview | bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # only on a short write (a full disk reports ENOSPC next)
        data = memoryview(data)[written:]
        written = os.write(fd, data)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]
