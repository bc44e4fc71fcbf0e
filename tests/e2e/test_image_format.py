"""--image-format and --annotation: the manifest kind a user asks for, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_manifest, run_image

pytestmark = pytest.mark.e2e


def build(tmp_path: Path, base: str, ref: str, *flags: str):
    context = write_context(tmp_path / "context", f"FROM {base}\nRUN echo hi > /hi\n")
    return run_executor(context, tmp_path / "root", "--destination", ref, "--insecure",
                        "--insecure-pull", *flags)


@pytest.mark.parametrize(("wanted", "manifest_type", "layer_type"), [
    ("oci", "application/vnd.oci.image.manifest.v1+json",
     "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("docker", "application/vnd.docker.distribution.manifest.v2+json",
     "application/vnd.docker.image.rootfs.diff.tar.gzip"),
])
def test_image_format_sets_every_media_type(wanted: str, manifest_type: str, layer_type: str,
                                            tmp_path: Path, registry: Registry,
                                            busybox_image: str,
                                            busybox_docker_image: str) -> None:
    # Start from the other kind, so the base layers must change media type too.
    base = busybox_docker_image if wanted == "oci" else busybox_image
    ref = f"{registry.host}/format/{wanted}:1"
    result = build(tmp_path, base, ref, "--image-format", wanted)
    assert result.exit_code == 0, result.stderr
    manifest = inspect_manifest(ref)
    assert manifest["mediaType"] == manifest_type
    assert {layer["mediaType"] for layer in manifest["layers"]} == {layer_type}
    assert run_image(ref, ["cat", "/hi"], workdir=tmp_path / "run").stdout == "hi\n"


def test_annotations_land_in_an_oci_manifest(tmp_path: Path, registry: Registry,
                                             busybox_docker_image: str) -> None:
    ref = f"{registry.host}/format/annotated:1"
    result = build(tmp_path, busybox_docker_image, ref, "--annotation",
                   "org.opencontainers.image.source=https://example.com/app")
    assert result.exit_code == 0, result.stderr
    manifest = inspect_manifest(ref)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"] == {
        "org.opencontainers.image.source": "https://example.com/app"}


def test_docker_format_cannot_carry_zstd_layers(tmp_path: Path, registry: Registry,
                                                busybox_image: str) -> None:
    ref = f"{registry.host}/format/zstd:1"
    result = build(tmp_path, busybox_image, ref, "--image-format", "docker",
                   "--compression", "zstd")
    assert result.exit_code == 1
    assert result.last_line == (
        "error building image: --image-format docker cannot describe zstd or uncompressed "
        "layers; use --image-format oci (or --compression gzip)")
    assert registry.tags("format/zstd") == []


def test_zstd_on_a_docker_base_gives_an_oci_image_others_can_run(
        tmp_path: Path, registry: Registry, busybox_docker_image: str, containerd) -> None:
    ref = f"{registry.host}/format/zstd-oci:1"
    result = build(tmp_path, busybox_docker_image, ref, "--compression", "zstd")
    assert result.exit_code == 0, result.stderr
    manifest = inspect_manifest(ref)
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert containerd.pull_and_run(ref, ["cat", "/hi"]).stdout == "hi\n"
