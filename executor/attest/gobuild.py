"""Go binaries' embedded build info: the main module and every dependency the linker recorded.

Since Go 1.18 the linker writes a ``.go.buildinfo`` section: a 32-byte header (the magic
``\\xff Go buildinf:``, the pointer size, a flags byte whose bit 2 says the strings follow inline)
then two length-prefixed strings (unsigned varints): the Go version and the module info, which
``runtime/debug`` prints as ``path``, ``mod``, ``dep``, ``=>`` (replacement) and ``build`` lines
between two 16-byte sentinels. Read here with a small ELF section-table parser, the same facts Go's
own ``debug/buildinfo`` reads. Not read: binaries from before Go 1.18 (the strings sit behind
pointers into the data segment) and non-ELF executables (Mach-O, PE).
"""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
FLAG_INLINE_STRINGS = 0x2
SECTION = b".go.buildinfo"
#: How far into a binary without section headers to look for the magic (16-byte aligned).
SEARCH_LIMIT = 32 << 20
#: A module info string longer than this is not one (a corrupt or hostile length prefix).
MAX_STRING = 16 << 20


@dataclass(frozen=True)
class GoModule:
    path: str
    version: str

    @property
    def purl(self) -> str:
        """``pkg:golang/NAMESPACE/NAME@VERSION``, each path segment percent-encoded."""
        segments = "/".join(urllib.parse.quote(s, safe="") for s in self.path.split("/"))
        return f"pkg:golang/{segments}@{urllib.parse.quote(self.version, safe='')}"


@dataclass
class GoBuildInfo:
    go_version: str  # "go1.22.1"
    path: str = ""  # the main package's import path
    main: GoModule | None = None
    deps: list[GoModule] = field(default_factory=list)


def read_build_info(path: Path) -> GoBuildInfo | None:
    """The build info of the ELF binary at ``path``; None for anything else (not ELF, not Go,
    Go before 1.18, truncated)."""
    try:
        with path.open("rb") as fh:
            blob = _buildinfo_blob(fh)
    except (OSError, struct.error):
        return None
    return parse_blob(blob) if blob is not None else None


def _buildinfo_blob(fh: BinaryIO) -> bytes | None:
    """The ``.go.buildinfo`` section's bytes, or the aligned blob holding the magic when the
    section headers are gone (only then is the file searched: every other ELF file in a root
    costs its headers and its section table, a few kilobytes)."""
    ident = fh.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) \
            or ident[5] not in (1, 2):
        return None
    wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
    header = fh.read(48 if wide else 36)
    if wide:
        shoff, = struct.unpack_from(order + "Q", header, 0x28 - 16)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x3A - 16)
        entry = order + "IIQQQQ"
    else:
        shoff, = struct.unpack_from(order + "I", header, 0x20 - 16)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x2E - 16)
        entry = order + "IIIIII"
    if shoff and 0 < shnum < 0x10000 and shentsize >= struct.calcsize(entry) \
            and shstrndx < shnum:
        fh.seek(shoff)
        table = fh.read(shnum * shentsize)
        sections = [struct.unpack_from(entry, table, i * shentsize) for i in range(shnum)
                    if (i + 1) * shentsize <= len(table)]
        if shstrndx < len(sections):
            _, _, _, _, names_at, names_size = sections[shstrndx]
            fh.seek(names_at)
            names = fh.read(min(names_size, 1 << 20))
            for name_at, _, _, _, offset, size in sections:
                if names[name_at:names.find(b"\0", name_at)] == SECTION:
                    fh.seek(offset)
                    return fh.read(min(size, MAX_STRING))
            return None  # a section table without the section: not Go, or Go before 1.18
    return _search_magic(fh)


def _search_magic(fh: BinaryIO) -> bytes | None:
    fh.seek(0)
    data = fh.read(SEARCH_LIMIT)
    at = data.find(MAGIC)
    while at >= 0:
        if at % 16 == 0:
            return data[at:]
        at = data.find(MAGIC, at + 1)
    return None


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError("truncated varint")


def parse_blob(blob: bytes) -> GoBuildInfo | None:
    """The header and the two inline strings; None for a pre-1.18 blob or a damaged one."""
    if len(blob) < HEADER_SIZE or not blob.startswith(MAGIC) \
            or not blob[15] & FLAG_INLINE_STRINGS:
        return None
    try:
        at = HEADER_SIZE
        strings = []
        for _ in range(2):
            length, at = _uvarint(blob, at)
            if length > MAX_STRING or at + length > len(blob):
                return None
            strings.append(blob[at:at + length].decode("utf-8", errors="replace"))
            at += length
    except ValueError:
        return None
    version, modinfo = strings
    info = GoBuildInfo(version)
    _parse_modinfo(_strip_sentinels(modinfo), info)
    return info


def _strip_sentinels(modinfo: str) -> str:
    """The 16 bytes before and after the text (Go writes them so ``runtime/debug`` can find it)."""
    if len(modinfo) >= 33 and modinfo[-17] == "\n":
        return modinfo[16:-16]
    return modinfo


def _parse_modinfo(text: str, info: GoBuildInfo) -> None:
    """``path``, ``mod`` and ``dep`` lines; an ``=>`` line replaces the module before it with the
    one actually compiled in; a local directory replacement (``./dep``, which Go versions
    ``(devel)``) is no module, so the required module and version stand."""
    last: str | None = None  # "mod" or "dep"
    for line in text.splitlines():
        fields = line.split("\t")
        kind = fields[0]
        if kind == "path" and len(fields) >= 2:
            info.path = fields[1]
        elif kind in ("mod", "dep") and len(fields) >= 3:
            module = GoModule(fields[1], fields[2])
            if kind == "mod":
                info.main = module
            else:
                info.deps.append(module)
            last = kind
        elif kind == "=>" and len(fields) >= 3 and last is not None and fields[2] \
                and not fields[1].startswith(("./", "../", "/")):
            replaced = GoModule(fields[1], fields[2])
            if last == "mod":
                info.main = replaced
            elif info.deps:
                info.deps[-1] = replaced
