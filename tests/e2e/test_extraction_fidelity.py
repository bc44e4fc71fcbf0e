"""A base image with every whiteout and replacement case, pulled from a real registry and
extracted by a kiln build, is the same tree, file by file, as ``umoci unpack`` makes of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.images import TarEntry, push_layout, write_oci_layout_from_layers
from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import unpack_image
from tests.support.trees import metadata_tree

pytestmark = pytest.mark.e2e

LAYERS = [
    [TarEntry.dir("etc"), TarEntry.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
     TarEntry.file("etc/group", "root:x:0:\n", mode=0o640, gid=42),
     TarEntry.dir("usr"), TarEntry.dir("usr/bin"),
     TarEntry.file("usr/bin/su", b"su", mode=0o4755),
     TarEntry.hardlink("usr/bin/sudo", "usr/bin/su"),
     TarEntry.dir("usr/lib"), TarEntry.file("usr/lib/libc.so", b"libc"),
     TarEntry.symlink("lib", "usr/lib"), TarEntry.dir("var"), TarEntry.dir("var/cache"),
     TarEntry.file("var/cache/a", b"a"), TarEntry.dir("var/cache/sub"),
     TarEntry.file("var/cache/sub/b", b"b"), TarEntry.dir("tmp", mode=0o1777),
     TarEntry.file("opt", b"a file first"), TarEntry.dir("srv"),
     TarEntry.symlink("srv/link", "/etc"), TarEntry("run/fifo", "fifo", mode=0o600),
     TarEntry.file("etc/attr", b"x", xattrs={"user.kiln": "1"}),
     TarEntry.dir("home"), TarEntry.dir("home/app", uid=1000, gid=1000, mode=0o700),
     TarEntry.file("home/app/.profile", b"p", uid=1000, gid=1000)],
    # file -> whiteout, dir -> opaque dir, file -> dir, symlink -> dir, hardlink source removed
    [TarEntry.whiteout("etc/group"), TarEntry.dir("var/cache"),
     TarEntry.opaque("var/cache"), TarEntry.file("var/cache/new", b"n"),
     TarEntry.dir("opt", mode=0o700), TarEntry.file("opt/tool", b"t", mode=0o755, uid=1000),
     TarEntry.dir("lib"), TarEntry.file("lib/own", b"o"),
     TarEntry.whiteout("usr/bin/sudo"), TarEntry.file("etc/passwd", "root:x:0:0:new:/:/bin/sh\n"),
     TarEntry.file("srv/link", b"symlink became a file")],
    # dir -> file, dir -> symlink, whole dir whited out, a path re-created after a whiteout
    [TarEntry.whiteout("usr/lib"), TarEntry.file("usr/lib", b"was a directory"),
     TarEntry.whiteout("opt"), TarEntry.symlink("opt", "/usr"),
     TarEntry.whiteout("home"), TarEntry.dir("home"), TarEntry.file("home/new", b"again")],
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fidelity") / "layout"
    write_oci_layout_from_layers(directory, "latest", LAYERS, {"Cmd": ["/bin/sh"]})
    return directory


def push_zstd(layout: Path, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    "--dest-compress-format", "zstd", "--dest-compress",
                    f"oci:{layout}:latest", f"docker://{ref}"], check=True, capture_output=True)


@pytest.mark.parametrize("variant", ["oci-gzip", "docker-gzip", "oci-zstd"])
def test_kiln_extracts_the_pulled_image_as_umoci_unpacks_it(
        variant: str, layout: Path, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/fidelity/{variant}:latest"
    if variant == "oci-zstd":
        push_zstd(layout, ref)
    else:
        push_layout(layout, "latest", ref, format="v2s2" if variant == "docker-gzip" else None)
    context = write_context(tmp_path / "context", f"FROM {ref}\n")
    root = tmp_path / "root"
    result = run_executor(context, root, "--no-push", "--insecure-pull")
    assert result.exit_code == 0, result.stderr
    theirs = unpack_image(ref, tmp_path / "umoci")
    ours_tree = metadata_tree(root, dir_mtimes=False)
    theirs_tree = metadata_tree(theirs, dir_mtimes=False)
    assert sorted(ours_tree) == sorted(theirs_tree)
    for path, entry in theirs_tree.items():
        assert ours_tree[path] == entry, path
