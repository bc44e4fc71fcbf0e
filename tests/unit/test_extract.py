"""extract_layer: hostile layers stay inside the root; ordinary layers apply exactly.

Every test extracts into ``tmp_path/root`` and keeps a canary in ``tmp_path/outside``; the
``world`` fixture checks after each test that nothing outside the root changed, byte for byte,
and the hostile tests say so again where the attack aims at it.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import signal
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapshot.errors import CorruptLayerError, SnapshotError, UnsafeLayerError
from snapshot.extract import extract_layer
from snapshot.ignore import IgnoreList
from tests.support.images import (
    WHITEOUT_CASE_LAYERS,
    debian_layer,
    write_oci_layout_from_layers,
)
from tests.support.runtime import require_tool
from tests.support.trees import metadata_tree
from tests.unit import hostile_layers as h
from tests.unit.hostile_layers import (
    MTIME,
    char_device,
    directory,
    fifo,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)

LAYER = "sha256:ab12"
CANARY = b"canary: the host's own bytes\n" + bytes(range(256))


def _tree(top: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Everything under ``top``: mode, owner, mtime and content or link target."""
    found: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            found[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_mtime_ns, content)
    return found


@dataclass
class World:
    root: Path
    outside: Path
    canary: Path
    before: dict[str, tuple[int, int, int, bytes | str | None]]

    def assert_canary_unchanged(self) -> None:
        assert self.canary.read_bytes() == CANARY
        assert _tree(self.outside) == self.before


@pytest.fixture(autouse=True, params=["in-process", "helpers"])
def file_writers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: files made by the extracting process, and every file that may be
    handed to a helper process (snapshot/writers.py) handed to one."""
    if request.param == "helpers":
        monkeypatch.setattr("snapshot.extract._HAND_OFF_AFTER", 1)
        monkeypatch.setattr("snapshot.extract.usable_cpus", lambda: 2)
    else:
        monkeypatch.setattr("snapshot.extract.usable_cpus", lambda: 1)
    return str(request.param)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(CANARY)
    canary.chmod(0o640)
    (outside / "dir").mkdir(mode=0o750)
    w = World(root, outside, canary, _tree(outside))
    yield w
    w.assert_canary_unchanged()


def extract(world: World, data: bytes, *, ignored: tuple[str, ...] = (),
            globs: tuple[str, ...] = ()) -> None:
    ignore = IgnoreList(root=world.root, paths=frozenset(ignored), globs=globs)
    extract_layer(world.root, io.BytesIO(data), ignore=ignore, layer_name=LAYER)


def refusal(world: World, data: bytes, error: type[Exception] = UnsafeLayerError) -> str:
    with pytest.raises(error) as caught:
        extract(world, data)
    message = str(caught.value)
    assert "\n" not in message
    world.assert_canary_unchanged()
    return message


# --- the hostile corpus -------------------------------------------------------------------


def test_a_dotdot_name_is_refused(world: World) -> None:
    assert refusal(world, h.dotdot_name()) == (
        f'layer {LAYER}: entry "../../etc/passwd" escapes the root')


def test_a_dotdot_name_aimed_at_the_canary_is_refused(world: World) -> None:
    assert refusal(world, h.dotdot_to_canary()) == (
        f'layer {LAYER}: entry "../outside/canary" escapes the root')


def test_a_dotdot_in_the_middle_of_a_name_that_climbs_out_is_refused(world: World) -> None:
    assert refusal(world, h.dotdot_inside_name()) == (
        f'layer {LAYER}: entry "a/../../outside/canary" escapes the root')


def test_a_dotdot_that_stays_inside_is_applied_lexically(world: World) -> None:
    extract(world, layer(directory("a"), file("a/../b", b"b")))
    assert (world.root / "b").read_bytes() == b"b"


def test_an_absolute_name_is_refused(world: World) -> None:
    outside = str(world.outside)
    assert refusal(world, h.absolute_name(outside)) == (
        f'layer {LAYER}: entry "{outside}/canary" is an absolute path')


def test_a_symlink_to_slash_is_followed_inside_the_root(world: World) -> None:
    extract(world, h.symlink_to_slash_then_file())
    assert os.readlink(world.root / "rootlink") == "/"
    assert (world.root / "etc/passwd").read_bytes() == b"inside\n"
    world.assert_canary_unchanged()


def test_an_absolute_symlink_to_the_hosts_directory_resolves_inside_the_root(
        world: World) -> None:
    outside = str(world.outside)
    extract(world, h.absolute_symlink_to_outside_then_file(outside))
    assert (world.root / outside.lstrip("/") / "canary").read_bytes() == b"pwned"
    world.assert_canary_unchanged()


@pytest.mark.parametrize("target", ["..", "../..", "../../..", "/.."])
def test_a_symlink_climbing_above_the_root_is_refused(world: World, target: str) -> None:
    message = refusal(world, h.symlink_climbing_then_file(target))
    if target == "/..":  # an absolute target restarts at the root, and ".." above it is out
        assert message.endswith('escapes the root through symlink "up"')
    else:
        assert message == (
            f'layer {LAYER}: entry "up/outside/canary" escapes the root through symlink "up"')


def test_a_nested_symlink_climbing_above_the_root_is_refused(world: World) -> None:
    assert refusal(world, h.nested_symlink_climbing_then_file()) == (
        f'layer {LAYER}: entry "a/b/up/outside/canary" escapes the root through symlink '
        '"a/b/up"')


def test_a_directory_through_a_climbing_symlink_is_refused(world: World) -> None:
    assert refusal(world, h.symlink_climbing_then_directory()) == (
        f'layer {LAYER}: entry "up/outside/" escapes the root through symlink "up"')


def test_a_symlink_already_on_disk_is_followed_inside_the_root(world: World) -> None:
    (world.root / "lower").symlink_to(world.outside)  # absolute, as a lower layer left it
    extract(world, layer(file("lower/canary", b"pwned")))
    assert (world.root / str(world.outside).lstrip("/") / "canary").read_bytes() == b"pwned"
    world.assert_canary_unchanged()


def test_a_relative_symlink_on_disk_that_climbs_out_is_refused(world: World) -> None:
    (world.root / "lower").symlink_to("../outside")
    assert refusal(world, layer(file("lower/canary", b"pwned"))) == (
        f'layer {LAYER}: entry "lower/canary" escapes the root through symlink "lower"')


def test_a_file_replaces_a_symlink_and_never_writes_through_it(world: World) -> None:
    (world.root / "f").symlink_to(world.canary)
    extract(world, layer(file("f", b"new", mode=0o600)))
    assert not (world.root / "f").is_symlink()
    assert (world.root / "f").read_bytes() == b"new"
    world.assert_canary_unchanged()


def test_a_file_replaces_a_hardlink_and_never_writes_through_it(world: World) -> None:
    os.link(world.canary, world.root / "h")
    extract(world, layer(file("h", b"new", mode=0o600, uid=0)))
    assert (world.root / "h").read_bytes() == b"new"
    assert os.stat(world.root / "h").st_ino != os.stat(world.canary).st_ino
    world.assert_canary_unchanged()


def test_a_directory_replaces_a_symlink_and_never_chmods_through_it(world: World) -> None:
    (world.root / "d").symlink_to(world.outside / "dir")
    extract(world, layer(directory("d", mode=0o777, uid=1234), file("d/x", b"x")))
    assert stat.S_ISDIR(os.lstat(world.root / "d").st_mode)
    assert (world.root / "d/x").read_bytes() == b"x"
    world.assert_canary_unchanged()


def test_a_hardlink_out_through_dotdot_is_refused(world: World) -> None:
    assert refusal(world, h.hardlink_dotdot()) == (
        f'layer {LAYER}: entry "stolen" is a hardlink to "../outside/canary", which escapes '
        'the root')


def test_a_hardlink_to_an_absolute_path_is_refused(world: World) -> None:
    outside = str(world.outside)
    assert refusal(world, h.hardlink_absolute(outside)) == (
        f'layer {LAYER}: entry "stolen" is a hardlink to "{outside}/canary", which is an '
        'absolute path')


def test_a_hardlink_through_a_climbing_symlink_is_refused(world: World) -> None:
    assert refusal(world, h.hardlink_through_climbing_symlink()) == (
        f'layer {LAYER}: entry "stolen" is a hardlink to "up/outside/canary", which escapes '
        'the root through symlink "up"')


def test_a_hardlink_through_an_absolute_symlink_finds_nothing_inside_the_root(
        world: World) -> None:
    outside = str(world.outside)
    assert refusal(world, h.hardlink_through_absolute_symlink(outside)) == (
        f'layer {LAYER}: entry "stolen" is a hardlink to "out/canary", which does not exist '
        'in the root')


def test_a_symlink_loop_is_refused(world: World) -> None:
    assert refusal(world, h.symlink_loop()) == (
        f'layer {LAYER}: entry "a/x" passes through more than 40 symlinks')


@pytest.mark.parametrize(("data", "entry", "target"), [
    (h.whiteout_of_dotdot(), "a/.wh...", ".."),
    (h.whiteout_of_dot(), "a/.wh..", "."),
    (h.whiteout_of_nothing(), ".wh.", ""),
])
def test_a_whiteout_of_dot_or_dotdot_is_refused(world: World, data: bytes, entry: str,
                                                 target: str) -> None:
    (world.root / "keep").write_bytes(b"keep")
    assert refusal(world, data) == (
        f'layer {LAYER}: entry "{entry}" is a whiteout of "{target}", which is not a name in '
        'its directory')
    assert (world.root / "keep").read_bytes() == b"keep"


def test_a_whiteout_whose_name_climbs_out_is_refused(world: World) -> None:
    assert refusal(world, h.whiteout_climbing()) == (
        f'layer {LAYER}: entry "a/.wh.x/../../../outside/.wh.canary" escapes the root')


def test_a_whiteout_through_a_climbing_symlink_is_refused(world: World) -> None:
    assert refusal(world, h.whiteout_through_climbing_symlink()) == (
        f'layer {LAYER}: entry "up/outside/.wh.canary" escapes the root through symlink "up"')


def test_a_device_node_is_made_inside_the_root(world: World) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a device needs root")
    extract(world, h.device_node())
    st = os.lstat(world.root / "dev/mem")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 1)
    assert stat.S_IMODE(st.st_mode) == 0o600
    world.assert_canary_unchanged()


def test_a_name_of_ten_megabytes_is_one_clean_line(world: World) -> None:
    message = refusal(world, h.huge_name(), CorruptLayerError)
    assert message == (
        f'layer {LAYER}: entry "{"a" * 120}…" has a name of 10485760 bytes, longer than a '
        'path may be (4095)')


def test_a_truncated_layer_is_corrupt(world: World) -> None:
    assert refusal(world, h.truncated(), CorruptLayerError) == (
        f'layer {LAYER}: truncated: the stream ends after entry "big"')


def test_a_layer_cut_inside_a_header_is_corrupt(world: World) -> None:
    assert refusal(world, h.truncated(cut=-200), CorruptLayerError) == (
        f'layer {LAYER}: truncated: the stream ends after entry "small"')


def test_a_stream_that_is_not_a_tar_is_corrupt(world: World) -> None:
    assert refusal(world, b"<html>503 Service Unavailable</html>\n" * 40,
                   CorruptLayerError) == (
        f"layer {LAYER}: not a valid tar stream at the first header: a header whose checksum "
        "does not match (not a tar?)")


def test_a_compressed_layer_given_as_uncompressed_is_corrupt(world: World) -> None:
    message = refusal(world, gzip.compress(layer(file("a", os.urandom(5000)))),
                      CorruptLayerError)
    assert message == (
        f"layer {LAYER}: not a valid tar stream at the first header: a header whose checksum "
        "does not match (not a tar?)")


def test_a_stream_shorter_than_a_header_is_truncated(world: World) -> None:
    assert refusal(world, b"Not Found\n", CorruptLayerError) == (
        f"layer {LAYER}: truncated: the stream ends in the first header")


def test_a_decompressor_error_is_one_line_naming_the_layer(world: World) -> None:
    whole = gzip.compress(layer(file("a", os.urandom(300_000))))
    with gzip.GzipFile(fileobj=io.BytesIO(whole[:len(whole) // 2])) as stream, \
            pytest.raises(CorruptLayerError) as caught:
        extract_layer(world.root, stream,  # type: ignore[arg-type]
                      ignore=IgnoreList(root=world.root, paths=frozenset()), layer_name=LAYER)
    assert str(caught.value) == (
        f"layer {LAYER}: cannot read the layer stream: Compressed file ended before the "
        "end-of-stream marker was reached")


def test_a_zlib_error_is_one_line_naming_the_layer(world: World) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise zlib.error("Error -3 while decompressing data: invalid stored block lengths")

    with pytest.raises(CorruptLayerError) as caught:
        extract_layer(world.root, io.BufferedReader(Broken()),
                      ignore=IgnoreList(root=world.root, paths=frozenset()), layer_name=LAYER)
    assert str(caught.value) == (
        f"layer {LAYER}: cannot read the layer stream: Error -3 while decompressing data: "
        "invalid stored block lengths")


def test_a_lone_zero_block_inside_the_archive_is_corrupt(world: World) -> None:
    one = layer(file("a", b"a"))
    broken = one[:1024] + bytes(512) + layer(file("b", b"b"))
    assert refusal(world, broken, CorruptLayerError) == (
        f'layer {LAYER}: not a valid tar stream after entry "a": a lone zero block inside the '
        "archive")


def test_a_sparse_file_is_refused_cleanly(world: World) -> None:
    data = layer(file("s", b"x", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}))
    assert refusal(world, data, CorruptLayerError) == (
        f"layer {LAYER}: not a valid tar stream at the first header: a sparse file, which "
        "layers do not use")


def test_an_entry_under_a_file_is_corrupt(world: World) -> None:
    assert refusal(world, layer(file("f", b"f"), file("f/x", b"x")), CorruptLayerError) == (
        f'layer {LAYER}: entry "f/x" needs "f" to be a directory, and it is not')


def test_a_name_with_a_newline_is_shown_on_one_line(world: World) -> None:
    assert refusal(world, layer(file("../a\nb", b""))) == (
        f'layer {LAYER}: entry "../a\\x0ab" escapes the root')


# --- whiteouts and opaque directories -------------------------------------------------------


def test_a_whiteout_deletes_a_lower_file(world: World) -> None:
    extract(world, layer(directory("etc"), file("etc/a", b"a"), file("etc/b", b"b")))
    extract(world, layer(whiteout("etc/a")))
    assert sorted(os.listdir(world.root / "etc")) == ["b"]


def test_a_whiteout_deletes_a_lower_directory_tree(world: World) -> None:
    extract(world, layer(directory("usr"), directory("usr/share"), file("usr/share/x", b"x"),
                         symlink("usr/share/l", "/etc/passwd"), fifo("usr/share/p")))
    extract(world, layer(whiteout("usr/share")))
    assert os.listdir(world.root / "usr") == []


def test_a_whiteout_deletes_a_symlink_not_its_target(world: World) -> None:
    extract(world, layer(directory("d"), file("d/x", b"x"), symlink("l", "d")))
    extract(world, layer(whiteout("l")))
    assert not os.path.lexists(world.root / "l")
    assert (world.root / "d/x").read_bytes() == b"x"


def test_a_whiteout_of_a_missing_path_does_nothing(world: World) -> None:
    extract(world, layer(whiteout("nothing/here"), whiteout("nope")))
    assert os.listdir(world.root) == []


def test_whiteout_files_are_never_written(world: World) -> None:
    extract(world, layer(directory("d"), whiteout("d/x"), opaque("d"), file(".wh..wh.plnk")))
    assert os.listdir(world.root) == ["d"]
    assert os.listdir(world.root / "d") == []


def test_a_whiteout_spares_what_the_same_layer_wrote(world: World) -> None:
    extract(world, layer(directory("a"), file("a/lower", b"l")))
    extract(world, layer(file("a/upper", b"u"), whiteout("a"), file("f", b"f"),
                         whiteout("f")))
    assert os.listdir(world.root / "a") == ["upper"]
    assert (world.root / "f").read_bytes() == b"f"


def test_an_opaque_marker_empties_the_lower_directory(world: World) -> None:
    extract(world, layer(directory("d"), file("d/old", b"o"), directory("d/sub"),
                         file("d/sub/deep", b"d")))
    extract(world, layer(directory("d"), opaque("d"), file("d/new", b"n")))
    assert os.listdir(world.root / "d") == ["new"]


def test_an_opaque_marker_spares_children_the_same_layer_wrote_before_it(world: World) -> None:
    extract(world, layer(directory("d"), file("d/old", b"o"), directory("d/sub"),
                         file("d/sub/old", b"o")))
    extract(world, layer(directory("d"), file("d/new", b"n"), file("d/sub/new", b"n"),
                         opaque("d")))
    assert sorted(os.listdir(world.root / "d")) == ["new", "sub"]
    assert os.listdir(world.root / "d/sub") == ["new"]


def test_an_opaque_marker_at_the_root_keeps_the_root(world: World) -> None:
    extract(world, layer(file("old", b"o"), directory("dir")))
    extract(world, layer(opaque("."), file("new", b"n")))
    assert os.listdir(world.root) == ["new"]


def test_a_whiteout_through_a_symlinked_directory_deletes_inside_the_root(
        world: World) -> None:
    outside = str(world.outside)
    inner = world.root / outside.lstrip("/")
    inner.mkdir(parents=True)
    (inner / "canary").write_bytes(b"the root's copy")
    (world.root / "out").symlink_to(outside)
    extract(world, layer(whiteout("out/canary")))
    assert not (inner / "canary").exists()
    world.assert_canary_unchanged()


# --- replacing one kind of entry by another -------------------------------------------------


def test_a_file_replaces_a_directory_tree(world: World) -> None:
    extract(world, layer(directory("x"), directory("x/y"), file("x/y/z", b"z")))
    extract(world, layer(file("x", b"now a file")))
    assert (world.root / "x").read_bytes() == b"now a file"


def test_a_directory_replaces_a_file(world: World) -> None:
    extract(world, layer(file("x", b"file")))
    extract(world, layer(directory("x", mode=0o750), file("x/y", b"y")))
    assert stat.S_IMODE(os.lstat(world.root / "x").st_mode) == 0o750
    assert (world.root / "x/y").read_bytes() == b"y"


def test_a_directory_replaces_a_symlink_to_a_directory(world: World) -> None:
    extract(world, layer(directory("usr"), directory("usr/lib"), file("usr/lib/a", b"a"),
                         symlink("lib", "usr/lib")))
    extract(world, layer(directory("lib"), file("lib/b", b"b")))
    assert stat.S_ISDIR(os.lstat(world.root / "lib").st_mode)
    assert os.listdir(world.root / "lib") == ["b"]
    assert os.listdir(world.root / "usr/lib") == ["a"]


def test_a_symlink_replaces_a_directory_tree(world: World) -> None:
    extract(world, layer(directory("lib"), file("lib/a", b"a")))
    extract(world, layer(symlink("lib", "usr/lib")))
    assert os.readlink(world.root / "lib") == "usr/lib"


def test_a_symlink_replaces_a_file_and_a_file_replaces_a_symlink(world: World) -> None:
    extract(world, layer(file("a", b"a"), symlink("b", "a")))
    extract(world, layer(symlink("a", "b"), file("b", b"b")))
    assert os.readlink(world.root / "a") == "b"
    assert (world.root / "b").read_bytes() == b"b"


def test_a_directory_over_a_directory_keeps_children_and_takes_the_new_metadata(
        world: World) -> None:
    extract(world, layer(directory("d", mode=0o755), file("d/keep", b"k")))
    extract(world, layer(directory("d", mode=0o700, uid=7, gid=8, mtime=MTIME + 5)))
    st = os.lstat(world.root / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 7, 8)
    assert st.st_mtime_ns == (MTIME + 5) * 10**9
    assert os.listdir(world.root / "d") == ["keep"]


def test_a_later_entry_in_the_same_layer_wins(world: World) -> None:
    extract(world, layer(directory("x"), file("x/child", b"c"), file("x", b"file"),
                         file("y", b"first"), file("y", b"second"), symlink("z", "a"),
                         directory("z")))
    assert (world.root / "x").read_bytes() == b"file"
    assert (world.root / "y").read_bytes() == b"second"
    assert stat.S_ISDIR(os.lstat(world.root / "z").st_mode)


def test_a_fifo_replaces_a_file(world: World) -> None:
    extract(world, layer(file("p", b"p")))
    extract(world, layer(fifo("p", mode=0o620)))
    st = os.lstat(world.root / "p")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o620


# --- hardlinks ----------------------------------------------------------------------------


def test_a_hardlink_shares_the_inode_of_its_target(world: World) -> None:
    extract(world, layer(directory("bin"), file("bin/a", b"busybox", mode=0o755),
                         hardlink("bin/b", "bin/a"), hardlink("c", "./bin/a")))
    a, b, c = (os.lstat(world.root / p) for p in ("bin/a", "bin/b", "c"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert a.st_nlink == 3


def test_a_hardlink_to_a_lower_layers_file_works(world: World) -> None:
    extract(world, layer(file("a", b"a")))
    extract(world, layer(hardlink("b", "a")))
    assert os.lstat(world.root / "a").st_ino == os.lstat(world.root / "b").st_ino


def test_a_hardlink_to_a_symlink_links_the_symlink(world: World) -> None:
    extract(world, layer(symlink("s", str(world.canary)), hardlink("t", "s")))
    assert os.readlink(world.root / "t") == str(world.canary)
    assert os.lstat(world.root / "s").st_ino == os.lstat(world.root / "t").st_ino


def test_a_hardlink_replaces_what_was_there(world: World) -> None:
    extract(world, layer(file("a", b"a"), directory("b"), file("b/x", b"x")))
    extract(world, layer(hardlink("b", "a")))
    assert os.lstat(world.root / "a").st_ino == os.lstat(world.root / "b").st_ino


def test_a_hardlink_to_a_directory_is_refused(world: World) -> None:
    assert refusal(world, layer(directory("d"), hardlink("h", "d"))) == (
        f'layer {LAYER}: entry "h" is a hardlink to "d", which is a directory')


def test_a_hardlink_to_a_missing_file_is_refused(world: World) -> None:
    assert refusal(world, layer(hardlink("h", "nope/x"))) == (
        f'layer {LAYER}: entry "h" is a hardlink to "nope/x", which does not exist in the root')


# --- metadata -----------------------------------------------------------------------------


def test_owner_and_setuid_survive_chown(world: World) -> None:
    extract(world, layer(directory("bin"), file("bin/su", b"su", mode=0o4755, uid=0, gid=0),
                         file("bin/wall", b"w", mode=0o2755, uid=1000, gid=5),
                         file("bin/own", b"o", mode=0o6750, uid=1000, gid=1000)))
    su, wall, own = (os.lstat(world.root / "bin" / n) for n in ("su", "wall", "own"))
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert (wall.st_uid, wall.st_gid, stat.S_IMODE(wall.st_mode)) == (1000, 5, 0o2755)
    assert (own.st_uid, own.st_gid, stat.S_IMODE(own.st_mode)) == (1000, 1000, 0o6750)


def test_a_sticky_read_only_directory_gets_its_mode_after_its_children(world: World) -> None:
    extract(world, layer(directory("tmp", mode=0o1777), directory("ro", mode=0o555),
                         file("ro/x", b"x", mode=0o444)))
    assert stat.S_IMODE(os.lstat(world.root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(world.root / "ro").st_mode) == 0o555
    assert (world.root / "ro/x").read_bytes() == b"x"


def test_owners_of_symlinks_are_their_own(world: World) -> None:
    extract(world, layer(file("t", b"t", uid=1, gid=1), symlink("l", "t", uid=33, gid=44)))
    st = os.lstat(world.root / "l")
    assert (st.st_uid, st.st_gid) == (33, 44)
    assert os.lstat(world.root / "t").st_uid == 1


def test_mtimes_keep_nanoseconds_from_pax(world: World) -> None:
    ns = "1700000000.123456789"
    extract(world, layer(file("f", b"f", pax={"mtime": ns}), symlink("l", "f"),
                         directory("d", pax={"mtime": "1600000000.5"}), file("d/x", b"x")))
    assert os.lstat(world.root / "f").st_mtime_ns == 1_700_000_000_123_456_789
    assert os.lstat(world.root / "l").st_mtime_ns == MTIME * 10**9
    # Written after its child, so the child's creation did not move it.
    assert os.lstat(world.root / "d").st_mtime_ns == 1_600_000_000_500_000_000


def test_an_implicit_parent_is_created_and_its_entry_mtime_wins_later(world: World) -> None:
    extract(world, layer(file("a/b/c", b"c"), directory("a", mtime=MTIME - 100)))
    assert os.lstat(world.root / "a").st_mtime_ns == (MTIME - 100) * 10**9
    assert stat.S_IMODE(os.lstat(world.root / "a/b").st_mode) == 0o755


def test_xattrs_from_pax_records_are_set(world: World) -> None:
    extract(world, layer(
        file("f", b"f", pax={"SCHILY.xattr.user.kiln": "yes", "SCHILY.xattr.user.e": ""}),
        directory("d", pax={"SCHILY.xattr.user.dir": "d"})))
    assert os.getxattr(world.root / "f", "user.kiln") == b"yes"
    assert os.getxattr(world.root / "d", "user.dir") == b"d"


def test_a_security_capability_xattr_is_set_as_root(world: World) -> None:
    # cap_net_bind_service+ep, VFS_CAP_REVISION_2, as `setcap` writes it; binary value.
    value = bytes.fromhex("0000000200040000000000000000000000000000")
    data = layer(file("ping", b"p", mode=0o755))
    # tarfile cannot write non-UTF-8 PAX values, so patch the record in by hand.
    patched = _with_pax_record(data, b"SCHILY.xattr.security.capability", value)
    if os.geteuid() != 0:
        pytest.skip("security.* xattrs need root")
    extract(world, patched)
    assert os.getxattr(world.root / "ping", "security.capability") == value


def _with_pax_record(data: bytes, key: bytes, value: bytes) -> bytes:
    """``data`` (one member, no PAX header) with a PAX header carrying ``key=value`` first."""
    body = key + b"=" + value + b"\n"
    length = len(body) + 3
    length += len(str(length)) - 2
    record = str(length).encode() + b" " + body
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(record)
    header = info.tobuf(tarfile.USTAR_FORMAT)
    return header + record + bytes(-len(record) % 512) + data


def test_a_fifo_is_made_with_its_metadata(world: World) -> None:
    extract(world, layer(fifo("run/initctl", mode=0o600, mtime=MTIME + 1)))
    st = os.lstat(world.root / "run/initctl")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == (MTIME + 1) * 10**9


def test_a_char_device_is_made_as_root(world: World) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a device needs root")
    extract(world, layer(directory("dev"), char_device("dev/null", 1, 3)))
    st = os.lstat(world.root / "dev/null")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666


def test_without_mknod_device_nodes_are_skipped_with_one_warning(
        world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    real_mknod = os.mknod

    def mknod(path: str, mode: int = 0o600, device: int = 0) -> None:
        if not stat.S_ISFIFO(mode):
            raise PermissionError(1, "Operation not permitted")
        real_mknod(path, mode, device)

    monkeypatch.setattr(os, "mknod", mknod)
    with caplog.at_level(logging.WARNING, logger="kiln"):
        extract(world, layer(directory("dev"), char_device("dev/null", 1, 3),
                             char_device("dev/zero", 1, 5), fifo("dev/fifo"),
                             file("after", b"a")))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "kiln"
    assert warnings[0].getMessage() == (
        f"layer {LAYER}: cannot create device nodes here (mknod: Operation not permitted), "
        "skipping them, first dev/null")
    assert sorted(os.listdir(world.root / "dev")) == ["fifo"]
    assert (world.root / "after").read_bytes() == b"a"


# --- ignored paths ------------------------------------------------------------------------


def test_ignored_paths_are_never_written(world: World) -> None:
    (world.root / "proc").mkdir()
    extract(world, layer(directory("proc", mode=0o555), file("proc/version", b"fake"),
                         file("var/run/x", b"x"), file("kept", b"k")),
            ignored=("proc", "var/run"))
    assert os.listdir(world.root / "proc") == []
    assert stat.S_IMODE(os.lstat(world.root / "proc").st_mode) != 0o555
    assert not (world.root / "var/run").exists()
    assert (world.root / "kept").read_bytes() == b"k"


def test_a_symlink_into_an_ignored_directory_does_not_let_a_write_in(world: World) -> None:
    (world.root / "secrets").mkdir()
    extract(world, layer(symlink("s", "/secrets"), file("s/token", b"stolen")),
            ignored=("secrets",))
    assert os.listdir(world.root / "secrets") == []


def test_a_whiteout_never_removes_an_ignored_path(world: World) -> None:
    (world.root / "kiln").mkdir()
    (world.root / "kiln/state").write_bytes(b"state")
    extract(world, layer(whiteout("kiln"), whiteout("kiln/state")), ignored=("kiln",))
    assert (world.root / "kiln/state").read_bytes() == b"state"


def test_a_whiteout_of_a_directory_keeps_the_ignored_path_inside_it(world: World) -> None:
    extract(world, layer(directory("var"), directory("var/run"), file("var/run/lock", b"l"),
                         directory("var/lib"), file("var/lib/x", b"x"), file("var/y", b"y")))
    extract(world, layer(whiteout("var")), ignored=("var/run",))
    assert os.listdir(world.root / "var") == ["run"]
    assert (world.root / "var/run/lock").read_bytes() == b"l"


def test_an_opaque_marker_keeps_ignored_paths(world: World) -> None:
    extract(world, layer(directory("etc"), file("etc/hosts", b"host's"),
                         file("etc/passwd", b"p")))
    extract(world, layer(opaque("etc"), file("etc/group", b"g")), ignored=("etc/hosts",))
    assert sorted(os.listdir(world.root / "etc")) == ["group", "hosts"]


def test_a_glob_ignored_path_is_kept_by_an_opaque_marker(world: World) -> None:
    extract(world, layer(directory("tmp"), file("tmp/cache-1", b"c"), file("tmp/other", b"o")))
    extract(world, layer(opaque("tmp")), globs=("tmp/cache-*",))
    assert os.listdir(world.root / "tmp") == ["cache-1"]


def test_a_directory_holding_an_ignored_path_is_not_replaced(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    extract(world, layer(directory("var"), directory("var/run"), file("var/run/pid", b"1"),
                         file("var/other", b"o")))
    with caplog.at_level(logging.WARNING, logger="kiln"):
        extract(world, layer(file("var", b"a file now"), file("after", b"a")),
                ignored=("var/run",))
    assert (world.root / "var/run/pid").read_bytes() == b"1"
    assert (world.root / "after").read_bytes() == b"a"
    assert "not replacing directory var: it holds ignored paths" in caplog.text


def test_a_hardlink_to_an_ignored_path_is_skipped(world: World) -> None:
    (world.root / "run").mkdir()
    (world.root / "run/secret").write_bytes(b"s")
    extract(world, layer(hardlink("copy", "run/secret"), file("after", b"a")),
            ignored=("run",))
    assert not (world.root / "copy").exists()
    assert (world.root / "after").read_bytes() == b"a"


# --- the stream -----------------------------------------------------------------------------


def test_the_stream_is_read_to_its_end(world: World) -> None:
    stream = io.BytesIO(layer(file("a", b"a")) + bytes(10 * 512))
    extract_layer(world.root, stream, ignore=IgnoreList(root=world.root, paths=frozenset()),
                  layer_name=LAYER)
    assert stream.read() == b""


def test_an_empty_stream_is_an_empty_layer(world: World) -> None:
    extract(world, b"")
    extract(world, bytes(1024))
    assert os.listdir(world.root) == []


def test_a_file_larger_than_the_buffer_is_copied_exactly(world: World) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    extract(world, layer(file("a", b"a"), file("big", big), file("z", b"z")))
    assert (world.root / "big").read_bytes() == big
    assert (world.root / "z").read_bytes() == b"z"


def test_dot_slash_names_and_the_root_entry(world: World) -> None:
    extract(world, layer(directory("./", mode=0o751, mtime=MTIME), directory("./etc/"),
                         file("./etc/hostname", b"kiln\n")))
    assert (world.root / "etc/hostname").read_bytes() == b"kiln\n"
    st = os.lstat(world.root)
    assert stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime_ns == MTIME * 10**9


def test_the_root_cannot_become_a_file(world: World) -> None:
    assert refusal(world, layer(file("./", b"x"))) == (
        f'layer {LAYER}: entry "./" would replace the root with something that is not a '
        "directory")


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_in_every_tar_format(world: World, fmt: int) -> None:
    deep = "/".join(["directory-with-a-long-name"] * 6)  # 167 characters: ustar's prefix
    name = f"{deep}/file"
    members = [directory("/".join(deep.split("/")[:i])) for i in range(1, 7)]
    if fmt != tarfile.USTAR_FORMAT:
        members.append(file("x" * 200, b"long"))
        members.append(symlink("l", name))  # ustar has no room for a long link target
    extract(world, layer(*members, file(name, b"deep"), format=fmt))
    assert (world.root / name).read_bytes() == b"deep"
    if fmt != tarfile.USTAR_FORMAT:
        assert os.readlink(world.root / "l") == name
        assert (world.root / ("x" * 200)).read_bytes() == b"long"


def test_names_that_are_not_utf8_keep_their_bytes(world: World) -> None:
    extract(world, layer(file("caf\udce9", b"latin-1"), format=tarfile.GNU_FORMAT))
    assert os.listdir(os.fsencode(world.root)) == [b"caf\xe9"]


def test_global_pax_headers_apply_to_later_entries(world: World) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"uid": "4242"}) as tar:
        info = tarfile.TarInfo("g")
        tar.addfile(info)
    extract(world, out.getvalue())
    assert os.lstat(world.root / "g").st_uid == 4242


def test_a_write_failure_is_one_line_naming_the_entry(world: World) -> None:
    # Each component fits, and so does the name, but not the root's path and the name.
    name = "/".join(["d" * 250] * 16) + "/" + "f" * (4095 - 16 * 251)
    assert len(name) == 4095
    with pytest.raises(SnapshotError) as caught:
        extract(world, layer(file(name, b"x")))
    message = str(caught.value)
    assert message.startswith(f'layer {LAYER}: entry "{"d" * 120}…" ')
    assert message.endswith("cannot be applied: File name too long")
    assert "\n" not in message


def test_extraction_matches_gnu_tar(world: World, tmp_path: Path) -> None:
    data = layer(
        directory("etc", mode=0o755, mtime=MTIME - 1), file("etc/passwd", b"root:x:0:0\n"),
        file("etc/shadow", b"root:*:1::\n", mode=0o640, gid=42),
        directory("usr/bin", mode=0o755), file("usr/bin/su", b"su", mode=0o4755),
        hardlink("usr/bin/sudo", "usr/bin/su"), symlink("bin", "usr/bin"),
        fifo("run/fifo"), directory("tmp", mode=0o1777))
    extract(world, data)
    theirs = tmp_path / "gnu"
    theirs.mkdir()
    tar_file = tmp_path / "layer.tar"
    tar_file.write_bytes(data)
    subprocess.run(["tar", "--same-owner", "-xpf", str(tar_file), "-C", str(theirs)],
                   check=True)
    ours = _tree(world.root)
    gnu = _tree(theirs)
    # GNU tar leaves implicit parents (usr, run) with the time of extraction, as we do.
    for implicit in ("usr", "run"):
        ours.pop(implicit)
        gnu.pop(implicit)
    assert ours == gnu


def test_gnu_base256_numbers_are_read(world: World) -> None:
    extract(world, layer(file("big-ids", b"x", uid=3_000_000, gid=2**31),
                         format=tarfile.GNU_FORMAT))
    st = os.lstat(world.root / "big-ids")
    assert (st.st_uid, st.st_gid) == (3_000_000, 2**31)


def test_an_extended_header_claiming_a_gigabyte_is_refused_before_reading_it(
        world: World) -> None:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 1 << 30
    assert refusal(world, info.tobuf(tarfile.USTAR_FORMAT) + b"9 path=x\n",
                   CorruptLayerError) == (
        f"layer {LAYER}: not a valid tar stream at the first header: extended headers of more "
        "than 16777216 bytes")


@pytest.mark.parametrize("uid", ["4294967295", "99999999999", "-1"])
def test_an_owner_out_of_range_is_corrupt(world: World, uid: str) -> None:
    message = refusal(world, layer(directory("d"), file("d/a", b"a", pax={"uid": uid})),
                      CorruptLayerError)
    assert message == (f'layer {LAYER}: not a valid tar stream after entry "d/": an owner '
                       f"{uid}:0 out of range")


def test_a_malformed_pax_record_is_corrupt(world: World) -> None:
    data = _with_pax_record(layer(file("a", b"a")), b"path", b"b")
    broken = data.replace(b"10 path=b\n", b"11 path=b\n")
    assert broken != data
    assert refusal(world, broken, CorruptLayerError) == (
        f"layer {LAYER}: not a valid tar stream at the first header: a bad PAX header (record "
        "of a wrong length)")


def test_a_root_reached_through_the_callers_symlink_works(world: World, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(world.root)
    extract_layer(alias, io.BytesIO(layer(directory(".", mode=0o700), file("a", b"a"))),
                  ignore=IgnoreList(root=alias, paths=frozenset()), layer_name=LAYER)
    assert (world.root / "a").read_bytes() == b"a"
    assert stat.S_IMODE(os.lstat(world.root).st_mode) == 0o700


# --- real peers: umoci and GNU tar apply the same layers ------------------------------------


@pytest.mark.e2e
def test_layers_with_whiteouts_apply_as_umoci_applies_them(world: World, tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    layout = tmp_path / "layout"
    write_oci_layout_from_layers(layout, "tag", WHITEOUT_CASE_LAYERS, {}, compression="none")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:tag", str(bundle)],
                   check=True, capture_output=True)
    for blob in _layer_blobs(layout):
        with blob.open("rb") as stream:
            extract_layer(world.root, stream,
                          ignore=IgnoreList(root=world.root, paths=frozenset()),
                          layer_name=blob.name)
    root = world.root
    assert os.listdir(root / "var/cache") == ["new"]
    assert not (root / "etc/group").exists() and not (root / "usr/bin/sudo").exists()
    assert os.readlink(root / "opt") == "/usr"
    assert (root / "usr/lib").read_bytes() == b"was a directory"
    assert sorted(os.listdir(root / "lib")) == ["own"]
    # umoci restores a parent directory's mtime after each change inside it; kiln applies the
    # directory's own entry after the layer. Both are exact for every directory the layers
    # name; they differ only on implicit ones, so compare directories without their mtimes.
    assert metadata_tree(world.root, dir_mtimes=False) == metadata_tree(bundle,
                                                                           dir_mtimes=False)


def _layer_blobs(layout: Path) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    return [layout / "blobs/sha256" / layer["digest"].split(":")[1]
            for layer in manifest["layers"]]


@pytest.mark.e2e
def test_the_debian_base_layer_extracts_as_gnu_tar_does(world: World, tmp_path: Path) -> None:
    layer_file = debian_layer()
    with gzip.open(layer_file, "rb") as stream:
        extract_layer(world.root, stream,  # type: ignore[arg-type]
                      ignore=IgnoreList(root=world.root, paths=frozenset()),
                      layer_name="debian")
    theirs = tmp_path / "gnu"
    theirs.mkdir()
    subprocess.run(["tar", "--same-owner", "--xattrs", "--xattrs-include=*", "-xpzf",
                    str(layer_file), "-C", str(theirs)], check=True)
    # GNU tar sets a directory's mtime when it moves past it, so a directory whose children
    # are not contiguous in the tar (perl-base/Carp/ ... Carp.pm ... Carp/Heavy.pm) ends with
    # the time of extraction; kiln sets it after the layer, as the header says.
    assert metadata_tree(world.root, dir_mtimes=False) == metadata_tree(theirs,
                                                                           dir_mtimes=False)
    with gzip.open(layer_file, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if member.isdir():
                path = world.root / member.name
                assert os.lstat(path).st_mtime_ns == int(member.mtime) * 10**9, member.name


# --- owner and mode are exact when the syscalls setting them are left out ---------------------


def _default_acl(user: int, group: int, other: int) -> bytes:
    """A ``system.posix_acl_default`` value: version 2, then (tag, perm, id) entries."""
    entries = [(0x01, user), (0x04, group), (0x20, other)]  # USER_OBJ, GROUP_OBJ, OTHER
    return (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + (0xFFFFFFFF).to_bytes(4, "little")
        for tag, perm in entries)


def test_a_default_acl_on_the_root_does_not_change_modes(world: World) -> None:
    try:
        os.setxattr(world.root, "system.posix_acl_default", _default_acl(7, 0, 0))
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e.strerror}")
    extract(world, layer(file("f", b"f", mode=0o644), directory("d"),
                         file("d/g", b"g", mode=0o755)))
    assert stat.S_IMODE(os.lstat(world.root / "f").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(world.root / "d/g").st_mode) == 0o755


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000, 0o777])
def test_modes_do_not_depend_on_the_umask(world: World, umask: int) -> None:
    old = os.umask(umask)
    try:
        extract(world, layer(file("a", b"a", mode=0o644), file("b", b"b", mode=0o777),
                             directory("d", mode=0o750), file("d/c", b"c", mode=0o600)))
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(os.lstat(world.root / p).st_mode) for p in ("a", "b", "d", "d/c")}
    assert modes == {"a": 0o644, "b": 0o777, "d": 0o750, "d/c": 0o600}


def test_files_under_a_setgid_directory_of_another_group_keep_their_group(
        world: World) -> None:
    lower = world.root / "shared"
    lower.mkdir()
    os.chown(lower, 0, 5)
    lower.chmod(0o2775)
    extract(world, layer(file("shared/f", b"f", uid=os.geteuid(), gid=os.getegid()),
                         directory("shared/new"),
                         file("shared/new/g", b"g", uid=os.geteuid(), gid=os.getegid())))
    for path in ("shared/f", "shared/new/g"):
        assert os.lstat(world.root / path).st_gid == os.getegid(), path


def test_a_setgid_root_of_another_group_does_not_leak_its_group(world: World) -> None:
    os.chown(world.root, 0, 5)
    world.root.chmod(0o2755)
    extract(world, layer(directory("d"), file("d/f", b"f", gid=os.getegid()),
                         file("top", b"t", gid=os.getegid())))
    assert os.lstat(world.root / "d/f").st_gid == os.getegid()
    assert os.lstat(world.root / "top").st_gid == os.getegid()


# --- files handed to helper processes -------------------------------------------------------
# In the "helpers" runs, every file below made in a directory of the same layer is still on its
# way when the next entry arrives; each later entry touches it in one of the ways a layer can.


def test_an_entry_over_a_file_still_on_its_way_replaces_it(world: World) -> None:
    extract(world, layer(directory("d"), file("d/a", b"first"), file("d/a", b"second"),
                         file("d/b", b"file"), directory("d/b"), file("d/b/c", b"c"),
                         file("d/s", b"file"), symlink("d/s", "a")))
    assert (world.root / "d/a").read_bytes() == b"second"
    assert (world.root / "d/b/c").read_bytes() == b"c"
    assert os.readlink(world.root / "d/s") == "a"


def test_a_hardlink_to_a_file_still_on_its_way_shares_its_inode(world: World) -> None:
    extract(world, layer(directory("d"), file("d/a", b"busybox", mode=0o755),
                         hardlink("d/b", "d/a")))
    assert os.lstat(world.root / "d/a").st_ino == os.lstat(world.root / "d/b").st_ino
    assert (world.root / "d/b").read_bytes() == b"busybox"


def test_a_file_replacing_a_directory_of_files_on_their_way_wins(world: World) -> None:
    files = [file(f"d/sub/f{i}", b"x") for i in range(100)]
    extract(world, layer(directory("d"), directory("d/sub"), *files, file("d/sub", b"file")))
    assert (world.root / "d/sub").read_bytes() == b"file"


def test_a_whiteout_spares_files_of_its_own_layer_still_on_their_way(world: World) -> None:
    extract(world, layer(directory("d"), file("d/a", b"a"), whiteout("d/a"), opaque("d")))
    assert (world.root / "d/a").read_bytes() == b"a"


def test_an_entry_under_a_file_still_on_its_way_is_corrupt(world: World) -> None:
    message = refusal(world, layer(directory("d"), file("d/a", b"a"), file("d/a/b", b"b")),
                      CorruptLayerError)
    assert message == (f'layer {LAYER}: entry "d/a/b" needs "d/a" to be a directory, and it is '
                       "not")


def test_many_small_files_in_many_directories_come_out_exact(world: World) -> None:
    members = []
    for d in range(20):
        members.append(directory(f"t/d{d}", mode=0o750, uid=d, gid=d + 1))
        members += [file(f"t/d{d}/f{f}", f"{d}/{f}".encode() * f, mode=0o4755 if f == 3 else 0o640,
                         uid=1000 + f, gid=2000 + d, mtime=MTIME + f) for f in range(60)]
    extract(world, layer(*members))
    for d in range(20):
        for f in range(60):
            st = os.lstat(world.root / f"t/d{d}/f{f}")
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (
                0o4755 if f == 3 else 0o640, 1000 + f, 2000 + d, (MTIME + f) * 10**9)
            assert (world.root / f"t/d{d}/f{f}").read_bytes() == f"{d}/{f}".encode() * f
        st = os.lstat(world.root / f"t/d{d}")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, d, d + 1)


@pytest.fixture
def helper_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the helper processes forked while the test runs (and every file handed)."""
    from snapshot.forking import fork_helper as fork

    pids: list[int] = []

    def recording_fork(*args: Any, **kwargs: Any) -> int | None:
        pid = fork(*args, **kwargs)
        if pid is not None:
            pids.append(pid)
        return pid

    monkeypatch.setattr("snapshot.writers.fork_helper", recording_fork)
    monkeypatch.setattr("snapshot.extract._HAND_OFF_AFTER", 1)
    return pids


def assert_reaped(pids: list[int]) -> None:
    assert pids
    for pid in pids:
        with pytest.raises(ChildProcessError):  # waited for already: no such child
            os.waitpid(pid, os.WNOHANG)


def test_a_helper_that_dies_is_one_line_and_leaves_no_process(
        world: World, monkeypatch: pytest.MonkeyPatch, helper_pids: list[int]) -> None:
    monkeypatch.setattr("snapshot.writers._make_file",
                        lambda *job: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(SnapshotError) as caught:
        extract_layer(world.root, io.BytesIO(layer(directory("d"), file("d/a", b"a"))),
                      ignore=IgnoreList(root=world.root, paths=frozenset()), layer_name=LAYER,
                      helpers=1)
    assert re.fullmatch(rf"layer {LAYER}: a file-writing helper process \(pid \d+\) died",
                        str(caught.value))
    assert_reaped(helper_pids)


def test_helpers_are_gone_when_a_layer_is_applied(world: World,
                                                  helper_pids: list[int]) -> None:
    extract_layer(world.root, io.BytesIO(layer(directory("d"), file("d/a", b"a"))),
                  ignore=IgnoreList(root=world.root, paths=frozenset()), layer_name=LAYER,
                  helpers=2)
    assert (world.root / "d/a").read_bytes() == b"a"
    assert len(helper_pids) == 2
    assert_reaped(helper_pids)


def test_files_into_a_lower_layers_directory_are_new_or_replace_what_is_there(
        world: World) -> None:
    lib = world.root / "usr/lib"
    lib.mkdir(parents=True)
    (lib / "old").write_bytes(b"lower")
    (lib / "link").symlink_to(world.canary)
    extract(world, layer(*(file(f"usr/lib/new{i}", b"%d" % i) for i in range(50)),
                         file("usr/lib/old", b"upper"), file("usr/lib/link", b"not through")))
    assert [(lib / f"new{i}").read_bytes() for i in range(50)] == [b"%d" % i for i in range(50)]
    assert (lib / "old").read_bytes() == b"upper"
    assert not (lib / "link").is_symlink() and (lib / "link").read_bytes() == b"not through"
    world.assert_canary_unchanged()
