"""Self-tests of the independent checkers: base images, skopeo/umoci/crun, and containerd.

If these fail, every end-to-end test that leans on them is meaningless, so they come first.
Missing tools fail here with the package to install; they are never skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.containerd import Containerd
from tests.support.images import (
    BUSYBOX_BASE_TXT,
    BUSYBOX_MOTD,
    FIXED_MTIME,
    TarEntry,
    make_busybox_rootfs,
    push_layout,
    write_busybox_layout,
    write_oci_layout_from_layers,
)
from tests.support.registry import Registry
from tests.support.runtime import (
    inspect_config,
    inspect_image,
    inspect_manifest,
    run_image,
    unpack_image,
)

pytestmark = pytest.mark.e2e

HELLO_AND_MOTD = ["sh", "-c", "echo hello; cat /etc/motd"]


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [
        m for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    manifest: dict[str, Any] = json.loads(_blob(layout, desc["digest"]).read_text())
    return manifest


def test_busybox_rootfs_has_applets_users_and_sticky_tmp(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "rootfs")
    assert (root / "bin/sh").readlink() == Path("/bin/busybox")
    assert (root / "usr/bin/env").readlink() == Path("/bin/busybox")
    assert "kiln:x:1000:1000:" in (root / "etc/passwd").read_text()
    assert "nobody:" in (root / "etc/passwd").read_text()
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "home/kiln").stat().st_uid == 1000
    assert (root / "etc/motd").read_text() == BUSYBOX_MOTD
    assert (root / "usr/share/doc/base.txt").read_text() == BUSYBOX_BASE_TXT


def test_busybox_layout_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    assert write_busybox_layout(tmp_path / "a") == write_busybox_layout(tmp_path / "b")


def test_layer_entries_are_sorted_numeric_fixed_mtime_and_rootless(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    entries = [
        TarEntry.file("etc/b.txt", "b"),
        TarEntry.dir("etc/", mode=0o755),
        TarEntry.file("/etc/a.txt", "a", uid=1000, gid=1000),
        TarEntry.symlink("etc/link", "a.txt"),
        TarEntry.hardlink("etc/hard", "etc/a.txt"),
        TarEntry.whiteout("usr/share/doc/base.txt"),
        TarEntry.opaque("var"),
    ]
    write_oci_layout_from_layers(layout, "t", [entries], {"Cmd": ["sh"]})
    manifest = _manifest(layout, "t")
    (layer,) = manifest["layers"]
    with tarfile.open(_blob(layout, layer["digest"])) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "etc", "etc/a.txt", "etc/b.txt", "etc/hard", "etc/link",
        "usr/share/doc/.wh.base.txt", "var/.wh..wh..opq",
    ]
    assert all(m.mtime == FIXED_MTIME and m.uname == "" and m.gname == "" for m in members)
    assert (members[1].uid, members[1].gid) == (1000, 1000)
    assert members[3].islnk() and members[3].linkname == "etc/a.txt"


def test_layout_config_diff_ids_match_uncompressed_layers(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout_from_layers(
        layout, "t", [[TarEntry.file("a", "1")], [TarEntry.file("b", "2")]], {"Cmd": ["sh"]}
    )
    manifest = _manifest(layout, "t")
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    uncompressed = [gzip.decompress(_blob(layout, d["digest"]).read_bytes())
                    for d in manifest["layers"]]
    diff_ids = [f"sha256:{hashlib.sha256(data).hexdigest()}" for data in uncompressed]
    assert config["rootfs"]["diff_ids"] == diff_ids
    assert config["config"] == {"Cmd": ["sh"]}
    assert len(config["history"]) == 2


def test_busybox_image_runs_with_crun(busybox_image: str, tmp_path: Path) -> None:
    result = run_image(busybox_image, HELLO_AND_MOTD, workdir=tmp_path)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\n" + BUSYBOX_MOTD, "")


def test_run_image_reports_the_exit_code_and_stderr(busybox_image: str, tmp_path: Path) -> None:
    result = run_image(busybox_image, ["sh", "-c", "echo oops >&2; exit 7"], workdir=tmp_path)
    assert (result.exit_code, result.stderr) == (7, "oops\n")


def test_run_image_uses_the_image_config_env_and_user(busybox_image: str, tmp_path: Path) -> None:
    result = run_image(
        busybox_image, ["sh", "-c", 'echo "$PATH"; id -u; pwd'], workdir=tmp_path,
        user=(1000, 1000), cwd="/home/kiln",
    )
    assert result.stdout.splitlines() == [
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "1000", "/home/kiln",
    ]


def test_container_reaches_the_registry_on_loopback(
    busybox_image: str, registry: Registry, tmp_path: Path
) -> None:
    result = run_image(
        busybox_image, ["wget", "-q", "-O", "-", f"http://{registry.host}/v2/"], workdir=tmp_path
    )
    assert (result.exit_code, result.stdout.strip()) == (0, "{}")


def test_unpack_image_applies_owners_and_modes(busybox_image: str, tmp_path: Path) -> None:
    rootfs = unpack_image(busybox_image, tmp_path)
    assert (rootfs / "etc/motd").read_text() == BUSYBOX_MOTD
    assert (rootfs / "home/kiln").stat().st_uid == 1000
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777


def test_busybox_image_config_and_size(busybox_image: str) -> None:
    config = inspect_config(busybox_image)
    assert config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in config["config"]["Env"])
    info = inspect_image(busybox_image)
    assert len(info["Layers"]) == 1
    manifest = inspect_manifest(busybox_image)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert 500_000 < manifest["layers"][0]["size"] < 2_000_000


def test_busybox_docker_image_has_docker_media_types_and_runs(
    busybox_docker_image: str, tmp_path: Path
) -> None:
    manifest = inspect_manifest(busybox_docker_image)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    result = run_image(busybox_docker_image, HELLO_AND_MOTD, workdir=tmp_path)
    assert result.stdout == "hello\n" + BUSYBOX_MOTD


@pytest.fixture(scope="module")
def whiteout_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox, then a layer filling /data, then one deleting /etc/motd and making /data opaque."""
    tmp = tmp_path_factory.mktemp("whiteout")
    rootfs = make_busybox_rootfs(tmp / "rootfs")
    fill = [TarEntry.dir("data"), TarEntry.file("data/a", "a"), TarEntry.file("data/sub/c", "c")]
    delete = [TarEntry.whiteout("etc/motd"), TarEntry.opaque("data"),
              TarEntry.file("data/new", "new")]
    write_oci_layout_from_layers(tmp / "layout", "t", [rootfs, fill, delete], {"Cmd": ["sh"]})
    return push_layout(tmp / "layout", "t", f"{registry.host}/test/whiteout:t")


SHOW_WHITEOUTS = ["sh", "-c", "test -e /etc/motd && echo motd; ls -A /data"]


def test_whiteouts_apply_in_umoci_and_crun(whiteout_image: str, tmp_path: Path) -> None:
    result = run_image(whiteout_image, SHOW_WHITEOUTS, workdir=tmp_path)
    assert (result.exit_code, result.stdout) == (0, "new\n")


def test_whiteouts_apply_in_containerd(whiteout_image: str, containerd: Containerd) -> None:
    result = containerd.pull_and_run(whiteout_image, SHOW_WHITEOUTS)
    assert (result.exit_code, result.stdout) == (0, "new\n")


def test_run_image_timeout_kills_the_container(busybox_image: str, tmp_path: Path) -> None:
    marker = f"sleep {secrets.randbelow(10_000) + 100_000}"
    with pytest.raises(subprocess.TimeoutExpired):
        run_image(busybox_image, marker.split(), workdir=tmp_path, timeout=0.5)
    assert not _processes_with(marker)


def test_busybox_image_runs_in_containerd(busybox_image: str, containerd: Containerd) -> None:
    result = containerd.pull_and_run(busybox_image, HELLO_AND_MOTD)
    assert (result.exit_code, result.stdout) == (0, "hello\n" + BUSYBOX_MOTD)


def test_busybox_docker_image_runs_in_containerd(
    busybox_docker_image: str, containerd: Containerd
) -> None:
    result = containerd.pull_and_run(busybox_docker_image, ["sh", "-c", "exit 3"])
    assert result.exit_code == 3


def test_containerd_stop_leaves_no_process_or_cgroup(
    busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    daemon = Containerd(tmp_path_factory.mktemp("ctd"))
    with daemon:
        daemon.pull(busybox_image)
        daemon.ctr(["run", "--detach", "--snapshotter", "native", "--net-host",
                    busybox_image, "left-running", "sleep", "1000"])
        assert _processes_with(str(daemon.socket))
    assert not _processes_with(str(daemon.socket))
    assert not _processes_with(str(daemon.workdir / "config.toml"))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{daemon.namespace}"))


def test_debian_image_runs_with_crun(debian_image: str, tmp_path: Path) -> None:
    result = run_image(debian_image, ["sh", "-c", "cat /etc/debian_version; id -un"],
                       workdir=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("12.")
    assert result.stdout.splitlines()[1] == "root"


def _processes_with(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if needle.encode() in cmdline:
                found.append(int(entry.name))
    return found
