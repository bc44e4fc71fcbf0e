"""Layer blobs: what each tar entry holds, read back with tarfile, and the digests."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import xattr

from snapshot.compress import Algorithm, Compression, open_decompressed
from snapshot.errors import SnapshotError
from snapshot.ignore import IgnoreList
from snapshot.layer import BLOCK, LayerBlob, write_layer
from snapshot.snapshot import Changes, Snapshot, diff_snapshots, take_snapshot
from tests.support.layers import TarEntry, parse_tar

IS_ROOT = os.geteuid() == 0
EMPTY = Snapshot({}, 0)


def snap(root: Path) -> Snapshot:
    return take_snapshot(root, IgnoreList(root=root, paths=frozenset()))


def everything(root: Path) -> tuple[Changes, Snapshot]:
    """Changes that add the whole tree, as for a first layer."""
    snapshot = snap(root)
    return diff_snapshots(EMPTY, snapshot), snapshot


def read_tar(blob: LayerBlob) -> tuple[bytes, list[tarfile.TarInfo], tarfile.TarFile]:
    with open(blob.path, "rb") as raw:
        data = open_decompressed(raw, blob.compression).read()
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 - returned
    return data, archive.getmembers(), archive


def by_name(members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(1000))
    return root


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


def test_names_are_relative_and_directories_end_in_a_slash(root: Path, out: Path) -> None:
    blob = write_layer(root, *everything(root), out, Compression("gzip"))
    _, members, _ = read_tar(blob)
    assert [m.name for m in members] == ["etc", "etc/passwd", "usr", "usr/bin", "usr/bin/tool"]
    with open(blob.path, "rb") as raw_file:
        raw = open_decompressed(raw_file, "gzip").read()
    assert b"etc/\0" in raw  # tarfile strips a directory's slash; the header has it
    assert b"./" not in raw and b"\0/" not in raw


def test_a_regular_file_keeps_its_metadata(root: Path, out: Path) -> None:
    tool = root / "usr/bin/tool"
    if IS_ROOT:
        os.chown(tool, 1234, 5678)
    os.chmod(tool, 0o4755)  # after chown, which clears setuid
    os.utime(tool, ns=(0, 1_700_000_000_123_456_789))
    _, members, archive = read_tar(write_layer(root, *everything(root), out, Compression()))
    member = by_name(members)["usr/bin/tool"]
    st = os.lstat(tool)
    assert member.isreg() and member.size == 1004
    assert member.mode == 0o4755
    assert (member.uid, member.gid) == (st.st_uid, st.st_gid)
    assert (member.uname, member.gname) == ("", "")
    assert member.mtime == 1_700_000_000 and "mtime" not in member.pax_headers
    extracted = archive.extractfile(member)
    assert extracted is not None and extracted.read() == tool.read_bytes()


def test_mtimes_are_cut_to_the_second_as_buildkit_writes_them(root: Path, out: Path) -> None:
    os.utime(root / "etc/passwd", ns=(0, 1_600_000_000_999_999_999))
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    member = by_name(members)["etc/passwd"]
    assert member.mtime == 1_600_000_000 and not member.pax_headers
    assert member.offset_data - member.offset == BLOCK  # one header block, no PAX entry


def test_a_mtime_before_1970_is_a_whole_second_pax_record(root: Path, out: Path) -> None:
    os.utime(root / "etc/passwd", ns=(0, -1_500_000_000))
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    member = by_name(members)["etc/passwd"]
    assert member.pax_headers["mtime"] == "-2"
    assert member.mtime == -2


def test_setgid_and_sticky_directories_keep_their_bits(root: Path, out: Path) -> None:
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "usr/bin", 0o2775)
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    assert by_name(members)["tmp"].mode == 0o1777
    assert by_name(members)["usr/bin"].mode == 0o2775
    assert by_name(members)["tmp"].isdir()


def test_symlinks_keep_their_target(root: Path, out: Path) -> None:
    os.symlink("../usr/bin/tool", root / "etc/tool")
    long_target = "/" + "x" * 150
    os.symlink(long_target, root / "etc/far")
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    assert by_name(members)["etc/tool"].issym()
    assert by_name(members)["etc/tool"].linkname == "../usr/bin/tool"
    assert by_name(members)["etc/far"].linkname == long_target


def test_long_and_non_ascii_names_survive(root: Path, out: Path) -> None:
    deep = root / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "file").write_text("deep")
    (root / "etc/ünïcødé").write_text("u")
    (root / os.fsdecode(b"etc/raw-\xff")).write_text("bytes")
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    names = {m.name for m in members}
    assert f"{'d' * 90}/{'e' * 90}/file" in names
    assert "etc/ünïcødé" in names
    assert os.fsdecode(b"etc/raw-\xff") in names


def test_hard_links_within_the_layer_point_to_the_first_name(root: Path, out: Path) -> None:
    os.link(root / "usr/bin/tool", root / "usr/bin/alias")
    os.link(root / "usr/bin/tool", root / "etc/tool-link")
    data, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    named = by_name(members)
    assert named["etc/tool-link"].isreg() and named["etc/tool-link"].size == 1004
    for other in ("usr/bin/alias", "usr/bin/tool"):
        assert named[other].islnk()
        assert named[other].linkname == "etc/tool-link"
        assert named[other].size == 0
    assert data.count(b"\x7fELF") == 1  # the content is in the layer once


def test_a_hard_link_whose_first_name_is_not_in_the_layer_is_a_file(root: Path,
                                                                      out: Path) -> None:
    before = snap(root)
    os.link(root / "usr/bin/tool", root / "etc/tool-link")
    after = snap(root)
    changes = diff_snapshots(before, after)
    assert changes.upserts == ["etc/tool-link", "usr/bin/tool"]
    changes.upserts.remove("usr/bin/tool")
    _, members, _ = read_tar(write_layer(root, changes, after, out, Compression()))
    assert by_name(members)["etc/tool-link"].isreg()


def test_fifos_are_kept(root: Path, out: Path) -> None:
    os.mkfifo(root / "etc/pipe")
    os.chmod(root / "etc/pipe", 0o620)
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    member = by_name(members)["etc/pipe"]
    assert member.isfifo() and member.mode == 0o620


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
def test_device_nodes_are_kept(root: Path, out: Path) -> None:
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "loop", 0o660 | 0o060000, os.makedev(7, 300))
    os.chmod(root / "null", 0o666)
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    null, loop = by_name(members)["null"], by_name(members)["loop"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3) and null.mode == 0o666
    assert loop.isblk() and (loop.devmajor, loop.devminor) == (7, 300)


def test_sockets_are_skipped(root: Path, out: Path) -> None:
    changes, snapshot = everything(root)
    socket_entry = snapshot.entries["etc/passwd"]._replace(path="etc/sock", mode=0o140755)
    snapshot.entries["etc/sock"] = socket_entry
    changes.upserts.insert(2, "etc/sock")
    _, members, _ = read_tar(write_layer(root, changes, snapshot, out, Compression()))
    assert "etc/sock" not in by_name(members)


def _user_xattrs_work(path: Path) -> bool:
    try:
        xattr.setxattr(os.fspath(path), "user.probe", b"1")
        xattr.removexattr(os.fspath(path), "user.probe")
    except OSError:
        return False
    return True


def test_xattrs_are_schily_pax_records(root: Path, out: Path) -> None:
    tool = os.fspath(root / "usr/bin/tool")
    if not _user_xattrs_work(root / "usr/bin/tool"):
        pytest.skip("this filesystem has no user xattrs")
    xattr.setxattr(tool, "user.text", b"hello")
    xattr.setxattr(tool, "user.binary", b"\x00\xff\x01")
    xattr.setxattr(os.fspath(root / "etc"), "user.on-dir", b"d")
    expected = {"SCHILY.xattr.user.text": b"hello", "SCHILY.xattr.user.binary": b"\x00\xff\x01"}
    if IS_ROOT:
        xattr.setxattr(tool, "trusted.kiln", b"t")
        expected["SCHILY.xattr.trusted.kiln"] = b"t"
        # VFS_CAP_REVISION_2 | effective, cap_net_bind_service permitted
        capability = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") \
            + bytes(12)
        try:
            xattr.setxattr(tool, "security.capability", capability)
            expected["SCHILY.xattr.security.capability"] = capability
        except OSError:
            pass
    _, members, _ = read_tar(write_layer(root, *everything(root), out, Compression()))
    member = by_name(members)["usr/bin/tool"]
    found = {key: value.encode("utf-8", "surrogateescape")
             for key, value in member.pax_headers.items() if key.startswith("SCHILY.xattr.")}
    assert found == expected
    assert by_name(members)["etc"].pax_headers["SCHILY.xattr.user.on-dir"] == "d"


def test_whiteouts_are_empty_root_owned_files_and_there_are_no_opaque_markers(
        root: Path, out: Path) -> None:
    (root / "var/lib/old").mkdir(parents=True)
    (root / "var/lib/old/x").write_text("x")
    (root / "var/cache").mkdir(parents=True)
    before = snap(root)
    (root / "etc/passwd").unlink()
    shutil.rmtree(root / "var/lib")
    os.rename(root / "var/cache", root / "var/cache.old")
    (root / "var/cache").mkdir()
    (root / "var/cache/fresh").write_text("f")
    shutil.rmtree(root / "var/cache.old")
    after = snap(root)
    changes = diff_snapshots(before, after)
    _, members, _ = read_tar(write_layer(root, changes, after, out, Compression()))
    assert [m.name for m in members] == [
        "etc", "etc/.wh.passwd", "var", "var/cache", "var/cache/fresh", "var/.wh.lib"]
    for marker in ("etc/.wh.passwd", "var/.wh.lib"):
        member = by_name(members)[marker]
        assert member.isreg()
        assert (member.size, member.mode, member.uid, member.gid, member.mtime) == (0, 0, 0, 0, 0)
        assert (member.uname, member.gname) == ("", "")


def test_a_whiteout_at_the_top_has_no_directory(root: Path, out: Path) -> None:
    before = snap(root)
    shutil.rmtree(root / "usr")
    after = snap(root)
    _, members, _ = read_tar(write_layer(root, diff_snapshots(before, after), after, out,
                                         Compression()))
    assert [m.name for m in members] == [".wh.usr"]


@pytest.mark.parametrize("algorithm", ["gzip", "zstd", "none"])
def test_digests_describe_the_file_and_the_tar(root: Path, out: Path, algorithm: str) -> None:
    blob = write_layer(root, *everything(root), out, Compression(algorithm))  # type: ignore[arg-type]
    stored = blob.path.read_bytes()
    data, _, _ = read_tar(blob)
    assert blob.path == out / blob.digest.removeprefix("sha256:")
    assert blob.digest == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.size == len(stored)
    assert blob.compression == algorithm
    if algorithm == "none":
        assert blob.digest == blob.diff_id
    assert os.listdir(out) == [blob.path.name]  # no temporary file left


@pytest.mark.parametrize("algorithm", ["gzip", "zstd", "none"])
def test_the_same_changes_give_the_same_bytes(root: Path, tmp_path: Path, algorithm: str) -> None:
    os.link(root / "usr/bin/tool", root / "usr/bin/alias")
    (root / "big").write_bytes(os.urandom(3 << 20))
    changes, snapshot = everything(root)
    first = write_layer(root, changes, snapshot, tmp_path / "one",
                        Compression(algorithm))  # type: ignore[arg-type]
    second = write_layer(root, changes, snapshot, tmp_path / "two",
                         Compression(algorithm, threads=1))  # type: ignore[arg-type]
    assert first.digest == second.digest
    assert first.path.read_bytes() == second.path.read_bytes()


def test_the_tar_is_ustar_with_pax_and_ends_with_two_zero_blocks(root: Path, out: Path) -> None:
    data, _, _ = read_tar(write_layer(root, *everything(root), out, Compression("none")))
    assert data[257:265] == b"ustar\x0000"
    assert len(data) % 512 == 0
    assert data.endswith(bytes(1024))


def test_large_files_stream_through(root: Path, out: Path) -> None:
    content = os.urandom(5 << 20) + b"tail"
    (root / "big").write_bytes(content)
    (root / "empty").write_bytes(b"")
    (root / "block").write_bytes(b"b" * 512)
    _, members, archive = read_tar(write_layer(root, *everything(root), out,
                                               Compression("zstd")))
    for name, expected in (("big", content), ("empty", b""), ("block", b"b" * 512)):
        extracted = archive.extractfile(by_name(members)[name])
        assert extracted is not None and extracted.read() == expected


def test_a_huge_owner_id_goes_in_a_pax_record(root: Path, out: Path) -> None:
    changes, snapshot = everything(root)
    snapshot.entries["etc"] = snapshot.entries["etc"]._replace(uid=5_000_000, gid=4_000_000)
    _, members, _ = read_tar(write_layer(root, changes, snapshot, out, Compression()))
    assert (by_name(members)["etc"].uid, by_name(members)["etc"].gid) == (5_000_000, 4_000_000)


def test_a_file_that_vanished_since_the_snapshot_is_an_error(root: Path, out: Path) -> None:
    changes, snapshot = everything(root)
    (root / "usr/bin/tool").unlink()
    with pytest.raises(SnapshotError, match="/usr/bin/tool vanished"):
        write_layer(root, changes, snapshot, out, Compression())
    assert os.listdir(out) == []


def test_a_file_that_changed_since_the_snapshot_is_an_error(root: Path, out: Path) -> None:
    changes, snapshot = everything(root)
    (root / "etc/passwd").write_text("changed!")
    with pytest.raises(SnapshotError, match="/etc/passwd changed"):
        write_layer(root, changes, snapshot, out, Compression("zstd"))
    assert os.listdir(out) == []


def test_a_file_named_like_a_whiteout_is_refused(root: Path, out: Path) -> None:
    (root / "etc/.wh.sneaky").write_text("x")
    with pytest.raises(SnapshotError, match=r"/etc/\.wh\.sneaky"):
        write_layer(root, *everything(root), out, Compression())


def test_no_changes_give_an_empty_tar(root: Path, out: Path) -> None:
    blob = write_layer(root, Changes(), snap(root), out, Compression())
    data, members, _ = read_tar(blob)
    assert members == [] and data == bytes(1024)


def test_an_empty_gzip_layer_is_buildkits_blob_byte_for_byte(root: Path, out: Path) -> None:
    # BuildKit v0.32.2's layer for a RUN that changes nothing, as pushed (29 bytes).
    blob = write_layer(root, Changes(), snap(root), out, Compression("gzip", level=6))
    assert blob.digest == ("sha256:9addb4c7f3afa99b03f24f9e05cb87d2"
                           "74a63ae9ba30c94f02c75e85d133e9de")
    assert blob.diff_id == "sha256:" + hashlib.sha256(bytes(1024)).hexdigest()
    assert (blob.size, blob.uncompressed_size) == (29, 1024)


def raw_entries(blob: LayerBlob) -> list[TarEntry]:
    """The layer's entries as its header bytes say (prefix, PAX header names, typeflags)."""
    with open(blob.path, "rb") as raw:
        return parse_tar(open_decompressed(raw, blob.compression).read())[0]


def test_every_entry_comes_after_its_parent_directories_changed_or_not(root: Path,
                                                                       out: Path) -> None:
    (root / "usr/share/doc").mkdir(parents=True)
    (root / "usr/share/doc/base").write_text("b")
    os.chmod(root / "usr/share", 0o750)
    before = snap(root)
    (root / "usr/share/doc/new").write_text("n")  # usr/share/doc changes, usr and usr/share not
    os.unlink(root / "usr/bin/tool")
    after = snap(root)
    entries = raw_entries(write_layer(root, diff_snapshots(before, after), after, out,
                                      Compression()))
    assert [(e.name, f"{e.mode:o}") for e in entries] == [
        ("usr/", "755"), ("usr/bin/", "755"), ("usr/bin/.wh.tool", "0"),
        ("usr/share/", "750"), ("usr/share/doc/", "755"), ("usr/share/doc/new", "644")]


def test_a_whiteout_sits_where_the_name_it_deletes_sorts(root: Path, out: Path) -> None:
    (root / "two").write_text("2")
    before = snap(root)
    (root / "two").unlink()
    (root / "four").write_text("4")
    after = snap(root)
    entries = raw_entries(write_layer(root, diff_snapshots(before, after), after, out,
                                      Compression()))
    assert [e.name for e in entries] == ["four", ".wh.two"]


def test_a_long_name_that_fits_the_ustar_prefix_has_no_pax_record(root: Path,
                                                                   out: Path) -> None:
    deep = root / "l" / "/".join(f"lvl{i}" for i in range(1, 31))
    deep.mkdir(parents=True)
    (deep / "f").write_text("f")
    (root / ("x" * 120)).write_text("no slash to split at")
    entries = {e.name: e for e in raw_entries(write_layer(root, *everything(root), out,
                                                          Compression()))}
    name = "l/" + "/".join(f"lvl{i}" for i in range(1, 31)) + "/f"
    assert len(name) > 100 and entries[name].pax == {}
    assert entries[name].magic == "ustar\x0000"
    assert entries["x" * 120].pax == {"path": "x" * 120}


def test_pax_headers_are_named_as_go_names_them(root: Path, out: Path) -> None:
    changes, snapshot = everything(root)
    for path in ("etc", "etc/passwd"):
        snapshot.entries[path] = snapshot.entries[path]._replace(uid=5_000_000)
    entries = {e.name: e for e in raw_entries(write_layer(root, changes, snapshot, out,
                                                          Compression()))}
    assert entries["etc/"].pax_header_name == "etc/PaxHeaders.0"
    assert entries["etc/passwd"].pax_header_name == "etc/PaxHeaders.0/passwd"


def test_a_hard_linked_symlink_is_a_tar_link_to_its_first_name(root: Path, out: Path) -> None:
    os.symlink("/etc/passwd", root / "sym")
    os.link(root / "sym", root / "hard-to-sym", follow_symlinks=False)
    entries = raw_entries(write_layer(root, *everything(root), out, Compression()))
    named = {e.name: e for e in entries}
    assert (named["hard-to-sym"].typeflag, named["hard-to-sym"].linkname) == ("2", "/etc/passwd")
    assert (named["sym"].typeflag, named["sym"].linkname) == ("1", "hard-to-sym")


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar here")
def test_gnu_tar_reads_the_layer(root: Path, out: Path) -> None:
    os.symlink("tool", root / "usr/bin/link")
    blob = write_layer(root, *everything(root), out, Compression("gzip"))
    listing = subprocess.run(["tar", "-tzf", os.fspath(blob.path)], check=True,
                             capture_output=True, text=True).stdout.split()
    assert listing == ["etc/", "etc/passwd", "usr/", "usr/bin/", "usr/bin/link", "usr/bin/tool"]


# -- an independent reader: umoci (Go's archive/tar) applies the layers ---------------------

def _oci_layout(layout: Path, blobs: list[LayerBlob]) -> None:
    """A minimal OCI image layout holding ``blobs`` as the layers of one image."""
    import json

    store = layout / "blobs/sha256"
    store.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (store / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers = []
    for blob in blobs:
        shutil.copy(blob.path, store / blob.digest.removeprefix("sha256:"))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": blob.digest, "size": blob.size})
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [b.diff_id for b in blobs]}}).encode())
    manifest = put(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": layers}).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))


def _tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """What an image promises about each path: type, mode, owner, content, link, xattrs."""
    state: dict[str, tuple[object, ...]] = {}
    for entry in snap(root).entries.values():
        path = root / entry.path
        content: object = None
        if entry.is_file:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        xattrs = {} if entry.is_symlink else {
            name: xattr.getxattr(os.fspath(path), name) for name in xattr.listxattr(
                os.fspath(path)) if name.startswith("user.")}
        mtime = None if entry.is_dir or entry.is_symlink else entry.mtime_ns // 1_000_000_000
        state[entry.path] = (entry.mode, entry.uid, entry.gid, entry.size if not entry.is_dir
                             else None, entry.link_target, content, xattrs, mtime)
    return state


@pytest.mark.skipif(shutil.which("umoci") is None or not IS_ROOT,
                    reason="needs umoci, and root to restore owners")
def test_umoci_applies_our_layers_to_the_same_tree(root: Path, tmp_path: Path) -> None:
    (root / "usr/lib/deep").mkdir(parents=True)
    for rel in ("usr/lib/a", "usr/lib/b", "usr/lib/deep/x", "var/cache/old", "opt/file"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "srv/data").mkdir(parents=True)
    (root / "srv/data/keep").write_text("k")
    base = snap(root)
    first = write_layer(root, diff_snapshots(EMPTY, base), base, tmp_path / "blobs",
                        Compression())

    (root / "etc/passwd").unlink()                       # a deleted file
    shutil.rmtree(root / "usr/lib/deep")                 # a deleted directory
    os.rename(root / "var/cache", root / "cache.old")    # a re-created directory
    (root / "var/cache").mkdir()
    (root / "var/cache/new").write_text("new")
    shutil.rmtree(root / "cache.old")
    shutil.rmtree(root / "srv/data")                     # a directory that became a symlink
    os.symlink("/usr/lib", root / "srv/data")
    (root / "opt/file").unlink()                         # a file that became a directory
    (root / "opt/file").mkdir()
    (root / "opt/file/inside").write_text("inside")
    os.chmod(root / "usr/bin/tool", 0o4711)              # metadata only
    os.chown(root / "usr/lib/a", 1000, 1000)
    os.link(root / "usr/lib/b", root / "usr/lib/b-link")  # a hard link
    os.utime(root / "usr/lib/b", ns=(0, 1_650_000_000_987_654_321))
    if _user_xattrs_work(root / "usr/lib/a"):
        xattr.setxattr(os.fspath(root / "usr/lib/a"), "user.note", b"\x00kept")
    step = snap(root)
    changes = diff_snapshots(base, step)
    second = write_layer(root, changes, step, tmp_path / "blobs", Compression())
    assert changes.deletions == ["etc/passwd", "usr/lib/deep", "var/cache/old"]

    layout = tmp_path / "layout"
    _oci_layout(layout, [first, second])
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", os.fspath(bundle)],
                   check=True, capture_output=True)
    assert _tree_state(bundle / "rootfs") == _tree_state(root)


def test_memory_does_not_grow_with_the_layer(tmp_path: Path) -> None:
    """A 256 MiB file (sparse, so quick to make) goes through in a few MiB of buffers."""
    import sys

    root = tmp_path / "root"
    root.mkdir()
    with open(root / "huge", "wb") as huge:
        huge.truncate(256 << 20)
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from snapshot.compress import Compression\n"
        "from snapshot.ignore import IgnoreList\n"
        "from snapshot.layer import write_layer\n"
        "from snapshot.snapshot import Snapshot, diff_snapshots, take_snapshot\n"
        "root = Path(sys.argv[1])\n"
        "s = take_snapshot(root, IgnoreList(root=root, paths=frozenset()))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "blob = write_layer(root, diff_snapshots(Snapshot({}, 0), s), s, Path(sys.argv[2]),\n"
        "                   Compression(sys.argv[3]))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    for algorithm in ("gzip", "zstd"):
        grown_kib = int(subprocess.run(
            [sys.executable, "-c", script, os.fspath(root), os.fspath(tmp_path / algorithm),
             algorithm], check=True, capture_output=True, text=True,
            cwd=Path(__file__).resolve().parents[2]).stdout)
        assert grown_kib < 48 * 1024, f"{algorithm}: grew by {grown_kib} KiB"


def test_a_layer_survives_another_builds_cleanup_between_its_creation_and_its_lock(
        root: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another build sharing the blobs directory starts up (Workspace.create) just after this
    # one created its temporary layer file and before it locked it: the file is unlocked, so
    # that cleanup takes it for a killed build's and deletes it.
    import fcntl

    from executor.workspace import remove_stale_partials

    real_flock = fcntl.flock
    removed: list[Path] = []

    def other_build_cleans_up_first(fd: int, operation: int) -> None:
        if not removed and operation == fcntl.LOCK_EX:
            removed.append(out)
            removed.extend(remove_stale_partials(out, (".layer-*.tmp",)))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", other_build_cleans_up_first)
    blob = write_layer(root, *everything(root), out, Compression("gzip"))
    assert len(removed) == 2  # the race happened: the first temporary file was deleted
    assert blob.path.exists() and [m.name for m in read_tar(blob)[1]][:1] == ["etc"]


def test_the_fixture_summary_names_what_a_layer_says_and_its_differences() -> None:
    from tests.support.layers import diff_layer_summaries, summarise_entry

    whiteout = TarEntry(".wh.two", "0", 0, 0, 0, "", "", 0, "0", "", 0, 0, "ustar\x0000")
    capped = TarEntry("bin/ping", "0", 0o4755, 0, 0, "", "", 9, "1700000000.5", "", 0, 0,
                      "ustar\x0000", {"SCHILY.xattr.security.capability": "x", "mtime": "1.5"})
    assert summarise_entry(whiteout) == ".wh.two 0 0000 0:0 '':'' mtime=0 pax=[]"
    assert summarise_entry(capped) == ("bin/ping 0 4755 0:0 '':'' mtime=frac "
                                       "pax=[SCHILY.xattr.security.capability,mtime]")
    want = [{"entries": ["four 0 0644", ".wh.two 0 0000"]}]
    got = [{"entries": [".wh.two 0 0000", "four 0 0644"]}]
    assert diff_layer_summaries(want, got)[0].startswith("layer 0: entries in another order")
    assert diff_layer_summaries(want, [{"entries": []}]) == [
        "layer 0: only in expected: four 0 0644", "layer 0: only in expected: .wh.two 0 0000"]


def many_files(root: Path, count: int) -> None:
    """``count`` files of varied sizes in a few directories, a big one, and hard links whose
    names fall in different parts of the tar."""
    for index in range(count):
        directory = root / "many" / f"d{index % 23}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index}").write_bytes(bytes([index % 251]) * (index % 900))
    (root / "many/big").write_bytes(os.urandom(3 * (1 << 20) + 5))
    os.link(root / "many/d3/f3", root / "many/d22/zz")
    os.link(root / "many/d3/f3", root / "many/d0/aa")


@pytest.mark.parametrize("algorithm", ["gzip", "zstd", "none"])
def test_the_blob_is_the_same_whatever_the_number_of_helpers_making_it(
        root: Path, tmp_path: Path, algorithm: Algorithm) -> None:
    many_files(root, 9000)
    changes, snapshot = everything(root)
    blobs = {helpers: write_layer(root, changes, snapshot, tmp_path / f"out{helpers}",
                                  Compression(algorithm), helpers=helpers)
             for helpers in (0, 1, 3)}
    assert len({(b.digest, b.diff_id, b.size) for b in blobs.values()}) == 1
    _, members, _ = read_tar(blobs[3])
    named = by_name(members)
    links = [named["many/d0/aa"], named["many/d22/zz"], named["many/d3/f3"]]
    assert [m.islnk() for m in links] == [False, True, True]  # the first name in tar order
    assert links[1].linkname == links[2].linkname == "many/d0/aa"


def test_a_file_changed_in_a_helpers_part_fails_the_layer_naming_it(
        root: Path, out: Path) -> None:
    many_files(root, 9000)
    changes, snapshot = everything(root)
    (root / "many/d3/f8996").write_bytes(b"changed after the snapshot")  # in a late part
    with pytest.raises(SnapshotError, match="/many/d3/f8996 changed after the snapshot"):
        write_layer(root, changes, snapshot, out, Compression(), helpers=2)
    assert list(out.iterdir()) == []
