"""What a stage's image has at the build's ignored paths, read from its layers' headers: made
in a moved stage filesystem when it is directories and symlinks, refused otherwise."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

from executor.image.model import OCI_LAYER_GZIP, Layer, sha256_digest
from executor.stageroot import Made, ignored_content, make_ignored, move_root
from snapshot.ignore import IgnoreList

IGNORED = frozenset({"proc", "var/run"})


def layer(tmp: Path, *members: tarfile.TarInfo) -> Layer:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    blob = gzip.compress(raw.getvalue(), mtime=0)
    path = tmp / sha256_digest(blob).partition(":")[2]
    path.write_bytes(blob)
    return Layer(path, sha256_digest(blob), sha256_digest(raw.getvalue()), len(blob),
                 OCI_LAYER_GZIP)


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0,
          mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode, info.mtime = kind, link, size, mode, 1000
    return info


def test_directories_and_symlinks_at_ignored_paths_are_read_as_the_last_layer_left_them(
        tmp_path: Path) -> None:
    layers = [layer(tmp_path, entry("proc", tarfile.DIRTYPE, mode=0o555),
                    entry("var", tarfile.DIRTYPE),
                    entry("var/run", tarfile.DIRTYPE), entry("etc/x", size=1)),
              layer(tmp_path, entry("var/.wh.run"), entry("var/run", tarfile.SYMTYPE, "/run"))]
    # A whiteout of the ignored path itself, then a symlink: refused (the whiteout touches it).
    assert ignored_content(layers, IGNORED) is None
    layers = [layer(tmp_path, entry("proc", tarfile.DIRTYPE, mode=0o555),
                    entry("var", tarfile.DIRTYPE),
                    entry("var/run", tarfile.SYMTYPE, "/run"), entry("etc/x", size=1))]
    assert sorted(ignored_content(layers, IGNORED) or [], key=lambda m: m.path) == [
        Made("proc", True, 0o555, 0, 0, 1000 * 10**9),
        Made("var/run", False, 0o755, 0, 0, 1000 * 10**9, "/run")]


def test_a_file_under_an_ignored_path_or_an_opaque_parent_is_refused(tmp_path: Path) -> None:
    assert ignored_content([layer(tmp_path, entry("proc/cpuinfo", size=1))], IGNORED) is None
    assert ignored_content([layer(tmp_path, entry("var/.wh..wh..opq"))], IGNORED) is None
    assert ignored_content([layer(tmp_path, entry("lnk", tarfile.SYMTYPE, "/var"))],
                           IGNORED) is None
    assert ignored_content([layer(tmp_path, entry("etc/.wh.x"))], IGNORED) == []


def test_the_move_leaves_ignored_paths_in_the_root_and_keeps_directory_metadata(
        tmp_path: Path) -> None:
    root, target = tmp_path / "root", tmp_path / "target"
    for rel in ("proc", "var/run", "var/lib", "etc"):
        (root / rel).mkdir(parents=True)
    (root / "var/run/pid").write_text("1")
    (root / "etc/passwd").write_text("root")
    os.chmod(root / "var", 0o750)
    os.utime(root / "var", ns=(5 * 10**9, 7 * 10**9))
    target.mkdir()
    move_root(root, IgnoreList(root=root, paths=IGNORED), target)
    assert sorted(os.listdir(root)) == ["proc", "var"] and os.listdir(root / "var") == ["run"]
    assert sorted(os.listdir(target)) == ["etc", "var"]
    assert os.listdir(target / "var") == ["lib"]
    assert make_ignored(target, [Made("var/run", False, 0o777, 0, 0, 10**9, "/run")])
    assert os.readlink(target / "var/run") == "/run"
    info = os.stat(target / "var")
    assert (info.st_mode & 0o777, info.st_mtime_ns) == (0o750, 7 * 10**9)
