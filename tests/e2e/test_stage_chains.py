"""Stages built FROM an earlier stage, as buildpack-deps chains them (curl -> scm -> full): the
next stage goes on in the root the earlier one left, with nothing written out, deleted or
extracted again in between, and its image is the earlier one's layers plus its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.built import build

pytestmark = pytest.mark.e2e

# ``stat -c '%i %z'``: the inode number and the change time to the nanosecond, which no
# extraction can give back (a file written again gets a new ctime, whatever its mtime).
_CHAIN = (
    "FROM {base} AS one\n"
    "RUN mkdir /data && echo one > /data/marker && stat -c '%i %z' /data/marker > /seen-one\n"
    "FROM one AS two\n"
    "RUN stat -c '%i %z' /data/marker > /seen-two\n"
    "FROM two AS three\n"
    "RUN stat -c '%i %z' /data/marker > /seen-three\n"
)


def test_a_stage_from_the_stage_before_goes_on_in_the_same_root(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, _CHAIN.format(base=busybox_image))
    assert built.ok, built.run.stderr
    seen = [(built.root / f"seen-{name}").read_text() for name in ("one", "two", "three")]
    assert seen[0] == seen[1] == seen[2]
    assert built.run.stderr.count("Unpacking rootfs") == 1


def test_a_chained_stage_image_is_the_stage_before_plus_its_own_layer(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, _CHAIN.format(base=busybox_image))
    assert built.ok, built.run.stderr
    new = built.new_layers(1)
    assert [sorted(name for name in layer if name.startswith("seen-")) for layer in new] == [
        ["seen-one"], ["seen-two"], ["seen-three"]]
    assert "data/marker" in new[0] and "data/marker" not in new[1]
    assert len(built.config["rootfs"]["diff_ids"]) == 4
