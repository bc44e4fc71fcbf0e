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


# ``one`` is left for ``other`` (from the base again), then ``three`` is built FROM ``one``.
# /var/run, which the build ignores, makes /var a directory moved out and back entry by entry.
_BETWEEN = (
    "FROM {base} AS one\n"
    "RUN mkdir -p /data/sub /var/run && echo one > /data/sub/marker && echo 1 > /var/run/one.pid"
    "{one}\n"
    "FROM {base} AS other\n"
    "RUN echo other > /other\n"
    "FROM one AS three\n"
    "{three}"
)


def test_a_stage_from_a_stage_built_before_another_gets_its_filesystem_moved_back(
        tmp_path: Path, busybox_image: str) -> None:
    """``one`` is moved out of the root while ``other`` is built, and back for ``three``:
    its files are the same inodes with the same ctimes, and its image is not unpacked."""
    one = " && stat -c '%i %z' /data/sub/marker > /data/seen-one"
    three = "RUN stat -c '%i %z' /data/sub/marker > /data/seen-three\n"
    built = build(tmp_path, _BETWEEN.format(base=busybox_image, one=one, three=three))
    assert built.ok, built.run.stderr
    assert (built.root / "data/seen-one").read_text() == (
        built.root / "data/seen-three").read_text()
    assert built.run.stderr.count("Unpacking rootfs") == 2  # one and other, not three
    assert "Moved the filesystem of stage 0 back into the root" in built.run.stderr
    assert not (built.root / "other").exists()
    # Ignored paths are the root's own, whatever stage it holds (as with an extraction).
    assert (built.root / "var/run/one.pid").read_text() == "1\n"


def test_a_stage_moved_back_gives_the_image_a_straight_chain_gives(
        tmp_path: Path, busybox_image: str) -> None:
    """--reproducible: the same layers, whether ``three`` goes on from ``one`` in the root or
    gets ``one`` moved back after ``other``."""
    three = "RUN echo three >> /data/sub/marker && rm -r /data/sub && mkdir /data/new\n"
    moved = build(tmp_path / "moved", _BETWEEN.format(base=busybox_image, one="", three=three),
                  {}, "--reproducible")
    straight = build(tmp_path / "straight",
                     _BETWEEN.format(base=busybox_image, one="", three=three).replace(
                         f"FROM {busybox_image} AS other\nRUN echo other > /other\n",
                         ""), {}, "--reproducible")
    assert moved.ok and straight.ok, moved.run.stderr + straight.run.stderr
    assert "back into the root" in moved.run.stderr
    assert "back into the root" not in straight.run.stderr
    assert moved.config["rootfs"]["diff_ids"] == straight.config["rootfs"]["diff_ids"]


def test_of_two_stages_from_one_stage_the_first_unpacks_it_and_the_last_gets_it_back(
        tmp_path: Path, busybox_image: str) -> None:
    """Moved back only when nothing else needs it: ``three`` extracts ``one``'s image, as
    ``five`` is built FROM ``one`` too; ``five``, the last, gets the kept filesystem."""
    three = ("RUN echo three > /data/three\n"
             f"FROM {busybox_image} AS four\n"
             "RUN echo four > /four\n"
             "FROM one AS five\n"
             "COPY --from=three /data/three /data/three\n"
             "COPY --from=four /four /data/four\n")
    built = build(tmp_path, _BETWEEN.format(base=busybox_image, one="", three=three))
    assert built.ok, built.run.stderr
    assert built.run.stderr.count("Unpacking rootfs") == 4  # one, other, three, four
    assert "Moved the filesystem of stage 0 back into the root" in built.run.stderr
    for name, text in (("data/three", "three\n"), ("data/four", "four\n"),
                       ("data/sub/marker", "one\n")):
        assert (built.root / name).read_text() == text, name
    assert not (built.root / "other").exists() and not (built.root / "four").exists()


def test_a_stage_copying_from_the_stage_it_is_built_from_unpacks_it(
        tmp_path: Path, busybox_image: str) -> None:
    """``three`` copies from ``one`` as well as being built FROM it: ``one``'s kept filesystem
    stays where the copy reads it, and ``three`` starts from an extraction."""
    three = "RUN echo three >> /data/sub/marker\nCOPY --from=one /data/sub/marker /copied\n"
    built = build(tmp_path, _BETWEEN.format(base=busybox_image, one="", three=three))
    assert built.ok, built.run.stderr
    assert "back into the root" not in built.run.stderr
    assert built.run.stderr.count("Unpacking rootfs") == 3
    assert (built.root / "copied").read_text() == "one\n"
    assert (built.root / "data/sub/marker").read_text() == "one\nthree\n"
