"""Layer compression: byte-stable writers, and readers that refuse truncated streams."""

from __future__ import annotations

import gzip
import io
import os
import random

import pytest
import zstandard

from snapshot.compress import (
    Compression,
    compressed_writer,
    detect_compression,
    open_decompressed,
)
from snapshot.errors import CorruptLayerError

# Compressible and incompressible parts, several MiB so the writers use several blocks.
_rng = random.Random(7)
DATA = (bytes(_rng.getrandbits(8) for _ in range(200_000)) + b"\0" * 2_500_000
        + b"layer " * 300_000)
COMPRESSED = ("gzip", "zstd")


def compress(data: bytes, compression: Compression, piece: int = 10240) -> bytes:
    out = io.BytesIO()
    with compressed_writer(out, compression) as writer:
        for start in range(0, len(data), piece):
            writer.write(data[start:start + piece])
    assert not out.closed  # the writer finishes the stream but leaves the file to its owner
    return out.getvalue()


def decompress(blob: bytes, algorithm: str) -> bytes:
    return open_decompressed(io.BytesIO(blob), algorithm).read()


@pytest.mark.parametrize("algorithm", ["gzip", "zstd", "none"])
def test_round_trip(algorithm: str) -> None:
    blob = compress(DATA, Compression(algorithm))  # type: ignore[arg-type]
    assert decompress(blob, algorithm) == DATA
    assert decompress(blob, "auto") == DATA


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_output_does_not_depend_on_the_number_of_threads(algorithm: str) -> None:
    outputs = {compress(DATA, Compression(algorithm, threads=n))  # type: ignore[arg-type]
               for n in (1, 2, 3, -1)}
    assert len(outputs) == 1


def test_gzip_is_readable_by_the_standard_library_and_has_no_timestamp() -> None:
    blob = compress(DATA, Compression("gzip"))
    assert blob[4:8] == b"\0\0\0\0"  # MTIME: none, so the same layer gives the same bytes
    assert gzip.decompress(blob) == DATA


def test_zstd_is_readable_by_libzstd_with_a_checksum() -> None:
    blob = compress(DATA, Compression("zstd"))
    params = zstandard.get_frame_parameters(blob)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == DATA


@pytest.mark.parametrize("level", [0, 1, 5, 9])
def test_every_gzip_level_round_trips(level: int) -> None:
    assert decompress(compress(DATA, Compression("gzip", level)), "gzip") == DATA


@pytest.mark.parametrize("level", [-7, 1, 3, 19])
def test_zstd_levels_round_trip(level: int) -> None:
    assert decompress(compress(DATA, Compression("zstd", level)), "zstd") == DATA


def test_higher_levels_compress_better() -> None:
    fast = compress(DATA, Compression("zstd", 1))
    best = compress(DATA, Compression("zstd", 19))
    assert len(best) < len(fast)


@pytest.mark.parametrize(
    ("level", "isal"), [(None, 1), (0, 0), (1, 1), (3, 1), (4, 2), (6, 2), (7, 3), (9, 3)])
def test_gzip_levels_map_onto_isal(level: int | None, isal: int) -> None:
    assert Compression("gzip", level).isal_level == isal


def test_default_levels_are_kaniko_gzip_1_and_zstd_3() -> None:
    assert Compression().algorithm == "gzip" and Compression().isal_level == 1
    assert Compression("zstd").zstd_level == 3
    assert Compression("zstd", 0).zstd_level == 3


@pytest.mark.parametrize(("algorithm", "level"), [("gzip", 10), ("gzip", -1), ("zstd", 23),
                                                  ("brotli", None)])
def test_bad_settings_are_refused(algorithm: str, level: int | None) -> None:
    with pytest.raises(ValueError, match=algorithm if level is None else str(level)):
        Compression(algorithm, level)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", COMPRESSED)
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.999, -1, -4, -8])
def test_a_truncated_stream_is_a_corrupt_layer(algorithm: str, keep: float) -> None:
    blob = compress(DATA, Compression(algorithm))  # type: ignore[arg-type]
    cut = int(len(blob) * keep) if keep >= 0 else len(blob) + int(keep)
    with pytest.raises(CorruptLayerError, match=f"{algorithm} stream is (truncated|empty)"):
        decompress(blob[:cut], algorithm)


@pytest.mark.parametrize("algorithm", COMPRESSED)
def test_a_damaged_stream_is_a_corrupt_layer(algorithm: str) -> None:
    blob = bytearray(compress(DATA, Compression(algorithm)))  # type: ignore[arg-type]
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(CorruptLayerError, match=algorithm):
        decompress(bytes(blob), algorithm)


def test_zstd_reads_across_frames_and_skippable_frames() -> None:
    first = zstandard.ZstdCompressor().compress(b"a" * 5000)
    skippable = (0x184D2A5E).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"xyz"
    second = zstandard.ZstdCompressor(write_content_size=False).compress(b"b" * 5000)
    assert decompress(first + skippable + second, "zstd") == b"a" * 5000 + b"b" * 5000


def test_zstd_garbage_after_a_frame_is_a_corrupt_layer() -> None:
    blob = zstandard.ZstdCompressor().compress(b"a" * 5000) + b"not a frame"
    with pytest.raises(CorruptLayerError, match="zstd"):
        decompress(blob, "zstd")


def test_a_reader_works_in_small_reads() -> None:
    blob = compress(DATA, Compression("zstd"))
    reader = open_decompressed(io.BytesIO(blob), "zstd")
    pieces = []
    while piece := reader.read(777):
        pieces.append(piece)
    assert b"".join(pieces) == DATA


def test_closing_the_reader_leaves_the_source_open() -> None:
    source = io.BytesIO(compress(b"x" * 100, Compression("gzip")))
    reader = open_decompressed(source, "gzip")
    assert reader.read() == b"x" * 100
    reader.close()
    assert not source.closed


@pytest.mark.parametrize(
    ("head", "algorithm"),
    [(b"\x1f\x8b\x08\x00", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"etc/", "none"),
     (b"", "none"), (b"\x00\x00\x00\x00", "none")],
)
def test_detect_compression_by_magic_number(head: bytes, algorithm: str) -> None:
    assert detect_compression(head) == algorithm


@pytest.mark.parametrize(("head", "name"), [(b"BZh91AY", "bzip2"), (b"\xfd7zXZ\x00\x00", "xz")])
def test_unsupported_compressions_are_named(head: bytes, name: str) -> None:
    with pytest.raises(CorruptLayerError, match=name):
        detect_compression(head)


def test_a_failed_write_does_not_hide_the_error() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError, match="boom"), \
            compressed_writer(out, Compression("gzip")) as writer:
        writer.write(os.urandom(1000))
        raise RuntimeError("boom")
