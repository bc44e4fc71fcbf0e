"""extract_layer(chroot=True), ADD's extraction: climbing names and links stay in the root.

Docker extracts an ADD archive with ``chrootarchive``: the destination is a chroot, where
``/..`` is ``/``. So what a layer may not do (climb above the root) an archive may, and it
lands inside the destination; the host's canary next to the root never changes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot.extract import extract_layer
from snapshot.ignore import IgnoreList
from tests.unit import hostile_layers as h
from tests.unit.hostile_layers import directory, file, hardlink, layer, symlink

CANARY = b"canary: the host's own bytes\n"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/root`` to extract into; ``tmp_path/outside/canary`` must never change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_bytes(CANARY)
    root = tmp_path / "root"
    root.mkdir()
    yield root
    assert (outside / "canary").read_bytes() == CANARY
    assert sorted(os.listdir(outside)) == ["canary"]
    assert sorted(os.listdir(tmp_path)) == ["outside", "root"]


def extract(root: Path, data: bytes, ignored: tuple[str, ...] = ()) -> list[str]:
    skipped: list[str] = []
    extract_layer(root, io.BytesIO(data), ignore=IgnoreList(root=root, paths=frozenset(ignored)),
                  layer_name="a.tar", chroot=True, skipped=skipped.append)
    return skipped


@pytest.mark.parametrize("target", ["..", "../..", "../../..", "/.."])
def test_a_symlink_climbing_above_the_root_resolves_at_the_root(root: Path,
                                                                target: str) -> None:
    extract(root, h.symlink_climbing_then_file(target))
    assert os.readlink(root / "up") == target
    assert (root / "outside/canary").read_bytes() == b"pwned"


def test_a_nested_climbing_symlink_resolves_at_the_root(root: Path) -> None:
    extract(root, h.nested_symlink_climbing_then_file())
    assert (root / "outside/canary").read_bytes() == b"pwned"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/x", "//x", "/../x"])
def test_a_name_climbing_above_the_root_or_absolute_lands_in_it(root: Path, name: str) -> None:
    extract(root, layer(file(name, b"x")))
    assert (root / "x").read_bytes() == b"x"


def test_a_hardlink_through_a_climbing_symlink_links_inside_the_root(root: Path) -> None:
    extract(root, layer(symlink("up", ".."), file("up/f", b"f"), hardlink("h", "up/f")))
    assert os.stat(root / "h").st_ino == os.stat(root / "f").st_ino


@pytest.mark.parametrize("name", ["", ".", "./", ".."])
def test_an_entry_naming_the_root_is_skipped(root: Path, name: str) -> None:
    root.chmod(0o755)
    extract(root, layer(file(name, b"no name"), directory("./", mode=0o700), file("f", b"f")))
    assert sorted(os.listdir(root)) == ["f"]
    assert root.stat().st_mode & 0o777 == 0o755


def test_entries_left_out_by_the_ignore_list_are_reported(root: Path) -> None:
    skipped = extract(root, layer(directory("sys"), directory("sys/fs"), file("sys/fs/foo", b"x"),
                                  file("proc", b"a file over a mount point"), file("ok", b"ok")),
                      ignored=("sys", "proc"))
    # The ignored directory itself is not content; what would have gone in it is.
    assert skipped == ["sys/fs", "sys/fs/foo", "proc"]
    assert sorted(os.listdir(root)) == ["ok"]
