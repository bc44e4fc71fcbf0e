"""Running a RUN command in the filesystem being built: in place, or contained in a sandbox root.

In place (kiln as PID 1 of a throwaway container) the command runs with the image's user,
environment and working directory; the pod is its container. In sandbox mode (``--root DIR``
on a developer or CI machine) kiln is that container runtime itself, and a RUN gets what runc
gives a BuildKit build step:

- its own mount, PID, IPC and UTS namespaces: it sees and signals only its own processes
  (``/proc`` is its namespace's), its hostname and System V IPC are its own;
- a ``/dev`` of its own: a tmpfs with the standard device nodes bound from the host (null,
  zero, full, random, urandom, tty), a private ``/dev/shm``, ``/dev/mqueue`` and devpts
  ``/dev/pts`` with ``ptmx``, and the usual symlinks; nothing it writes there reaches the host;
- ``/sys`` read-only, and ``/proc/sys``, ``/proc/sysrq-trigger`` and their kind read-only
  (root may write sysctls without any capability);
- the host's ``/etc/hosts`` and ``/etc/resolv.conf`` as private read-only copies over the
  image's (or over an empty mount point made for the command and removed after it), so names
  resolve as in Docker and the image gets nothing of them;
- Docker's default capability set, nothing more.

It shares the host's network, as ``docker build --network host`` does: kiln sets up no
virtual network, and a RUN that downloads must reach the registries and mirrors the host
reaches. In both modes every process the command starts ends with it (``executor.lifetime``).
All mounts live in the command's namespace and vanish with it; the snapshot never sees them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from executor import lifetime
from executor.errors import KilnError
from executor.lifetime import check as _check
from executor.lifetime import libc as _libc
from executor.pid1 import reaping_paused

log = logging.getLogger("kiln")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
# glibc has no pivot_root(); the syscall's number by machine.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217, "armv7l": 218, "i686": 217}

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


#: Docker's default capability set (moby's ``oci/caps/defaults.go``), by number: CHOWN,
#: DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW,
#: SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP. ``CapEff: 00000000a80425fb`` in a BuildKit RUN.
DOCKER_DEFAULT_CAPABILITIES = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: The sandbox's hostname (its own UTS namespace); RUN's environment says the same.
SANDBOX_HOSTNAME = "kiln"

# What a container runtime provides to every RUN; in sandbox mode private copies of the host's.
_NAME_SERVICE_FILES = ("hosts", "resolv.conf")

# Device nodes a container gets (the OCI runtime spec's default devices), bound from the host.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
              ("ptmx", "pts/ptmx"))
# Parts of /proc that change the host, not the namespace, for any root process: read-only.
_PROC_READ_ONLY = ("bus", "fs", "irq", "sys", "sysrq-trigger")


@dataclass(frozen=True)
class Sandbox:
    """Where commands run: ``root`` and whether it is this process's own ``/``.

    ``scratch`` holds the command's private files (copies of the host's name-service files):
    the build's workspace, so a killed build's leftovers go with it; the system's temporary
    directory when None.
    """

    root: Path
    in_place: bool
    scratch: Path | None = None

    def prepare(self) -> None:
        """Create missing mount points in a sandbox root.

        They stay after the command: runc makes them in the rootfs for BuildKit's RUN, so an
        image without ``/proc``, ``/dev`` or ``/sys`` (a ``FROM scratch`` stage) gains them, as
        empty root 0755 directories, in that RUN's layer.
        """
        if self.in_place:
            return
        for name in SANDBOX_MOUNTS:
            point = self.root / name
            if point.is_symlink() or (point.exists() and not point.is_dir()):
                # mount(2) follows symlinks: /proc -> /etc would mount over the host's /etc.
                raise KilnError(f"/{name} in the image is not a directory; kiln cannot mount "
                                f"/{name} there for RUN")
            if not point.exists():
                point.mkdir(mode=0o755)

    def run(self, argv: Sequence[str], *, env: dict[str, str], cwd: str,
            identity: Identity, stdin: bytes | None = None, mounts: Sequence[Mount] = (),
            network: str = "default") -> int:
        """Run ``argv`` to completion; returns its exit code (128+N for a signal N).

        Every process the command starts is gone when this returns or raises
        (``executor.lifetime``). ``mounts`` are mounted for the command alone;
        ``network="none"`` gives it a network namespace of its own with no interfaces up.
        Both need a new namespace, which in place takes CAP_SYS_ADMIN: without it the command
        does not start (SubprocessError).
        """
        self.prepare()
        with self._name_service_files() as name_service:
            all_mounts = (*name_service, *mounts)
            # As PID 1, orphans are reaped only once the command itself was waited for.
            with reaping_paused():
                done = lifetime.run(
                    list(argv), env=env, input=stdin, keeper_setup=self._namespaces(network),
                    command_setup=self._command_setup(cwd, identity, all_mounts))
        code = done.returncode
        return 128 - code if code < 0 else code

    def settled_paths(self) -> tuple[str, ...]:
        """Directories whose ctime a RUN's setup moves without changing them (a mount point
        made and removed there): ``Step.settled`` for the snapshot."""
        return () if self.in_place else ("etc",)

    def _namespaces(self, network: str) -> Callable[[], None]:
        """The keeper's setup: the namespaces its command is then forked into.

        Not the mount namespace: the command makes its own, since its pivot_root moves the
        root of every process in its mount namespace, and the keeper must go on seeing the
        host's ``/proc`` to find the processes it has to end.
        """
        flags = CLONE_NEWNET if network == "none" else 0
        if not self.in_place:
            flags |= CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS

        def setup() -> None:
            if flags:
                _check(_libc().unshare(flags), "unshare")

        return setup

    def _command_setup(self, cwd: str, identity: Identity,
                       mounts: tuple[Mount, ...]) -> Callable[[], None]:
        root = str(self.root)
        in_place = self.in_place
        last_cap = _last_capability()

        def setup() -> None:
            # Runs in the forked child before exec: only async-signal-safe-ish work here.
            c = _libc()
            if not in_place or mounts:
                _check(c.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
                # Every mount private first, or what the command mounts would reach the host.
                _check(c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None),
                       "mount --make-rprivate /")
            if not in_place:
                _enter_sandbox(c, root, mounts)
                name = SANDBOX_HOSTNAME.encode()
                _check(c.sethostname(name, len(name)), "sethostname")
            elif mounts:
                _mount_all(c, mounts)
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
            _drop_bounding_capabilities(c, last_cap, strict=not in_place)
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)
            _limit_capabilities(c)

        return setup

    @contextlib.contextmanager
    def _name_service_files(self) -> Iterator[tuple[Mount, ...]]:
        """Private read-only copies of the host's ``/etc/hosts`` and ``/etc/resolv.conf`` to
        mount over the image's, for the command's name lookups (sandbox mode only: in place
        the pod's runtime has mounted its own, which the snapshot ignores as mount points).

        Where the image has none, an empty mount point is made and removed afterwards, and
        ``/etc`` gets its times back (its ctime, which cannot be set back, is excused by
        :meth:`settled_paths`), so the layer holds nothing of it. Never over a symlink, which
        could aim the bind anywhere, nor through a symlinked ``/etc``. Copies, so a write can
        reach neither the host's files nor the image's; read-only, as BuildKit mounts them.
        """
        etc = self.root / "etc"
        if self.in_place or etc.is_symlink() or not etc.is_dir():
            yield ()
            return
        with tempfile.TemporaryDirectory(prefix="kiln-etc-", dir=self.scratch) as copies:
            mounts: list[Mount] = []
            missing: list[Path] = []
            for name in _NAME_SERVICE_FILES:
                target = etc / name
                content = _host_name_service_file(name)
                if content is None:
                    continue
                if os.path.lexists(target):
                    if not stat.S_ISREG(os.lstat(target).st_mode):
                        continue
                else:
                    missing.append(target)
                copy = Path(copies) / name
                copy.write_bytes(content)
                copy.chmod(0o644)
                mounts.append(Mount(target=target, source=copy, readonly=True))
            with _mount_point_files(etc, missing):
                yield tuple(mounts)


@contextlib.contextmanager
def _mount_point_files(parent: Path, files: list[Path]) -> Iterator[None]:
    """Empty files in ``parent`` for the block; then removed, and ``parent``'s times put back
    unless the command itself added or removed an entry there."""
    if not files:
        yield
        return
    before = with_points = os.lstat(parent)
    made = []
    try:
        for path in files:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            made.append(path)
        with_points = os.lstat(parent)
        yield
    finally:
        during = os.lstat(parent)
        for path in made:
            with contextlib.suppress(OSError):
                if os.lstat(path).st_size == 0:
                    path.unlink()
        if made and during.st_mtime_ns == with_points.st_mtime_ns:
            os.utime(parent, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _host_name_service_file(name: str) -> bytes | None:
    """The host's ``/etc/NAME`` for a RUN; ``hosts`` also names the sandbox's hostname."""
    try:
        content = Path("/etc", name).read_bytes()
    except OSError:
        return None
    if name == "hosts":
        if content and not content.endswith(b"\n"):
            content += b"\n"
        content += f"127.0.0.1\t{SANDBOX_HOSTNAME}\n".encode()
    return content


def _last_capability() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _drop_bounding_capabilities(c: ctypes.CDLL, last_cap: int, *, strict: bool) -> None:
    """Keep only Docker's default set in the bounding set (what exec can ever grant) and
    clear the ambient set. A capability already gone needs no CAP_SETPCAP to stay gone; in
    place (``strict=False``) a pod that grants more but not CAP_SETPCAP keeps its set."""
    for cap in range(last_cap + 1):
        if cap not in DOCKER_DEFAULT_CAPABILITIES and c.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            dropped = c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            if strict:
                _check(dropped, f"drop capability {cap}")
    c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL before Linux 4.3


def _limit_capabilities(c: ctypes.CDLL) -> None:
    """Effective and permitted: what the process has of Docker's default set; inheritable:
    nothing (as containerd gives since CVE-2022-24769)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(c.capget(header, data), "capget")
    keep = sum(1 << cap for cap in DOCKER_DEFAULT_CAPABILITIES)
    for word in (0, 1):
        mask = (keep >> (32 * word)) & 0xFFFFFFFF
        data[3 * word] &= mask       # effective
        data[3 * word + 1] &= mask   # permitted
        data[3 * word + 2] = 0       # inheritable
    _check(c.capset(header, data), "capset")


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


def _enter_sandbox(c: ctypes.CDLL, root: str, mounts: tuple[Mount, ...] = ()) -> None:
    """In the command's own mount namespace: /proc, /dev, /sys and ``mounts`` inside ``root``,
    then ``root`` becomes the namespace's root."""
    base = root.encode()
    # The root itself becomes nodev: a device node shipped by a hostile base image outside
    # /dev (say /tmp/mem, char 1,1) must not open the host's device.
    _check(c.mount(base, base, None, MS_BIND | MS_REC, None), "bind the root")
    _check(c.mount(None, base, None, MS_BIND | MS_REMOUNT | MS_NODEV, None),
           "remount the root nodev")
    _mount_proc(c, base + b"/proc")
    _mount_dev(c, base + b"/dev")
    _check(c.mount(b"sysfs", base + b"/sys", b"sysfs",
                   MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount sysfs read-only")
    _mount_all(c, mounts, root)
    _pivot_root(c, root)


def _pivot_root(c: ctypes.CDLL, root: str) -> None:
    """Make ``root`` the namespace's root and detach the host's from it.

    Not chroot: a root process with CAP_SYS_CHROOT (in Docker's default set) leaves a chroot
    by chrooting into a subdirectory and walking ``..`` up past it. After pivot_root and a
    detach, no mount of the namespace leads to the host's filesystem any more.
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.chdir(root)
        _check(c.syscall(_SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
        os.fchdir(old_root)  # "." is now the old root, stacked on the new one: detach it
        _check(c.umount2(b".", MNT_DETACH), "detach the host's root")
    finally:
        os.close(old_root)
    os.chdir("/")


def _mount_proc(c: ctypes.CDLL, proc: bytes) -> None:
    """The PID namespace's own /proc; the parts that act on the whole machine read-only."""
    _check(c.mount(b"proc", proc, b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount proc")
    for name in _PROC_READ_ONLY:
        path = proc + b"/" + name.encode()
        if not os.path.exists(path):
            continue
        _check(c.mount(path, path, None, MS_BIND | MS_REC, None), f"bind /proc/{name}")
        _check(c.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
                       | MS_NOEXEC, None), f"remount /proc/{name} read-only")


def _mount_dev(c: ctypes.CDLL, dev: bytes) -> None:
    """A tmpfs /dev of the command's own (nodev: a node it makes cannot open a device), the
    standard nodes bound from the host, private shm, mqueue and devpts, the usual links."""
    _check(c.mount(b"tmpfs", dev, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   b"mode=755,size=65536k"), "mount tmpfs on /dev")
    for name in _DEVICES:
        host = f"/dev/{name}"
        if not os.path.exists(host) or not stat.S_ISCHR(os.stat(host).st_mode):
            continue
        node = dev + b"/" + name.encode()
        os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        _check(c.mount(host.encode(), node, None, MS_BIND, None), f"bind {host}")
    for name, fstype, flags, options in (
            ("shm", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"mode=1777,size=65536k"),
            ("mqueue", b"mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
            ("pts", b"devpts", MS_NOSUID | MS_NOEXEC,
             b"newinstance,ptmxmode=0666,mode=0620,gid=5")):
        point = dev + b"/" + name.encode()
        os.mkdir(point, 0o755)
        _check(c.mount(name.encode(), point, fstype, flags, options), f"mount /dev/{name}")
    for name, target in _DEV_LINKS:
        os.symlink(target, dev + b"/" + name.encode())
