"""--image-fs-extract-retry: a failed extraction starts over with fresh downloads."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.support.kiln import run_executor, write_context

pytestmark = pytest.mark.e2e


def corrupt_cached_layers(kiln_dir: Path) -> int:
    count = 0
    for blob in (kiln_dir / "blobs").iterdir():
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":  # a gzip layer: cut it in half
            blob.write_bytes(data[: len(data) // 2])
            count += 1
    return count


def test_a_corrupt_cached_layer_fails_clearly_then_a_retry_downloads_it_again(
        tmp_path: Path, busybox_image: str) -> None:
    # No RUN: the only layer blob in the kiln dir is the base image's.
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nENV A=b\n")
    kiln_dir = tmp_path / "kiln"
    first = run_executor(context, tmp_path / "root1", "--no-push", "--insecure-pull",
                         "--kaniko-dir", str(kiln_dir))
    assert first.exit_code == 0, first.stderr
    assert corrupt_cached_layers(kiln_dir) == 1

    failed = run_executor(context, tmp_path / "root2", "--no-push", "--insecure-pull",
                          "--kaniko-dir", str(kiln_dir))
    assert failed.exit_code == 1
    assert failed.last_line.startswith("error building image: layer sha256:")
    assert "Traceback" not in failed.stderr

    corrupt_cached_layers(kiln_dir)
    retried = run_executor(context, tmp_path / "root3", "--no-push", "--insecure-pull",
                           "--kaniko-dir", str(kiln_dir), "--image-fs-extract-retry", "1")
    assert retried.exit_code == 0, retried.stderr
    assert "retrying (1 of 1)" in retried.stderr


def test_a_cached_layer_that_differs_from_its_digest_is_refused(
        tmp_path: Path, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    kiln_dir = tmp_path / "kiln"
    assert run_executor(context, tmp_path / "root1", "--no-push", "--insecure-pull",
                        "--kaniko-dir", str(kiln_dir)).exit_code == 0
    for blob in (kiln_dir / "blobs").iterdir():
        if blob.read_bytes()[:2] == b"\x1f\x8b":
            # A valid gzip of a valid (empty) tar: only the digest can tell.
            blob.write_bytes(gzip.compress(b"\0" * 1024))
            digest = blob.name
    failed = run_executor(context, tmp_path / "root2", "--no-push", "--insecure-pull",
                          "--kaniko-dir", str(kiln_dir))
    assert failed.exit_code == 1
    assert failed.last_line.startswith(
        f"error building image: layer sha256:{digest}: the blob does not match its digest")
