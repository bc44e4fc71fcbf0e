"""OCI layout and docker-save tarball outputs, read back by skopeo (an independent reader)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from executor.errors import ImageError
from executor.image.layout import REF_NAME_ANNOTATION, add_to_index, write_blob, write_oci_layout
from executor.image.model import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Layer,
    Platform,
    sha256_digest,
)
from executor.image.tarball import write_docker_tarball

# --- a tiny image, written by hand with tarfile and gzip ---------------------------------------


@dataclass
class TinyImage:
    """An image of a few small gzip layers whose blob files live on disk."""

    manifest_bytes: bytes
    config_bytes: bytes
    layers: list[Layer]

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config_bytes)


def make_layer(directory: Path, files: dict[str, bytes]) -> Layer:
    """A gzip layer holding ``files``, written as ``directory/<hex>``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    blob = gzip.compress(tar_bytes, mtime=0)
    digest = sha256_digest(blob)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / digest.partition(":")[2]
    path.write_bytes(blob)
    return Layer(path, digest, sha256_digest(tar_bytes), len(blob), OCI_LAYER_GZIP)


def make_image(directory: Path, *layer_files: dict[str, bytes],
               platform: Platform | None = None) -> TinyImage:
    """An OCI image with one layer per ``layer_files`` mapping."""
    platform = platform or Platform()
    layers = [make_layer(directory, files) for files in layer_files]
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    if platform.variant:
        config["variant"] = platform.variant
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config_bytes),
                   "size": len(config_bytes)},
        "layers": [layer.descriptor().to_json() for layer in layers],
    }
    return TinyImage(json.dumps(manifest).encode(), config_bytes, layers)


def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def skopeo_json(*args: str) -> Any:
    return json.loads(skopeo(*args))


# --- OCI layout --------------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> TinyImage:
    return make_image(tmp_path / "blobs", {"etc/motd": b"hello\n"}, {"app/main": b"#!/bin/sh\n"})


def test_skopeo_reads_the_oci_layout(tmp_path: Path, image: TinyImage) -> None:
    layout = tmp_path / "layout"
    descriptor = write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers,
                                  "v1")
    info = skopeo_json("inspect", f"oci:{layout}:v1")
    assert info["Digest"] == image.manifest_digest == descriptor.digest
    assert info["Layers"] == [layer.digest for layer in image.layers]
    assert info["Architecture"] == "amd64"
    assert info["Env"] == ["PATH=/bin"]
    assert skopeo("inspect", "--raw", f"oci:{layout}:v1").encode() == image.manifest_bytes


def test_skopeo_copies_every_blob_out_of_the_layout_with_digests_verified(
        tmp_path: Path, image: TinyImage) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers, "v1")
    out = tmp_path / "copy"
    skopeo("copy", "--preserve-digests", f"oci:{layout}:v1", f"dir:{out}")
    for layer in image.layers:
        assert (out / layer.digest.partition(":")[2]).read_bytes() == layer.path.read_bytes()
    assert (out / image.config_digest.partition(":")[2]).read_bytes() == image.config_bytes


def test_layout_has_the_spec_files(tmp_path: Path, image: TinyImage) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers, "v1")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    assert index["manifests"] == [{
        "mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
        "size": len(image.manifest_bytes), "annotations": {REF_NAME_ANNOTATION: "v1"},
    }]
    blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    assert blobs == {d.partition(":")[2] for d in
                     [image.manifest_digest, image.config_digest,
                      *(layer.digest for layer in image.layers)]}


def test_layer_blobs_are_hard_linked_from_the_build_files(tmp_path: Path,
                                                          image: TinyImage) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers)
    for layer in image.layers:
        blob = layout / "blobs" / "sha256" / layer.digest.partition(":")[2]
        assert blob.stat().st_ino == layer.path.stat().st_ino


def test_a_second_image_is_added_and_a_reused_name_moves(tmp_path: Path,
                                                         image: TinyImage) -> None:
    layout = tmp_path / "layout"
    other = make_image(tmp_path / "other", {"x": b"other"})
    third = make_image(tmp_path / "third", {"x": b"third"})
    write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers, "one")
    write_oci_layout(layout, other.manifest_bytes, other.config_bytes, other.layers, "two")
    write_oci_layout(layout, third.manifest_bytes, third.config_bytes, third.layers, "two")
    assert skopeo_json("inspect", f"oci:{layout}:one")["Digest"] == image.manifest_digest
    assert skopeo_json("inspect", f"oci:{layout}:two")["Digest"] == third.manifest_digest
    names = [m["annotations"][REF_NAME_ANNOTATION]
             for m in json.loads((layout / "index.json").read_text())["manifests"]]
    assert names == ["one", "two"]


def test_writing_the_same_unnamed_image_twice_keeps_one_entry(tmp_path: Path,
                                                              image: TinyImage) -> None:
    layout = tmp_path / "layout"
    for _ in range(2):
        write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers)
    assert len(json.loads((layout / "index.json").read_text())["manifests"]) == 1
    # With a single unnamed image, skopeo picks it without a name.
    assert skopeo_json("inspect", f"oci:{layout}")["Digest"] == image.manifest_digest


def test_layout_refuses_layers_that_are_not_the_manifests(tmp_path: Path,
                                                          image: TinyImage) -> None:
    with pytest.raises(ImageError, match="are not the manifest's"):
        write_oci_layout(tmp_path / "layout", image.manifest_bytes, image.config_bytes,
                         image.layers[:1])


def test_layout_refuses_a_config_the_manifest_does_not_name(tmp_path: Path,
                                                            image: TinyImage) -> None:
    with pytest.raises(ImageError, match="the config is not the one the manifest names"):
        write_oci_layout(tmp_path / "layout", image.manifest_bytes, b"{}", image.layers)


def test_an_index_written_into_the_layout_is_a_multi_platform_image(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    amd64 = make_image(tmp_path / "a", {"arch": b"amd64"}, platform=Platform("linux", "amd64"))
    arm64 = make_image(tmp_path / "b", {"arch": b"arm64"},
                       platform=Platform("linux", "arm64", "v8"))
    entries = []
    for img, plat in ((amd64, Platform("linux", "amd64")),
                      (arm64, Platform("linux", "arm64", "v8"))):
        d = write_oci_layout(layout, img.manifest_bytes, img.config_bytes, img.layers)
        entries.append(Descriptor(d.media_type, d.digest, d.size, platform=plat).to_json())
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": entries}).encode()
    add_to_index(layout, write_blob(layout, index, OCI_INDEX), "multi")
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{layout}:multi"))
    assert [m["digest"] for m in raw["manifests"]] == [amd64.manifest_digest,
                                                       arm64.manifest_digest]
    arm = skopeo_json("--override-arch", "arm64", "inspect", f"oci:{layout}:multi")
    assert (arm["Architecture"], arm["Layers"]) == ("arm64", [arm64.layers[0].digest])


# --- docker save tarball -----------------------------------------------------------------------


def test_skopeo_reads_the_docker_tarball(tmp_path: Path, image: TinyImage) -> None:
    tar_path = tmp_path / "image.tar"
    write_docker_tarball(tar_path, "127.0.0.1:5000/team/app:v1", image.config_bytes,
                         image.layers)
    info = skopeo_json("inspect", f"docker-archive:{tar_path}")
    assert info["RepoTags"] == []  # skopeo lists registry tags here, not the archive's
    assert info["Architecture"] == "amd64"
    assert info["Env"] == ["PATH=/bin"]
    config = json.loads(skopeo("inspect", "--config", "--raw", f"docker-archive:{tar_path}"))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]


def test_docker_tarball_layers_round_trip_through_skopeo(tmp_path: Path,
                                                         image: TinyImage) -> None:
    tar_path = tmp_path / "image.tar"
    write_docker_tarball(tar_path, "app:v1", image.config_bytes, image.layers)
    out = tmp_path / "copy"
    skopeo("copy", f"docker-archive:{tar_path}", f"dir:{out}")
    manifest = json.loads((out / "manifest.json").read_text())
    uncompressed = []
    for layer in manifest["layers"]:
        blob = (out / layer["digest"].partition(":")[2]).read_bytes()
        if blob[:2] == b"\x1f\x8b":
            blob = gzip.decompress(blob)
        uncompressed.append("sha256:" + hashlib.sha256(blob).hexdigest())
    assert uncompressed == [layer.diff_id for layer in image.layers]


def test_docker_tarball_has_docker_saves_manifest(tmp_path: Path, image: TinyImage) -> None:
    tar_path = tmp_path / "image.tar"
    write_docker_tarball(tar_path, ["busybox", "reg.io:5000/team/app:v1"], image.config_bytes,
                         image.layers)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
    config_name = image.config_digest.partition(":")[2] + ".json"
    layer_names = [layer.digest.partition(":")[2] + ".tar.gz" for layer in image.layers]
    assert manifest == [{"Config": config_name,
                         "RepoTags": ["busybox:latest", "reg.io:5000/team/app:v1"],
                         "Layers": layer_names}]
    assert names == [config_name, *layer_names, "manifest.json"]


def test_docker_tarball_is_deterministic(tmp_path: Path, image: TinyImage) -> None:
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    write_docker_tarball(first, "app:v1", image.config_bytes, image.layers)
    write_docker_tarball(second, "app:v1", image.config_bytes, image.layers)
    assert first.read_bytes() == second.read_bytes()


def test_docker_tarball_is_the_archive_tarfile_writes(tmp_path: Path, image: TinyImage) -> None:
    """The layers are copied by the kernel, not through tarfile, and nothing else changed: the
    bytes are those tarfile writes for the same members (headers, padding, end records)."""
    tar_path = tmp_path / "image.tar"
    write_docker_tarball(tar_path, "app:v1", image.config_bytes, image.layers)
    expected = io.BytesIO()
    with tarfile.open(tar_path) as written, \
            tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in written.getmembers():
            data = written.extractfile(member)
            assert data is not None
            tar.addfile(member, data)
    assert tar_path.read_bytes() == expected.getvalue()


def test_docker_tarball_stores_a_layer_larger_than_one_copy_chunk(tmp_path: Path) -> None:
    big = make_image(tmp_path / "blobs", {"big": os.urandom(3 << 20)})
    tar_path = tmp_path / "image.tar"
    write_docker_tarball(tar_path, "app:v1", big.config_bytes, big.layers)
    with tarfile.open(tar_path) as tar:
        member = tar.extractfile(big.layers[0].digest.partition(":")[2] + ".tar.gz")
        assert member is not None
        assert member.read() == big.layers[0].path.read_bytes()


def test_docker_tarball_refuses_a_layer_count_the_config_does_not_have(
        tmp_path: Path, image: TinyImage) -> None:
    with pytest.raises(ImageError, match="the config lists 2 layers, 1 were given"):
        write_docker_tarball(tmp_path / "x.tar", "app:v1", image.config_bytes,
                             image.layers[:1])
    assert not (tmp_path / "x.tar").exists()


def test_docker_tarball_needs_a_tag(tmp_path: Path, image: TinyImage) -> None:
    with pytest.raises(ImageError, match="names no tag"):
        write_docker_tarball(tmp_path / "x.tar", "app@sha256:" + "a" * 64, image.config_bytes,
                             image.layers)
