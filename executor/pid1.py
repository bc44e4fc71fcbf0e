"""What kiln owes its container when it is PID 1: signals that stop the build, and orphans.

The kernel delivers no signal to a namespace's PID 1 whose disposition is the default, so
without a handler the SIGTERM of ``docker stop`` or the kubelet is silently dropped and the build
runs on until SIGKILL, maybe half way through a push. kiln turns SIGTERM and SIGINT into
:class:`BuildInterrupted`, raised in the main thread: the running RUN's process group is killed
(``Sandbox.run``), nothing more is pushed (the manifest goes last), ``--cleanup`` still runs and
the exit code is 128 + the signal. The same handlers serve outside PID 1, where the default
action would kill kiln and leave the RUN command (in its own session) running.

Processes a RUN leaves behind never reach kiln: the RUN's keeper (``executor.lifetime``) is
their subreaper and kills them when the RUN ends. What else is re-parented to PID 1 (a process
of the container's own, a keeper's orphans if it was killed) becomes a zombie when it ends
unless PID 1 waits for it. kiln reaps those on SIGCHLD and after every RUN, but only *orphans*:
children it did not start itself, recognised because kiln's own helpers stay in its process
group and no reaping happens while a RUN's keeper (in a session of its own) runs
(:func:`reaping_paused`). Reaping blindly with ``waitpid(-1)`` would steal the exit status
``subprocess`` waits for and turn a failed RUN into a success.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from executor.lifetime import process_table

log = logging.getLogger("kiln")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_paused = 0
_held = 0
#: A stop signal that came while :func:`interruption_held` held it.
_arrived: int | None = None


class BuildInterrupted(BaseException):
    """A stop signal arrived; a BaseException, so no ``except Exception`` in the build eats it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"build interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def spawn_by_fork() -> None:
    """Make ``subprocess`` start children with fork() rather than vfork().

    CPython 3.11.6+ releases the GIL while a vfork()ed child, which shares the parent's memory,
    gets to exec(); with other threads of the parent running meanwhile, exec failed now and then
    with EFAULT ("Bad address") in kiln's test process. kiln starts processes while its pull and
    push threads run (credential helpers), and a fork costs it well under a millisecond.
    """
    import subprocess

    if hasattr(subprocess, "_USE_VFORK"):
        setattr(subprocess, "_USE_VFORK", False)  # noqa: B010 - typeshed marks it Final


def install_handlers() -> None:
    """Stop signals raise :class:`BuildInterrupted`; as PID 1, SIGCHLD reaps orphans."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    if os.getpid() == 1:
        signal.signal(signal.SIGCHLD, _on_child)
        # Restart interrupted system calls in threads that do not expect EINTR.
        signal.siginterrupt(signal.SIGCHLD, False)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    global _arrived
    # One stop is enough: a second signal must not interrupt the cleanup the first started.
    for other in STOP_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    if _held:
        _arrived = signum
        return
    raise BuildInterrupted(signum)


@contextlib.contextmanager
def interruption_held() -> Iterator[None]:
    """Hold a stop signal's :class:`BuildInterrupted` for the block; raise it as the block
    ends.

    For the start of a process: raised half way through ``subprocess.Popen``, after the
    fork, it would leave kiln no handle to stop the process with. Signal handlers run in the
    main thread only, so elsewhere there is nothing to hold.
    """
    global _held, _arrived
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _arrived is not None:
            signum, _arrived = _arrived, None
            raise BuildInterrupted(signum)


def _on_child(_signum: int, _frame: FrameType | None) -> None:
    if not _paused:
        reap_orphans()


@contextlib.contextmanager
def reaping_paused() -> Iterator[None]:
    """Hold SIGCHLD reaping while the block starts and waits for a child of its own."""
    global _paused
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if not _paused and os.getpid() == 1:
            reap_orphans()


def reap_orphans(proc: str = "/proc") -> list[int]:
    """Wait for every zombie child kiln did not start; returns their pids."""
    me, my_group = os.getpid(), os.getpgrp()
    reaped = []
    for pid, ppid, state, group in process_table(proc):
        if ppid != me or state != "Z" or group == my_group:
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
            reaped.append(pid)
    if reaped:
        log.debug("reaped orphaned processes %s", reaped)
    return reaped
