"""ADD as BuildKit does it: archive extraction by content, URLs, --checksum, git refused."""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import http.server
import io
import lzma
import os
import tarfile
import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import zstandard

from tests.support.built import build

pytestmark = pytest.mark.e2e


def tar_bytes(files: dict[str, str], mode: int = 0o640, uid: int = 1234) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, 99, 1e9
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


COMPRESSORS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_add_extracts_a_local_archive_by_content(tmp_path: Path, busybox_image: str,
                                                 kind: str) -> None:
    archive = COMPRESSORS[kind](tar_bytes({"pkg/a.txt": "alpha\n", "pkg/b.txt": "beta\n"}))
    built = build(tmp_path, f"FROM {busybox_image}\nADD bundle.data /opt/x\n",
                  {"bundle.data": archive})
    assert built.ok, built.run.stderr
    extracted = built.root / "opt/x/pkg/a.txt"
    assert extracted.read_text() == "alpha\n"
    info = extracted.stat()
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o640, 1234, 99)
    assert not (built.root / "opt/x/bundle.data").exists()


def test_add_copies_a_compressed_file_that_is_not_a_tar(tmp_path: Path,
                                                        busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nADD notes.txt.gz /opt/\n",
                  {"notes.txt.gz": gzip.compress(b"just text\n")})
    assert built.ok, built.run.stderr
    assert gzip.decompress((built.root / "opt/notes.txt.gz").read_bytes()) == b"just text\n"


def test_add_unpack_false_copies_the_archive(tmp_path: Path, busybox_image: str) -> None:
    data = tar_bytes({"a.txt": "a\n"})
    built = build(tmp_path, f"FROM {busybox_image}\nADD --unpack=false a.tar /opt/\n",
                  {"a.tar": data})
    assert built.ok, built.run.stderr
    assert (built.root / "opt/a.tar").read_bytes() == data


def test_copy_never_extracts(tmp_path: Path, busybox_image: str) -> None:
    data = tar_bytes({"a.txt": "a\n"})
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY a.tar /opt/\n", {"a.tar": data})
    assert built.ok, built.run.stderr
    assert (built.root / "opt/a.tar").read_bytes() == data


def test_add_archive_cannot_write_outside_its_destination(tmp_path: Path,
                                                          busybox_image: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
        info = tarfile.TarInfo("escape/passwd")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    built = build(tmp_path, f"FROM {busybox_image}\nADD evil.tar /opt/\n",
                  {"evil.tar": buffer.getvalue()})
    assert built.ok, built.run.stderr
    assert (built.root / "opt/etc/passwd").read_bytes() == b"evil"
    assert b"evil" not in (built.root / "etc/passwd").read_bytes()


def test_add_archive_into_sys_writes_it_in_a_sandbox(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nADD a.tar /\n",
                  {"a.tar": tar_bytes({"sys/fs/foo": "foo\n", "dev/baz": "baz\n"})})
    assert built.ok, built.run.stderr
    assert built.contents[-1]["sys/fs/foo"] == b"foo\n"
    assert built.contents[-1]["dev/baz"] == b"baz\n"


def test_add_archive_entries_on_an_ignored_path_are_named_in_one_warning(
        tmp_path: Path, busybox_image: str) -> None:
    # --ignore-path stands in for a mount point of the build container (in place, /sys).
    built = build(tmp_path, f"FROM {busybox_image}\nADD a.tar /opt/\n",
                  {"a.tar": tar_bytes({"sys/fs/foo": "foo\n", "sys/b": "b\n", "ok": "ok\n"})},
                  "--ignore-path", "/opt/sys")
    assert built.ok, built.run.stderr
    warnings = [line for line in built.run.stderr.splitlines() if "not written" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("WARN")
    assert "Dockerfile:2: ADD a.tar: not written: /opt/sys/fs/foo and 1 more" in warnings[0]
    assert "opt/ok" in built.contents[-1] and "opt/sys/fs/foo" not in built.contents[-1]


# --- URLs ---------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a directory: (base URL, directory)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Handler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def test_add_url_names_the_file_after_the_url_with_mode_0600_and_last_modified(
        tmp_path: Path, busybox_image: str, web: tuple[str, Path]) -> None:
    base, served = web
    (served / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    mtime = 1_600_000_000
    os.utime(served / "tool.sh", (mtime, mtime))
    built = build(tmp_path, f"FROM {busybox_image}\nADD {base}/tool.sh /usr/local/bin/\n"
                  f"ADD {base}/tool.sh /opt/renamed\n")
    assert built.ok, built.run.stderr
    for path in ("usr/local/bin/tool.sh", "opt/renamed"):
        info = (built.root / path).stat()
        assert (info.st_mode & 0o7777, info.st_uid, int(info.st_mtime)) == (0o600, 0, mtime)
    assert formatdate(mtime, usegmt=True)  # the server sent it as an HTTP date


def test_add_url_with_the_right_checksum(tmp_path: Path, busybox_image: str,
                                         web: tuple[str, Path]) -> None:
    base, served = web
    (served / "data.bin").write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  f"ADD --checksum=sha256:{digest} --chmod=644 {base}/data.bin /data.bin\n")
    assert built.ok, built.run.stderr
    assert (built.root / "data.bin").read_bytes() == b"payload"
    assert (built.root / "data.bin").stat().st_mode & 0o777 == 0o644


def test_add_url_with_a_wrong_checksum_fails(tmp_path: Path, busybox_image: str,
                                             web: tuple[str, Path]) -> None:
    base, served = web
    (served / "data.bin").write_bytes(b"payload")
    wrong = "sha256:" + "0" * 64
    built = build(tmp_path, f"FROM {busybox_image}\nADD --checksum={wrong} {base}/data.bin /\n")
    assert built.run.exit_code == 1
    got = "sha256:" + hashlib.sha256(b"payload").hexdigest()
    assert built.run.last_line == ("error building image: Dockerfile:2: ADD --checksum: digest "
                                   f"mismatch for {base}/data.bin: expected {wrong}, got {got}")


def test_add_url_missing_fails_with_the_status(tmp_path: Path, busybox_image: str,
                                               web: tuple[str, Path]) -> None:
    base, _ = web
    built = build(tmp_path, f"FROM {busybox_image}\nADD {base}/nope /\n")
    assert built.run.last_line == (f"error building image: Dockerfile:2: ADD {base}/nope: "
                                   "invalid response status 404")


@pytest.mark.parametrize(("line", "message"), [
    ("ADD --checksum=sha256:" + "a" * 64 + " local.txt /",
     "checksum can't be specified for non-HTTP(S) sources"),
    ("ADD --checksum=md5:abc http://127.0.0.1:9/x /", "invalid checksum digest format: md5:abc"),
    ("ADD https://github.com/moby/buildkit.git#v0.10.1 /src",
     "ADD https://github.com/moby/buildkit.git#v0.10.1: kiln does not support git sources in "
     "ADD yet; clone the repository in a RUN step or into the build context"),
    ("ADD --unpack=maybe local.txt /", "invalid value 'maybe' for --unpack: expected true or "
     "false"),
    ("ADD --bogus=1 local.txt /", "unknown flag: --bogus for ADD"),
])
def test_add_refuses(tmp_path: Path, busybox_image: str, line: str, message: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n{line}\n", {"local.txt": "x\n"})
    assert built.run.exit_code == 1
    assert built.run.last_line == f"error building image: Dockerfile:2: {message}"
