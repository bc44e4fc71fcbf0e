"""RUN in sandbox mode: chrooted into the root, with private /proc, /dev and /sys mounts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from executor.errors import KilnError
from executor.sandbox import Identity, Sandbox
from tests.support.images import make_busybox_rootfs

ENV = {"PATH": "/bin:/usr/bin:/sbin:/usr/sbin"}


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_a_command_sees_only_the_root_and_its_own_mounts(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    before = mounts()
    code = Sandbox(root, in_place=False).run(
        ["/bin/sh", "-c", "echo made > /made.txt; test -e /proc/self/status && test -e "
         "/dev/null && echo ok > /checks.txt"], env=ENV, cwd="/", identity=Identity())
    assert code == 0
    assert (root / "made.txt").read_text() == "made\n"
    assert (root / "checks.txt").read_text() == "ok\n"
    assert mounts() == before  # nothing mounted on the host, nothing left behind
    assert not any((root / "proc").iterdir())


def test_exit_code_and_user_are_the_commands(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    sandbox = Sandbox(root, in_place=False)
    assert sandbox.run(["/bin/sh", "-c", "exit 7"], env=ENV, cwd="/", identity=Identity()) == 7
    code = sandbox.run(["/bin/sh", "-c", "id -u > /tmp/uid; pwd > /tmp/pwd"], env=ENV,
                       cwd="/home/kiln", identity=Identity(uid=1000, gid=1000, groups=(1000,)))
    assert code == 0
    assert (root / "tmp/uid").read_text() == "1000\n"
    assert (root / "tmp/pwd").read_text() == "/home/kiln\n"


def test_missing_mount_points_are_created_and_stay_as_runc_leaves_them(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    for name in ("proc", "dev", "sys"):
        (root / name).rmdir()
    assert Sandbox(root, in_place=False).run(["/bin/true"], env=ENV, cwd="/",
                                             identity=Identity()) == 0
    for name in ("proc", "dev", "sys"):
        info = (root / name).lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o755, name
        assert not any((root / name).iterdir()), name


def test_background_processes_are_killed_when_the_command_ends(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    code = Sandbox(root, in_place=False).run(
        ["/bin/sh", "-c", "(sleep 1; echo late > /late.txt) & echo $! > /bg.pid"], env=ENV,
        cwd="/", identity=Identity())
    assert code == 0
    import time

    time.sleep(1.5)
    assert not (root / "late.txt").exists()


def test_a_device_node_from_the_image_cannot_be_opened(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    os.mknod(root / "tmp/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    sandbox = Sandbox(root, in_place=False)
    assert sandbox.run(["/bin/sh", "-c", "echo x > /tmp/null"], env=ENV, cwd="/",
                       identity=Identity()) != 0
    assert sandbox.run(["/bin/sh", "-c", "echo x > /dev/null"], env=ENV, cwd="/",
                       identity=Identity()) == 0


def test_a_mount_point_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    (root / "proc").rmdir()
    (root / "proc").symlink_to("/etc")
    with pytest.raises(KilnError, match="/proc in the image is not a directory"):
        Sandbox(root, in_place=False).run(["/bin/true"], env=ENV, cwd="/", identity=Identity())


def test_name_service_files_are_the_hosts_read_only_and_leave_the_images_alone(
        tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    (root / "etc/hosts").write_text("127.0.0.1 image\n")
    code = Sandbox(root, in_place=False).run(
        ["/bin/sh", "-c", "cat /etc/resolv.conf > /tmp/seen; echo x >> /etc/hosts || "
         "echo refused > /tmp/write"], env=ENV, cwd="/", identity=Identity())
    assert code == 0
    assert (root / "tmp/seen").read_text() == Path("/etc/resolv.conf").read_text()
    assert (root / "tmp/write").read_text() == "refused\n"
    assert (root / "etc/hosts").read_text() == "127.0.0.1 image\n"
    assert (root / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n"


def test_name_service_files_reach_a_run_where_the_image_has_none_and_leave_no_trace(
        tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    before = os.lstat(root / "etc")
    code = Sandbox(root, in_place=False).run(
        ["/bin/sh", "-c", "cat /etc/hosts > /tmp/hosts && cat /etc/resolv.conf > /tmp/resolv"],
        env=ENV, cwd="/", identity=Identity())
    assert code == 0
    assert "kiln" in (root / "tmp/hosts").read_text().split()
    assert (root / "tmp/resolv").read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert not os.path.lexists(root / "etc/hosts")
    assert not os.path.lexists(root / "etc/resolv.conf")
    assert os.lstat(root / "etc").st_mtime_ns == before.st_mtime_ns


def test_a_run_that_adds_to_etc_keeps_the_new_mtime(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "root")
    before = os.lstat(root / "etc")
    assert Sandbox(root, in_place=False).run(
        ["/bin/sh", "-c", "sleep 0.05; echo x > /etc/new"], env=ENV, cwd="/",
        identity=Identity()) == 0
    assert os.lstat(root / "etc").st_mtime_ns != before.st_mtime_ns
    assert not os.path.lexists(root / "etc/hosts")
