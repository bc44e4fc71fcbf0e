"""``docker save`` tarball output: what ``--tar-path`` writes, for ``docker load``.

The format is Docker's: a ``manifest.json`` listing, per image, the ``Config`` file, the
``RepoTags`` and the ``Layers`` files (bottom first), next to those files in the archive. Layers
are stored compressed as built (``docker load``, skopeo and go-containerregistry all accept
that) and copied from their blob files by the kernel (``copy_file_range``), never through
Python's buffers. The archive is deterministic: fixed owners, modes and times, so the same image
gives the same bytes, the bytes :mod:`tarfile` writes for these members (the headers are its
``TarInfo.tobuf``; only the data is moved without it).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from executor.errors import ImageError
from executor.image.atomic import output_file
from executor.image.model import ImageConfig, Layer, compression_of, sha256_digest
from executor.image.reference import ImageRef
from snapshot.filecopy import copy_data

_EXTENSIONS = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}


def write_docker_tarball(path: Path, ref: str | Sequence[str], config_bytes: bytes,
                         layers: Sequence[Layer]) -> None:
    """Write the image (``config_bytes`` and ``layers``, bottom first) to ``path``.

    ``ref`` is the tag (or tags) ``docker load`` gives the image; each is stored in Docker's
    short form (``busybox:latest``, ``reg.io:5000/app:1``).
    """
    tags = [_repo_tag(text) for text in ([ref] if isinstance(ref, str) else ref)]
    diff_ids = ImageConfig.from_bytes(config_bytes).diff_ids
    if len(diff_ids) != len(layers):
        raise ImageError(f"cannot write {path}: the config lists {len(diff_ids)} layers, "
                         f"{len(layers)} were given")
    config_name = sha256_digest(config_bytes).partition(":")[2] + ".json"
    layer_names = [_layer_name(layer) for layer in layers]
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]

    with output_file(path) as handle:  # a pipe (--tar-path /dev/stdout) is written in order
        out = _Archive(handle.fileno())
        out.add_bytes(config_name, config_bytes)
        written: set[str] = set()
        for layer, name in zip(layers, layer_names, strict=True):
            if name in written:  # an image may repeat a layer; the file is stored once
                continue
            written.add(name)
            out.add_file(name, layer)
        out.add_bytes("manifest.json", json.dumps(manifest).encode())
        out.close()


def _repo_tag(text: str) -> str:
    ref = ImageRef.parse(text)
    if ref.tag is None:
        raise ImageError(f"cannot write a docker tarball for {text!r}: it names no tag")
    return ref.with_tag(ref.tag).familiar


def _layer_name(layer: Layer) -> str:
    return layer.digest.partition(":")[2] + _EXTENSIONS[compression_of(layer.media_type)]


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Archive:
    """A PAX tar written straight to a file descriptor, laid out as :class:`tarfile.TarFile`
    lays it out: header blocks, data padded to 512 bytes, two zero blocks, then zeros up to a
    whole 10240-byte record."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._offset = 0

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._offset += len(data)

    def _header(self, name: str, size: int) -> None:
        self._write(_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING,
                                            "surrogateescape"))

    def _pad(self, size: int) -> None:
        if size % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))

    def add_file(self, name: str, layer: Layer) -> None:
        with layer.path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size != layer.size:
                raise ImageError(f"blob {layer.digest} in {layer.path} is {size} bytes, "
                                 f"expected {layer.size}")
            self._header(name, size)
            if copy_data(source.fileno(), self._fd, size) != size:
                raise ImageError(f"blob {layer.digest} in {layer.path} shrank while it was "
                                 "copied")
            self._offset += size
            self._pad(size)

    def close(self) -> None:
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self._offset % tarfile.RECORDSIZE:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
