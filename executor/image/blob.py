"""Reading a blob while checking that it is the blob its digest names.

A layer cached in the kiln directory by an earlier build may have been cut short or damaged;
hashing the compressed bytes as extraction reads them checks it at no extra I/O.
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

from snapshot.errors import CorruptLayerError


class VerifyingReader(io.RawIOBase):
    """Passes ``stream`` through, hashing it; ``verify()`` after the last read."""

    def __init__(self, stream: BinaryIO, digest: str) -> None:
        algorithm, _, self._expected = digest.partition(":")
        if algorithm not in ("sha256", "sha384", "sha512"):
            raise CorruptLayerError(f"blob {digest}: unsupported digest algorithm")
        self._hash = hashlib.new(algorithm)
        self._stream = stream
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self._hash.update(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        return data

    def finish(self) -> str:
        """Read what is left; the digest (``sha256:...``) of everything read."""
        while self.read(1 << 20):
            pass
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def verify(self) -> None:
        """Read what is left, then fail unless everything read hashes to the digest."""
        self.finish()
        if self._hash.hexdigest() != self._expected:
            raise CorruptLayerError(f"layer {self._digest}: the blob does not match its digest "
                                    f"(got {self._hash.name}:{self._hash.hexdigest()})")
