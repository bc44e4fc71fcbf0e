"""Running the real ``executor`` command the way users do, in sandbox mode."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: exec(2) errors that say the machine was briefly short of something, not that the command is
#: wrong. CI lost whole runs to EFAULT from a vfork()ed child (see executor.pid1.spawn_by_fork),
#: with the executor never started.
_TRANSIENT_SPAWN_ERRORS = frozenset({errno.ETXTBSY, errno.EAGAIN, errno.ENOMEM, errno.EFAULT})


@dataclass(frozen=True)
class ExecutorRun:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def write_context(directory: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    """A build context with ``Dockerfile`` and ``files`` (relative path -> text)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for rel, text in (files or {}).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def run_executor(context: Path, root: Path, *args: str, timeout: float = 300,
                 dockerfile: str = "Dockerfile") -> ExecutorRun:
    """``executor --context CONTEXT --root ROOT ARGS...``; the root is a fresh sandbox dir."""
    cmd = [sys.executable, "-m", "executor.cli", "--context", str(context),
           "--dockerfile", str(context / dockerfile), "--root", str(root), *args]
    proc = run_spawning(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return ExecutorRun(proc.returncode, proc.stdout, proc.stderr)


def run_spawning(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` that tries the spawn again when exec fails for a passing reason.

    The retry covers only the start of the process: once the executor runs, its exit code and
    output are the test's to judge. A spawn that keeps failing says which command and why."""
    for attempt in range(3):
        try:
            return subprocess.run(cmd, **kwargs)
        except OSError as e:
            if e.errno not in _TRANSIENT_SPAWN_ERRORS or attempt == 2:
                raise OSError(e.errno, f"could not start {cmd[:3]}: {e.strerror}") from e
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def run_executor_on(context: str, root: Path, *args: str, timeout: float = 300,
                    env: dict[str, str | None] | None = None,
                    stdin: bytes | None = None) -> ExecutorRun:
    """``executor --context CONTEXT --root ROOT ARGS...`` with ``--context`` passed as given
    (``git://...``, ``tar://stdin``), ``env`` over this environment (None removes a variable),
    and ``stdin`` piped in."""
    import os

    cmd = [sys.executable, "-m", "executor.cli", "--context", context, "--root", str(root),
           *args]
    environ = {**os.environ, **(env or {})}
    proc = run_spawning(cmd, capture_output=True, input=stdin, timeout=timeout, check=False,
                          env={k: v for k, v in environ.items() if v is not None},
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    return ExecutorRun(proc.returncode, proc.stdout.decode(errors="replace"),
                       proc.stderr.decode(errors="replace"))
