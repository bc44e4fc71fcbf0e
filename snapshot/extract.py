"""Apply one layer over the root: the read side of ``snapshot/layer.py``.

Why this module exists: a base image's layers are tar streams written by strangers, and kiln
applies them over ROOT, which in production is the ``/`` of the container kiln runs in. So every
entry is treated as hostile. Each name is resolved inside the root component by component, as a
process chrooted there would resolve it, and no write, link, chmod or delete ever follows a symlink
out of the root. Within those walls extraction is exact, following the OCI image-spec
``layer.md`` and what containerd does: entries apply in order, whiteouts delete only lower-layer
content, a later entry replaces an earlier one of another type, and owner, mode, mtime (to the
nanosecond), xattrs, hardlinks, FIFOs and device nodes are restored where the process may.

It is also a hot path (a debian base, 50,000-file layers), so the stream is parsed by
:mod:`snapshot.tarstream` rather than :mod:`tarfile` (several times slower per entry), read once
with a 1 MiB buffer and never held in memory, and verified directories are cached within the
layer, so that a file
costs at most the syscalls GNU tar makes for it (open, write, fchown, fchmod, futimens, close),
and fewer when the new file's owner and mode are already the ones the tar asks for. Those
syscalls and this module's Python cost about the same per file, so small new files are made by
forked helpers (:mod:`snapshot.writers`) while this process reads on; every decision stays
here, and nothing here looks at a path a helper may still be writing (``inflight``).

Why string paths and not directory fds: nothing else writes the root while a layer is applied
(kiln is alone in its container, and RUN steps never overlap extraction), so the only adversary is
the layer itself. Each parent directory is verified with ``lstat`` (a real directory, reached
without leaving the root) before it is cached, the cache is dropped whenever this layer removes or
replaces a directory or a symlink, and the final component is never followed: it is only ever
created (``open(O_EXCL)``, ``mkdir``, ``symlink``, ``link``, ``mknod`` all fail on anything
already there, a dangling symlink included), after removing what was there, and its metadata is
set through the new file's fd or with ``follow_symlinks=False``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from snapshot.errors import CorruptLayerError, SnapshotError, UnsafeLayerError
from snapshot.forking import usable_cpus
from snapshot.securepath import Ignores, Missing, Refused, RootResolver
from snapshot.tarstream import (
    AREG,
    BLK,
    CHR,
    CONT,
    DIR,
    FIFO,
    LNK,
    REG,
    SYM,
    TarHeader,
    TarReader,
    one_line,
    show_name,
)
from snapshot.writers import CREATE_FLAGS, FileWriters, WriterFailed

log = logging.getLogger("kiln")

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# aufs keeps its own bookkeeping under ".wh..wh." names (.wh..wh.plnk, .wh..wh.aufs); Docker
# skips them, and so do we.
_AUFS_META_PREFIX = ".wh..wh."


# Files handed to helper processes (snapshot/writers.py): only once a layer has shown this many
# that qualify (a fork is not free), and only up to this size (larger ones would cross a pipe
# for nothing: this process writes them while the helpers work).
_HAND_OFF_AFTER = 256
_HAND_OFF_SIZE = 64 << 10
_MAX_HELPERS = 3
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def extract_layer(root: Path, tar_stream: BinaryIO, *, ignore: Ignores, layer_name: str,
                  helpers: int | None = None, chroot: bool = False,
                  skipped: Callable[[str], None] | None = None) -> None:
    """Apply the uncompressed layer tar ``tar_stream`` over ``root``.

    The stream is read once, to its end (so a digest computed as it passes is complete).
    Raises :class:`UnsafeLayerError` for an entry that would reach outside the root,
    :class:`CorruptLayerError` for a stream that is not a whole tar, and :class:`SnapshotError`
    when the filesystem refuses a write; each message is one line naming ``layer_name`` and the
    entry. Ignored paths are never written or deleted.

    ``helpers`` is how many forked processes may make small files (:mod:`snapshot.writers`);
    None picks one per usable CPU, at most three, and none on a single CPU; 0 makes everything
    here. One per CPU, not one fewer: this process waits whenever the helper it feeds is
    behind, and a second helper keeps the CPU busy meanwhile (extract-50k on two CPUs: 0.50 s
    with two helpers, 0.57 s with one). Unlike the walk's, the choice ignores the machine's
    momentary load: a CPU that is busy now is seldom busy for the seconds a base image takes.

    ``chroot`` extracts as Docker's ``chrootarchive`` extracts an ``ADD`` archive into its
    destination: the root is a chroot, so a name or link that climbs above it (``../x``,
    ``up -> ..``) stays at it instead of being refused, and an entry naming the root itself
    (``""``, ``./``) is skipped. Nothing can leave the root either way; a layer keeps the
    stricter rule, since no real layer climbs. ``skipped`` is told the name of each entry
    left out because of the ignore list (a directory that is itself ignored excepted).
    """
    reader = TarReader(tar_stream, layer_name)
    if helpers is None:
        cpus = usable_cpus()
        helpers = min(cpus, _MAX_HELPERS) if cpus > 1 else 0
    extractor = _Extractor(root, ignore, layer_name, reader, helpers, chroot=chroot,
                           skipped=skipped)
    try:
        extractor.apply_all()
        extractor.finish()
    finally:
        extractor.stop_helpers()


def _process_umask() -> int | None:
    """The umask, read without setting it (os.umask would, for every thread); None if unknown."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- applying entries -------------------------------------------------------------------------


class _Extractor(RootResolver):
    """The state of one layer's application: verified directories, what it wrote, what's left."""

    def __init__(self, root: Path, ignore: Ignores, layer: str, reader: TarReader,
                 helpers: int, *, chroot: bool = False,
                 skipped: Callable[[str], None] | None = None) -> None:
        self.root = os.fspath(root)
        self.chroot = chroot
        self.skipped = skipped
        self.prefix = self.root if self.root.endswith("/") else self.root + "/"
        self.ignore = ignore
        self.layer = layer
        self.reader = reader
        # Entry-name directory -> its verified real path under the root ("" is the root):
        # a real directory, not a symlink, reached without leaving the root.
        self.dirs: dict[str, str] = {"": ""}
        # Real paths this layer wrote, and their ancestors: whiteouts spare them (layer.md:
        # a whiteout applies only to lower layers).
        self.upper: set[str] = set()
        # Directory metadata, applied once their children are written (mtime would move).
        self.deferred: dict[str, TarHeader] = {}
        self.warned: set[str] = set()
        # "Plain" directories: a file created in one gets exactly (euid, egid) as owner and
        # mode & ~umask as mode, so fchown and fchmod to those values can be left out.
        self.euid, self.egid = os.geteuid(), os.getegid()
        umask = _process_umask()
        self.keep_mode_bits = 0o7000 | (umask if umask is not None else 0o777)
        self.plain: set[str] = {""} if umask is not None and self.is_plain_root() else set()
        # Directories this layer made (mkdir): nothing is in one but what this layer wrote, so
        # a name in one that is not in ``upper`` is free, and its file can be handed to a helper
        # without a look at the disk (elsewhere, one access() call tells).
        self.fresh: set[str] = set()
        # Verified directories whose entries the ignore list cannot name (most of them).
        self.unguarded: set[str] = set()
        self.helpers = helpers
        self.writers: FileWriters | None = None
        self.candidates = 0  # files that could have been handed off, before helpers started
        # Files handed to helpers since they last settled: they may not exist yet, so nothing
        # here looks at or removes such a path (or a directory above one) before settling.
        self.inflight: set[str] = set()

    def is_plain_root(self) -> bool:
        """The root's group is ours and it has no default ACL (which would replace the umask).

        A file made in a directory takes the directory's group when the directory is setgid
        (or the filesystem is mounted grpid), else the creator's: with the directory's group
        being ours, it is ours either way. A directory made in a plain one is plain too: same
        group, and no default ACL to inherit; so a base layer's whole tree is plain.
        """
        try:
            if os.stat(self.root).st_gid != self.egid:
                return False
            os.getxattr(self.root, "system.posix_acl_default")
        except OSError as e:
            return e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
        return False

    def made_dir(self, rel: str) -> None:
        """``rel`` was just made with mkdir: fresh, and plain if its parent is."""
        self.fresh.add(rel)
        if rel.rpartition("/")[0] in self.plain:
            self.plain.add(rel)
        else:
            self.plain.discard(rel)

    # Paths (resolution itself: snapshot/securepath.py).

    def mark_upper(self, rel: str) -> None:
        upper = self.upper
        while rel and rel not in upper:
            upper.add(rel)
            rel = rel.rpartition("/")[0]

    # Entries.

    def apply_all(self) -> None:
        """Apply the stream's entries in order; an error names the entry it came from."""
        next_header, apply_entry = self.reader.next, self.apply_entry
        h = None
        try:
            while (h := next_header()) is not None:
                apply_entry(h)
        except Refused as e:
            assert h is not None  # only entries are refused
            cls = UnsafeLayerError if e.unsafe else CorruptLayerError
            raise cls(f"layer {self.layer}: entry {show_name(h.name)} {e.reason}") from None
        except OSError as e:  # the reader raises its own errors: these come from an entry
            assert h is not None
            raise SnapshotError(f"layer {self.layer}: entry {show_name(h.name)} cannot be "
                                f"applied: {e.strerror or e}") from None
        except ValueError as e:  # a NUL byte in a link target, say
            assert h is not None
            raise CorruptLayerError(f"layer {self.layer}: entry {show_name(h.name)} cannot be "
                                    f"applied: {one_line(e)}") from None

    def apply_entry(self, h: TarHeader) -> None:
        name = self.normalise(h.name)
        parent, _, base = name.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self.apply_whiteout(parent, base)
            return
        kind = h.kind
        if not name:
            if self.chroot:
                # Docker's Untar skips an entry naming the directory it extracts into.
                log.debug("layer %s: skipping entry %s, which names the root", self.layer,
                          show_name(h.name))
                return
            if kind != DIR:
                raise Refused("would replace the root with something that is not a directory")
            self.deferred[""] = h
            return
        real_parent = self.dirs.get(parent)
        if real_parent is None:
            real_parent = self.resolve_dir(parent, create=True)
            if real_parent is None:
                log.debug("layer %s: skipping %s, under an ignored path", self.layer, h.name)
                if self.skipped is not None:
                    self.skipped(name)
                return
        rel = real_parent + "/" + base if real_parent else base
        if real_parent not in self.unguarded:
            if self.ignore.is_ignored(rel):
                log.debug("layer %s: skipping ignored path %s", self.layer, rel)
                if self.skipped is not None and kind != DIR:
                    self.skipped(name)
                return
            if not self.ignore.may_ignore_in(real_parent):
                self.unguarded.add(real_parent)
        if rel in self.inflight:
            self.settle()
        if kind in (REG, AREG, CONT):
            if (rel not in self.upper and not h.xattrs and h.size <= _HAND_OFF_SIZE
                    and self.hand_off(rel, real_parent, h)):
                return
            self.write_file(rel, h, real_parent in self.plain)
        elif kind == DIR:
            self.write_dir(name, rel, h)
        elif kind == SYM:
            self.write_symlink(rel, h)
        elif kind == LNK:
            self.write_hardlink(rel, h)
        elif kind in (CHR, BLK, FIFO):
            self.write_special(rel, h)
        else:
            raise Refused(f"has entry type {chr(kind)!r}, which layers do not use",
                           unsafe=False)

    def make_room(self, rel: str, st: os.stat_result) -> bool:
        """Remove what is at ``rel`` so a new entry can take its place (False: it must stay)."""
        if stat.S_ISDIR(st.st_mode):
            self.settle()  # files below may still be on their way
            # Like containerd's RemoveAll: the later entry wins over the whole tree, this
            # layer's earlier entries included; but an ignored path inside is never deleted.
            gone = self.prune(rel, keep_top=False, spare_upper=False)
            self.forget_dirs()
            self.plain &= {""}  # what is made again is judged again
            self.fresh.clear()
            below = rel + "/"
            for path in [p for p in self.deferred if p == rel or p.startswith(below)]:
                del self.deferred[path]
            if not gone:
                self.warn_once(f"replace:{rel}", "layer %s: not replacing directory %s: it "
                               "holds ignored paths", self.layer, rel)
                return False
        else:
            os.unlink(self.host(rel))
            if stat.S_ISLNK(st.st_mode):
                self.forget_dirs()
        return True

    def needs(self, h: TarHeader, plain_parent: bool) -> tuple[bool, bool]:
        """Whether a new file for ``h`` needs chown, and chmod.

        In a plain directory the new file already has the right owner and mode when they are
        ours and survive the umask: no syscall to set them again (most of a base layer).
        """
        return (not plain_parent or h.uid != self.euid or h.gid != self.egid,
                not plain_parent or bool(h.mode & self.keep_mode_bits))

    def hand_off(self, rel: str, real_parent: str, h: TarHeader) -> bool:
        """Give the file ``rel`` to a helper if nothing is there yet; False when it is this
        process's to write: something is there (to be replaced), or there are no helpers (yet).
        """
        writers = self.writers
        if writers is None:
            self.candidates += 1
            if self.helpers <= 0 or self.candidates < _HAND_OFF_AFTER:
                return False
            writers = self.writers = FileWriters.start(self.helpers)
            if writers is None:
                self.helpers = 0
                return False
        fresh = real_parent in self.fresh  # nothing in it but what this layer wrote (upper)
        if not fresh and os.access(self.prefix + rel, os.F_OK, follow_symlinks=False):
            return False
        chown, chmod = self.needs(h, real_parent in self.plain)
        data = self.reader.take_data(h.size) if h.size else b""
        writers.submit((self.prefix + rel, h.name, data, 0o600 if chmod else h.mode, h.uid,
                        h.gid, h.mode, h.atime_ns, h.mtime_ns, chown, chmod), real_parent)
        self.inflight.add(rel)
        if fresh:
            self.upper.add(rel)  # a fresh parent is in upper already
        else:
            self.mark_upper(rel)
        return True

    def settle(self) -> None:
        """Wait until every file handed to helpers exists (or raise why one does not)."""
        if not self.inflight:
            return
        assert self.writers is not None
        try:
            self.writers.settle()
        except WriterFailed as e:
            self.stop_helpers()
            if e.name is None:
                raise SnapshotError(f"layer {self.layer}: {e.reason}") from None
            raise SnapshotError(f"layer {self.layer}: entry {show_name(e.name)} cannot be "
                                f"applied: {e.reason}") from None
        self.inflight.clear()
        if self.writers.chown_refused is not None:
            name, reason = self.writers.chown_refused
            self.warn_once("chown", "layer %s: cannot set owners here (chown %s: %s); files "
                           "keep kiln's own user", self.layer, name, reason)

    def stop_helpers(self) -> None:
        """Let the helpers go; after a failure, at once."""
        writers, self.writers = self.writers, None
        if writers is not None:
            writers.stop(kill=bool(self.inflight))
        self.helpers = 0

    def write_file(self, rel: str, h: TarHeader, plain_parent: bool) -> None:
        host = self.prefix + rel
        chown, chmod = self.needs(h, plain_parent)
        create_mode = 0o600 if chmod else h.mode
        try:
            fd = os.open(host, CREATE_FLAGS, create_mode)
        except FileExistsError:
            if not self.make_room(rel, os.lstat(host)):
                return
            fd = os.open(host, CREATE_FLAGS, create_mode)
        try:
            if h.size:
                self.reader.copy_to(fd, h.size)
            # restore_fd, inlined: this is the line every file of a layer goes through.
            if chown:
                try:
                    os.fchown(fd, h.uid, h.gid)
                except PermissionError as e:
                    self.warn_chown(rel, e)
            if chmod:
                os.fchmod(fd, h.mode)  # after chown, which clears setuid and setgid
            if h.xattrs:
                self.restore_xattrs(fd, rel, h.xattrs)
            os.utime(fd, ns=(h.atime_ns, h.mtime_ns))
        finally:
            os.close(fd)
        if rel not in self.upper:
            self.mark_upper(rel)

    def write_dir(self, name: str, rel: str, h: TarHeader) -> None:
        host = self.prefix + rel
        try:
            # Owner-only until the layer ends, so a read-only mode in the tar cannot stop its
            # own children from being written (rootless); the real mode comes with the rest.
            os.mkdir(host, 0o700)
            self.made_dir(rel)
        except FileExistsError:
            st = os.lstat(host)
            if not stat.S_ISDIR(st.st_mode):  # a directory over a directory keeps its children
                if not self.make_room(rel, st):
                    return
                os.mkdir(host, 0o700)
                self.made_dir(rel)
        self.deferred[rel] = h
        self.dirs[name] = rel
        self.mark_upper(rel)

    def write_symlink(self, rel: str, h: TarHeader) -> None:
        # The target is stored as it is: it is only data until something resolves it, and
        # every resolution in kiln (this module, RUN's chroot) keeps it inside the root.
        host = self.prefix + rel
        try:
            os.symlink(h.linkname, host)
        except FileExistsError:
            if not self.make_room(rel, os.lstat(host)):
                return
            os.symlink(h.linkname, host)
        self.restore_path(host, rel, h, symlink=True)
        self.mark_upper(rel)

    def write_hardlink(self, rel: str, h: TarHeader) -> None:
        try:
            found = self.hardlink_target(h.linkname)
        except Refused as e:
            raise Refused(f"is a hardlink to {show_name(h.linkname)}, which {e.reason}",
                           unsafe=e.unsafe) from None
        if found is None:
            log.debug("layer %s: skipping hardlink %s to an ignored path", self.layer, rel)
            return
        target_rel, target_st = found
        if target_rel == rel:
            return
        target, host = self.host(target_rel), self.prefix + rel
        try:
            # follow_symlinks=False: a link to a symlink links the symlink, as tar does.
            os.link(target, host, follow_symlinks=False)
        except FileExistsError:
            st = os.lstat(host)
            if st.st_ino == target_st.st_ino and st.st_dev == target_st.st_dev:
                return
            if not self.make_room(rel, st):
                return
            try:
                os.link(target, host, follow_symlinks=False)
            except FileNotFoundError:
                raise Refused(f"is a hardlink to {show_name(h.linkname)}, which lay inside "
                               "the directory it replaced") from None
        self.mark_upper(rel)

    def hardlink_target(self, linkname: str) -> tuple[str, os.stat_result] | None:
        """The real path and lstat of a hardlink's target, or None if it is ignored.

        Resolved like an entry name: the directories with chroot semantics, the last component
        not followed; it must exist and must not be a directory.
        """
        target = self.normalise(linkname)
        parent, _, base = target.rpartition("/")
        if not base:
            raise Refused("is a directory")
        try:
            real_parent = self.resolve_dir(parent, create=False)
        except Missing:
            raise Refused("does not exist in the root") from None
        if real_parent is None:
            return None
        rel = real_parent + "/" + base if real_parent else base
        if self.ignore.is_ignored(rel):
            # Stops a layer from giving the image a name for the builder's secrets or a mount
            # (/var/run/secrets, the kiln dir): a later snapshot would carry them.
            return None
        if rel in self.inflight:
            self.settle()
        try:
            st = os.lstat(self.host(rel))
        except FileNotFoundError:
            raise Refused("does not exist in the root") from None
        if stat.S_ISDIR(st.st_mode):
            raise Refused("is a directory")
        return rel, st

    def write_special(self, rel: str, h: TarHeader) -> None:
        host = self.prefix + rel
        kind = h.kind
        mode = {FIFO: stat.S_IFIFO, CHR: stat.S_IFCHR, BLK: stat.S_IFBLK}[kind]
        while True:
            try:
                os.mknod(host, mode | 0o600, os.makedev(h.devmajor, h.devminor))
                break
            except FileExistsError:
                if not self.make_room(rel, os.lstat(host)):
                    return
            except PermissionError as e:
                if kind == FIFO:
                    raise
                # Unprivileged (rootless, or a user namespace): containerd skips device
                # nodes there, and so do we, saying so once.
                self.warn_once("mknod", "layer %s: cannot create device nodes here (mknod: "
                               "%s), skipping them, first %s", self.layer, e.strerror, rel)
                return
        self.restore_path(host, rel, h, symlink=False)
        self.mark_upper(rel)

    # Whiteouts.

    def apply_whiteout(self, parent: str, base: str) -> None:
        opaque = base == OPAQUE_WHITEOUT
        if not opaque:
            if base.startswith(_AUFS_META_PREFIX):
                return
            target = base[len(WHITEOUT_PREFIX):]
            if target in ("", ".", ".."):
                # Stops ".wh..." from deleting the directory above, or ".wh.." this one.
                raise Refused(f"is a whiteout of {show_name(target)}, which is not a name in "
                               "its directory")
        try:
            real_parent = self.resolve_dir(parent, create=False)
        except Missing:
            return  # nothing below a missing directory to delete
        except Refused as e:
            if not e.unsafe:
                return  # its parent is a file: nothing of that name exists
            raise
        if real_parent is None:
            return
        if opaque:
            rel = real_parent
        else:
            rel = real_parent + "/" + target if real_parent else target
            if self.ignore.is_ignored(rel):
                log.debug("layer %s: not deleting ignored path %s", self.layer, rel)
                return
        try:
            st = os.lstat(self.host(rel))
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.settle()  # files below may still be on their way
            self.prune(rel, keep_top=opaque, spare_upper=True)
            self.forget_dirs()
            self.plain &= {""}
            self.fresh.clear()
        elif rel not in self.upper:
            os.unlink(self.host(rel))
            if stat.S_ISLNK(st.st_mode):
                self.forget_dirs()

    def prune(self, top: str, *, keep_top: bool, spare_upper: bool) -> bool:
        """Delete directory ``top``'s tree but ignored paths (and this layer's, if spared).

        Returns True when ``top`` itself is gone. Iterative, so a deep tree is no recursion
        limit; never follows a symlink (``is_dir(follow_symlinks=False)``).
        """
        prefix = self.prefix
        is_ignored = self.ignore.is_ignored
        spared = self.upper if spare_upper else frozenset[str]()
        kept: set[str] = set()
        stack: list[tuple[str, bool]] = [(top, False)]
        while stack:
            rel, listed = stack.pop()
            if not listed:
                stack.append((rel, True))
                with os.scandir(prefix + rel) as entries:
                    for entry in entries:
                        child = rel + "/" + entry.name if rel else entry.name
                        if is_ignored(child):
                            kept.add(rel)
                        elif entry.is_dir(follow_symlinks=False):
                            stack.append((child, False))
                        elif child in spared:
                            kept.add(rel)
                        else:
                            os.unlink(prefix + child)
                continue
            if rel in kept or rel in spared or (rel == top and keep_top):
                if rel != top:
                    kept.add(rel.rpartition("/")[0])
                continue
            os.rmdir(prefix + rel)
        return top not in kept and not keep_top and top not in spared

    # Metadata.

    def restore_fd(self, fd: int, rel: str, h: TarHeader) -> None:
        try:
            os.fchown(fd, h.uid, h.gid)
        except PermissionError as e:
            self.warn_chown(rel, e)
        os.fchmod(fd, h.mode)  # after chown, which clears setuid and setgid
        if h.xattrs:
            self.restore_xattrs(fd, rel, h.xattrs)
        os.utime(fd, ns=(h.atime_ns, h.mtime_ns))

    def restore_path(self, host: str, rel: str, h: TarHeader, *, symlink: bool) -> None:
        """Metadata of a symlink, FIFO or device node just created at ``host``."""
        try:
            os.chown(host, h.uid, h.gid, follow_symlinks=False)
        except PermissionError as e:
            self.warn_chown(rel, e)
        if not symlink:  # a symlink has no mode of its own
            os.chmod(host, h.mode)  # it is the node just made, never a symlink
        if h.xattrs:
            self.restore_xattrs(host, rel, h.xattrs)
        os.utime(host, ns=(h.atime_ns, h.mtime_ns), follow_symlinks=False)

    def restore_xattrs(self, target: int | str, rel: str, xattrs: dict[str, bytes]) -> None:
        for key, value in xattrs.items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                    raise
                self.warn_once(f"xattr:{e.errno}", "layer %s: cannot set xattr %s on %s (%s); "
                               "further such failures are not reported", self.layer, key, rel,
                               e.strerror)

    def warn_chown(self, rel: str, error: OSError) -> None:
        self.warn_once("chown", "layer %s: cannot set owners here (chown %s: %s); files keep "
                       "kiln's own user", self.layer, rel, error.strerror)

    def warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)

    def finish(self) -> None:
        """Directory metadata, deepest first, once nothing more is written inside them."""
        self.settle()
        self.stop_helpers()
        for rel in sorted(self.deferred, reverse=True):
            h = self.deferred[rel]
            try:
                # O_NOFOLLOW: the directory is opened itself, never a symlink put there since.
                # (The root is the caller's, and may be reached through a symlink of theirs.)
                fd = os.open(self.host(rel), _OPEN_DIR if rel else _OPEN_DIR & ~os.O_NOFOLLOW)
            except OSError as e:
                raise SnapshotError(f"layer {self.layer}: entry {show_name(h.name)} cannot be "
                                    f"applied: {e.strerror}") from None
            try:
                self.restore_fd(fd, rel, h)
            except OSError as e:
                raise SnapshotError(f"layer {self.layer}: entry {show_name(h.name)} cannot be "
                                    f"applied: {e.strerror}") from None
            finally:
                os.close(fd)
