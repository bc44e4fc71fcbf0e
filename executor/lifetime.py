"""Process lifetime: every process a step starts ends with the step, and with kiln.

kiln starts commands of two kinds, RUN commands and credential helpers, and either may leave
processes behind: a daemon started with ``setsid``, a child that outlives its parent's timeout.
Such a process would keep changing the root during the snapshot or after the build, or hold a
pod's resources. A process group does not hold them (``setsid`` leaves it), and a pod gives
kiln no cgroup of its own to put them in. What does hold them is the process tree:

- Each command runs under a *keeper*, a forked copy of kiln that makes itself a child
  subreaper (``PR_SET_CHILD_SUBREAPER``). Every process the command starts stays the keeper's
  descendant, orphaned or not, ``setsid`` or not.
- When the command exits, the keeper SIGKILLs every descendant left, again until none is left
  (a process being killed may just have forked), reaps them, and exits with the command's
  status (128+N for a signal N). So by the time kiln sees the keeper exit, nothing of the
  command runs any more.
- The keeper ends the same way when kiln asks it to (:func:`stop`: a timeout, an interrupted
  build) and when kiln dies (``PR_SET_PDEATHSIG``, even after a SIGKILL of kiln); the command
  process itself dies with its keeper.
- Stop signals are blocked in the keeper until it waits for its command. One arriving between
  the command's fork and that wait would otherwise end the keeper there, before the command
  has asked to die with it: the command would run on, orphaned. Blocked, the signal waits and
  ends the command like any other. kiln's side of the same window is :func:`run`'s.

In sandbox mode the command is also PID 1 of a PID namespace of its own (see
``executor.sandbox``), whose death makes the kernel kill everything in that namespace; in place
kiln is PID 1 of the container, whose death ends the container. Both only back up the keeper.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import IO, Any, NoReturn

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: How long :func:`stop` lets a keeper end its command's processes before killing it outright.
STOP_GRACE_SECONDS = 10.0

#: What ends a keeper, and so its command: kiln's stop, kiln's death, a terminal.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

Setup = Callable[[], None]


class _Stop(BaseException):
    """Raised in a keeper by a stop signal: end the command's processes now."""


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once: ``find_library`` runs ``ldconfig``, far too slow for every
    command, and a forked child can use the parent's handle."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def check(result: int, what: str) -> None:
    """Turn a libc call's -1 into an OSError naming the call."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent(signum: int) -> None:
    """Ask for ``signum`` when the thread that started this process ends.

    The kernel clears the setting when the process's credentials or capabilities change, so a
    command sets it as the last thing before exec.
    """
    check(libc().prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def spawn(argv: Sequence[str], *, env: dict[str, str], keeper_setup: Setup | None = None,
          command_setup: Setup | None = None, new_session: bool = True,
          stdin: int | IO[Any] | None = subprocess.DEVNULL, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` under a keeper; the returned Popen is the keeper's.

    ``keeper_setup`` runs in the keeper before the command is forked (namespaces to unshare,
    which the command then starts in); ``command_setup`` runs in the command's process before
    exec. An exception in either fails the start with ``subprocess.SubprocessError``; a
    missing program raises ``FileNotFoundError``, as ``subprocess`` does. ``new_session``
    gives the command a session of its own, away from the terminal's signals.
    """
    kiln = os.getpid()
    libc()  # loaded here, not in each forked child

    def keeper() -> None:
        # The forked child: become the keeper, fork the command, and return only in the command.
        # Stop signals wait until _keep: see the module's docstring.
        inherited_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        # No garbage collection here: a full collection would write to every object kiln
        # holds (a snapshot of 700,000 entries) and so copy all of its memory.
        gc.disable()
        die_with_parent(signal.SIGTERM)
        if os.getppid() != kiln:  # kiln died before the line above took effect
            os._exit(128 + signal.SIGKILL)
        check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _raise_stop)
        # kiln as PID 1 reaps on SIGCHLD: the keeper must wait for its children itself.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if keeper_setup is not None:
            keeper_setup()
        command = os.fork()
        if command == 0:
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            if command_setup is not None:
                command_setup()
            die_with_parent(signal.SIGKILL)
            # Now a signal may end it: the command gets the signal mask kiln had.
            signal.pthread_sigmask(signal.SIG_SETMASK, inherited_mask)
            return  # subprocess goes on to exec argv in this process
        _keep(command)

    return subprocess.Popen(list(argv), env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            start_new_session=new_session, preexec_fn=keeper, close_fds=True)


def run(argv: Sequence[str], *, env: dict[str, str], input: bytes | None = None,
        timeout: float | None = None, **options: Any) -> subprocess.CompletedProcess[bytes]:
    """Start ``argv`` under a keeper (:func:`spawn`, with ``options``), feed it ``input``
    and wait for it; whatever ends the wait early (``timeout``, a stop signal) stops it first.

    A stop signal that reaches kiln while the command starts is held until :func:`spawn` has
    returned (``executor.pid1.interruption_held``): raised inside it, it would lose the only
    handle on a command that has already been forked, which would then run on until kiln exits.
    """
    from executor.pid1 import interruption_held

    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = None
    try:
        with interruption_held():
            proc = spawn(argv, env=env, stdin=stdin, **options)
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        if proc is not None:
            stop(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """End a command started by :func:`spawn` and every process it started; wait for it."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)  # the keeper kills its descendants, then exits
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _keep(command: int) -> NoReturn:
    """The keeper's life: wait for the command, then end every process left; never returns
    (returning would make ``subprocess`` exec the command in the keeper too)."""
    code = 128 + signal.SIGKILL
    try:
        # Nothing here may be used by the forked command: its copy of the pipes is enough.
        os.closerange(3, _max_fd())
        try:
            # A stop signal that came while the command started raises _Stop here.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            while True:
                pid, status = os.waitpid(-1, 0)  # also reaps orphans handed to the subreaper
                if pid == command:
                    code = _exit_code(status)
                    break
        except _Stop:
            code = 128 + signal.SIGTERM
        except ChildProcessError:
            pass
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        end_descendants()
    except BaseException:  # the keeper must reach _exit whatever happens
        pass
    finally:
        os._exit(code)


def end_descendants() -> None:
    """SIGKILL every descendant of this process and reap its children until none is left.

    Repeated because a process may fork between the scan and its kill; the child it made is
    found by the next scan (as a subreaper's orphan, or below its killed parent).

    A subreaper with no child left has no descendant either (every live descendant hangs from
    a live chain that starts at one of its children, orphans being handed to it), so the
    common end, a command that left nothing behind, costs one ``waitpid`` and no scan of
    ``/proc``, which lists every process of the machine.
    """
    me = os.getpid()
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    while True:
        for pid in descendants(me):
            kill_if_below(pid, me)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def kill_if_below(pid: int, ancestor: int, proc: str = "/proc") -> None:
    """SIGKILL the process ``pid`` if it is below ``ancestor`` in the process tree.

    ``pid`` comes from a scan of the tree, and by the time of the kill that process may have
    ended, been reaped by its own parent (a descendant too) and its number given to an
    unrelated process. So the process is held by a pidfd first, which names that one
    process and no later holder of its number, and the tree is read again: only a process
    that is still below ``ancestor`` while held is signalled. (A direct child needs none of
    this: its number stays its own until it is waited for.) Without pidfds (Linux before 5.3,
    a seccomp profile that refuses them) it is signalled by number, as before.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        return
    try:
        if _is_below(pid, ancestor, proc):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(pidfd)


def _is_below(pid: int, ancestor: int, proc: str) -> bool:
    """Whether the chain of parents from ``pid``, read now, reaches ``ancestor``."""
    for _ in range(4096):  # deeper than any real tree; a loop read mid-change ends here
        parent = _parent(pid, proc)
        if parent == ancestor:
            return True
        if parent is None or parent <= 1:
            return False
        pid = parent
    return False


def _parent(pid: int, proc: str) -> int | None:
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if fields is not None and len(fields) >= 2 else None


def _stat_fields(pid: int | str, proc: str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first); None when the
    process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain ") ".
    return stat[stat.rfind(")") + 2:].split()


def descendants(ancestor: int, proc: str = "/proc") -> list[int]:
    """Pids of every process below ``ancestor`` in the process tree ``proc`` shows.

    None when ``proc`` is not of this process's PID namespace (``/proc/self`` names another
    pid, or none): its pids would name other processes, which must never be killed.
    """
    try:
        if os.readlink(f"{proc}/self") != str(os.getpid()):
            return []
    except OSError:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid, _state, _group in process_table(proc):
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    pending = list(children.get(ancestor, ()))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def process_table(proc: str = "/proc") -> Iterator[tuple[int, int, str, int]]:
    """(pid, ppid, state, process group) of every process ``proc`` lists."""
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name, proc)
        if fields is not None and len(fields) >= 3:
            yield int(name), int(fields[1]), fields[0], int(fields[2])


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 1024
