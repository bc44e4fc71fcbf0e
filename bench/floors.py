"""The seed build's own work, phase by phase, in CPU seconds against each phase's floor.

Why CPU and not wall time: the bench machines are shared, and a wall time there measures the
neighbours as much as kiln. User + system seconds of this process and its reaped children
(the extraction helpers) hardly move with the load, so each of kiln's phases can be set beside
the cheapest known way to do the same work on the same bytes:

- ``extract``: kiln applying the Debian minbase layer as a build does (the blob's digest and
  the diff_id checked as it is read) against ``tar -xpzf`` and against ISA-L's inflate alone;
- ``snapshot``: :func:`take_snapshot` of the extracted tree against a bare ``scandir`` +
  ``lstat`` walk;
- ``layer``: :func:`write_layer` of the whole tree (gzip, kiln's default level) against ISA-L
  compressing the same tar in one call plus the two SHA-256 digests a layer needs.

Every tool works on tmpfs (``/dev/shm`` when writable), so file creation is the kernel's
in-memory cost, not this VM's disk.

:func:`measure_file_floors` does the same for the ``files`` build's own work, a step that wrote
50,000 small files: the snapshot that finds them, and their layer against GNU tar piped into
``gzip -1`` and against the system calls alone (open, fstat, read, close per file) plus the
compression and digests of the same tar.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import isal.igzip_lib

from snapshot.compress import Compression, open_decompressed
from snapshot.extract import extract_layer
from snapshot.ignore import IgnoreList
from snapshot.layer import write_layer
from snapshot.snapshot import diff_snapshots, take_snapshot


def cpu_seconds() -> float:
    """User + system seconds of this process and of the children it has reaped."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed_cpu(work: Callable[[], object]) -> float:
    started = cpu_seconds()
    work()
    return cpu_seconds() - started


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def kiln_extract_verified(blob: Path, target: Path, digest: str, diff_id: str) -> None:
    """Extraction as a build does it: both digests checked as the stream is read."""
    from executor.image.blob import VerifyingReader

    with open(blob, "rb") as raw:
        verified = VerifyingReader(raw, digest)
        uncompressed = VerifyingReader(open_decompressed(cast(BinaryIO, verified), "gzip"),
                                       diff_id)
        extract_layer(target, cast(BinaryIO, uncompressed),
                      ignore=IgnoreList(root=target, paths=frozenset()), layer_name=blob.name)
        verified.verify()
        uncompressed.verify()


def lstat_walk(root: Path) -> int:
    """The floor of a snapshot: every entry listed and lstat'ed once, nothing kept."""
    count, stack = 0, [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                os.lstat(entry.path)
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


def measure_floors(blob: Path, runs: int, workdir: Path,
                   report: Callable[[str, str, float], None]) -> None:
    """Report ``(phase, tool, cpu seconds)`` for every phase and tool, ``runs`` times."""
    compressed = blob.read_bytes()
    with open(blob, "rb") as raw:
        tar = open_decompressed(raw, "gzip").read()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-floors-", dir=workdir) as scratch:
        tmp = Path(scratch)
        for run in range(runs):
            _measure_once(blob, compressed, tar, tmp / str(run), report)


def _measure_once(blob: Path, compressed: bytes, tar: bytes, tmp: Path,
                  report: Callable[[str, str, float], None]) -> None:
    root, other, out, empty_dir = tmp / "kiln", tmp / "tar", tmp / "layers", tmp / "empty"
    for directory in (root, other, empty_dir):
        directory.mkdir(parents=True)
    report("extract", "kiln", timed_cpu(functools.partial(
        kiln_extract_verified, blob, root, _digest_of(compressed), _digest_of(tar))))
    report("extract", "gnu-tar", timed_cpu(functools.partial(
        subprocess.run, ["tar", "--same-owner", "-xpzf", str(blob), "-C", str(other)],
        check=True)))
    report("extract", "isal-inflate", timed_cpu(functools.partial(
        isal.igzip_lib.decompress, compressed, flag=isal.igzip_lib.DECOMP_GZIP)))
    ignore = IgnoreList(root=root, paths=frozenset())
    snapshot = take_snapshot(root, ignore)
    report("snapshot", "kiln", timed_cpu(functools.partial(take_snapshot, root, ignore)))
    report("snapshot", "lstat-walk", timed_cpu(functools.partial(lstat_walk, root)))
    changes = diff_snapshots(take_snapshot(empty_dir, IgnoreList(root=empty_dir,
                                                                 paths=frozenset())), snapshot)
    report("layer", "kiln", timed_cpu(functools.partial(
        write_layer, root, changes, snapshot, out, Compression("gzip"))))
    report("layer", "isal+2sha256", timed_cpu(functools.partial(
        _compress_and_hash, tar, Compression("gzip").isal_level)))
    shutil.rmtree(tmp)


def _compress_and_hash(tar: bytes, level: int) -> None:
    """A layer's floor: the tar compressed in one call, and both of a layer's digests."""
    blob = isal.igzip_lib.compress(tar, level=level, flag=isal.igzip_lib.COMP_GZIP)
    hashlib.sha256(blob).digest()
    hashlib.sha256(tar).digest()


def write_small_files(root: Path, count: int) -> None:
    """``count`` files of a few bytes in one directory, as the ``files`` build's RUN makes."""
    directory = root / "files"
    directory.mkdir(parents=True)
    for index in range(count):
        (directory / f"f{index}").write_bytes(b"%d\n" % index)


def read_files_floor(root: Path, tar: bytes, level: int) -> None:
    """The least a layer of many small files costs from Python: each file opened, checked,
    read and closed, and the finished tar compressed and hashed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.scandir(root / "files") as entries:
        for entry in entries:
            fd = os.open(entry.path, flags)
            os.read(fd, os.fstat(fd).st_size)
            os.close(fd)
    _compress_and_hash(tar, level)


def measure_file_floors(count: int, runs: int, workdir: Path,
                        report: Callable[[str, str, float], None]) -> None:
    """Report ``(phase, tool, cpu seconds)`` for the snapshot and the layer of ``count`` new
    small files, ``runs`` times."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-floors-", dir=workdir) as scratch:
        tmp = Path(scratch)
        root, empty_dir = tmp / "root", tmp / "empty"
        write_small_files(root, count)
        empty_dir.mkdir()
        ignore = IgnoreList(root=root, paths=frozenset())
        empty = take_snapshot(empty_dir, IgnoreList(root=empty_dir, paths=frozenset()))
        level = Compression("gzip").isal_level
        for run in range(runs):
            snapshot = take_snapshot(root, ignore, previous=empty)
            report("snapshot", "kiln", timed_cpu(functools.partial(
                take_snapshot, root, ignore, previous=empty)))
            report("snapshot", "lstat-walk", timed_cpu(functools.partial(lstat_walk, root)))
            out = tmp / f"layers{run}"
            changes = diff_snapshots(empty, snapshot)
            report("layer", "kiln", timed_cpu(functools.partial(
                write_layer, root, changes, snapshot, out, Compression("gzip"))))
            tar = subprocess.run(["tar", "--numeric-owner", "-cf", "-", "-C", str(root),
                                  "files"], check=True, capture_output=True).stdout
            report("layer", "gnu-tar|gzip-1", timed_cpu(functools.partial(
                subprocess.run, ["sh", "-c", f"tar --numeric-owner -cf - -C {root} files "
                                 "| gzip -1 > /dev/null"], check=True)))
            report("layer", "syscalls+isal+2sha256", timed_cpu(functools.partial(
                read_files_floor, root, tar, level)))
            shutil.rmtree(out)
