"""kiln as PID 1: stop signals become BuildInterrupted, and only orphans are reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.errors import OptionsError
from executor.inplace import check_in_place_allowed
from executor.pid1 import BuildInterrupted, install_handlers, interruption_held, reap_orphans


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install_handlers()
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def wait_for_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_raises_build_interrupted_with_128_plus_the_signal(handlers, signum):
    with pytest.raises(BuildInterrupted) as raised:
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the handler runs at the next bytecode boundary
    assert raised.value.exit_code == 128 + signum
    assert str(raised.value) == f"build interrupted by {signal.Signals(signum).name}"


def test_a_second_stop_signal_does_not_interrupt_the_cleanup(handlers):
    with pytest.raises(BuildInterrupted):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)  # ignored now
    time.sleep(0.05)


def test_a_stop_signal_during_a_held_block_is_raised_as_the_block_ends(handlers):
    finished = []
    with pytest.raises(BuildInterrupted) as raised, interruption_held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler has run by now, and held it
        finished.append(True)
    assert finished == [True]
    assert raised.value.exit_code == 128 + signal.SIGTERM


def test_an_orphan_in_another_session_is_reaped():
    # A RUN's daemon runs in a session of its own; when it ends it is a zombie kiln must reap.
    proc = subprocess.Popen(["true"], start_new_session=True)
    wait_for_zombie(proc.pid)
    assert proc.pid in reap_orphans()
    assert not Path(f"/proc/{proc.pid}").exists()


def test_a_child_in_kilns_own_process_group_is_left_to_its_owner():
    proc = subprocess.Popen(["true"])
    wait_for_zombie(proc.pid)
    assert proc.pid not in reap_orphans()
    assert proc.wait() == 0


def test_in_place_outside_a_container_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr("executor.inplace.running_in_container", lambda: False)
    with pytest.raises(OptionsError) as refused:
        check_in_place_allowed(tmp_path, force=False)
    assert str(refused.value) == ("kiln should only be run inside of a container, run with the "
                                  "--force flag if you are sure you want to continue")


def test_force_allows_in_place_outside_a_container(monkeypatch, tmp_path):
    monkeypatch.setattr("executor.inplace.running_in_container", lambda: False)
    check_in_place_allowed(tmp_path, force=True)


def test_in_a_container_an_executor_outside_the_kiln_dir_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr("executor.inplace.running_in_container", lambda: True)
    with pytest.raises(OptionsError, match=r"^refusing to build in place over /: this executor"):
        check_in_place_allowed(tmp_path, force=False)


def test_the_container_marker_files_outlive_an_in_place_build(tmp_path):
    from executor.inplace import executor_image_paths

    (tmp_path / ".dockerenv").touch()
    (tmp_path / "busybox").mkdir()
    (tmp_path / "busybox/busybox").touch()
    assert executor_image_paths(tmp_path) == ["/busybox", "/.dockerenv"]
