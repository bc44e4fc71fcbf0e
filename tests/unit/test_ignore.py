"""The ignore list: listed paths and their subtrees, globs as Go's filepath.Match, mounts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from snapshot.ignore import IgnoreList, glob_to_regex, mount_points_under, normalize_image_path


def ignore(paths: Iterable[str] = (), globs: tuple[str, ...] = ()) -> IgnoreList:
    return IgnoreList(root=Path("/r"), paths=frozenset(paths), globs=globs)


@pytest.mark.parametrize(
    ("rel", "ignored"),
    [
        ("var/run", True),
        ("var/run/lock/x", True),
        ("var", False),
        ("var/runner", False),
        ("var/ru", False),
        ("kiln", True),
        ("kiln/blobs/sha256", True),
        ("kilnx", False),
        ("/var/run/", True),
    ],
)
def test_a_listed_path_and_everything_below_it_is_ignored(rel: str, ignored: bool) -> None:
    assert ignore({"var/run", "kiln"}).is_ignored(rel) is ignored


@pytest.mark.parametrize(
    ("glob", "rel", "ignored"),
    [
        ("tmp/x*", "tmp/x", True),
        ("tmp/x*", "tmp/xyz", True),
        ("tmp/x*", "tmp/xyz/deep/file", True),
        ("tmp/x*", "tmp/y", False),
        ("tmp/x*", "tmp/sub/x", False),  # * stays within one component
        ("tmp/x*", "tmp", False),
        ("*/cache", "home/cache", True),
        ("*/cache", "home/user/cache", False),
        ("tmp/?", "tmp/a", True),
        ("tmp/?", "tmp/ab", False),
        ("tmp/[ab]", "tmp/b", True),
        ("tmp/[ab]", "tmp/c", False),
        ("tmp/[!ab]", "tmp/c", True),
        ("tmp/[!ab]", "tmp/a", False),
        ("tmp/[a-c]z", "tmp/bz", True),
        ("tmp/\\*", "tmp/*", True),
        ("tmp/\\*", "tmp/a", False),
        ("a.b", "aXb", False),  # regex characters are literal
    ],
)
def test_globs_match_like_filepath_match_and_cover_the_subtree(glob: str, rel: str,
                                                                ignored: bool) -> None:
    assert ignore(globs=(glob,)).is_ignored(rel) is ignored


def test_glob_to_regex_keeps_wildcards_inside_one_component() -> None:
    pattern = re.compile(glob_to_regex("usr/*/lib?.so"))
    assert pattern.fullmatch("usr/local/lib1.so")
    assert not pattern.fullmatch("usr/local/sub/lib1.so")
    assert not pattern.fullmatch("usr/local/lib/.so")


def test_an_empty_list_ignores_nothing() -> None:
    empty = ignore()
    assert not empty.is_ignored("anything/at/all")
    assert empty.ignored_names_in("") == frozenset()
    assert empty.glob_at_depth(1) is None


def test_names_to_skip_are_given_per_directory() -> None:
    listed = ignore({"proc", "var/run", "var/lib/docker"})
    assert listed.ignored_names_in("") == {"proc"}
    assert listed.ignored_names_in("var") == {"run"}
    assert listed.ignored_names_in("var/lib") == {"docker"}
    assert listed.ignored_names_in("etc") == frozenset()


def test_a_directory_with_nothing_listed_inside_needs_no_question_per_entry() -> None:
    listed = ignore({"proc", "var/run"})
    assert listed.may_ignore_in("") and listed.may_ignore_in("var")
    assert not listed.may_ignore_in("etc") and not listed.may_ignore_in("var/lib")
    assert ignore(globs=("tmp/x*",)).may_ignore_in("etc")  # a glob may match anywhere


def test_globs_are_given_per_depth() -> None:
    listed = ignore(globs=("tmp/x*", "*.log"))
    depth_two = listed.glob_at_depth(2)
    depth_one = listed.glob_at_depth(1)
    assert depth_two is not None and depth_one is not None
    assert depth_two("tmp/xa") and not depth_two("tmp/ya")
    assert depth_one("build.log") and not depth_one("tmp")
    assert listed.glob_at_depth(3) is None


@pytest.mark.parametrize(
    ("raw", "rel"),
    [("/tmp/x", "tmp/x"), ("tmp/x/", "tmp/x"), ("./tmp//x", "tmp/x"), ("/", ""),
     ("/a/../b", "b"), (" /var/cache ", "var/cache")],
)
def test_image_paths_are_normalized(raw: str, rel: str) -> None:
    assert normalize_image_path(raw) == rel


def test_for_build_lists_kiln_dir_var_run_and_extra_paths(tmp_path: Path) -> None:
    (tmp_path / "kiln").mkdir()
    built = IgnoreList.for_build(tmp_path, kiln_dir=tmp_path / "kiln",
                                 extra=["/tmp/x*", "/cache/", "/"], mounts=False)
    assert built.paths == {"kiln", "var/run", "cache"}
    assert built.globs == ("tmp/x*",)
    assert built.is_ignored("tmp/xy/z")
    assert built.root == tmp_path.resolve()


def test_for_build_leaves_var_run_when_asked(tmp_path: Path) -> None:
    built = IgnoreList.for_build(tmp_path, kiln_dir=tmp_path / "kiln", ignore_var_run=False,
                                 mounts=False)
    assert "var/run" not in built.paths


def test_for_build_skips_a_kiln_dir_outside_the_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    built = IgnoreList.for_build(tmp_path / "root", kiln_dir=tmp_path / "kiln", mounts=False)
    assert built.paths == {"var/run"}


def test_for_build_of_slash_ignores_proc_as_a_mount_point() -> None:
    built = IgnoreList.for_build(Path("/"), kiln_dir=Path("/kaniko"))
    assert "proc" in built.paths
    assert "kaniko" in built.paths
    assert "" not in built.paths


def test_mount_points_under_the_root_are_read_from_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_bytes(
        b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        b"40 27 0:40 / /build/root rw - tmpfs tmpfs rw\n"
        b"41 40 0:41 / /build/root/dev rw - devtmpfs devtmpfs rw\n"
        b"42 40 0:42 / /build/root/run/my\\040secrets rw - tmpfs tmpfs rw\n"
        b"43 40 0:43 / /build/root/a\\011b\\134c rw - tmpfs tmpfs rw\n"
        b"44 27 0:44 / /build/rootfs rw - tmpfs tmpfs rw\n"
        b"garbage\n"
    )
    assert mount_points_under("/build/root", mountinfo) == {"dev", "run/my secrets", "a\tb\\c"}
    assert mount_points_under("/", mountinfo) >= {"proc", "build/root", "build/root/dev"}


def test_in_place_the_runtimes_name_service_files_are_ignored_as_mount_points(
        tmp_path: Path) -> None:
    # What runc, crun and containerd bind over a pod's /etc: a RUN reads them, no layer
    # may hold them.
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_bytes(
        b"600 500 254:0 /containers/abc/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda rw\n"
        b"601 500 254:0 /containers/abc/hosts /etc/hosts rw - ext4 /dev/vda rw\n"
        b"602 500 254:0 /containers/abc/hostname /etc/hostname rw - ext4 /dev/vda rw\n"
    )
    assert mount_points_under("/", mountinfo) == {"etc/resolv.conf", "etc/hosts",
                                                  "etc/hostname"}


def test_a_missing_mountinfo_means_no_mounts(tmp_path: Path) -> None:
    assert mount_points_under("/", tmp_path / "absent") == set()
