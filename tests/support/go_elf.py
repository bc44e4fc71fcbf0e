"""A synthetic Go binary for the SBOM tests: the smallest ELF file whose ``.go.buildinfo`` section
follows the format the Go 1.18+ linker writes (CI has no Go toolchain to build a real one, and a
committed binary would be built from someone else's code).

The section: ``\\xff Go buildinf:``, the pointer size, a flags byte (bit 1: big-endian, bit 2:
strings inline), padding to 32 bytes, then the Go version and the module info, each prefixed by
its length as an unsigned varint; the module info sits between two 16-byte sentinels, as the
linker writes it. The ELF holds one loadable segment and a null section, ``.go.buildinfo`` and
``.shstrtab``.
"""

from __future__ import annotations

import struct

#: The sentinels the linker puts around the module info (``runtime/debug`` looks for them).
_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
_END = bytes.fromhex("f932433186182072008242104116d8f2")
#: Where the one loadable segment maps the file.
BASE = 0x400000


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def modinfo(path: str, main: tuple[str, str] | None,
            deps: list[tuple[str, str]] | list[tuple[str, str, str, str]]) -> str:
    """``runtime/debug`` text: ``path``, ``mod``, ``dep`` lines; a dep of four fields
    ``(path, version, new_path, new_version)`` is followed by its ``=>`` replacement."""
    lines = [f"path\t{path}"]
    if main is not None:
        lines.append(f"mod\t{main[0]}\t{main[1]}\t")
    for dep in deps:
        lines.append(f"dep\t{dep[0]}\t{dep[1]}\th1:fake=")
        if len(dep) == 4:
            lines.append(f"=>\t{dep[2]}\t{dep[3]}\t")
    lines.append("build\t-compiler=gc")
    return "\n".join(lines) + "\n"


def buildinfo_section(go_version: str, info: str, big_endian: bool = False,
                      pointer_size: int = 8, inline: bool = True) -> bytes:
    flags = (0x1 if big_endian else 0) | (0x2 if inline else 0)
    header = b"\xff Go buildinf:" + bytes([pointer_size, flags])
    header += bytes(32 - len(header))
    wrapped = _START + info.encode() + _END
    version = go_version.encode()
    return header + uvarint(len(version)) + version + uvarint(len(wrapped)) + wrapped


def elf(section: bytes, wide: bool = True, big_endian: bool = False,
        section_headers: bool = True) -> bytes:
    """An ELF executable holding ``section`` as ``.go.buildinfo`` (16-byte aligned), with one
    PT_LOAD segment mapping the file at ``BASE`` so Go's own ``go version -m`` reads it too;
    ``section_headers=False`` leaves the section table out."""
    order = ">" if big_endian else "<"
    ehsize, phentsize, shentsize = (64, 56, 64) if wide else (52, 32, 40)
    data_at = 128  # past the ELF header and the program header, aligned to 16
    names = b"\0.go.buildinfo\0.shstrtab\0"
    names_at = data_at + len(section)
    shoff = (names_at + len(names) + 15) & ~15
    size = shoff + 3 * shentsize
    ident = b"\x7fELF" + bytes([2 if wide else 1, 2 if big_endian else 1, 1]) + bytes(9)
    counts = (shentsize, 3, 2) if section_headers else (0, 0, 0)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, BASE, ehsize,
                                     shoff if section_headers else 0, 0, ehsize, phentsize, 1,
                                     *counts)
        program = struct.pack(order + "IIQQQQQQ", 1, 6, 0, BASE, BASE, size, size, 0x1000)
        entry = order + "IIQQQQIIQQ"
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, BASE, ehsize,
                                     shoff if section_headers else 0, 0, ehsize, phentsize, 1,
                                     *counts)
        program = struct.pack(order + "IIIIIIII", 1, 0, BASE, BASE, size, size, 6, 0x1000)
        entry = order + "IIIIIIIIII"
    out = bytearray((header + program).ljust(data_at, b"\0") + section + names)
    out.extend(bytes(shoff - len(out)))
    if section_headers:
        out.extend(bytes(shentsize))  # the null section
        out.extend(struct.pack(entry, 1, 1, 3, BASE + data_at, data_at, len(section), 0, 0,
                               16, 0))
        out.extend(struct.pack(entry, 15, 3, 0, 0, names_at, len(names), 0, 0, 1, 0))
    return bytes(out)


def go_binary(path: str = "example.com/app", main: tuple[str, str] | None = (
        "example.com/app", "v1.0.0"),
        deps: list[tuple[str, str]] | list[tuple[str, str, str, str]] | None = None,
        go_version: str = "go1.22.1", **elf_options: bool) -> bytes:
    """A whole synthetic Go executable's bytes."""
    return elf(buildinfo_section(go_version, modinfo(path, main, deps or [])), **elf_options)
