"""Snapshots and their diff: every lstat change is seen, and deletions are said the OCI way."""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import xattr

from snapshot.errors import SnapshotError
from snapshot.ignore import IgnoreList
from snapshot.snapshot import (
    CLOCK_REALTIME_COARSE,
    Changes,
    FileEntry,
    Snapshot,
    diff_snapshots,
    layer_order,
    take_partial_snapshot,
    take_snapshot,
    timestamp_granularity,
    wait_for_clock_tick,
)

NO_IGNORE: frozenset[str] = frozenset()


def make_tree(root: Path, files: Iterable[str]) -> None:
    for rel in files:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)


def snap(root: Path, paths: Iterable[str] = NO_IGNORE, globs: tuple[str, ...] = ()) -> Snapshot:
    return take_snapshot(root, IgnoreList(root=root, paths=frozenset(paths), globs=globs))


def changes_after(root: Path, change: Callable[[], object]) -> Changes:
    """Snapshot, wait as the build loop does, make the change, snapshot and diff."""
    before = snap(root)
    wait_for_clock_tick(before)
    change()
    return diff_snapshots(before, snap(root))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root, ["etc/passwd", "etc/group", "usr/bin/sh", "usr/lib/libc.so",
                     "usr/lib/deep/er/file", "var/log/", "home/user/.profile"])
    return root


# -- the walk ------------------------------------------------------------------------------

def test_snapshot_records_lstat_fields_relative_paths_and_no_root(tree: Path) -> None:
    os.symlink("../usr/bin/sh", tree / "etc/sh")
    snapshot = snap(tree)
    assert "" not in snapshot.entries and "." not in snapshot.entries
    passwd = snapshot.entries["etc/passwd"]
    st = os.lstat(tree / "etc/passwd")
    assert passwd == FileEntry("etc/passwd", st.st_mode, st.st_uid, st.st_gid, st.st_size,
                               st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                               st.st_nlink, st.st_rdev, None)
    assert passwd.is_file and not passwd.is_dir
    assert snapshot.entries["usr/lib"].is_dir
    link = snapshot.entries["etc/sh"]
    assert link.is_symlink and link.link_target == "../usr/bin/sh"
    assert set(snapshot.entries) >= {"etc", "usr/lib/deep/er", "usr/lib/deep/er/file", "var/log"}


def test_snapshot_takes_the_coarse_clock_before_walking(tree: Path) -> None:
    before = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    snapshot = snap(tree)
    assert before <= snapshot.taken_ns <= time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    assert snapshot.root == tree


def test_ignored_paths_are_pruned_with_everything_below(tree: Path) -> None:
    make_tree(tree, ["var/run/docker.sock.d/x", "var/runner", "tmp/xa/deep", "tmp/ya"])
    entries = snap(tree, {"var/run", "usr/lib"}, ("tmp/x*",)).entries
    assert "var/runner" in entries and "tmp/ya" in entries
    assert not any(p.startswith(("var/run/", "usr/lib", "tmp/xa")) or p == "var/run"
                   for p in entries)
    assert "usr/bin/sh" in entries


def test_sockets_are_left_out(tree: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fspath(tree / "var/log/s.sock"))
        assert "var/log/s.sock" not in snap(tree).entries
    finally:
        sock.close()


def test_fifos_and_device_nodes_are_kept(tree: Path) -> None:
    os.mkfifo(tree / "var/log/fifo")
    entries = snap(tree).entries
    assert entries["var/log/fifo"].mode & 0o170000 == 0o010000


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_keep_their_rdev(tree: Path) -> None:
    os.mknod(tree / "null", 0o666 | 0o020000, os.makedev(1, 3))
    assert snap(tree).entries["null"].rdev == os.makedev(1, 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_an_unreadable_directory_is_an_error_naming_it(tree: Path) -> None:
    os.chmod(tree / "usr/lib", 0)
    try:
        with pytest.raises(SnapshotError, match="/usr/lib"):
            snap(tree)
    finally:
        os.chmod(tree / "usr/lib", 0o755)


def test_a_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError):
        snap(tmp_path / "absent")


# -- what counts as a change ---------------------------------------------------------------

def test_an_untouched_tree_has_no_changes(tree: Path) -> None:
    first = snap(tree)
    second = snap(tree)
    changes = diff_snapshots(first, second)
    assert changes.is_empty() and changes == Changes()


def test_a_new_file_is_the_change_not_its_parent_whose_times_moved(tree: Path) -> None:
    # The layer writes the parent directories anyway; as changes they would say nothing.
    changes = changes_after(tree, lambda: (tree / "usr/lib/deep/er/new").write_text("x"))
    assert changes.upserts == ["usr/lib/deep/er/new"]
    assert changes.deletions == []


def test_a_temporary_file_made_and_removed_leaves_no_change(tree: Path) -> None:
    def scratch() -> None:
        (tree / "usr/lib/tmpfile").write_text("x")
        (tree / "usr/lib/tmpfile").unlink()

    assert changes_after(tree, scratch).is_empty()


def test_a_directory_chmod_is_a_change(tree: Path) -> None:
    changes = changes_after(tree, lambda: os.chmod(tree / "usr/lib", 0o700))
    assert changes.upserts == ["usr/lib"]


def test_a_same_size_rewrite_with_restored_mtime_is_seen(tree: Path) -> None:
    """The racy case: same size, same mtime, right after the snapshot; ctime tells."""
    target = tree / "etc/passwd"
    for _ in range(20):
        before = snap(tree)
        wait_for_clock_tick(before)
        old = os.lstat(target)
        target.write_bytes(b"Z" * old.st_size)
        os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
        new = os.lstat(target)
        assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
        assert new.st_ctime_ns > before.taken_ns
        assert diff_snapshots(before, snap(tree)).upserts == ["etc/passwd"]


def test_a_chmod_alone_is_a_change(tree: Path) -> None:
    changes = changes_after(tree, lambda: os.chmod(tree / "usr/bin/sh", 0o4755))
    assert changes.upserts == ["usr/bin/sh"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_chown_alone_is_a_change(tree: Path) -> None:
    changes = changes_after(tree, lambda: os.chown(tree / "etc/group", 1234, 5678))
    assert changes.upserts == ["etc/group"]


def test_an_xattr_alone_is_a_change(tree: Path) -> None:
    target = tree / "etc/group"
    try:
        xattr.setxattr(os.fspath(target), "user.probe", b"1")
        xattr.removexattr(os.fspath(target), "user.probe")
    except OSError:
        pytest.skip("this filesystem has no user xattrs")
    changes = changes_after(tree, lambda: xattr.setxattr(os.fspath(target), "user.kiln", b"v"))
    assert changes.upserts == ["etc/group"]


def test_a_link_count_change_alone_is_a_change(tree: Path) -> None:
    (tree / "elsewhere").mkdir()
    changes = changes_after(tree, lambda: os.link(tree / "usr/bin/sh", tree / "elsewhere/sh"))
    assert "usr/bin/sh" in changes.upserts
    assert changes.upserts == ["elsewhere/sh", "usr/bin/sh"]


def test_a_retargeted_symlink_is_a_change(tree: Path) -> None:
    os.symlink("passwd", tree / "etc/link")

    def retarget() -> None:
        os.unlink(tree / "etc/link")
        os.symlink("group", tree / "etc/link")

    changes = changes_after(tree, retarget)
    assert changes.upserts == ["etc/link"]


def test_reading_a_file_is_not_a_change(tree: Path) -> None:
    changes = changes_after(tree, lambda: (tree / "etc/passwd").read_bytes())
    assert changes.is_empty()


# -- deletions, whiteouts and re-created directories ---------------------------------------

def test_a_deleted_file_is_a_whiteout_target(tree: Path) -> None:
    changes = changes_after(tree, lambda: (tree / "etc/group").unlink())
    assert changes.deletions == ["etc/group"]
    assert changes.upserts == []


def test_nothing_below_a_deleted_directory_gets_a_whiteout(tree: Path) -> None:
    changes = changes_after(tree, lambda: shutil.rmtree(tree / "usr/lib"))
    assert changes.deletions == ["usr/lib"]
    assert changes.upserts == []


def test_a_directory_replaced_by_a_file_hides_its_old_children(tree: Path) -> None:
    def replace() -> None:
        shutil.rmtree(tree / "usr/lib")
        (tree / "usr/lib").write_text("now a file")

    changes = changes_after(tree, replace)
    assert changes.deletions == []
    assert changes.upserts == ["usr/lib"]


def test_a_directory_replaced_by_a_symlink_gets_no_whiteouts_below_it(tree: Path) -> None:
    """kaniko #2308: a whiteout under a symlink would delete files where the link points."""
    def replace() -> None:
        shutil.rmtree(tree / "usr/lib")
        os.symlink("/etc", tree / "usr/lib")

    changes = changes_after(tree, replace)
    assert changes.deletions == []
    assert changes.upserts == ["usr/lib"]


def test_a_file_replaced_by_a_directory_is_written_with_its_children(tree: Path) -> None:
    def replace() -> None:
        (tree / "etc/passwd").unlink()
        make_tree(tree, ["etc/passwd/a", "etc/passwd/sub/b"])

    changes = changes_after(tree, replace)
    assert changes.upserts == ["etc/passwd", "etc/passwd/a", "etc/passwd/sub",
                               "etc/passwd/sub/b"]
    assert changes.deletions == []


def test_a_symlink_replaced_by_a_directory_is_written(tree: Path) -> None:
    os.symlink("usr/lib", tree / "lib")

    def replace() -> None:
        (tree / "lib").unlink()
        make_tree(tree, ["lib/x"])

    changes = changes_after(tree, replace)
    assert changes.upserts == ["lib", "lib/x"]
    assert changes.deletions == []


def test_a_recreated_directory_whites_out_each_child_it_lost(tree: Path) -> None:
    """BuildKit's layers have no opaque markers: what the old directory held and the new one
    does not is deleted name by name."""
    def recreate() -> None:
        os.rename(tree / "usr/lib", tree / "old")  # so the new directory gets a new inode
        make_tree(tree, ["usr/lib/libc.so", "usr/lib/new/x"])
        shutil.rmtree(tree / "old")

    changes = changes_after(tree, recreate)
    assert changes.upserts == ["usr/lib/libc.so", "usr/lib/new", "usr/lib/new/x"]
    assert changes.deletions == ["usr/lib/deep"]  # nothing below it: that whiteout hides it


def test_a_directory_recreated_on_its_old_inode_number_says_each_deletion() -> None:
    """Same inode, new ctime: re-created or not, lost children get whiteouts."""
    directory = FileEntry("d", 0o040755, 0, 0, 0, 1, 1, 7, 1, 3, 0, None)
    kept = FileEntry("d/kept", 0o100644, 0, 0, 1, 1, 1, 8, 1, 1, 0, None)
    lost = FileEntry("d/lost", 0o040755, 0, 0, 0, 1, 1, 9, 1, 2, 0, None)
    below = FileEntry("d/lost/x", 0o100644, 0, 0, 1, 1, 1, 10, 1, 1, 0, None)
    old = Snapshot({e.path: e for e in (directory, kept, lost, below)}, 0)
    again = directory._replace(mtime_ns=5, ctime_ns=5, nlink=2)
    new_kept = kept._replace(ino=11, ctime_ns=5, mtime_ns=5)
    changes = diff_snapshots(old, Snapshot({"d": again, "d/kept": new_kept}, 6))
    assert changes.upserts == ["d/kept"]
    assert changes.deletions == ["d/lost"]


def test_a_subtree_moved_into_a_recreated_directory_says_only_what_it_lost(tree: Path) -> None:
    def recreate() -> None:
        os.rename(tree / "usr/lib", tree / "usr/lib.old")
        (tree / "usr/lib").mkdir()
        os.rename(tree / "usr/lib.old/deep", tree / "usr/lib/deep")
        (tree / "usr/lib/deep/er/file").unlink()
        shutil.rmtree(tree / "usr/lib.old")

    changes = changes_after(tree, recreate)
    assert changes.upserts == []  # the moved directories' own metadata is as it was
    assert changes.deletions == ["usr/lib/deep/er/file", "usr/lib/libc.so"]


def test_deletions_next_to_surviving_siblings_each_get_a_whiteout(tree: Path) -> None:
    def delete() -> None:
        (tree / "usr/bin/sh").unlink()
        (tree / "usr/lib/libc.so").unlink()
        shutil.rmtree(tree / "home")

    changes = changes_after(tree, delete)
    assert changes.deletions == ["home", "usr/bin/sh", "usr/lib/libc.so"]
    assert changes.upserts == []


def test_upserts_are_in_depth_first_layer_order(tree: Path) -> None:
    def add() -> None:
        make_tree(tree, ["a-c", "a/b/", "a/b/c", "a.d", "A", "a/-"])

    changes = changes_after(tree, add)
    assert changes.upserts == ["A", "a", "a/-", "a/b", "a/b/c", "a-c", "a.d"]
    assert sorted(changes.upserts, key=layer_order) == changes.upserts


def test_the_diff_of_an_empty_snapshot_lists_everything() -> None:
    entry = FileEntry("a", 0o040755, 0, 0, 0, 0, 0, 1, 1, 2, 0, None)
    child = entry._replace(path="a/b", mode=0o100644, ino=2, nlink=1)
    changes = diff_snapshots(Snapshot({}, 0), Snapshot({"a": entry, "a/b": child}, 1))
    assert changes.upserts == ["a", "a/b"] and not changes.deletions


# -- the racy rule ------------------------------------------------------------------------

def test_after_the_wait_a_fresh_ctime_is_newer_than_the_snapshot(tree: Path) -> None:
    for _ in range(10):
        before = snap(tree)
        wait_for_clock_tick(before)
        os.chmod(tree / "etc/passwd", 0o600 if _ % 2 else 0o644)
        assert os.lstat(tree / "etc/passwd").st_ctime_ns > before.taken_ns


def test_the_wait_returns_at_once_for_an_old_snapshot(tree: Path) -> None:
    old = Snapshot({}, time.clock_gettime_ns(CLOCK_REALTIME_COARSE) - 10_000_000_000, tree)
    started = time.monotonic()
    wait_for_clock_tick(old)
    assert time.monotonic() - started < 0.5


def test_the_wait_sleeps_past_a_snapshot_taken_now(tree: Path) -> None:
    now = Snapshot({}, time.clock_gettime_ns(CLOCK_REALTIME_COARSE), tree)
    wait_for_clock_tick(now)
    assert time.clock_gettime_ns(CLOCK_REALTIME_COARSE) > now.taken_ns


def test_this_filesystem_has_fine_timestamps(tree: Path) -> None:
    granularity = timestamp_granularity(tree)
    assert granularity in (1, 1_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000,
                           2_000_000_000)
    assert timestamp_granularity(tree) == granularity  # measured once, then remembered


def test_on_a_whole_second_filesystem_the_wait_crosses_a_second(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    monkeypatch.setitem(module._granularity_by_dev, os.stat(tree).st_dev, 1_000_000_000)
    now = Snapshot({}, time.clock_gettime_ns(CLOCK_REALTIME_COARSE), tree)
    wait_for_clock_tick(now)
    after = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    assert after - after % 1_000_000_000 > now.taken_ns


# -- a walk shared between processes -------------------------------------------------------

@pytest.fixture
def wide(tmp_path: Path) -> Path:
    """Enough directories (3 x 40) to share a walk between up to three processes."""
    root = tmp_path / "wide"
    make_tree(root, [f"top{i}/mid{j}/f{k}" for i in range(3) for j in range(40) for k in range(3)])
    os.symlink("top0", root / "link")
    return root


def test_a_walk_shared_between_processes_sees_the_same_tree(wide: Path) -> None:
    alone = snap(wide).entries
    ignore = IgnoreList(root=wide, paths=frozenset({"top1/mid7"}))
    shared = take_snapshot(wide, ignore, workers=3).entries
    assert shared == {p: e for p, e in alone.items() if not p.startswith("top1/mid7")}
    assert take_snapshot(wide, IgnoreList(root=wide, paths=frozenset()), workers=2).entries \
        == alone


def test_a_small_tree_is_walked_without_forking(tree: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise AssertionError("forked for a small tree")

    monkeypatch.setattr(os, "fork", no_fork)
    assert take_snapshot(tree, IgnoreList(root=tree, paths=frozenset()), workers=4).entries \
        == snap(tree).entries


def test_an_error_in_a_helper_process_reaches_the_caller(wide: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    parent = os.getpid()
    real = module._scan_directory

    def failing(dir_fd: int, rel_dir: str, *args: object) -> None:
        if os.getpid() != parent and rel_dir.startswith("top"):
            raise PermissionError(13, "Permission denied")
        real(dir_fd, rel_dir, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "_scan_directory", failing)
    # The parent may take every token before the helper starts; then there is nothing to see.
    for _ in range(20):
        try:
            take_snapshot(wide, IgnoreList(root=wide, paths=frozenset()), workers=2)
        except SnapshotError as exc:
            assert "Permission denied" in str(exc) and "/top" in str(exc)
            return
    pytest.skip("the helper never got a directory to walk")


def test_a_helper_that_dies_leaves_a_complete_walk(wide: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    parent = os.getpid()
    real = module._scan_directory

    def dying(dir_fd: int, rel_dir: str, *args: object) -> None:
        if os.getpid() != parent:
            os._exit(3)
        real(dir_fd, rel_dir, *args)  # type: ignore[arg-type]

    expected = snap(wide).entries
    monkeypatch.setattr(module, "_scan_directory", dying)
    for _ in range(5):
        assert take_snapshot(wide, IgnoreList(root=wide, paths=frozenset()),
                             workers=3).entries == expected


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """One directory of 5,000 entries (a build output): files, subdirectories, symlinks."""
    root = tmp_path / "flat"
    make_tree(root, [f"out/f{i}" for i in range(5000)] + ["out/sub/a", "out/sub/deep/b", "x"])
    for i in range(20):
        os.symlink(f"f{i}", root / f"out/link{i}")
    return root


def test_a_big_directory_is_shared_out_by_name_and_seen_whole(
        flat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    monkeypatch.setattr(module, "_BIG_DIRECTORY", 1)  # whatever this filesystem reports
    monkeypatch.setattr(module, "_SLICE", 300)
    alone = snap(flat).entries
    ignore = IgnoreList(root=flat, paths=frozenset({"out/f7", "out/sub/deep"}))
    for workers in (2, 3):
        assert take_snapshot(flat, IgnoreList(root=flat, paths=frozenset()),
                             workers=workers).entries == alone
        assert take_snapshot(flat, ignore, workers=workers).entries == {
            p: e for p, e in alone.items() if p != "out/f7" and not p.startswith("out/sub/deep")}


def test_a_name_of_a_big_directory_removed_before_its_lstat_is_left_out(
        flat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    monkeypatch.setattr(module, "_BIG_DIRECTORY", 1)
    expected = dict(snap(flat).entries)
    real = module._names_kept

    def listing_then_removing(root_str: str, rel_dir: str, ignore: IgnoreList) -> list[str]:
        names = real(root_str, rel_dir, ignore)
        if rel_dir == "out":
            (flat / "out/f42").unlink()  # listed, then gone, as a racing rm would make it
        return names

    monkeypatch.setattr(module, "_names_kept", listing_then_removing)
    del expected["out/f42"]
    entries = take_snapshot(flat, IgnoreList(root=flat, paths=frozenset()), workers=2).entries
    assert set(entries) == set(expected)


def test_default_workers_is_between_one_and_four() -> None:
    from snapshot.forking import default_workers

    assert 1 <= default_workers() <= 4


def test_an_entry_vanishing_mid_walk_is_left_out_and_the_rest_kept(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshot import snapshot as module

    expected = dict(snap(tree).entries)
    real = module._stat_fields
    victim = tree / "usr/lib/libc.so"
    victim_ino = os.lstat(victim).st_ino

    def vanishing(stat: os.stat_result) -> tuple[int, ...]:
        if stat.st_ino == victim_ino and victim.exists():
            victim.unlink()  # gone between the listing and the lstat, as a racing rm would be
            raise FileNotFoundError(2, "No such file or directory")
        return real(stat)

    monkeypatch.setattr(module, "_stat_fields", vanishing)
    entries = snap(tree).entries
    del expected["usr/lib/libc.so"]
    assert set(entries) == set(expected)
    assert entries["usr/lib/deep/er/file"] == expected["usr/lib/deep/er/file"]
    assert entries["etc/passwd"] == expected["etc/passwd"]


def test_a_shared_walk_given_the_previous_snapshot_sees_the_same_tree(wide: Path) -> None:
    ignore = IgnoreList(root=wide, paths=frozenset())
    before = take_snapshot(wide, ignore, workers=1)
    wait_for_clock_tick(before)
    (wide / "top2/mid39/f1").write_text("changed")
    (wide / "top0/mid3/f0").unlink()
    make_tree(wide, ["top1/mid20/new", "top1/fresh/x"])
    alone = take_snapshot(wide, ignore, workers=1).entries
    shared = take_snapshot(wide, ignore, previous=before, workers=3).entries
    assert shared == alone
    changes = diff_snapshots(before, take_snapshot(wide, ignore, previous=before, workers=2))
    assert changes.deletions == ["top0/mid3/f0"]
    assert "top2/mid39/f1" in changes.upserts and "top1/fresh/x" in changes.upserts


# -- partial snapshots: the paths a COPY wrote, walked again; the rest kept ----------------

def partial_and_full(root: Path, change: Callable[[], object],
                     touched: Iterable[str]) -> tuple[Snapshot | None, Snapshot, Snapshot]:
    """Snapshot, change, then both the partial snapshot of ``touched`` and the full walk."""
    ignore = IgnoreList(root=root, paths=NO_IGNORE)
    before = take_snapshot(root, ignore)
    wait_for_clock_tick(before)
    change()
    return take_partial_snapshot(root, ignore, before, touched), take_snapshot(root, ignore), \
        before


def assert_partial_is_full(root: Path, change: Callable[[], object],
                           touched: Iterable[str]) -> Changes:
    partial, full, before = partial_and_full(root, change, touched)
    assert partial is not None
    assert partial.entries == full.entries
    changes = diff_snapshots(before, partial)
    assert changes == diff_snapshots(before, full)
    return changes


def test_partial_snapshot_sees_a_new_file(tree: Path) -> None:
    changes = assert_partial_is_full(tree, lambda: (tree / "etc/new").write_text("x"),
                                     ["etc/new"])
    assert changes.upserts == ["etc/new"]  # /etc's times moved: no change of its own


def test_partial_snapshot_sees_a_replaced_file(tree: Path) -> None:
    def replace() -> None:
        (tree / "etc/passwd").unlink()
        (tree / "etc/passwd").write_text("root:x:0:0")

    assert assert_partial_is_full(tree, replace, ["etc/passwd"]).upserts == ["etc/passwd"]


def test_partial_snapshot_sees_a_file_over_a_directory(tree: Path) -> None:
    def replace() -> None:
        shutil.rmtree(tree / "usr/lib")
        (tree / "usr/lib").write_text("file")

    changes = assert_partial_is_full(tree, replace, ["usr/lib"])
    assert changes.upserts == ["usr/lib"]
    assert changes.deletions == []  # hidden by the file now at usr/lib


def test_partial_snapshot_sees_a_directory_over_a_file(tree: Path) -> None:
    def replace() -> None:
        (tree / "etc/group").unlink()
        make_tree(tree, ["etc/group/a", "etc/group/b/c"])

    changes = assert_partial_is_full(tree, replace, ["etc/group"])
    assert changes.upserts == ["etc/group", "etc/group/a", "etc/group/b", "etc/group/b/c"]


def test_partial_snapshot_walks_new_parents_a_step_named_only_the_file_of(tree: Path) -> None:
    # COPY f /opt/app/bin/f reports the file; /opt, /opt/app, /opt/app/bin are new.
    changes = assert_partial_is_full(tree, lambda: make_tree(tree, ["opt/app/bin/f"]),
                                     ["opt/app/bin/f"])
    assert changes.upserts == ["opt", "opt/app", "opt/app/bin", "opt/app/bin/f"]


def test_partial_snapshot_of_a_copy_into_an_existing_directory(tree: Path) -> None:
    changes = assert_partial_is_full(tree, lambda: make_tree(tree, ["usr/lib/a", "usr/lib/b/c"]),
                                     ["usr/lib/a", "usr/lib/b"])
    assert changes.upserts == ["usr/lib/a", "usr/lib/b", "usr/lib/b/c"]


def test_partial_snapshot_of_a_copy_that_changes_nothing(tree: Path) -> None:
    # COPY of an empty directory into /var/log: the path is named, nothing moved.
    partial, full, before = partial_and_full(tree, lambda: None, ["etc/passwd", "var/log"])
    assert partial is not None and partial.entries == before.entries == full.entries
    assert diff_snapshots(before, partial).is_empty()


def test_partial_snapshot_whites_out_what_a_replaced_directory_held(tree: Path) -> None:
    def replace() -> None:
        shutil.rmtree(tree / "usr/lib")
        make_tree(tree, ["usr/lib/new"])

    changes = assert_partial_is_full(tree, replace, ["usr/lib"])
    # No opaque marker: a whiteout for each lost entry, as BuildKit's layers say it.
    assert {"usr/lib/libc.so", "usr/lib/deep"} <= set(changes.deletions)
    assert "usr/lib/libc.so" not in changes.upserts


def test_partial_snapshot_whites_out_files_removed_under_a_kept_directory(tree: Path) -> None:
    def remove() -> None:
        (tree / "usr/lib/deep/er/file").unlink()
        (tree / "usr/lib/libc.so").unlink()

    changes = assert_partial_is_full(tree, remove, ["usr/lib"])
    assert changes.deletions == ["usr/lib/deep/er/file", "usr/lib/libc.so"]


def test_partial_snapshot_restats_other_names_of_a_replaced_hard_link(tree: Path) -> None:
    os.link(tree / "usr/bin/sh", tree / "usr/bin/bash")

    def replace() -> None:
        (tree / "usr/bin/sh").unlink()  # bash's link count drops to 1
        (tree / "usr/bin/sh").write_text("new")

    changes = assert_partial_is_full(tree, replace, ["usr/bin/sh"])
    assert "usr/bin/bash" in changes.upserts


def test_partial_snapshot_restats_a_file_a_step_linked_to(tree: Path) -> None:
    changes = assert_partial_is_full(
        tree, lambda: os.link(tree / "etc/group", tree / "var/log/group"), ["var/log/group"])
    assert "etc/group" in changes.upserts


def test_partial_snapshot_leaves_out_ignored_paths(tree: Path) -> None:
    ignore = IgnoreList(root=tree, paths=frozenset({"var/log"}))
    before = take_snapshot(tree, ignore)
    wait_for_clock_tick(before)
    make_tree(tree, ["var/log/x", "var/new"])
    partial = take_partial_snapshot(tree, ignore, before, ["var/log/x", "var/new"])
    assert partial is not None
    assert partial.entries == take_snapshot(tree, ignore).entries


@pytest.mark.parametrize("touched", [[""], ["/"], ["etc/passwd/x"]])
def test_partial_snapshot_gives_up_where_it_cannot_vouch(tree: Path, touched: list[str]) -> None:
    # The whole root; a path below a file: a full walk is needed.
    partial, _, _ = partial_and_full(tree, lambda: None, touched)
    assert partial is None


def test_partial_snapshot_gives_up_below_a_symlink(tree: Path) -> None:
    (tree / "lib").symlink_to("usr/lib")
    partial, _, _ = partial_and_full(tree, lambda: make_tree(tree, ["usr/lib/x"]), ["lib/x"])
    assert partial is None


def _real_directories(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_dir() and not p.is_symlink()
                  and not any(q.is_symlink() for q in p.relative_to(root).parents
                              if str(q) != "." and (root / q).is_symlink()))


def _random_write(root: Path, rng: random.Random, written: list[str]) -> str:
    """One thing a COPY or ADD may do, somewhere below real directories; the path it names.

    Hard links go to files the step wrote before (``written``), as COPY and ADD only link
    what they copied or extracted."""
    base = rng.choice(["", *_real_directories(root)])
    rel = f"{base}/{rng.choice('abcde')}".lstrip("/")
    if rng.random() < 0.3:
        rel += f"/{rng.choice('xyz')}/{rng.choice('pq')}"  # new parents on the way
    path = root / rel
    if not all(not os.path.lexists(root / q) or ((root / q).is_dir()
                                                  and not (root / q).is_symlink())
               for q in Path(rel).parents if str(q) != "."):
        return _random_write(root, rng, written) if rng.random() < 0.9 else ""
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = rng.choice(["file", "dir", "link", "hardlink"])
    if kind == "file":
        path.write_text(rel)
    elif kind == "dir":
        make_tree(path, ["f", "g/h"])
    elif kind == "link":
        path.symlink_to(rng.choice(["/etc", "../x", "nowhere"]))
    else:
        files = [p for w in written for p in [root / w, *(root / w).rglob("*")]
                 if p.is_file() and not p.is_symlink()]
        if files:
            os.link(rng.choice(files), path)
        else:
            path.write_text("x")
    return rel


@pytest.mark.parametrize("seed", range(25))
def test_partial_snapshot_equals_the_full_walk_after_random_copies(tmp_path: Path,
                                                                   seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "root"
    make_tree(root, ["etc/passwd", "usr/bin/sh", "usr/lib/a/b", "var/log/"])
    os.link(root / "usr/bin/sh", root / "usr/bin/ash")
    (root / "lib").symlink_to("usr/lib")
    ignore = IgnoreList(root=root, paths=NO_IGNORE)
    before = take_snapshot(root, ignore)
    for _ in range(4):  # steps in a row, each from the partial snapshot of the one before
        wait_for_clock_tick(before)
        written: list[str] = []
        for _ in range(rng.randint(1, 4)):
            if rel := _random_write(root, rng, written):
                written.append(rel)
        partial = take_partial_snapshot(root, ignore, before, written)
        full = take_snapshot(root, ignore)
        assert partial is not None
        assert partial.entries == full.entries
        assert diff_snapshots(before, partial) == diff_snapshots(before, full)
        before = partial


def test_partial_snapshot_of_many_directories_written_over(tree: Path) -> None:
    make_tree(tree, [f"srv/{group}/d{index}/old" for group in "ab" for index in range(12)])

    def rewrite() -> None:
        for group in "ab":
            for index in range(12):
                (tree / f"srv/{group}/d{index}/old").unlink()
                (tree / f"srv/{group}/d{index}/new").write_text("new")

    changes = assert_partial_is_full(
        tree, rewrite, [f"srv/{group}/d{index}" for group in "ab" for index in range(12)])
    assert len(changes.deletions) == 24


def test_partial_snapshot_gives_up_on_directories_written_over_in_many_places(
        tree: Path) -> None:
    make_tree(tree, [f"srv/p{index}/d/old" for index in range(40)])
    partial, _, _ = partial_and_full(tree, lambda: None,
                                     [f"srv/p{index}/d" for index in range(40)])
    assert partial is None
