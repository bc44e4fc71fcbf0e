"""A byte stream made in parts by forked helpers and read back in order (snapshot/tarparts.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshot.errors import SnapshotError, StorageError
from snapshot.tarparts import HelperLost, ordered_parts


def numbered(index: int) -> Iterator[bytes]:
    """Part ``index``: a few chunks of different sizes that say which part they are."""
    for piece in range(index % 4 + 1):
        yield f"<{index}.{piece}>".encode() * (piece * 500 + 1)


def expected(parts: int) -> bytes:
    return b"".join(b"".join(numbered(index)) for index in range(parts))


@pytest.mark.parametrize("helpers", [0, 1, 3, 50])
def test_the_parts_come_back_in_order_whoever_made_them(helpers: int) -> None:
    assert b"".join(ordered_parts(40, numbered, helpers)) == expected(40)


def test_a_helpers_failure_is_raised_here_as_the_same_kind_of_error() -> None:
    def failing(index: int) -> Iterator[bytes]:
        yield b"x"
        if index == 5:  # made by helper 1 of two (5 % 3 == 2: the second helper)
            raise StorageError("cannot read /five: No space left on device")

    with pytest.raises(StorageError, match="cannot read /five"):
        b"".join(ordered_parts(9, failing, 2))


def test_a_helper_that_dies_is_a_lost_helper_not_a_short_stream() -> None:
    parent = os.getpid()

    def dying(index: int) -> Iterator[bytes]:
        if index == 4 and os.getpid() != parent:
            os._exit(3)
        yield b"part"

    with pytest.raises(HelperLost):
        b"".join(ordered_parts(9, dying, 2))


def children() -> set[str]:
    me = os.getpid()
    return set(Path(f"/proc/{me}/task/{me}/children").read_text().split())


def test_a_reader_that_stops_early_leaves_no_helper_behind() -> None:
    before = children()
    stream = ordered_parts(200, lambda index: iter([bytes(100_000)]), 3)
    next(stream)
    assert len(children() - before) == 3  # the helpers, blocked on their full pipes
    stream.close()
    assert children() == before


def test_snapshot_errors_keep_their_message() -> None:
    def failing(index: int) -> Iterator[bytes]:
        if index == 1:
            raise SnapshotError("/a changed after the snapshot")
        yield b"ok"

    with pytest.raises(SnapshotError, match=r"^/a changed after the snapshot$"):
        b"".join(ordered_parts(3, failing, 1))
