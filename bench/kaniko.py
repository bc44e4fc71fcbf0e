"""kaniko's executor as the bench runs it: chrooted into a throwaway root, never on this ``/``.

kaniko expects to be PID 1 of a container whose ``/`` it may overwrite: it extracts the base
image over ``/`` and runs each RUN there. The bench gives it such a container without a
container runtime: a fresh directory holding only ``/kaniko/executor`` (bind-mounted from the
binary given with ``--kaniko``), entered through private mount and PID namespaces (``unshare
--mount --pid --fork``) with ``/proc`` mounted for that PID namespace, ``/dev`` and ``/sys``
bound from the host, the build context bound read-only at ``/ctx`` and an output directory at
``/out``. Every mount is a mount point, which kaniko ignores when it snapshots, and all of them
vanish with the namespace when kaniko exits. ``--force`` tells kaniko that running outside a
container it recognises is intended.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

#: Where the binary appears inside the sandbox root (kaniko's own layout).
EXECUTOR = "/kaniko/executor"


def sandbox_script(binary: Path, root: Path, context: Path, out: Path,
                   destination: str) -> str:
    """The shell script run inside ``unshare``: mounts, then kaniko chrooted into ``root``.

    The build reads ``context/Dockerfile``, pulls over plain HTTP from the registry of
    ``destination`` and writes the image to ``out/image.tar`` without pushing it.
    """
    q = shlex.quote
    mounts = [
        f"mount --bind {q(str(binary))} {q(str(root / 'kaniko/executor'))}",
        f"mount --rbind /dev {q(str(root / 'dev'))}",
        f"mount --rbind /sys {q(str(root / 'sys'))}",
        f"mount --bind {q(str(context))} {q(str(root / 'ctx'))}",
        f"mount -o remount,bind,ro {q(str(root / 'ctx'))}",
        f"mount --bind {q(str(out))} {q(str(root / 'out'))}",
    ]
    argv = [EXECUTOR, "--context", "dir:///ctx", "--dockerfile", "/ctx/Dockerfile",
            "--destination", destination, "--no-push", "--tar-path", "/out/image.tar",
            "--insecure", "--insecure-pull", "--force"]
    env = ["env", "-i", "PATH=/usr/local/bin:/kaniko:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME=/root", "DOCKER_CONFIG=/kaniko/.docker", "SSL_CERT_DIR=/kaniko/ssl/certs"]
    return " && ".join([*mounts, " ".join(["exec", *env, "chroot", q(str(root)),
                                           *map(q, argv)])])


def prepare_root(root: Path, out: Path) -> None:
    """An empty root with the mount points the script binds onto."""
    for directory in ("kaniko/.docker", "kaniko/ssl/certs", "dev", "sys", "proc", "ctx",
                      "out", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "kaniko/executor").touch()
    out.mkdir(parents=True, exist_ok=True)


def kaniko_argv(binary: Path, root: Path, context: Path, out: Path,
                destination: str) -> list[str]:
    """The command that runs one cold kaniko build in its own namespaces."""
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{binary}: not an executable kaniko executor")
    prepare_root(root, out)
    return ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
            f"--mount-proc={root / 'proc'}", "sh", "-c",
            sandbox_script(binary.resolve(), root, context, out, destination)]


def remove_root(root: Path) -> None:
    """Remove a sandbox root after its namespace is gone (nothing is mounted there then)."""
    with open("/proc/self/mountinfo") as mounts:
        if any(f" {root}/" in line or f" {root} " in line for line in mounts):
            raise RuntimeError(f"{root} still has mounts; not removing it")
    shutil.rmtree(root, ignore_errors=True)
