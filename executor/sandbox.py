"""Running a RUN command in the filesystem being built: in place, or chrooted into a sandbox root.

In place (kiln as PID 1 of a throwaway container) the command simply runs with the image's
user, environment and working directory. In sandbox mode (``--root DIR`` on a developer or CI
machine) the child first enters a private mount namespace, mounts ``/proc`` and binds ``/dev``
and ``/sys`` into the root, then chroots: the host's mounts never change and nothing the command
does can reach the host filesystem through a path. The mounts vanish with the namespace when the
command's last process exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from executor.errors import KilnError
from executor.pid1 import reaping_paused

log = logging.getLogger("kiln")

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# Mount points a sandboxed command gets; the snapshot always ignores them.
SANDBOX_MOUNTS = ("proc", "dev", "sys")


@dataclass(frozen=True)
class Identity:
    """Who a command runs as: uid, primary gid, supplementary groups, home directory."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    home: str = "/root"


@dataclass(frozen=True)
class Mount:
    """A ``RUN --mount``: ``source`` (None: a tmpfs) mounted on ``target``, a host path inside
    the root whose mount point exists. Mounted in the command's own mount namespace only."""

    target: Path
    source: Path | None
    readonly: bool = False
    tmpfs_size: int | None = None
    # "dir" or "file": the mount point lies inside another mount of the same RUN and is made
    # there just before mounting (item 8 of issue 19).
    create: str | None = None


@dataclass(frozen=True)
class Sandbox:
    """Where commands run: ``root`` and whether it is this process's own ``/``."""

    root: Path
    in_place: bool

    def prepare(self) -> list[Path]:
        """Create missing mount points in a sandbox root; returns those it created.

        The caller removes them again after the command, so a base image without ``/proc``
        does not gain one in the built image.
        """
        created: list[Path] = []
        if self.in_place:
            return created
        for name in SANDBOX_MOUNTS:
            point = self.root / name
            if point.is_symlink() or (point.exists() and not point.is_dir()):
                # mount(2) follows symlinks: /proc -> /etc would mount over the host's /etc.
                raise KilnError(f"/{name} in the image is not a directory; kiln cannot mount "
                                f"/{name} there for RUN")
            if not point.exists():
                point.mkdir(mode=0o755)
                created.append(point)
        return created

    def run(self, argv: Sequence[str], *, env: dict[str, str], cwd: str,
            identity: Identity, stdin: bytes | None = None, mounts: Sequence[Mount] = (),
            network: str = "default") -> int:
        """Run ``argv`` to completion; returns its exit code (128+N for a signal N).

        The command leads its own process group, which is killed once the command exits so a
        daemon it left behind cannot keep changing the filesystem during the snapshot.
        ``mounts`` are mounted for the command alone; ``network="none"`` gives it a network
        namespace of its own with no interfaces up. Both need a new namespace, which in place
        takes CAP_SYS_ADMIN: without it the command does not start (SubprocessError).
        """
        created = self.prepare()
        try:
            # As PID 1, orphans are reaped only once the command itself was waited for.
            with reaping_paused():
                proc = subprocess.Popen(
                    list(argv),
                    env=env,
                    cwd=None,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=self._child_setup(cwd, identity, tuple(mounts), network),
                    close_fds=True,
                )
                try:
                    proc.communicate(stdin)
                except BaseException:
                    _kill_group(proc.pid)
                    proc.wait()
                    raise
                _kill_group(proc.pid)
        finally:
            for point in created:
                with contextlib.suppress(OSError):
                    point.rmdir()
        code = proc.returncode
        return 128 - code if code < 0 else code

    def _child_setup(self, cwd: str, identity: Identity, mounts: tuple[Mount, ...],
                     network: str) -> Callable[[], None]:
        root = str(self.root)
        in_place = self.in_place

        def setup() -> None:
            # Runs in the forked child before exec: only async-signal-safe-ish work here.
            if network == "none":
                _check(_libc().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            if not in_place:
                _enter_sandbox(root, mounts)
            elif mounts:
                _private_mounts(mounts)
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)

        return setup


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _private_namespace(libc: ctypes.CDLL) -> None:
    """A mount namespace of our own, every mount private first, or what we mount next would
    propagate back to the host."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")


def _private_mounts(mounts: tuple[Mount, ...]) -> None:
    """In place: a private mount namespace holding ``mounts``."""
    libc = _libc()
    _private_namespace(libc)
    _mount_all(libc, mounts)


def _mount_all(libc: ctypes.CDLL, mounts: tuple[Mount, ...], root: str = "/") -> None:
    """Mount outer targets first; read-only only once all are mounted, so a mount point nested
    in a read-only bind (a copy of its source) can still be made."""
    for mount in mounts:
        target = str(mount.target).encode()
        if mount.create:
            _check_inside(root, mount.target)
        if mount.create and not os.path.lexists(mount.target):
            os.makedirs(mount.target.parent, exist_ok=True)
            if mount.create == "dir":
                os.mkdir(mount.target, 0o755)
            else:
                os.close(os.open(mount.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        if mount.source is None:
            options = f"mode=1777,size={mount.tmpfs_size}" if mount.tmpfs_size else "mode=1777"
            _check(libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV,
                              options.encode()), f"mount tmpfs on {mount.target}")
            continue
        _check(libc.mount(str(mount.source).encode(), target, None, MS_BIND | MS_REC, None),
               f"bind {mount.source} on {mount.target}")
        _check(libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV,
                          None), f"remount {mount.target}")
    for mount in mounts:
        if mount.source is not None and mount.readonly:
            _check(libc.mount(None, str(mount.target).encode(), None,
                              MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, None),
                   f"remount {mount.target} read-only")


def _check_inside(root: str, target: Path) -> None:
    """A nested mount point lies in what an outer mount shows (a cache a RUN filled, say): a
    symlink there must not aim the mkdir or the mount at a host path outside the root."""
    real, base = os.path.realpath(target), os.path.realpath(root)
    if base != "/" and real != base and not real.startswith(base + "/"):
        raise OSError(errno.EXDEV, f"RUN --mount target {target} leads out of the root")


# What a container runtime provides to every RUN; in sandbox mode the host's copies, read-only.
_NAME_SERVICE_FILES = ("etc/resolv.conf", "etc/hosts")


def _name_service_mounts(root: str) -> tuple[Mount, ...]:
    """The host's resolv.conf and hosts, read-only over the image's, for name lookups.

    Only over regular files the image has (a mount needs a target, and creating one would
    leave a trace in the layer); never through a symlink, which could aim the bind anywhere.
    The mounts live in the child's namespace: the snapshot sees the image's own files.
    """
    found = []
    for name in _NAME_SERVICE_FILES:
        host, target = f"/{name}", os.path.join(root, name)
        if not os.path.isfile(host) or os.path.islink(target) or not os.path.isfile(target):
            continue
        if os.path.islink(os.path.dirname(target)):
            continue
        found.append(Mount(target=Path(target), source=Path(host), readonly=True))
    return tuple(found)


def _enter_sandbox(root: str, mounts: tuple[Mount, ...] = ()) -> None:
    """Private mount namespace, /proc, /dev and /sys inside ``root``, ``mounts``, then chroot."""
    libc = _libc()
    _private_namespace(libc)
    base = root.encode()
    # The root itself becomes nodev: a device node shipped by a hostile base image outside
    # /dev (say /tmp/mem, char 1,1) must not open the host's device. /dev, bound on top next,
    # keeps working.
    _check(libc.mount(base, base, None, MS_BIND | MS_REC, None), "bind the root")
    _check(libc.mount(None, base, None, MS_BIND | MS_REMOUNT | MS_NODEV, None),
           "remount the root nodev")
    _check(libc.mount(b"proc", base + b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "mount proc")
    _check(libc.mount(b"/dev", base + b"/dev", None, MS_BIND | MS_REC, None), "bind /dev")
    _check(libc.mount(b"/sys", base + b"/sys", None, MS_BIND | MS_REC, None), "bind /sys")
    _mount_all(libc, (*_name_service_mounts(root), *mounts), root)
    os.chroot(root)
    os.chdir("/")
