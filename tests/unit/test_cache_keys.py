"""The layer cache's keys: what a step wrote counts, when it was written does not."""

from __future__ import annotations

import os
from pathlib import Path

from executor.cache import chain, stage_seed, written_content
from executor.image.model import Platform
from snapshot.snapshot import Changes


def test_a_chain_depends_on_every_part_and_on_its_order() -> None:
    seed = stage_seed("image:sha256:ab", Platform())
    assert chain(seed, "RUN a", [("X", "1")]) == chain(seed, "RUN a", [("X", "1")])
    assert chain(seed, "RUN a", [("X", "1")]) != chain(seed, "RUN a", [("X", "2")])
    assert chain(chain(seed, "RUN a"), "RUN b") != chain(chain(seed, "RUN b"), "RUN a")
    assert stage_seed("scratch", Platform()) != stage_seed("scratch", Platform.parse("linux/arm64"))
    assert stage_seed("scratch", Platform(), ["gzip"]) != stage_seed("scratch", Platform(),
                                                                      ["zstd"])


def test_what_was_written_counts_and_mtimes_do_not(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/run.sh").write_text("echo 1\n")
    (tmp_path / "app/link").symlink_to("run.sh")
    changes = Changes(upserts=["app", "app/link", "app/run.sh"], deletions=["old"])
    before = written_content(tmp_path, changes)
    os.utime(tmp_path / "app/run.sh", (1, 1))
    assert written_content(tmp_path, changes) == before
    (tmp_path / "app/run.sh").chmod(0o755)
    after_chmod = written_content(tmp_path, changes)
    assert after_chmod != before
    (tmp_path / "app/run.sh").write_text("echo 2\n")
    assert written_content(tmp_path, changes) not in (before, after_chmod)
    (tmp_path / "app/run.sh").write_text("echo 1\n")
    assert written_content(tmp_path, changes) == after_chmod
    (tmp_path / "app/link").unlink()
    (tmp_path / "app/link").symlink_to("other")
    assert written_content(tmp_path, changes) != after_chmod
    assert written_content(tmp_path, Changes(upserts=changes.upserts)) != written_content(
        tmp_path, changes)
