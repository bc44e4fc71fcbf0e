"""A context tarball (plain, gzip or zstd), streamed into the context directory.

The tar is applied by ``snapshot.extract.extract_layer``, the code that applies image layers, so
an entry named ``../x``, an absolute path, or a symlink followed by a write through it cannot land
outside the context directory: each is refused with the entry's name. One difference from a
directory context follows: an entry named ``.wh.NAME`` is read as a whiteout, as in a layer, so
such names do not survive in a tarball context (nor do they in kaniko's image layers).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from executor.errors import ContextError
from snapshot.compress import open_decompressed
from snapshot.errors import SnapshotError
from snapshot.extract import extract_layer


class _NothingIgnored:
    """A context keeps every entry: no path of it is kiln's to protect."""

    def is_ignored(self, rel: str) -> bool:
        return False

    def may_ignore_in(self, directory: str) -> bool:
        return False


def unpack_tarball(stream: BinaryIO, target: Path, source: str) -> None:
    """Extract the (possibly compressed) tar ``stream`` into ``target``; ``source`` names it."""
    try:
        with open_decompressed(stream, "auto") as tar:
            extract_layer(target, tar, ignore=_NothingIgnored(), layer_name=source)
    except SnapshotError as exc:
        cause = str(exc).removeprefix(f"layer {source}: ")
        raise ContextError(f"--context {source}: {cause}") from None


@contextlib.contextmanager
def open_tar_path(path: str, source: str) -> Iterator[BinaryIO]:
    """The file ``tar://PATH`` names, or standard input for ``tar://stdin``."""
    if path == "stdin":
        if sys.stdin is None or sys.stdin.isatty():
            raise ContextError(f"--context {source}: standard input is a terminal, not a "
                               "tarball (pipe it in; with kubectl or docker, run with -i)")
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ContextError(f"--context {source}: {exc.strerror or exc}") from None
    with stream:
        yield stream
