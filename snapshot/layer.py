"""Changes -> one layer blob: a PAX tar, compressed, with both digests, in a single pass.

The tar is streamed through the compressor into a temporary file next to the blobs while sha256
of the uncompressed bytes (the diff_id) and of the compressed bytes (the digest) are updated as
the bytes pass; the file is then renamed to its digest. Nothing is read twice and memory stays
at a few buffers whatever the layer's size.

Entries are what BuildKit writes (containerd's tar writer over Go's archive/tar), header for
header: relative names (``etc/passwd``, directories as ``etc/``), numeric owners with empty user
and group names, the mode with its setuid, setgid and sticky bits, mtimes cut to the whole
second (no PAX ``mtime`` record but for a time a USTAR field cannot hold), a name longer than 100
bytes split into the USTAR prefix when it fits there and nothing else needs a PAX record, xattrs
(``security.capability``, ``user.*``, ``trusted.*``) as ``SCHILY.xattr.*`` records, hard links
(of any type but directories) within the layer as tar links to the first name written, device
nodes and FIFOs; no entry for the root. Every entry's parent directories come before it, each
once, as they are now, even those that did not change: a layer read alone (or applied over
another base) still gives them their owner and mode. Deletions are whiteouts
(``dir/.wh.name``) at the place the deleted name sorts, empty regular files owned by 0:0 with
mode 0 and mtime 0, so that the same changes give the same bytes; as in BuildKit's layers
there are no opaque markers (a re-created directory's lost children each get a whiteout). A
gzip layer with no entries
is BuildKit's 29 bytes, so its digest is the one every BuildKit image's empty layer has.

The headers are encoded here rather than by :mod:`tarfile`, which spends ~70 us per PAX entry;
this writer spends a few, and its output is byte-for-byte what it says above. A layer of
thousands of entries is made in parts by forked helpers on idle CPUs too
(:mod:`snapshot.tarparts`); the tar reaches the compressor in the same writes whoever made
each part, so the blob is the same whatever the number of helpers.

A file that vanished or changed between the snapshot and the tar raises :class:`SnapshotError`
naming it: the layer must match the snapshot the next step is compared with, and nothing should
be running in the root while a layer is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from snapshot.compress import Compression, compressed_writer
from snapshot.errors import SnapshotError, StorageError, os_error_reason, storage_errors
from snapshot.forking import default_workers
from snapshot.snapshot import (
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    S_IFSOCK,
    Changes,
    FileEntry,
    Snapshot,
    layer_order,
)
from snapshot.tarparts import HelperLost, ordered_parts

WHITEOUT_PREFIX = ".wh."

BLOCK = 512
CHUNK = 1 << 20  # bytes gathered before hashing and compressing, and read from a file at once
_ZEROS = bytes(BLOCK)
_END_OF_ARCHIVE = bytes(2 * BLOCK)

_S_IFCHR = 0o020000
_S_IFBLK = 0o060000
_S_IFIFO = 0o010000
_TYPEFLAGS = {S_IFREG: b"0", S_IFLNK: b"2", _S_IFCHR: b"3", _S_IFBLK: b"4", S_IFDIR: b"5",
              _S_IFIFO: b"6"}
_HARDLINK = b"1"
_PAX_HEADER = b"x"

#: BuildKit's gzip blob of an empty layer (1,024 zero bytes), byte for byte: registries and
#: caches hold it once for every image that has one.
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b08000000000000ff621805a360148c580018002eafb5ef00040000")

_KEPT_XATTR_PREFIXES = ("user.", "trusted.")
_KEPT_XATTRS = frozenset({"security.capability"})

# A USTAR header: name 100, mode 8, uid 8, gid 8, size 12, mtime 12, checksum 8, typeflag 1,
# linkname 100, magic "ustar\0" and version "00", uname 32, gname 32, devmajor 8, devminor 8,
# prefix 155, padding 12. uname and gname stay empty; prefix holds the head of a long name.
_MAGIC = b"ustar\x0000"
_CHECKSUM_CONSTANT = 8 * ord(" ") + sum(_MAGIC)
_MAX_OCTAL_7 = 8 ** 7
_MAX_OCTAL_11 = 8 ** 11
_MAX_MTIME_NS = _MAX_OCTAL_11 * 1_000_000_000  # the first mtime a USTAR field cannot hold
_NAME_SIZE = 100
_PREFIX_SIZE = 155
# A layer of fewer entries is made in this process alone: forking costs more than it saves.
_PARALLEL_ENTRIES = 4000
# The parts helpers make: a few fit in a helper's pipe, so it can work ahead.
_PART_BYTES = 256 << 10
_PART_ENTRIES = 1024
_OPEN_FLAGS_ATIME = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FLAGS = _OPEN_FLAGS_ATIME | getattr(os, "O_NOATIME", 0)


@dataclass(frozen=True)
class LayerBlob:
    """A layer written to disk: ``path`` is named by the hex of ``digest``."""

    path: Path
    digest: str      # sha256:... of the compressed file
    diff_id: str     # sha256:... of the uncompressed tar
    size: int        # bytes in the file
    compression: str
    uncompressed_size: int = 0  # bytes of the tar (the build report shows both sizes)


def write_layer(root: Path, changes: Changes, snapshot: Snapshot, out_dir: Path,
                compression: Compression, *, mtime_ns: int | None = None,
                helpers: int | None = None) -> LayerBlob:
    """Write ``changes`` (paths of ``snapshot``, files read from ``root``) as a layer blob.

    The result is ``out_dir/<hex digest>``; a failure leaves nothing behind in ``out_dir``.
    ``mtime_ns`` replaces every entry's mtime (``--reproducible`` passes 0). ``helpers`` is
    how many forked processes may make parts of a layer of many entries
    (:mod:`snapshot.tarparts`); None picks the idle CPUs but this one, 0 makes it all here.
    The blob is the same whatever the number.
    """
    if helpers is None:
        helpers = default_workers() - 1 if len(changes.upserts) >= _PARALLEL_ENTRIES else 0
    try:
        return _write_blob(root, changes, snapshot, out_dir, compression, mtime_ns, helpers)
    except HelperLost:
        return _write_blob(root, changes, snapshot, out_dir, compression, mtime_ns, 0)


def _write_blob(root: Path, changes: Changes, snapshot: Snapshot, out_dir: Path,
                compression: Compression, mtime_ns: int | None, helpers: int) -> LayerBlob:
    doing = "write a layer to"  # a full disk names the blobs directory, not a temporary name
    with storage_errors(out_dir, doing):
        out_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd, temp_name = tempfile.mkstemp(prefix=".layer-", suffix=".tmp", dir=out_dir)
            # Held while the file is written: a later build removes the file only when no
            # writer holds it (one killed mid-layer leaves it unlocked). Best effort, as for
            # downloads.
            if lock_new_file(fd, temp_name):
                break
            os.close(fd)
    temp = Path(temp_name)
    try:
        with open(fd, "wb", buffering=0) as raw:
            diff_id = hashlib.sha256()
            tar_size = 0
            # The sink is written from the compressor's thread; its StorageError reaches this
            # thread through the compressor's next write or its close.
            sink = _HashingSink(raw, out_dir, hashing=compression.algorithm != "none")
            if changes.is_empty() and compression.algorithm == "gzip":
                diff_id.update(_END_OF_ARCHIVE)
                tar_size = len(_END_OF_ARCHIVE)
                sink.write(EMPTY_GZIP_LAYER)
            else:
                with compressed_writer(cast(BinaryIO, sink), compression) as compressor:
                    for chunk in _tar_chunks(os.fspath(root), changes, snapshot, mtime_ns,
                                             helpers):
                        diff_id.update(chunk)
                        tar_size += len(chunk)
                        compressor.write(chunk)
        # Uncompressed, the file is the tar: one hash serves as both.
        digest = (sink.sha256 if compression.algorithm != "none" else diff_id).hexdigest()
        final = out_dir / digest
        with storage_errors(out_dir, doing):
            os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return LayerBlob(final, f"sha256:{digest}", f"sha256:{diff_id.hexdigest()}", sink.size,
                     compression.algorithm, tar_size)


def lock_new_file(fd: int, name: str) -> bool:
    """``flock`` the file just created as ``name``; False when it is gone by then.

    Another build's cleanup of stale temporary files (``remove_stale_partials``) may take the
    file before it is locked, when it is still unlocked as a killed build's would be, and
    delete it: the caller then creates another. Where locks fail, the file is just kept.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return True
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(name))
    except FileNotFoundError:
        return False


class _HashingSink:
    """The file end of the pipe: hashes and counts the compressed bytes as they are written."""

    def __init__(self, raw: BinaryIO, out_dir: Path, *, hashing: bool = True) -> None:
        self._raw = raw
        self._out_dir = out_dir
        self._hashing = hashing
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self._hashing:
            self.sha256.update(data)
        view = memoryview(data)
        with storage_errors(self._out_dir, "write a layer to"):
            while view:  # a raw file may write less than asked
                written = self._raw.write(view)
                view = view[written:]
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


def _tar_chunks(root: str, changes: Changes, snapshot: Snapshot, mtime_ns: int | None = None,
                helpers: int = 0) -> Iterator[bytes]:
    """The tar's bytes: entries in :func:`layer_order`, each after its parent directories,
    then the end-of-archive marker; made in parts by ``helpers`` forked processes too when
    there are many entries."""
    order = _entry_order(changes, snapshot)
    # The compressor makes one block of its output per write, so the blob's digest follows
    # the chunks: each part's chunks end with the part, whoever makes it, so that the blob
    # depends on the tar alone, not on the number of helpers (nor is anything copied again
    # to cut the stream into blocks of one size).
    parts = _parts(order, snapshot)
    if helpers > 0 and len(order) >= _PARALLEL_ENTRIES:
        first_names = _first_names(order, snapshot)
        yield from ordered_parts(len(parts), lambda index: _entry_chunks(
            root, order[parts[index]], snapshot, mtime_ns, first_names), helpers)
    else:
        seen: dict[tuple[int, int], bytes] = {}
        for part in parts:
            yield from _entry_chunks(root, order[part], snapshot, mtime_ns, seen)
    yield _END_OF_ARCHIVE


def _entry_order(changes: Changes, snapshot: Snapshot) -> list[tuple[str, bool]]:
    """``(path, is a whiteout)`` of every entry, in the order the tar has them.

    A whiteout sits where the name it deletes sorts, as a walk of the tree meets it. Before
    each entry come its parent directories not written yet, the topmost first, as they are
    now, changed or not: containerd's tar writer, which BuildKit uses, puts them so, and a
    layer read alone (or over another base) still gives them their owner and mode.
    """
    order: list[tuple[str, str, bool]] = [(layer_order(path), path, False)
                                          for path in changes.upserts]
    for path in changes.deletions:
        parent, _, base = path.rpartition("/")
        whiteout = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
        order.append((layer_order(path), whiteout, True))
    order.sort()
    entries = snapshot.entries
    written: set[str] = set()  # directories with an entry so far
    out: list[tuple[str, bool]] = []
    for _, path, is_whiteout in order:
        parent = path.rpartition("/")[0]
        if parent and parent not in written:
            missing: list[str] = []
            while parent and parent not in written:
                missing.append(parent)
                written.add(parent)
                parent = parent.rpartition("/")[0]
            out.extend((directory, False) for directory in reversed(missing)
                       if directory in entries)  # else under an ignored path: nothing to say
        out.append((path, is_whiteout))
        if not is_whiteout:
            written.add(path)  # a directory's own entry; a file's name is never a parent
    return out


def _first_names(order: list[tuple[str, bool]],
                 snapshot: Snapshot) -> dict[tuple[int, int], bytes]:
    """The name each multiply-linked inode is written under first, the others linking to it:
    known before the parts are made, so that each part links as the whole tar would."""
    first: dict[tuple[int, int], bytes] = {}
    entries = snapshot.entries
    for path, is_whiteout in order:
        entry = None if is_whiteout else entries.get(path)
        if entry is not None and entry.nlink > 1 and entry.mode & S_IFMT not in (
                S_IFDIR, S_IFSOCK):
            first.setdefault((entry.dev, entry.ino), os.fsencode(path))
    return first


def _parts(order: list[tuple[str, bool]], snapshot: Snapshot) -> list[slice]:
    """``order`` cut into parts of about ``_PART_BYTES`` of tar (by the sizes the snapshot
    saw) and at most ``_PART_ENTRIES`` entries."""
    entries = snapshot.entries
    parts: list[slice] = []
    start = size = 0
    for index, (path, is_whiteout) in enumerate(order):
        entry = None if is_whiteout else entries.get(path)
        size += BLOCK + (entry.size if entry is not None and entry.mode & S_IFMT == S_IFREG
                         else 0)
        if size >= _PART_BYTES or index + 1 - start >= _PART_ENTRIES:
            parts.append(slice(start, index + 1))
            start, size = index + 1, 0
    if start < len(order):
        parts.append(slice(start, len(order)))
    return parts


def _entry_chunks(root: str, order: list[tuple[str, bool]], snapshot: Snapshot,
                  mtime_ns: int | None,
                  first_name: dict[tuple[int, int], bytes]) -> Iterator[bytes]:
    """The entries ``order`` names, in chunks of about CHUNK bytes: small pieces are gathered
    in a list and joined once per chunk.

    A step that wrote 50,000 small files spends most of its layer here, so the common entry (a
    small regular file, one link, an ASCII name that fits the header, no xattr) takes a path of
    its own with no call but the system calls it needs: :func:`_entry_pieces` does the rest.
    ``first_name`` holds the name each multiply-linked inode was first written under (filled
    here as they come, or beforehand by :func:`_first_names`).
    """
    entries_get = snapshot.entries.get
    pieces: list[bytes] = []
    append = pieces.append
    gathered = 0
    zeros = _ZEROS
    # A regular file's header after its mode, owners, size and mtime: typeflag "0", no
    # linkname, the magic, empty names, device numbers 0; they count in the checksum as such.
    devices = b"%07o\0%07o\0" % (0, 0)
    checksum_base = _CHECKSUM_CONSTANT + ord("0") + sum(devices)
    tail = _ZEROS[:100] + _MAGIC + _ZEROS[:64] + devices + _ZEROS[:167]
    open_flags = _OPEN_FLAGS
    os_open, os_read, os_close, fstat, listxattr = (os.open, os.read, os.close, os.fstat,
                                                    os.listxattr)
    for path, is_whiteout in order:
        if gathered >= CHUNK:
            yield b"".join(pieces)
            pieces.clear()
            gathered = 0
        if is_whiteout:
            header = _marker_header(path)
            append(header)
            gathered += len(header)
            continue
        entry = entries_get(path)
        if entry is None:
            raise SnapshotError(f"/{path} is in the changes but not in the snapshot")
        if WHITEOUT_PREFIX in path and path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            raise SnapshotError(f"cannot put /{path} in a layer: names starting with "
                                f"{WHITEOUT_PREFIX!r} mean deletions in image layers")
        _, mode, uid, gid, size, mtime, ctime, ino, dev, nlink, _, _ = entry
        if mtime_ns is not None:
            mtime = mtime_ns
        tar_name = path.encode("utf-8", "surrogateescape")  # os.fsencode, without its calls
        if (mode & 0o170000 == 0o100000 and nlink == 1 and size <= CHUNK
                and len(tar_name) <= 100 and tar_name.isascii()
                and 0 <= uid < _MAX_OCTAL_7 and 0 <= gid < _MAX_OCTAL_7
                and 0 <= mtime < _MAX_MTIME_NS):
            try:
                fd = os_open(f"{root}/{path}", open_flags)
            except OSError:
                fd = _open_unchanged(f"{root}/{path}", entry)  # says why, or retries
            try:
                now = fstat(fd)
                if (now.st_ino != ino or now.st_size != size or now.st_mtime_ns != entry[5]
                        or now.st_ctime_ns != ctime or now.st_dev != dev):
                    raise SnapshotError(f"/{path} changed after the snapshot, before its layer "
                                        "was written")
                try:
                    has_xattrs = bool(listxattr(fd))
                except OSError:
                    has_xattrs = False  # none to be had here, as _xattr_records takes it
                if has_xattrs:
                    header = _header(tar_name, mode & 0o7777, uid, gid, size, mtime, b"0", b"",
                                     0, 0, _xattr_records(fd, "", path))
                else:
                    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (
                        mode & 0o7777, uid, gid, size, mtime // 1_000_000_000)
                    header = b"".join((tar_name, zeros[len(tar_name):100], numbers, b"%06o\0 " % (
                        checksum_base + sum(tar_name) + sum(numbers)), b"0", tail))
                data = os_read(fd, size) if size else b""
                if len(data) != size:
                    data = _read_exactly(fd, size, path, data)
            except OSError as exc:
                raise StorageError(f"cannot read /{path}: {os_error_reason(exc)}") from exc
            finally:
                os_close(fd)
            append(header)
            gathered += len(header) + size + -size % BLOCK
            if size:
                append(data)
                if size % BLOCK:
                    append(zeros[size % BLOCK:])
            continue
        for piece, on_its_own in _entry_pieces(root, path, entry, tar_name, mtime, first_name):
            if on_its_own:  # a big file's data passes through as it is read
                if pieces:
                    yield b"".join(pieces)
                    pieces.clear()
                    gathered = 0
                yield piece
            else:
                append(piece)
                gathered += len(piece)
    if pieces:
        yield b"".join(pieces)


def _entry_pieces(root: str, path: str, entry: FileEntry, tar_name: bytes, mtime: int,
                  first_name: dict[tuple[int, int], bytes]) -> Iterator[tuple[bytes, bool]]:
    """One entry of any kind as its header and data, each with whether it goes to the
    compressor on its own: the data of a file bigger than CHUNK, read CHUNK at a time (the
    compressor's blocks, and so the blob's digest, follow these writes)."""
    kind = entry.mode & S_IFMT
    if kind == S_IFSOCK:
        return  # an image cannot hold a socket (and the walk leaves them out)
    typeflag = _TYPEFLAGS.get(kind)
    if typeflag is None:
        raise SnapshotError(f"/{path}: unknown file type {oct(kind)}")
    host_path = f"{root}/{path}"
    linkname = b""
    if kind == S_IFDIR:
        tar_name += b"/"
    else:
        if kind == S_IFLNK:
            linkname = os.fsencode(entry.link_target or "")
        if entry.nlink > 1:  # any name of an inode but a directory's, as Go's writer
            key = (entry.dev, entry.ino)
            first = first_name.get(key)
            if first is None:
                first_name[key] = tar_name
            elif first != tar_name:
                typeflag, linkname = _HARDLINK, first
    fd = _open_unchanged(host_path, entry) if typeflag == b"0" else -1
    try:
        # A hard link shares its inode's xattrs with the first name: written once.
        pax = {} if typeflag == _HARDLINK else _xattr_records(fd, host_path, path)
        major = minor = 0
        if kind in (_S_IFCHR, _S_IFBLK):
            major, minor = os.major(entry.rdev), os.minor(entry.rdev)
        size = entry.size if fd >= 0 else 0
        yield _header(tar_name, entry.mode & 0o7777, entry.uid, entry.gid, size, mtime,
                      typeflag, linkname, major, minor, pax), False
        left = size
        while left:
            data = _read_exactly(fd, min(left, CHUNK), path)
            left -= len(data)
            yield data, size > CHUNK
        if size % BLOCK:
            yield _ZEROS[size % BLOCK:], False
    finally:
        if fd >= 0:
            os.close(fd)


def _read_exactly(fd: int, size: int, path: str, first: bytes | None = None) -> bytes:
    """``size`` bytes of ``fd`` (``first`` already read), or the error naming ``path``."""
    with storage_errors(f"/{path}", "read"):
        return _read_all(fd, size, path, first)


def _read_all(fd: int, size: int, path: str, first: bytes | None = None) -> bytes:
    data = os.read(fd, size) if first is None else first
    if len(data) == size:
        return data
    parts = [data]
    left = size - len(data)
    while left:
        part = os.read(fd, left)
        if not part:
            raise SnapshotError(f"/{path} shrank while its layer was written")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _open_unchanged(host_path: str, entry: FileEntry, flags: int = -1) -> int:
    """Open a regular file the snapshot saw, refusing one that vanished or changed since."""
    try:
        fd = os.open(host_path, _OPEN_FLAGS if flags < 0 else flags)
    except FileNotFoundError:
        raise SnapshotError(f"/{entry.path} vanished after the snapshot, before its layer was "
                            "written") from None
    except OSError as exc:
        if exc.errno == errno.EPERM and _OPEN_FLAGS != _OPEN_FLAGS_ATIME:
            # O_NOATIME is only for the file's owner (or CAP_FOWNER): read it the usual way.
            return _open_unchanged(host_path, entry, _OPEN_FLAGS_ATIME)
        if exc.errno == errno.ELOOP:
            raise SnapshotError(f"/{entry.path} changed after the snapshot (it is now a "
                                "symlink), before its layer was written") from None
        raise SnapshotError(f"cannot read /{entry.path}: {exc.strerror}") from None
    now = os.fstat(fd)
    if (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            entry.ino, entry.dev, entry.size, entry.mtime_ns, entry.ctime_ns):
        os.close(fd)
        raise SnapshotError(f"/{entry.path} changed after the snapshot, before its layer was "
                            "written")
    return fd


def _xattr_records(fd: int, host_path: str, path: str) -> dict[str, bytes]:
    """PAX ``SCHILY.xattr.*`` records of the xattrs an image keeps, where they can be read.

    Read through ``fd`` when the file is open, else from ``host_path`` without following it.
    """
    target: int | str = fd if fd >= 0 else host_path
    follow = fd >= 0  # an fd is the file itself; follow_symlinks=False is only for paths
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return {}  # no xattr support here, or not allowed to list: nothing to keep
    records: dict[str, bytes] = {}
    for xname in names:
        if xname not in _KEPT_XATTRS and not xname.startswith(_KEPT_XATTR_PREFIXES):
            continue
        try:
            records[f"SCHILY.xattr.{xname}"] = os.getxattr(target, xname,
                                                           follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENODATA, errno.ENOTSUP):
                raise SnapshotError(f"cannot read xattr {xname} of /{path}: "
                                    f"{exc.strerror}") from None
    return records


def _marker_header(path: str) -> bytes:
    """A whiteout: an empty regular file, 0:0, mode 0, mtime 0."""
    return _header(os.fsencode(path), 0, 0, 0, 0, 0, b"0", b"", 0, 0, {})


def _header(name: bytes, mode: int, uid: int, gid: int, size: int, mtime_ns: int,
            typeflag: bytes, linkname: bytes, devmajor: int, devminor: int,
            pax: dict[str, bytes]) -> bytes:
    """One entry's header blocks, in the format Go's archive/tar picks for it: plain USTAR
    (a long name split into prefix and name) when every field fits, else a PAX extended header
    then the USTAR header."""
    seconds = mtime_ns // 1_000_000_000  # floored, as Go's Time.Truncate(time.Second)
    if not 0 <= seconds < _MAX_OCTAL_11:
        pax["mtime"] = str(seconds).encode()
        seconds = 0
    if len(name) > _NAME_SIZE or not name.isascii():
        pax["path"] = name
    if len(linkname) > _NAME_SIZE or not linkname.isascii():
        pax["linkpath"] = linkname
    if not 0 <= uid < _MAX_OCTAL_7:
        pax["uid"] = str(uid).encode()
        uid = 0
    if not 0 <= gid < _MAX_OCTAL_7:
        pax["gid"] = str(gid).encode()
        gid = 0
    if size >= _MAX_OCTAL_11:
        pax["size"] = str(size).encode()
    if devmajor >= _MAX_OCTAL_7 or devminor >= _MAX_OCTAL_7:
        raise SnapshotError(f"/{os.fsdecode(name)}: device number {devmajor}:{devminor} does "
                            "not fit in a tar header")
    size_field = 0 if size >= _MAX_OCTAL_11 else size
    if pax.keys() == {"path"}:
        split = _split_ustar_name(name)
        if split is not None:  # USTAR holds it: no PAX header at all
            prefix, rest = split
            return _ustar(rest, mode, uid, gid, size_field, seconds, typeflag, linkname,
                          devmajor, devminor, prefix)
    if not pax:
        return _ustar(name, mode, uid, gid, size_field, seconds, typeflag, linkname,
                      devmajor, devminor)
    header = _ustar(_v7_field(name), mode, uid, gid, size_field, seconds, typeflag,
                    _v7_field(linkname), devmajor, devminor)
    data = _pax_data(pax)
    return b"".join((_pax_header(name, len(data)), data,
                     _ZEROS[: -len(data) % BLOCK] if len(data) % BLOCK else b"", header))


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """``name`` as USTAR's prefix and name fields, split at a slash as Go splits it, or None."""
    if len(name) <= _NAME_SIZE or not name.isascii():
        return None
    length = min(len(name), _PREFIX_SIZE + 1)
    if length == len(name) and name.endswith(b"/"):
        length -= 1
    cut = name.rfind(b"/", 0, length)
    if cut <= 0 or len(name) - cut - 1 > _NAME_SIZE or len(name) - cut - 1 == 0:
        return None
    return name[:cut], name[cut + 1:]


def _ascii(text: bytes) -> bytes:
    """``text`` without its non-ASCII bytes (and NULs), as Go's toASCII leaves a name field."""
    return text if text.isascii() and b"\0" not in text else bytes(
        b for b in text if 0 < b < 0x80)


def _v7_field(text: bytes) -> bytes:
    """A name or link held by a PAX record, as Go fills the 100-byte field beside it: ASCII,
    cut to the field, a slash the cut leaves at its end dropped with the slashes before it."""
    text = _ascii(text)
    if len(text) <= _NAME_SIZE:
        return text
    cut = text[:_NAME_SIZE]
    if cut.endswith(b"/"):  # Go ends the name with a NUL there; the bytes after it stay
        end = len(cut[:-1].rstrip(b"/"))
        cut = cut[:end] + b"\0" + cut[end + 1:]
    return cut


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           typeflag: bytes, linkname: bytes, devmajor: int, devminor: int,
           prefix: bytes = b"") -> bytes:
    """One USTAR header block (fields as Go's archive/tar writes them for PAX archives)."""
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    devices = b"%07o\0%07o\0" % (devmajor, devminor)
    # The checksum counts the checksum field as eight spaces; NUL padding adds nothing.
    checksum = (sum(name) + sum(numbers) + sum(typeflag) + sum(linkname) + sum(devices)
                + sum(prefix) + _CHECKSUM_CONSTANT)
    return b"".join((name, _ZEROS[len(name):100], numbers, b"%06o\0 " % checksum, typeflag,
                     linkname, _ZEROS[len(linkname):100], _MAGIC, _ZEROS[:64], devices,
                     prefix, _ZEROS[len(prefix):167]))


def _pax_header(name: bytes, size: int) -> bytes:
    """The ``x`` header before an entry's records, named as Go names it: ``PaxHeaders.0``
    joined between the entry's directory and base name (``d/`` gives ``d/PaxHeaders.0``)."""
    directory, _, base = name.rpartition(b"/")
    pax_name = b"/".join(part for part in (directory, b"PaxHeaders.0", base) if part)
    return _ustar(_ascii(pax_name)[:_NAME_SIZE].rstrip(b"/"), 0, 0, 0, size, 0, _PAX_HEADER,
                  b"", 0, 0)


def _pax_data(records: dict[str, bytes]) -> bytes:
    """``"%d %s=%s\\n"`` records sorted by key; the length counts its own digits."""
    out = []
    for key in sorted(records):
        body = b" " + key.encode() + b"=" + records[key] + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        out.append(str(length).encode() + body)
    return b"".join(out)
