"""The warmer's housekeeping on a shared volume: what a killed warmer left is removed once it
is surely not another warmer's download in progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

from executor.image.model import Platform
from executor.warmer import dockerfile_bases, remove_stale_downloads


def test_day_old_downloads_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".warming-abc", tmp_path / ".warming-def"
    for directory in (stale, fresh):
        (directory / "blob").parent.mkdir()
        (directory / "blob").write_bytes(b"half a layer")
    entry = tmp_path / "sha256:0123"
    entry.write_bytes(b"a cached image")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    os.utime(entry, (two_days_ago, two_days_ago))
    remove_stale_downloads(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".warming-def", "sha256:0123"]


def test_the_bases_of_a_dockerfile_skip_scratch_and_stages(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE=alpine:3.20\nFROM $BASE AS build\nFROM build AS test\n"
                          "FROM scratch\nFROM debian:bookworm-slim\n")
    assert dockerfile_bases(dockerfile, {}, Platform()) == ["alpine:3.20", "debian:bookworm-slim"]
    assert dockerfile_bases(dockerfile, {"BASE": "busybox"}, Platform())[0] == "busybox"
