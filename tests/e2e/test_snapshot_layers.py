"""What RUN steps change reaches the pushed image exactly: every deletion and replacement
case, hard links, FIFOs, device nodes and file capabilities, read from the layer tars, unpacked
by umoci and run by crun."""

from __future__ import annotations

import base64
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.support.images import (
    TarEntry,
    busybox_config,
    make_busybox_rootfs,
    push_layout,
    write_oci_layout_from_layers,
)
from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import run_image, unpack_image

pytestmark = pytest.mark.e2e

# cap_net_bind_service=ep, VFS_CAP_REVISION_2
CAPABILITY = base64.b64decode("AQAAAgAEAAAAAAAAAAAAAAAAAAA=")

DOCKERFILE = r"""FROM {base}
RUN mkdir -p /w/deldir/sub /w/dir2file /w/opq/old /w/dir2link /w/keep \
 && touch /w/deldir/sub/f /w/delfile /w/dir2file/x /w/opq/old/y /w/file2dir /w/dir2link/z \
 && ln -s /etc /w/link2dir && echo untouched > /w/keep/k
RUN rm -rf /w/deldir /w/delfile /w/dir2file && echo now-a-file > /w/dir2file \
 && rm /w/file2dir && mkdir /w/file2dir && touch /w/file2dir/inside \
 && rm -rf /w/opq && mkdir /w/opq && touch /w/opq/new \
 && rm /w/link2dir && mkdir /w/link2dir && rm -rf /w/dir2link && ln -s /tmp /w/dir2link
RUN echo shared > /w/a && ln /w/a /w/b && mkfifo /w/fifo && mknod /w/null c 1 3 \
 && chmod 4755 /w/capbin
"""

CHECK = ("for p in /w/deldir /w/delfile /w/opq/old /w/dir2link/z; do test -e $p && echo BAD $p; "
         "done; cat /w/dir2file; ls /w/file2dir; ls /w/opq; test -L /w/dir2link && echo link; "
         "test -d /w/link2dir -a ! -L /w/link2dir && echo dir; cat /w/keep/k; "
         "test -p /w/fifo && echo fifo; test -c /w/null && echo chardev; "
         "test -u /w/capbin && echo setuid; cat /w/b")


@pytest.fixture(scope="module")
def base_with_capability(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image plus /w/capbin carrying a security.capability xattr."""
    tmp = tmp_path_factory.mktemp("capbase")
    rootfs = make_busybox_rootfs(tmp / "rootfs")
    layout = tmp / "layout"
    capability = {"security.capability": CAPABILITY.decode("ascii")}
    extra = [TarEntry.dir("w"),
             TarEntry.file("w/capbin", b"#!/bin/sh\n", mode=0o755, xattrs=capability)]
    write_oci_layout_from_layers(layout, "latest", [rootfs, extra], busybox_config())
    ref = f"{registry.host}/layers/capbase:latest"
    push_layout(layout, "latest", ref)
    return ref


@pytest.fixture(scope="module")
def built(base_with_capability: str, registry: Registry,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("layers")
    context = write_context(tmp / "context", DOCKERFILE.format(base=base_with_capability))
    ref = f"{registry.host}/layers/result:1"
    root = tmp / "root"
    # busybox has no setcap, so the capability comes from the base layer: the chmod in the
    # last RUN changes the file, which then travels in the new layer with its xattr.
    result = run_executor(context, root, "--destination", ref, "--insecure", "--insecure-pull",
                          "--oci-layout-path", str(tmp / "out"))
    assert result.exit_code == 0, result.stderr
    return ref, tmp / "out"


def layer_members(layout: Path) -> list[dict[str, tarfile.TarInfo]]:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][-1]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest).read_text())
    out = []
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs/sha256" / layer["digest"].split(":")[1]) as tar:
            out.append({m.name: m for m in tar.getmembers()})
    return out


def test_deletions_and_replacements_are_whiteouts_where_docker_puts_them(built) -> None:
    _, layout = built
    step2 = layer_members(layout)[-2]
    names = set(step2)
    assert {"w/.wh.deldir", "w/.wh.delfile"} <= names
    # A directory deleted and re-created has its old children whited out one by one, as
    # BuildKit's layers do: no opaque markers.
    assert "w/opq/.wh.old" in names and not any(n.endswith(".wh..wh..opq") for n in names)
    assert not any(n.startswith("w/deldir/") for n in names)  # none under a deleted parent
    assert not any(n.startswith("w/dir2file/") for n in names)  # none under a now-file
    assert step2["w/dir2file"].isfile() and step2["w/file2dir"].isdir()
    assert step2["w/dir2link"].issym() and step2["w/link2dir"].isdir()
    assert "w/keep/k" not in names and "/" not in names and "./" not in names


def test_a_hard_linked_pair_is_stored_once(built) -> None:
    _, layout = built
    step3 = layer_members(layout)[-1]
    assert step3["w/a"].isfile() and step3["w/b"].islnk()
    assert step3["w/b"].linkname == "w/a"


def test_fifo_device_and_capability_survive_in_the_tar(built) -> None:
    _, layout = built
    step3 = layer_members(layout)[-1]
    assert step3["w/fifo"].isfifo()
    assert step3["w/null"].ischr() and (step3["w/null"].devmajor,
                                        step3["w/null"].devminor) == (1, 3)
    assert step3["w/capbin"].mode & 0o4000
    assert "SCHILY.xattr.security.capability" in step3["w/capbin"].pax_headers


def test_mtimes_are_whole_seconds_without_pax_records_as_buildkit_writes_them(built) -> None:
    _, layout = built
    for members in layer_members(layout)[-3:]:
        for member in members.values():
            assert "mtime" not in member.pax_headers, member.name
            assert member.mtime == int(member.mtime), member.name


def test_umoci_unpacks_the_same_tree(built, tmp_path: Path) -> None:
    ref, _ = built
    rootfs = unpack_image(ref, tmp_path)
    assert not (rootfs / "w/deldir").exists() and not (rootfs / "w/opq/old").exists()
    assert sorted(os.listdir(rootfs / "w/opq")) == ["new"]
    assert os.stat(rootfs / "w/a").st_ino == os.stat(rootfs / "w/b").st_ino
    assert os.getxattr(rootfs / "w/capbin", "security.capability") == CAPABILITY


def test_crun_sees_every_change(built, tmp_path: Path) -> None:
    ref, _ = built
    result = run_image(ref, ["sh", "-c", CHECK], workdir=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["now-a-file", "inside", "new", "link", "dir", "untouched",
                                     "fifo", "chardev", "setuid", "shared"]


def test_containerd_unpacks_every_change_too(built, containerd) -> None:
    ref, _ = built
    result = containerd.pull_and_run(ref, ["sh", "-c", CHECK])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["now-a-file", "inside", "new", "link", "dir", "untouched",
                                     "fifo", "chardev", "setuid", "shared"]
