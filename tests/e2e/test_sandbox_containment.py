"""Sandbox mode contains a RUN as a container runtime contains a build step, and every process
a RUN starts ends with it (issue 18 items 1 and 5, issue 14's and 19's name resolution).

A hostile Dockerfile built with ``--root`` on a developer or CI machine must not write the
host's devices, see or signal the host's processes, hold more than Docker's default
capabilities, or leave a process behind that changes the root after the build.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.lifetime import process_table
from tests.support.built import Built, build
from tests.support.kiln import write_context
from tests.support.runtime import require_tool

pytestmark = pytest.mark.e2e

DOCKER_DEFAULT_CAPS = "00000000a80425fb"


def new_layer_names(built: Built) -> set[str]:
    return {name for layer in built.layers[1:] for name in layer}


def marked_processes(mark: str) -> list[int]:
    """Pids of every process whose environment holds ``KILN_TEST_MARK=mark``: the RUN's, which
    inherit it from the image's ENV (a pivot_root'ed process's root says nothing from here)."""
    needle = f"KILN_TEST_MARK={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(name))
    return found


def tree_listing(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (mtime_ns, size) of everything under ``root``, to tell whether it changed."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            out[os.path.relpath(path, root)] = (info.st_mtime_ns, info.st_size)
    return out


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A host process a RUN might try to signal."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_run_cannot_write_the_hosts_dev(tmp_path: Path, busybox_image: str) -> None:
    probe = f"kiln-probe-{secrets.token_hex(4)}"
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  f"RUN touch /dev/{probe} /dev/shm/{probe} && ls /dev > /dev-listing\n")
    assert built.ok, built.run.stderr
    assert not Path(f"/dev/{probe}").exists()
    assert not Path(f"/dev/shm/{probe}").exists()
    assert probe in (built.root / "dev-listing").read_text().split()
    assert not any(name.startswith("dev/") for name in new_layer_names(built))


def test_a_runs_dev_has_the_standard_nodes_and_its_own_shm_and_pts(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN ls /dev > /dev-listing && echo x > /dev/null && head -c 4 /dev/zero | "
                  "wc -c > /zero && test -c /dev/pts/ptmx && test -L /dev/ptmx "
                  "&& readlink /dev/fd > /fd && grep ' /dev/shm ' /proc/mounts > /shm\n")
    assert built.ok, built.run.stderr
    listing = set((built.root / "dev-listing").read_text().split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "shm", "pts", "ptmx", "fd",
            "stdin", "stdout", "stderr"} <= listing
    assert (built.root / "zero").read_text().strip() == "4"
    assert (built.root / "fd").read_text() == "/proc/self/fd\n"
    assert (built.root / "shm").read_text().startswith("shm /dev/shm tmpfs ")


def test_a_run_sees_only_its_own_processes(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN echo $$ > /shell-pid; ls /proc | grep -E '^[0-9]+$' > /pids\n")
    assert built.ok, built.run.stderr
    pids = [int(p) for p in (built.root / "pids").read_text().split()]
    assert 1 in pids
    assert len(pids) <= 3, pids  # sh, ls, grep
    assert (built.root / "shell-pid").read_text() == "1\n"  # PID 1 of its own namespace


def test_a_run_cannot_signal_a_host_process(tmp_path: Path, busybox_image: str,
                                             sleeper: subprocess.Popen[bytes]) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  f"RUN kill -9 {sleeper.pid} 2> /kill-error; echo $? > /kill-status\n")
    assert built.ok, built.run.stderr
    assert (built.root / "kill-status").read_text().strip() != "0"
    assert sleeper.poll() is None  # still running


def test_a_run_has_dockers_default_capabilities_and_no_more(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN grep ^Cap /proc/self/status > /caps\n"
                  "USER kiln\nRUN grep ^Cap /proc/self/status > /tmp/caps-kiln\n")
    assert built.ok, built.run.stderr
    caps = dict(line.split(":\t") for line in (built.root / "caps").read_text().splitlines())
    assert caps == {"CapInh": "0000000000000000", "CapPrm": DOCKER_DEFAULT_CAPS,
                    "CapEff": DOCKER_DEFAULT_CAPS, "CapBnd": DOCKER_DEFAULT_CAPS,
                    "CapAmb": "0000000000000000"}
    user = dict(line.split(":\t") for line in
                (built.root / "tmp/caps-kiln").read_text().splitlines())
    assert user["CapEff"] == user["CapPrm"] == "0000000000000000"
    assert user["CapBnd"] == DOCKER_DEFAULT_CAPS


def test_a_run_has_its_own_hostname_and_a_read_only_sys(tmp_path: Path,
                                                         busybox_image: str) -> None:
    host_name = os.uname().nodename
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN hostname > /name; hostname changed 2> /dev/null; "
                  "touch /sys/kernel/probe 2> /dev/null; echo $? > /sys-status; "
                  "echo 1 > /proc/sys/kernel/panic_on_oops 2> /dev/null; echo $? > /sysctl\n")
    assert built.ok, built.run.stderr
    assert (built.root / "name").read_text() == "kiln\n"
    assert os.uname().nodename == host_name
    assert (built.root / "sys-status").read_text().strip() != "0"
    assert (built.root / "sysctl").read_text().strip() != "0"


def test_a_daemon_started_by_a_run_ends_with_the_run(tmp_path: Path,
                                                      busybox_image: str) -> None:
    mark = secrets.token_hex(6)
    built = build(tmp_path, f"FROM {busybox_image}\nENV KILN_TEST_MARK={mark}\n"
                  "RUN setsid sh -c 'sleep 2; echo late > /late' > /dev/null 2>&1 & "
                  "(setsid sleep 300 &) ; echo started > /started; sleep 1\n"
                  "RUN sleep 3; test ! -e /late && echo absent > /late-in-next-run\n")
    assert built.ok, built.run.stderr
    assert (built.root / "late-in-next-run").read_text() == "absent\n"
    assert marked_processes(mark) == []
    before = tree_listing(built.root)
    time.sleep(2.5)
    assert tree_listing(built.root) == before
    assert not (built.root / "late").exists()


def test_sigkill_of_the_executor_mid_run_leaves_no_process(tmp_path: Path,
                                                           busybox_image: str) -> None:
    mark = secrets.token_hex(6)
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            f"ENV KILN_TEST_MARK={mark}\n"
                            "RUN (setsid sleep 300 &); sh -c 'sleep 3; echo late > /late' & "
                            "touch /started; sleep 300\n")
    root = tmp_path / "root"
    executor = subprocess.Popen(
        [sys.executable, "-m", "executor.cli", "--context", str(context), "--root", str(root),
         "--no-push", "--insecure-pull"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (root / "started").exists():
            assert executor.poll() is None, "the executor ended before the RUN started"
            assert time.monotonic() < deadline, "the RUN did not start"
            time.sleep(0.1)
        assert marked_processes(mark)  # the RUN's processes
        executor.send_signal(signal.SIGKILL)
        executor.wait()
        deadline = time.monotonic() + 5
        while marked_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marked_processes(mark) == []
        time.sleep(3.5)
        assert not (root / "late").exists()
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


def start_marked_build(tmp_path: Path, busybox_image: str,
                       run: str) -> tuple[subprocess.Popen[bytes], Path, str]:
    """The executor building ``RUN run`` with a mark in its environment (to find what it
    started), and the root and mark."""
    mark = secrets.token_hex(6)
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            f"ENV KILN_TEST_MARK={mark}\nRUN {run}\n")
    root = tmp_path / "root"
    executor = subprocess.Popen(
        [sys.executable, "-m", "executor.cli", "--context", str(context), "--root", str(root),
         "--no-push", "--insecure-pull"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return executor, root, mark


def wait_for_run(executor: subprocess.Popen[bytes], started: Callable[[], bool],
                 poll: float) -> None:
    deadline = time.monotonic() + 120
    while not started():
        assert executor.poll() is None, "the executor ended before the RUN started"
        assert time.monotonic() < deadline, "the RUN did not start"
        time.sleep(poll)


def test_sigterm_of_the_executor_mid_run_ends_the_run_and_its_daemons(
        tmp_path: Path, busybox_image: str) -> None:
    executor, root, mark = start_marked_build(
        tmp_path, busybox_image, "(setsid sleep 300 &); touch /started; sleep 300")
    try:
        wait_for_run(executor, (root / "started").exists, 0.1)
        executor.send_signal(signal.SIGTERM)
        assert executor.wait(10) == 143
        assert marked_processes(mark) == []  # gone before the executor exited
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


def processes_naming(root: Path) -> list[int]:
    """Pids of the processes whose command line names ``root``: kiln's and its forks'."""
    found = []
    for pid, *_ in process_table():
        with contextlib.suppress(OSError):
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def started_run(executor: int) -> bool:
    """True once the executor has forked a RUN's keeper: a child in a process group of its own
    (kiln's other children, its file-writing helpers, stay in kiln's). Read from the
    executor's list of children, not a scan of /proc: the start takes milliseconds."""
    group = os.getpgid(executor)
    try:
        children = Path(f"/proc/{executor}/task/{executor}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        with contextlib.suppress(OSError):
            if os.getpgid(int(child)) != group:
                return True
    return False


def test_sigterm_of_the_executor_as_a_run_starts_leaves_no_process(
        tmp_path: Path, busybox_image: str) -> None:
    # The signal lands while the RUN is being started (its keeper forked, the command being
    # set up): the window where kiln had no handle on the command yet.
    executor, root, mark = start_marked_build(tmp_path, busybox_image,
                                              "(setsid sleep 300 &); sleep 300")
    try:
        wait_for_run(executor, lambda: started_run(executor.pid), 0.001)
        executor.send_signal(signal.SIGTERM)
        assert executor.wait(10) == 143
        # Gone before the executor exited: the keeper (a fork of kiln, named by its command
        # line) and the RUN's processes.
        assert (processes_naming(root), marked_processes(mark)) == ([], [])
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait()


def test_a_run_resolves_localhost_and_the_image_gets_no_hosts_file(
        tmp_path: Path, busybox_image: str) -> None:
    host_files = {name: Path("/etc", name).read_bytes() for name in ("hosts", "resolv.conf")}
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN ping -c 1 -W 2 localhost > /ping && cat /etc/resolv.conf > /resolv\n"
                  # what netbase's postinst does: write /etc/hosts when there is none
                  "RUN [ -e /etc/hosts ] || echo '127.0.0.1 made' > /etc/hosts; "
                  "echo '10.0.0.1 added' >> /etc/hosts 2> /dev/null; true\n"
                  "RUN true\n")
    assert built.ok, built.run.stderr
    assert "127.0.0.1" in (built.root / "ping").read_text()
    assert (built.root / "resolv").read_bytes() == host_files["resolv.conf"]
    assert not (built.root / "etc/hosts").exists()
    assert not (built.root / "etc/resolv.conf").exists()
    names = new_layer_names(built)
    assert not any(name == "etc" or name.startswith("etc/") for name in names), names
    assert {name: Path("/etc", name).read_bytes() for name in host_files} == host_files


def test_an_images_own_hosts_file_is_left_as_it_was(tmp_path: Path,
                                                    busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY hosts /etc/hosts\n"
                  "RUN grep -c localhost /etc/hosts > /seen; "
                  "echo '10.0.0.1 added' >> /etc/hosts 2> /dev/null; true\n",
                  {"hosts": "127.0.0.1 image\n"})
    assert built.ok, built.run.stderr
    assert (built.root / "etc/hosts").read_text() == "127.0.0.1 image\n"
    assert int((built.root / "seen").read_text()) >= 1  # the RUN saw the host's file
    assert "etc/hosts" not in built.layers[2]


def test_getent_finds_localhost_on_a_debian_base_without_etc_hosts(
        tmp_path: Path, debian_image: str) -> None:
    # What BuildKit gives (checked with its oracle): getent answers, netbase's postinst finds
    # an /etc/hosts and writes none, and no layer holds one.
    built = build(tmp_path, f"FROM {debian_image}\n"
                  "RUN getent hosts localhost > /getent\n"
                  "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                  "apt-get install -y -qq netbase > /dev/null\n")
    assert built.ok, built.run.stderr[-3000:]
    assert "localhost" in (built.root / "getent").read_text()
    assert (built.root / "etc/services").exists()  # netbase was installed
    assert not (built.root / "etc/hosts").exists()
    assert "etc/hosts" not in new_layer_names(built)
    assert "etc" not in built.layers[1]  # the getent RUN's layer: /getent alone


CHROOT_ESCAPE_C = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* The classic way out of a chroot for a root process with CAP_SYS_CHROOT: chroot into a
   subdirectory while the working directory stays above it, then walk ".." up to the real /. */
int main(int argc, char **argv) {
    mkdir("/.escape", 0700);
    if (chroot("/.escape") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 256; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 3; }
    return access(argv[1], F_OK) == 0 ? 0 : 1;
}
"""


def test_a_run_cannot_leave_the_root_the_way_one_leaves_a_chroot(
        tmp_path: Path, busybox_image: str) -> None:
    require_tool("gcc", "gcc")
    source = tmp_path / "escape.c"
    source.write_text(CHROOT_ESCAPE_C)
    program = tmp_path / "escape"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(program), str(source)], check=True)
    marker = tmp_path / f"host-only-{secrets.token_hex(4)}"
    marker.write_text("on the host\n")
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY --chmod=755 escape /escape\n"
                  f"RUN /escape {marker}; echo $? > /escape-status\n",
                  {"escape": program.read_bytes()})
    assert built.ok, built.run.stderr
    assert (built.root / "escape-status").read_text() == "1\n"  # chrooted, but saw no host


def test_single_snapshot_holds_nothing_of_the_runs_mount_points(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nRUN echo a > /a\nRUN echo b > /b\n",
                  None, "--single-snapshot")
    assert built.ok, built.run.stderr
    assert set(built.layers[-1]) == {"a", "b"}


def test_single_snapshot_holds_nothing_of_a_run_mount_points_parent(
        tmp_path: Path, busybox_image: str) -> None:
    # The mount point /usr/new is made and removed again; /usr gets its times back but not
    # its ctime, which only the per-RUN layers excused.
    dockerfile = (f"FROM {busybox_image}\n"
                  "RUN --mount=type=tmpfs,target=/usr/new echo a > /a\n")
    built = build(tmp_path, dockerfile, None, "--single-snapshot")
    assert built.ok, built.run.stderr
    assert set(built.layers[-1]) == {"a"}
