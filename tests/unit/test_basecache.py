"""The base-image cache reads entries as kaniko's warmer writes them (go-containerregistry's
``tarball.Write``: config named ``sha256:<hex>``, layers ``<hex>.tar.gz``), and a damaged entry
is skipped with a warning, never trusted."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path

import pytest

from executor.basecache import BaseImageCache
from executor.image.model import DOCKER_LAYER_GZIP, DOCKER_MANIFEST, Layer, Platform, sha256_digest
from executor.image.reference import ImageRef

AMD64 = Platform("linux", "amd64")


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Entry:
    """One image written into ``directory`` the way kaniko's warmer lays it out."""

    def __init__(self, directory: Path, architecture: str = "amd64") -> None:
        layer_tar = _tar_bytes({"hello": b"hello from the cache\n"})
        self.layer = gzip.compress(layer_tar, mtime=0)
        self.layer_digest = sha256_digest(self.layer)
        config = json.dumps({"architecture": architecture, "os": "linux",
                             "rootfs": {"type": "layers",
                                        "diff_ids": [sha256_digest(layer_tar)]}}).encode()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": self.layer_digest,
                        "size": len(self.layer)}]}).encode()
        self.digest = sha256_digest(self.manifest)
        layer_name = self.layer_digest.split(":")[1] + ".tar.gz"
        self.tarball = directory / self.digest
        self.tarball.write_bytes(_tar_bytes({
            sha256_digest(config): config,
            layer_name: self.layer,
            "manifest.json": json.dumps([{"Config": sha256_digest(config),
                                          "RepoTags": ["reg.example/app:1"],
                                          "Layers": [layer_name]}]).encode(),
        }))
        Path(f"{self.tarball}.json").write_bytes(self.manifest)
        self.ref = ImageRef.parse(f"reg.example/app@{self.digest}")

    def blob(self, blobs: Path) -> Layer:
        return Layer(blobs / self.layer_digest.split(":")[1], self.layer_digest, "",
                     len(self.layer), DOCKER_LAYER_GZIP)


@pytest.fixture
def cache(tmp_path: Path) -> BaseImageCache:
    (tmp_path / "cache").mkdir()
    return BaseImageCache(tmp_path / "cache", ttl_s=3600)


def test_an_entry_gives_manifest_config_and_verified_layers(cache: BaseImageCache,
                                                           tmp_path: Path) -> None:
    entry = Entry(cache.directory)
    resolved = cache.resolve(entry.ref, AMD64)
    assert resolved is not None
    assert resolved.manifest_digest == entry.digest
    assert resolved.manifest.layers[0].digest == entry.layer_digest
    layer = entry.blob(tmp_path / "blobs")
    cache.copy_layers("reg.example/app:1", entry.digest, [layer])
    assert layer.path.read_bytes() == entry.layer


def test_a_manifest_that_is_not_the_digest_is_not_used(
        cache: BaseImageCache, caplog: pytest.LogCaptureFixture) -> None:
    entry = Entry(cache.directory)
    Path(f"{entry.tarball}.json").write_bytes(entry.manifest + b"\n")
    with caplog.at_level(logging.WARNING, logger="kiln"):
        assert cache.resolve(entry.ref, AMD64) is None
    assert "the manifest's digest is not" in caplog.text


def test_an_entry_without_its_manifest_file_is_not_used_offline(cache: BaseImageCache) -> None:
    entry = Entry(cache.directory)
    Path(f"{entry.tarball}.json").unlink()
    assert cache.resolve(entry.ref, AMD64) is None


def test_an_entry_for_another_platform_is_not_used(cache: BaseImageCache) -> None:
    entry = Entry(cache.directory, architecture="arm64")
    assert cache.resolve(entry.ref, AMD64) is None


def test_an_expired_entry_is_not_used(cache: BaseImageCache, tmp_path: Path) -> None:
    entry = Entry(cache.directory)
    old = time.time() - 7200
    os.utime(entry.tarball, (old, old))
    assert cache.resolve(entry.ref, AMD64) is None
    layer = entry.blob(tmp_path / "blobs")
    cache.copy_layers("reg.example/app:1", entry.digest, [layer])
    assert not layer.path.exists()


@pytest.mark.parametrize(("cut", "reason"), [
    (1024 + 512 + 100, "unexpected end of data"),  # inside the layer's bytes
    (1024 + 100, "holds no layer"),  # inside the layer's header
])
def test_a_truncated_tarball_leaves_no_blob_and_warns(cache: BaseImageCache, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     cut: int, reason: str) -> None:
    entry = Entry(cache.directory)
    entry.tarball.write_bytes(entry.tarball.read_bytes()[:cut])
    layer = entry.blob(tmp_path / "blobs")
    with caplog.at_level(logging.WARNING, logger="kiln"):
        cache.copy_layers("reg.example/app:1", entry.digest, [layer])
    assert "Error while retrieving image from cache: reg.example/app:1" in caplog.text
    assert reason in caplog.text
    assert not (tmp_path / "blobs").exists() or list((tmp_path / "blobs").iterdir()) == []
