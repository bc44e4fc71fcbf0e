"""Whether this process may make the namespaces a RUN would like: asked once, by trying.

In a sandbox root kiln always has them (it runs as root on a developer or CI machine). In place,
kiln is PID 1 of a pod's container, which has Docker's default capabilities and a default
seccomp profile: no CAP_SYS_ADMIN, so ``unshare(CLONE_NEWNS)`` and ``unshare(CLONE_NEWNET)``
fail with EPERM. Reading the capability sets would not be enough (a seccomp profile, an LSM or a
user namespace can refuse what the capabilities allow), so a forked child tries the call and
exits; the answer is kept for the rest of the process.
"""

from __future__ import annotations

import functools
import os

from executor.lifetime import libc
from executor.pid1 import reaping_paused
from executor.sandbox import CLONE_NEWNET, CLONE_NEWNS, MS_PRIVATE, MS_REC


def _try_in_child(flags: int, make_private: bool) -> bool:
    """Fork; the child unshares ``flags`` (and makes ``/`` private, the first thing a mount
    namespace is used for) and reports by its exit code. The parent never changes."""
    with reaping_paused():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                c = libc()  # the handle loaded once (find_library would run ldconfig here)
                ok = c.unshare(flags) == 0
                if ok and make_private:
                    ok = c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
                code = 0 if ok else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@functools.cache
def can_mount() -> bool:
    """True when a RUN may get a private mount namespace (and so real ``--mount`` mounts)."""
    return _try_in_child(CLONE_NEWNS, make_private=True)


@functools.cache
def can_isolate_network() -> bool:
    """True when a RUN may get a network namespace of its own (``--network=none``)."""
    return _try_in_child(CLONE_NEWNET, make_private=False)
