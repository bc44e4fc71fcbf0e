"""RUN --mount placed without mount(2): what the command sees, and what is left afterwards."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from executor.dockerfile.parse import Instruction, parse_text
from executor.errors import DockerfileError
from executor.instructions.mounts import parse_mount, prepared_mounts
from executor.instructions.placed import JOURNAL, Placement, PlacementError, placed, recover
from executor.instructions.state import StageState


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "var/cache/apt").mkdir(parents=True)
    (root / "var/cache/apt/old.bin").write_text("from the image\n")
    os.utime(root / "var/cache/apt", ns=(1_000_000_000, 2_000_000_000))
    return root


@pytest.fixture
def kiln(tmp_path: Path) -> Path:
    kiln = tmp_path / "kaniko"
    (kiln / "cache/c1").mkdir(parents=True)
    (kiln / "cache/c1/pkg.deb").write_text("cached\n")
    return kiln


@pytest.fixture
def kiln_elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A kiln dir on another filesystem than the root (a pod's volume): nothing renames
    between the two, so caches and secrets are copied and the image's content is held in
    the root itself."""
    volume = Path(tempfile.mkdtemp(prefix="kiln-volume-", dir="/dev/shm"))
    if os.stat(volume).st_dev == os.stat(tmp_path).st_dev:
        shutil.rmtree(volume)
        pytest.skip("/dev/shm is on the test's own filesystem")
    (volume / "cache/c1").mkdir(parents=True)
    (volume / "cache/c1/pkg.deb").write_text("cached\n")
    yield volume
    shutil.rmtree(volume)


KILN_DIRS = ["kiln", "kiln_elsewhere"]


def stat_of(path: Path) -> tuple[int, int, int, int]:
    info = os.lstat(path)
    return info.st_ino, info.st_mode, info.st_mtime_ns, info.st_size


def test_a_cache_is_moved_into_place_and_back_with_what_the_command_wrote(
        root: Path, kiln: Path) -> None:
    settled: list[str] = []
    with placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1")], settled):
        assert sorted(os.listdir(root / "var/cache/apt")) == ["pkg.deb"]
        (root / "var/cache/apt/new.deb").write_text("downloaded\n")
    assert sorted(os.listdir(kiln / "cache/c1")) == ["new.deb", "pkg.deb"]
    assert "var/cache/apt" in settled and "var/cache" in settled


def test_the_targets_own_content_comes_back_exactly(root: Path, kiln: Path) -> None:
    before = {p: stat_of(root / p) for p in ("var/cache", "var/cache/apt",
                                             "var/cache/apt/old.bin")}
    with placed(root, kiln, [Placement("/var/cache/apt", "empty")], []):
        assert os.listdir(root / "var/cache/apt") == []
        (root / "var/cache/apt/junk").write_text("x")
    assert {p: stat_of(root / p) for p in before} == before
    assert not (kiln / JOURNAL).exists()


def test_missing_mount_points_are_made_and_removed_again(root: Path, kiln: Path) -> None:
    secret = kiln / "tmp/s"
    secret.parent.mkdir()
    secret.write_text("s3cr3t")
    with placed(root, kiln, [Placement("/run/secrets/tok", "owned", secret)], []):
        assert (root / "run/secrets/tok").read_text() == "s3cr3t"
    assert not (root / "run").exists()


def test_a_mount_nested_in_a_placed_cache_goes_inside_it(root: Path, kiln: Path) -> None:
    with placed(root, kiln, [Placement("/a/b", "empty"),
                             Placement("/a", "cache", kiln / "cache/c1")], []):
        assert sorted(os.listdir(root / "a")) == ["b", "pkg.deb"]
        (root / "a/b/tmp-only").write_text("x")
    assert not (root / "a").exists()
    assert sorted(os.listdir(kiln / "cache/c1")) == ["pkg.deb"]


def test_writes_to_a_read_only_copy_are_discarded_and_reported(
        root: Path, kiln: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "context"
    source.mkdir()
    (source / "a.txt").write_text("orig\n")
    with caplog.at_level(logging.WARNING, logger="kiln"), \
            placed(root, kiln, [Placement("/ctx", "copy", source, readonly=True)], []):
        (root / "ctx/a.txt").write_text("changed\n")
    assert (source / "a.txt").read_text() == "orig\n"
    assert not (root / "ctx").exists()
    assert "RUN --mount target /ctx is read-only, but the command changed it" in caplog.text


@pytest.mark.parametrize("kiln_dir", KILN_DIRS)
def test_the_images_content_comes_back_when_the_command_removed_the_targets_parent(
        root: Path, kiln_dir: str, request: pytest.FixtureRequest) -> None:
    # Under a real mount the parent could not have gone (rm stops at the mount point) and
    # the image's content stays under the mount: it must come back here too, never be lost,
    # also when it could not be held in the kiln dir (another filesystem).
    kiln = request.getfixturevalue(kiln_dir)
    with placed(root, kiln, [Placement("/var/cache/apt", "empty")], []):
        shutil.rmtree(root / "var/cache")
    assert (root / "var/cache/apt/old.bin").read_text() == "from the image\n"
    assert not (kiln / JOURNAL).exists()


def test_a_failing_command_still_gets_everything_undone(root: Path, kiln: Path) -> None:
    with pytest.raises(RuntimeError), \
            placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1")], []):
        raise RuntimeError("the command failed")
    assert (root / "var/cache/apt/old.bin").read_text() == "from the image\n"
    assert (kiln / "cache/c1/pkg.deb").exists()


@pytest.mark.parametrize("kiln_dir", KILN_DIRS)
def test_a_build_killed_during_the_command_is_undone_by_the_next_one(
        root: Path, kiln_dir: str, request: pytest.FixtureRequest) -> None:
    kiln = request.getfixturevalue(kiln_dir)
    secret = kiln / "tmp/s"
    secret.parent.mkdir()
    secret.write_text("s3cr3t")
    pid = os.fork()
    if pid == 0:  # the killed build: no finally runs after os._exit
        with placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1"),
                                 Placement("/run/secrets/tok", "owned", secret)], []):
            (root / "var/cache/apt/half.deb").write_text("x")
            os._exit(0)
    os.waitpid(pid, 0)
    assert (root / "run/secrets/tok").exists() and (kiln / JOURNAL).exists()
    assert recover(kiln)
    assert not (root / "run").exists()
    assert sorted(os.listdir(root / "var/cache/apt")) == ["old.bin"]
    assert sorted(os.listdir(kiln / "cache/c1")) == ["half.deb", "pkg.deb"]
    assert not (kiln / JOURNAL).exists()
    assert not recover(kiln)


def test_a_journal_kept_across_a_container_restart_leaves_the_fresh_root_alone(
        root: Path, kiln_elsewhere: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # The kiln dir is a kept volume; the build is killed during a RUN, the container
    # restarts with a fresh / from the executor image, which has its own files at the
    # targets. The journal speaks of the old root: it must take nothing from the new one.
    kiln = kiln_elsewhere
    secret = kiln / "tmp/s"
    secret.parent.mkdir()
    secret.write_text("s3cr3t")
    pid = os.fork()
    if pid == 0:  # the killed build: no finally of placed() runs after os._exit
        try:
            with placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1"),
                                     Placement("/run/secrets/tok", "owned", secret)], []):
                os._exit(0)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    root.rename(tmp_path / "old-root")  # the dead container's /, not yet collected
    (root / "var/cache/apt").mkdir(parents=True)
    (root / "var/cache/apt/fresh.bin").write_text("the new container's\n")
    (root / "run/secrets").mkdir(parents=True)
    (root / "run/secrets/tok").write_text("the new container's\n")
    with caplog.at_level(logging.WARNING, logger="kiln"):
        assert recover(kiln)
    assert (root / "var/cache/apt/fresh.bin").read_text() == "the new container's\n"
    assert (root / "run/secrets/tok").read_text() == "the new container's\n"
    assert not (kiln / "cache/c1").exists()  # nothing of the new root taken as the cache
    assert not (kiln / JOURNAL).exists()
    assert (f"Discarding RUN --mount journal {kiln / JOURNAL} for /run/secrets/tok, "
            "/var/cache/apt: what is there is not what the interrupted build placed (the "
            "journal was written for another root filesystem") in caplog.text
    assert "Undoing" not in caplog.text


def test_a_build_killed_while_copying_a_bind_into_place_leaves_nothing_of_it(
        root: Path, kiln: Path, tmp_path: Path) -> None:
    # The copy is made under a name of the build's own and renamed to the target once its
    # inode is journaled: a half-made copy is found and removed, never left at the target.
    source = tmp_path / "context"
    source.mkdir()
    for number in range(3000):
        (source / f"f{number}").write_text("x")
    pid = os.fork()
    if pid == 0:
        try:
            with placed(root, kiln, [Placement("/ctx", "copy", source)], []):
                os._exit(0)
        finally:
            os._exit(1)
    deadline = time.monotonic() + 30
    while not any(name == "ctx" or name.startswith(".kiln-placing-")
                  for name in os.listdir(root)) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)  # as an OOM kill would, mid-copy
    os.waitpid(pid, 0)
    assert recover(kiln)
    assert sorted(os.listdir(root)) == ["var"]


def test_a_build_killed_while_returning_a_cache_to_a_volume_leaves_the_cache_whole(
        root: Path, kiln_elsewhere: Path) -> None:
    # From another filesystem the cache is copied back: into a name of its own, renamed to
    # the store when complete, so a store that exists is never half a copy (the next build
    # would keep it and drop the placed cache as the one a newer build had made again).
    kiln = kiln_elsewhere
    pid = os.fork()
    if pid == 0:
        try:
            with placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1")],
                        []):
                for number in range(3000):
                    (root / f"var/cache/apt/f{number}").write_text("x")
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while os.listdir(kiln / "cache") and time.monotonic() < deadline:
        time.sleep(0.001)  # until the cache is in place
    while not os.listdir(kiln / "cache") and time.monotonic() < deadline:
        time.sleep(0.001)  # until it starts to come back
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    recover(kiln)
    assert len(os.listdir(kiln / "cache/c1")) == 3001
    assert os.listdir(kiln / "cache") == ["c1"]  # no half copy left beside it
    assert sorted(os.listdir(root / "var/cache/apt")) == ["old.bin"]


def test_a_journal_step_without_the_placed_inode_takes_nothing_away(
        root: Path, kiln: Path) -> None:
    # A journal of an older kiln (or a build killed between writing a step and taking it)
    # cannot say that what is at a path is what it placed: it is left there.
    (kiln / JOURNAL).parent.mkdir(parents=True)
    (kiln / JOURNAL).write_text(json.dumps([
        {"undo": "remove", "path": str(root / "var/cache/apt"), "target": "/var/cache/apt"}]))
    assert recover(kiln)
    assert (root / "var/cache/apt/old.bin").read_text() == "from the image\n"
    assert not (kiln / JOURNAL).exists()


@pytest.mark.parametrize("text", ['{"undo": "remove"}', '[{"undo": "remove"}]', '["x"]',
                                  '[{"undo": "unlink", "path": "/x"}]'])
def test_a_journal_of_the_wrong_shape_is_a_one_line_error(kiln: Path, text: str) -> None:
    (kiln / JOURNAL).parent.mkdir(parents=True)
    (kiln / JOURNAL).write_text(text)
    with pytest.raises(PlacementError, match=f"cannot read {kiln / JOURNAL}: not a journal"):
        recover(kiln)


def test_a_target_inside_the_kiln_dir_is_refused(tmp_path: Path, kiln: Path) -> None:
    with pytest.raises(PlacementError, match="is inside kiln's own directory"), \
            placed(tmp_path, kiln, [Placement("/kaniko/cache", "empty")], []):
        pass


@pytest.mark.parametrize("kiln_dir", KILN_DIRS)
def test_a_directory_moved_aside_and_back_is_no_change_for_the_layer(
        root: Path, kiln_dir: str, request: pytest.FixtureRequest) -> None:
    from snapshot.ignore import IgnoreList
    from snapshot.snapshot import diff_snapshots, settle_ctimes, take_snapshot, wait_for_clock_tick

    ignore = IgnoreList(root=root, paths=frozenset())
    before = take_snapshot(root, ignore, workers=1)
    wait_for_clock_tick(before)
    settled: list[str] = []
    kiln = request.getfixturevalue(kiln_dir)
    with placed(root, kiln, [Placement("/var/cache/apt", "cache", kiln / "cache/c1")], settled):
        pass
    after = take_snapshot(root, ignore, workers=1)
    assert before.entries != after.entries  # ctime moved on the target and its parent
    assert diff_snapshots(settle_ctimes(before, after, tuple(settled)), after).is_empty()


def test_a_real_change_to_a_settled_directory_is_still_a_change(root: Path,
                                                                kiln: Path) -> None:
    from snapshot.ignore import IgnoreList
    from snapshot.snapshot import diff_snapshots, settle_ctimes, take_snapshot, wait_for_clock_tick

    ignore = IgnoreList(root=root, paths=frozenset())
    before = take_snapshot(root, ignore, workers=1)
    wait_for_clock_tick(before)
    settled: list[str] = []
    with placed(root, kiln, [Placement("/var/cache/apt", "empty")], settled):
        os.chmod(root / "var/cache", 0o700)
    after = take_snapshot(root, ignore, workers=1)
    changes = diff_snapshots(settle_ctimes(before, after, tuple(settled)), after)
    assert changes.upserts == ["var/cache"]


def test_a_target_holding_the_kiln_dir_is_refused_before_anything_moves(root: Path) -> None:
    # Moved aside (beside itself when the kiln dir is another filesystem, a pod's volume), the
    # target would take kiln's own directory, its journal and caches, away with it.
    kiln = root / "var/kiln"
    kiln.mkdir()
    (kiln / "blob").write_text("kiln's\n")
    with pytest.raises(PlacementError, match="holds kiln's own directory"), \
            placed(root, kiln, [Placement("/var", "empty")], []):
        pass
    assert (kiln / "blob").read_text() == "kiln's\n"
    assert sorted(os.listdir(root / "var")) == ["cache", "kiln"]


def _run_instruction() -> Instruction:
    return parse_text("FROM scratch\nRUN true\n").instructions[-1]


@pytest.mark.parametrize("second", ["type=cache,id=x,target=/b",
                                    "type=cache,id=x,target=/b,sharing=locked"])
def test_one_cache_at_two_targets_of_a_run_is_a_one_line_error_not_a_hang(
        tmp_path: Path, second: str) -> None:
    # Placed by rename, a cache can be in one place at a time; and the cache's lock, taken
    # again for the second target, waited for this very RUN forever.
    for name in ("root", "kiln", "scratch"):
        (tmp_path / name).mkdir()
    state = cast(StageState, SimpleNamespace(root=tmp_path / "root", kiln_dir=tmp_path / "kiln",
                                             scratch_dir=tmp_path / "scratch"))
    specs = [parse_mount("type=cache,id=x,target=/a", "/"), parse_mount(second, "/")]

    def hung(_signum: int, _frame: object) -> None:
        raise TimeoutError("prepared_mounts hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(DockerfileError, match=r"Dockerfile:2.*cache x at two targets"), \
                prepared_mounts(state, _run_instruction(), specs, emulate=True):
            pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not (tmp_path / "root/a").exists() and not (tmp_path / "root/b").exists()


def test_a_mount_that_cannot_be_undone_is_named_with_its_line_not_as_a_failed_start(
        tmp_path: Path) -> None:
    # The command replaced the target's parent with a file: the image's content cannot be
    # put back there. Said as what failed and where, and the journal keeps the step.
    for name in ("root/var/cache/apt", "kiln", "scratch"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "root/var/cache/apt/old.bin").write_text("from the image\n")
    state = cast(StageState, SimpleNamespace(root=tmp_path / "root", kiln_dir=tmp_path / "kiln",
                                             scratch_dir=tmp_path / "scratch"))
    specs = [parse_mount("type=tmpfs,target=/var/cache/apt", "/")]
    with pytest.raises(DockerfileError) as failed, \
            prepared_mounts(state, _run_instruction(), specs, emulate=True):
        shutil.rmtree(tmp_path / "root/var/cache")
        (tmp_path / "root/var/cache").write_text("a file now\n")
    assert str(failed.value) == ("Dockerfile:2: RUN --mount: undoing the mount of "
                                 "/var/cache/apt: Not a directory")
    assert (tmp_path / "kiln" / JOURNAL).exists()
