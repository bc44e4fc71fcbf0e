"""executor.lifetime: a command's processes, all of them, end with the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executor import lifetime


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_setsid_daemon_ends_when_the_command_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    proc = lifetime.spawn(["/bin/sh", "-c", f"setsid sh -c 'echo $$ > {pid_file}; "
                           "exec sleep 60' & sleep 0.3; exit 3"], env={"PATH": "/bin:/usr/bin"})
    assert proc.wait(10) == 3
    assert not alive(int(pid_file.read_text()))


def test_the_commands_exit_code_and_signal_come_through() -> None:
    env = {"PATH": "/bin:/usr/bin"}
    assert lifetime.spawn(["/bin/sh", "-c", "exit 7"], env=env).wait(10) == 7
    assert lifetime.spawn(["/bin/sh", "-c", "kill -9 $$"], env=env).wait(10) == 137


def test_stop_ends_the_command_and_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    proc = lifetime.spawn(["/bin/sh", "-c", f"(setsid sleep 60 & echo $! > {pid_file}); "
                           "sleep 60"], env={"PATH": "/bin:/usr/bin"})
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    lifetime.stop(proc)
    assert time.monotonic() - started < 5
    assert not alive(int(pid_file.read_text()))


def test_a_missing_program_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        lifetime.spawn(["/nonexistent/program"], env={})


def test_a_failing_setup_fails_the_start() -> None:
    def refuse() -> None:
        raise OSError(1, "refused")

    with pytest.raises(subprocess.SubprocessError):
        lifetime.spawn(["/bin/true"], env={}, command_setup=refuse)


def test_descendants_follow_the_tree() -> None:
    me = os.getpid()
    child = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(lifetime.descendants(child.pid)) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        below_me = lifetime.descendants(me)
        assert child.pid in below_me
        assert set(lifetime.descendants(child.pid)) < set(below_me)
    finally:
        for pid in lifetime.descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_everything_ends_when_kiln_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    script = ("import sys, time\nfrom executor import lifetime\n"
              "lifetime.spawn(['/bin/sh', '-c', sys.argv[1]], env={'PATH': '/bin:/usr/bin'})\n"
              "time.sleep(60)\n")
    kiln = subprocess.Popen([sys.executable, "-c", script,
                             f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & sleep 60"])
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        daemon = int(pid_file.read_text())
        assert alive(daemon)
        kiln.kill()
        kiln.wait()
        deadline = time.monotonic() + 5
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(daemon)
    finally:
        kiln.kill()
        kiln.wait()


def test_descendants_are_none_where_proc_shows_another_pid_namespace() -> None:
    # kiln started in a PID namespace of its own whose /proc was not mounted again (unshare
    # -p -f without --mount-proc): its pids name other processes in that /proc, and a keeper
    # there would SIGKILL the children of whatever process holds its own pid number.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            lifetime.check(lifetime.libc().unshare(0x20000000), "unshare(CLONE_NEWPID)")
            inner = os.fork()
            if inner == 0:
                os.write(write, str(len(lifetime.descendants(os.getpid()))).encode())
                os._exit(0)
            os.waitpid(inner, 0)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        found = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        pytest.skip("no PID namespace here")
    assert found == "0"


def marked(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds ``KILN_TEST_MARK=mark``."""
    needle = f"KILN_TEST_MARK={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and needle in Path(f"/proc/{name}/environ").read_bytes().split(
                    b"\0") and alive(int(name)):
                found.append(int(name))
        except OSError:
            continue
    return found


def test_a_stop_signal_the_keeper_gets_before_it_waits_still_ends_the_command(
        tmp_path: Path) -> None:
    # The signal comes during the keeper's own set-up: held until the keeper waits for its
    # command (a keeper ended there would leave a forked command running on its own).
    mark = tmp_path.name
    proc = lifetime.spawn(["/bin/sleep", "60"], env={"KILN_TEST_MARK": mark},
                          keeper_setup=lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert marked(mark) == []


def test_the_command_starts_with_no_signal_blocked() -> None:
    done = lifetime.run(["/bin/grep", "^SigBlk", "/proc/self/status"],
                        env={"PATH": "/bin:/usr/bin"}, stdout=subprocess.PIPE)
    assert done.stdout.split() == [b"SigBlk:", b"0" * 16]


def test_a_stop_signal_while_a_command_starts_stops_it_before_the_build_goes_on(
        tmp_path: Path) -> None:
    # kiln gets SIGTERM while subprocess is still starting the command (the keeper sends it
    # from its set-up, before forking the command): BuildInterrupted comes once the command
    # is started and stopped, not half way through the start with the command left running.
    script = tmp_path / "kiln.py"
    script.write_text(
        "import os, signal, sys\n"
        "from executor import lifetime, pid1\n"
        "pid1.install_handlers()\n"
        "kiln = os.getpid()\n"
        "try:\n"
        "    lifetime.run(['/bin/sleep', '60'], env={'KILN_TEST_MARK': sys.argv[1]},\n"
        "                 keeper_setup=lambda: os.kill(kiln, signal.SIGTERM))\n"
        "except pid1.BuildInterrupted:\n"
        "    print(len(lifetime.descendants(kiln)))\n")
    done = subprocess.run([sys.executable, str(script), tmp_path.name], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n", "processes left when BuildInterrupted was raised"
    assert marked(tmp_path.name) == []


def test_a_process_no_longer_below_the_keeper_is_not_killed() -> None:
    # What a scanned pid names by the time of the kill when its process was reaped and the
    # number reused: a process elsewhere in the tree. It must survive.
    env = {"PATH": "/bin:/usr/bin"}
    elsewhere = subprocess.Popen(["sleep", "30"], env=env)
    keeper = subprocess.Popen(["sleep", "30"], env=env)
    try:
        lifetime.kill_if_below(elsewhere.pid, keeper.pid)
        time.sleep(0.2)
        assert elsewhere.poll() is None
        lifetime.kill_if_below(elsewhere.pid, os.getpid())
        assert elsewhere.wait(5) == -signal.SIGKILL
    finally:
        for proc in (elsewhere, keeper):
            proc.kill()
            proc.wait()


def test_a_process_that_is_gone_is_no_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    lifetime.kill_if_below(proc.pid, os.getpid())
