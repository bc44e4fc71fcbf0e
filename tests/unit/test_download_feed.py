"""Reading a blob while its download is still writing it (executor/registry/feed.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from executor.registry.feed import (
    DownloadFailed,
    DownloadFeed,
    DownloadRestarted,
    FollowingReader,
)


def write_slowly(feed: DownloadFeed, path: Path, pieces: list[bytes], *,
                 final: Path | None = None) -> threading.Thread:
    def run() -> None:
        with open(path, "wb") as out:
            feed.begin(str(path))
            for piece in pieces:
                time.sleep(0.01)
                out.write(piece)
                out.flush()
                feed.wrote(len(piece))
        if final is not None:
            path.rename(final)
            feed.finish(final)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def read_all(reader: FollowingReader) -> bytes:
    out = b""
    while chunk := reader.read(7):
        out += chunk
    return out


def test_the_reader_gets_every_byte_as_it_is_written_and_then_the_end(tmp_path: Path) -> None:
    feed = DownloadFeed()
    pieces = [bytes([n]) * 100 for n in range(20)]
    writer = write_slowly(feed, tmp_path / "blob.partial", pieces, final=tmp_path / "blob")
    with FollowingReader(feed) as reader:
        assert read_all(reader) == b"".join(pieces)
    writer.join()


def test_a_download_that_starts_over_stops_the_reader(tmp_path: Path) -> None:
    feed = DownloadFeed()
    write_slowly(feed, tmp_path / "first.partial", [b"a" * 10, b"b" * 10]).join()
    with FollowingReader(feed) as reader:
        assert reader.read(100) == b"a" * 10 + b"b" * 10
        feed.begin(str(tmp_path / "second.partial"))
        with pytest.raises(DownloadRestarted):
            reader.read(100)
        assert reader.restarted


def test_a_failed_download_stops_a_waiting_reader(tmp_path: Path) -> None:
    feed = DownloadFeed()
    threading.Timer(0.05, feed.fail).start()
    with FollowingReader(feed) as reader, pytest.raises(DownloadFailed):
        reader.read(100)


def test_a_blob_already_there_is_read_from_its_file(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"cached" * 1000)
    feed = DownloadFeed()
    feed.finish(blob)
    with FollowingReader(feed) as reader:
        assert read_all(reader) == b"cached" * 1000


def test_a_file_renamed_into_place_before_the_reader_opened_it_is_read_there(
        tmp_path: Path) -> None:
    feed = DownloadFeed()
    partial, blob = tmp_path / "blob.partial", tmp_path / "blob"
    partial.write_bytes(b"whole")
    feed.begin(str(partial))
    feed.wrote(5)
    partial.rename(blob)  # the download finished between the reader's look and its open
    threading.Timer(0.05, feed.finish, [blob]).start()
    with FollowingReader(feed) as reader:
        assert read_all(reader) == b"whole"
