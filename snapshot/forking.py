"""Helper processes for the hot paths: how many to fork, and how to fork one safely.

The walk and extraction spend most of their time in system calls whose Python half holds the
GIL; threads would hand the GIL over at every call, so both share their work with forked
processes instead. Forking is done in one place because it has rules: kiln may have threads
running (layer downloads), may be PID 1 with signal handlers of its own, and a child must never
return into the parent's stack or run its exit handlers.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, bounded by the cgroup's CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def default_workers() -> int:
    """Processes for a walk: usable CPUs that are idle right now, at most four. A walk helper
    on a CPU that something else is using only adds the cost of sending its entries back."""
    cpus = usable_cpus()
    running = _procs_running()
    if running is not None:  # this process is one of them
        cpus = min(cpus, (os.cpu_count() or 1) - (running - 1))
    return max(1, min(cpus, 4))


def _procs_running() -> int | None:
    """Runnable tasks on the machine now (``procs_running`` in /proc/stat)."""
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _cpu_quota() -> int | None:
    """CPUs the cgroup's CFS quota allows (rounded up), or None when there is no quota."""
    cgroup = Path("/sys/fs/cgroup")
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:  # cgroup v1: -1 for no quota
            quota = (cgroup / "cpu/cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        if quota == "max" or int(quota) <= 0:
            return None
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def fork_helper(body: Callable[[], None], *, close: tuple[int, ...] = ()) -> int | None:
    """Fork a child that runs ``body`` and exits; the child's pid, or None if fork failed.

    The child closes the descriptors in ``close`` (the parent's ends of its pipes, and other
    helpers' pipes, which would otherwise keep them open), restores the default signal
    handlers (the parent's, as PID 1, forward signals to the build), and leaves by
    ``os._exit``: status 0 when ``body`` returns, 1 when it raises. ``body`` must use only
    system calls and modules already imported, and take no lock another thread could hold.
    """
    try:
        with warnings.catch_warnings():
            # Python 3.12 warns about fork() with threads alive; the rules above are why the
            # warned-of hazard is absent.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return None
    if pid:
        return pid
    status = 1
    try:
        for fd in close:
            os.close(fd)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        body()
        status = 0
    finally:
        os._exit(status)  # never return into the parent's stack, never run its exit handlers
