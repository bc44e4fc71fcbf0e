"""ADD's auto-extraction of local tar archives, decided by content as BuildKit decides it.

BuildKit does not look at the file name: a source is extracted when its bytes, decompressed by
whichever of gzip, bzip2, xz or zstd the magic number names (or none), begin with a tar header
that Go's ``archive/tar`` accepts. A ``.tar.gz`` that is really text is copied as a file, and a
tarball named ``data.bin`` is extracted. Extraction goes through :func:`snapshot.extract
.extract_layer` with the destination directory as its root and chroot semantics, which is what
Docker's ``chrootarchive.Untar`` does: no entry, link or ``..`` reaches outside the destination
(``up -> ..`` then ``up/etc/f`` writes ``etc/f`` in it: a chroot's ``/..`` is ``/``), and
owners, modes and times come from the archive (``--chown`` and ``--chmod`` do not apply to
extracted content, in BuildKit as in the legacy builder).

One difference from BuildKit is kept on purpose: extraction applies ``.wh.`` whiteout entries
(an image layer's convention) where Docker would write them as ordinary files.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from snapshot.extract import extract_layer
from snapshot.securepath import Ignores

_BLOCK = 512
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def compression_of(head: bytes) -> str:
    """The compression a file's first bytes announce: gzip, bzip2, xz, zstd or none."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return "none"


@contextlib.contextmanager
def open_archive(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading, decompressed by its magic number."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))
        kind = compression_of(raw.read(6))
        raw.seek(0)
        stream: Any = raw
        if kind == "gzip":
            stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif kind == "bzip2":
            stream = stack.enter_context(bz2.BZ2File(raw, "rb"))
        elif kind == "xz":
            stream = stack.enter_context(lzma.LZMAFile(raw, "rb"))
        elif kind == "zstd":
            stream = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw))
        yield cast(BinaryIO, stream)


def is_tar_header(block: bytes) -> bool:
    """True when ``block`` is a tar header Go's reader accepts (ustar, GNU or V7 with a
    valid checksum)."""
    if len(block) < _BLOCK or block == bytes(_BLOCK):
        return False
    stored = block[148:156].replace(b"\x00", b" ").strip()
    try:
        checksum = int(stored, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:_BLOCK])
    signed = (sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 32
              + sum(b - 256 if b > 127 else b for b in block[156:_BLOCK]))
    return checksum in (unsigned, signed)


def is_archive(path: Path) -> bool:
    """True when ADD extracts the regular file ``path`` instead of copying it."""
    try:
        with open_archive(path) as stream:
            head = stream.read(_BLOCK)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
        return False
    return is_tar_header(head)


@dataclass(frozen=True)
class IgnoredBelow:
    """The build's ignore list (paths relative to ``root``) seen from ``directory`` inside
    the root, where an archive is extracted: its entries are named relative to ``directory``."""

    ignore: Ignores | None
    root: Path
    directory: Path

    def is_ignored(self, rel: str) -> bool:
        return self.ignore is not None and self.ignore.is_ignored(self._in_root(rel))

    def may_ignore_in(self, directory: str) -> bool:
        return self.ignore is not None and self.ignore.may_ignore_in(self._in_root(directory))

    def _in_root(self, rel: str) -> str:
        prefix = os.path.relpath(self.directory, self.root)
        if prefix == ".":
            return rel
        return f"{prefix}/{rel}" if rel else prefix


def extract_archive(path: Path, destination: Path, ignore: Ignores) -> list[str]:
    """Unpack the archive at ``path`` into the existing directory ``destination``.

    Names and links resolve with ``destination`` as a chroot, as Docker's ``chrootarchive``
    does: ``../x`` and ``up -> ..`` stay inside it and an entry naming it (``""``) is skipped.
    Returns the names of the entries the ignore list kept out (mount points, in place).
    """
    skipped: list[str] = []
    with open_archive(path) as stream:
        extract_layer(destination, stream, ignore=ignore, layer_name=path.name, chroot=True,
                      skipped=skipped.append)
    return skipped
