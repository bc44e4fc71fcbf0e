"""Go binaries' embedded build info in the SBOM, read from synthetic ELF files built to the
Go 1.18+ linker's format (tests/support/go_elf.py; Go's own ``go version -m`` reads them too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.attest.gobuild import GoModule, parse_blob, read_build_info
from executor.attest.sbom import scan_root
from tests.support.go_elf import buildinfo_section, go_binary, modinfo


def _binary(tmp_path: Path, data: bytes, name: str = "app") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def test_main_module_and_dependencies_are_read_from_the_buildinfo_section(tmp_path: Path
                                                                           ) -> None:
    info = read_build_info(_binary(tmp_path, go_binary(
        deps=[("golang.org/x/text", "v0.14.0"), ("github.com/Foo/bar", "v2.0.0+incompatible")])))
    assert info is not None
    assert (info.go_version, info.path) == ("go1.22.1", "example.com/app")
    assert info.main == GoModule("example.com/app", "v1.0.0")
    assert [d.purl for d in info.deps] == ["pkg:golang/golang.org/x/text@v0.14.0",
                                           "pkg:golang/github.com/Foo/bar@v2.0.0%2Bincompatible"]


@pytest.mark.parametrize("wide,big_endian", [(True, False), (False, False), (False, True),
                                             (True, True)])
def test_32_and_64_bit_elf_of_either_byte_order(tmp_path: Path, wide: bool,
                                                big_endian: bool) -> None:
    info = read_build_info(_binary(tmp_path, go_binary(wide=wide, big_endian=big_endian)))
    assert info is not None and info.main == GoModule("example.com/app", "v1.0.0")


def test_the_magic_is_found_without_section_headers(tmp_path: Path) -> None:
    info = read_build_info(_binary(tmp_path, go_binary(section_headers=False)))
    assert info is not None and info.main == GoModule("example.com/app", "v1.0.0")


def test_a_replacement_module_is_what_was_compiled_in(tmp_path: Path) -> None:
    info = read_build_info(_binary(tmp_path, go_binary(deps=[
        ("example.com/old", "v1.0.0", "example.com/fork", "v1.0.1"),
        ("example.com/local", "v0.3.0", "./local", "(devel)")])))
    assert info is not None
    assert info.deps == [GoModule("example.com/fork", "v1.0.1"),
                         GoModule("example.com/local", "v0.3.0")]


def test_pre_go_1_18_and_non_go_files_are_not_read(tmp_path: Path) -> None:
    old = buildinfo_section("go1.17", modinfo("example.com/app", None, []), inline=False)
    assert parse_blob(old) is None
    assert read_build_info(_binary(tmp_path, b"#!/bin/sh\necho hi\n", "script")) is None
    assert read_build_info(_binary(tmp_path, b"\x7fELF\x02\x01\x01" + bytes(100), "c")) is None


def test_a_damaged_length_prefix_is_not_read() -> None:
    section = bytearray(buildinfo_section("go1.22.1", modinfo("example.com/app", None, [])))
    section[32] = 0xFF  # the version's length now runs past the section
    assert parse_blob(bytes(section)) is None


def test_sbom_scan_lists_go_modules_and_the_standard_library(tmp_path: Path) -> None:
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    _binary(tmp_path / "usr/local/bin", go_binary(deps=[("golang.org/x/text", "v0.14.0")]))
    found = [p for p in scan_root(tmp_path) if p.ecosystem == "golang"]
    assert [(p.purl, p.files, p.source) for p in found] == [
        ("pkg:golang/example.com/app@v1.0.0", ["usr/local/bin/app"], "usr/local/bin/app"),
        ("pkg:golang/golang.org/x/text@v0.14.0", [], "usr/local/bin/app"),
        ("pkg:golang/stdlib@1.22.1", [], "usr/local/bin/app")]


def test_a_go_binary_without_the_executable_bit_is_not_scanned(tmp_path: Path) -> None:
    _binary(tmp_path, go_binary()).chmod(0o644)
    assert scan_root(tmp_path) == []
