"""The dense rules behind COPY and WORKDIR as BuildKit applies them: which context paths a
source names, who owns what ``--chown`` (and WORKDIR under USER) creates, how created
directories meet files of the image, and ``<<-`` heredocs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executor.context import BuildContext, DockerIgnore
from executor.dockerfile.parse import strip_heredoc_tabs
from executor.errors import ContextError
from executor.instructions.directories import NotADirectory, make_directories
from executor.passwd import UnknownUserError, owner_ids


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n"
                                     "app:x:2000:3000::/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nappgrp:x:3000:\nstaff:x:50:app\n")
    return root


@pytest.mark.parametrize(("spec", "ids"), [
    ("10001", (10001, 10001)),      # numeric, unknown: uid:uid
    ("2000", (2000, 2000)),         # numeric, known with gid 3000: still uid:uid
    ("app", (2000, 3000)),          # a name: its passwd uid and primary gid
    ("app:staff", (2000, 50)),
    ("app:7", (2000, 7)),
    ("2000:staff", (2000, 50)),
    (":staff", (0, 50)),            # no user: root, with the group
    (":9", (0, 9)),
])
def test_owner_ids_follow_buildkits_chown_rule(image_root: Path, spec: str,
                                               ids: tuple[int, int]) -> None:
    assert owner_ids(image_root, spec) == ids


@pytest.mark.parametrize("spec", ["root", "root:root", "0:root"])
def test_root_is_zero_even_where_the_image_has_no_passwd(tmp_path: Path, spec: str) -> None:
    assert owner_ids(tmp_path, spec) == (0, 0)


@pytest.mark.parametrize(("spec", "message"), [
    ("nobody-here", "unable to find user nobody-here: no matching entries in passwd file"),
    ("app:nogroup", "unable to find group nogroup"),
])
def test_owner_ids_refuse_names_the_image_does_not_know(image_root: Path, spec: str,
                                                        message: str) -> None:
    with pytest.raises(UnknownUserError, match=f"^{message}$"):
        owner_ids(image_root, spec)


def test_created_directories_get_the_owner_and_mode_and_existing_ones_stay(
        tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(mode=0o700)
    created = make_directories(tmp_path / "a/b/c", 5, 6, root=tmp_path, mode=0o750)
    assert created == [tmp_path / "a/b/c", tmp_path / "a/b"]
    for rel in ("a/b", "a/b/c"):
        info = (tmp_path / rel).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (5, 6, 0o750)
    assert (tmp_path / "a").stat().st_mode & 0o7777 == 0o700


@pytest.mark.parametrize("blocker", ["file", "link-to-file"])
def test_a_non_directory_in_the_way_is_an_error(tmp_path: Path, blocker: str) -> None:
    (tmp_path / "f").write_text("x")
    if blocker == "link-to-file":
        os.symlink("f", tmp_path / "l")
    name = "f" if blocker == "file" else "l"
    with pytest.raises(NotADirectory) as caught:
        make_directories(tmp_path / name / "sub", 0, 0, root=tmp_path)
    assert caught.value.path == tmp_path / name


def test_replace_removes_a_file_standing_where_a_directory_goes(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    make_directories(tmp_path / "f/sub", 0, 0, root=tmp_path, replace=True)
    assert (tmp_path / "f/sub").is_dir()


@pytest.fixture
def context(tmp_path: Path) -> Path:
    for rel in ("src/a.go", "src/b.go", "dir/keep", "dir/other", "top.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    return tmp_path


def test_a_wildcard_matching_nothing_names_nothing(context: Path) -> None:
    assert BuildContext(context).sources("src/*.rs", "Dockerfile:3") == []


def test_a_missing_path_that_is_no_wildcard_is_an_error(context: Path) -> None:
    with pytest.raises(ContextError, match=r"'src/main\.rs' matched no files"):
        BuildContext(context).sources("src/main.rs", "Dockerfile:3")


def test_an_excluded_directory_with_a_reincluded_child_is_still_a_source(context: Path) -> None:
    ctx = BuildContext(context, DockerIgnore.from_text("**\n!dir/keep\n"))
    assert ctx.sources("dir", "Dockerfile:3") == [("dir", context / "dir")]
    with pytest.raises(ContextError, match="matched no files"):
        ctx.sources("top.txt", "Dockerfile:3")


def test_a_dash_heredoc_loses_the_leading_tabs_of_every_line_only() -> None:
    assert strip_heredoc_tabs("\t\tone\n\t two\nthree\t\n") == "one\n two\nthree\t\n"


def test_the_image_description_tells_hard_links_from_copies(tmp_path: Path) -> None:
    from tests.support.compare import describe_rootfs

    (tmp_path / "d").mkdir()
    (tmp_path / "d/a").write_text("x")
    os.link(tmp_path / "d/a", tmp_path / "b")
    (tmp_path / "copy").write_text("x")
    files = describe_rootfs(tmp_path)
    assert files["/b"]["hardlink_group"] == files["/d/a"]["hardlink_group"] == "/b"
    assert "hardlink_group" not in files["/copy"]


def test_a_wildcard_in_a_missing_directory_is_an_error(context: Path) -> None:
    with pytest.raises(ContextError, match="no directory 'nodir' in the build context"):
        BuildContext(context).sources("nodir/*.sh", "Dockerfile:3")


@pytest.mark.parametrize(("pattern", "directory"), [
    ("src/*/x.go", "src"), ("*.go", ""), ("./a/b/c*", "a/b"), ("/a/[xy]/z", "a")])
def test_the_directory_a_wildcard_searches(pattern: str, directory: str) -> None:
    from executor.context import wildcard_directory

    assert wildcard_directory(pattern) == directory


def _pair(tmp_path: Path, there: bytes) -> tuple[Path, Path, os.stat_result]:
    """A source file and a file already at the target, same size and mtime."""
    src, target = tmp_path / "src", tmp_path / "target"
    src.write_bytes(b"same")
    target.write_bytes(there)
    os.utime(src, ns=(0, 1_650_000_000_123_456_789))
    os.utime(target, ns=(0, 1_650_000_000_123_456_789))
    return src, target, os.lstat(src)


def test_a_copy_over_the_same_file_leaves_it_alone(tmp_path: Path) -> None:
    """``COPY package.json ./`` then ``COPY . .``: BuildKit's layer does not hold it twice."""
    from executor.instructions.copy import Ownership, Placement, _already_there

    src, target, info = _pair(tmp_path, b"same")
    assert _already_there(src, target, info, Placement(Ownership(os.getuid(), os.getgid())))


@pytest.mark.parametrize("change", ["content", "owner", "mode", "mtime"])
def test_a_copy_over_a_file_that_differs_in_anything_writes_it(tmp_path: Path,
                                                                change: str) -> None:
    from executor.instructions.copy import Chmod, Ownership, Placement, _already_there

    src, target, info = _pair(tmp_path, b"diff" if change == "content" else b"same")
    owner = Ownership(os.getuid(), os.getgid())
    if change == "owner":
        owner = Ownership(os.getuid() + 1, os.getgid())
    elif change == "mode":
        owner = Ownership(os.getuid(), os.getgid(), chmod=Chmod.parse("0600"))
    elif change == "mtime":
        os.utime(target, ns=(0, 1_650_000_000_000_000_000))
    assert not _already_there(src, target, info, Placement(owner))
