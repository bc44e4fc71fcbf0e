"""--cache: RUN layers come back from the cache repository when, and only when, nothing that
decides them changed; images built from the cache are the images a build without it makes.

Each RUN writes a fresh UUID, so a test can tell a layer that was reused from one that ran.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from executor.cache import CacheSettings, LayerCache
from executor.image import model
from executor.image.model import Descriptor, Manifest, Platform, sha256_digest
from executor.image.reference import ImageRef
from executor.registry.client import RegistryClient
from executor.registry.transport import TransportOptions
from tests.support.kiln import ExecutorRun, run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_config, inspect_image, run_image

pytestmark = pytest.mark.e2e

DOCKERFILE = """FROM {base}
ARG FLAVOUR=plain
RUN cat /proc/sys/kernel/random/uuid > /first
COPY app.txt /app.txt
RUN cat /proc/sys/kernel/random/uuid > /second && cat /app.txt >> /second
RUN true
"""
FIRST = "RUN cat /proc/sys/kernel/random/uuid > /first"
SECOND = "RUN cat /proc/sys/kernel/random/uuid > /second && cat /app.txt >> /second"


def build(context: Path, workdir: Path, ref: str, *args: str) -> ExecutorRun:
    result = run_executor(context, workdir, "--destination", ref, "--insecure",
                          "--insecure-pull", "--cache", *args)
    assert result.exit_code == 0, result.stderr
    return result


def created_by(ref: str) -> list[str]:
    return [entry["created_by"] for entry in inspect_config(ref)["history"]]


def contents(ref: str, workdir: Path) -> str:
    return run_image(ref, ["cat", "/first", "/second"], workdir=workdir).stdout


@pytest.fixture
def context(tmp_path: Path, busybox_image: str) -> Path:
    return write_context(tmp_path / "context", DOCKERFILE.format(base=busybox_image),
                         {"app.txt": "version 1\n"})


def test_a_second_build_reuses_every_run_layer(context: Path, tmp_path: Path,
                                               registry: Registry) -> None:
    ref = f"{registry.host}/cache/again:1"
    first = build(context, tmp_path / "root1", ref)
    assert f"No cached layer found for cmd {FIRST}" in first.stderr
    before, layers, history = (contents(ref, tmp_path / "run1"), inspect_image(ref)["Layers"],
                               created_by(ref))
    second = build(context, tmp_path / "root2", ref)
    for command in (FIRST, SECOND, "RUN true"):
        assert f"Using caching version of cmd: {command}" in second.stderr
    assert contents(ref, tmp_path / "run2") == before
    assert inspect_image(ref)["Layers"] == layers
    assert created_by(ref) == history


def test_a_changed_file_reruns_the_runs_after_its_copy(context: Path, tmp_path: Path,
                                                      registry: Registry) -> None:
    ref = f"{registry.host}/cache/file:1"
    build(context, tmp_path / "root1", ref)
    first, second = contents(ref, tmp_path / "run1").splitlines()[:2]
    (context / "app.txt").write_text("version 2\n")
    again = build(context, tmp_path / "root2", ref)
    assert f"Using caching version of cmd: {FIRST}" in again.stderr
    assert f"No cached layer found for cmd {SECOND}" in again.stderr
    assert "Using caching version of cmd: RUN true" not in again.stderr  # no lookups after a miss
    lines = contents(ref, tmp_path / "run2").splitlines()
    assert lines[0] == first and lines[1] != second and lines[2] == "version 2"


def test_a_changed_build_arg_reruns_everything_in_its_scope(context: Path, tmp_path: Path,
                                                           registry: Registry) -> None:
    ref = f"{registry.host}/cache/arg:1"
    build(context, tmp_path / "root1", ref)
    first = contents(ref, tmp_path / "run1").splitlines()[0]
    again = build(context, tmp_path / "root2", ref, "--build-arg", "FLAVOUR=spicy")
    assert f"No cached layer found for cmd {FIRST}" in again.stderr
    assert contents(ref, tmp_path / "run2").splitlines()[0] != first


def test_a_layer_older_than_the_ttl_is_not_used(context: Path, tmp_path: Path,
                                                registry: Registry) -> None:
    ref = f"{registry.host}/cache/ttl:1"
    build(context, tmp_path / "root1", ref)
    first = contents(ref, tmp_path / "run1").splitlines()[0]
    time.sleep(2)
    again = build(context, tmp_path / "root2", ref, "--cache-ttl=1s")
    assert "is older than --cache-ttl" in again.stderr
    assert contents(ref, tmp_path / "run2").splitlines()[0] != first


def test_no_push_cache_stores_nothing_and_cache_repo_is_where_layers_live(
        context: Path, tmp_path: Path, registry: Registry) -> None:
    ref = f"{registry.host}/cache/where:1"
    repo = f"{registry.host}/elsewhere/layers"
    build(context, tmp_path / "root1", ref, f"--cache-repo={repo}", "--no-push-cache")
    stored = build(context, tmp_path / "root2", ref, f"--cache-repo={repo}")
    assert "Using caching version" not in stored.stderr
    assert f"Pushing layer {repo}:" in stored.stderr
    reused = build(context, tmp_path / "root3", ref, f"--cache-repo={repo}")
    assert f"Using caching version of cmd: {FIRST}" in reused.stderr


def test_every_stage_of_a_multi_stage_build_comes_back_from_the_cache(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    dockerfile = (f"FROM {busybox_image} AS tools\n"
                  "RUN cat /proc/sys/kernel/random/uuid > /tool\n"
                  "FROM tools\n"
                  "RUN cat /proc/sys/kernel/random/uuid > /app\n"
                  f"FROM {busybox_image}\n"
                  "COPY --from=1 /tool /app /\n"
                  "RUN cat /tool /app > /both\n")
    context = write_context(tmp_path / "context", dockerfile)
    ref = f"{registry.host}/cache/stages:1"
    build(context, tmp_path / "root1", ref)
    before = run_image(ref, ["cat", "/both"], workdir=tmp_path / "run1").stdout
    again = build(context, tmp_path / "root2", ref)
    assert again.stderr.count("Using caching version of cmd") == 3
    assert run_image(ref, ["cat", "/both"], workdir=tmp_path / "run2").stdout == before


@pytest.mark.parametrize("mount", [
    "--mount=type=bind,source=app.txt,target=/mnt/app.txt",
    "--mount=type=cache,from=files,source=/,target=/mnt",
])
def test_a_run_reading_mounted_files_is_never_taken_from_the_cache(
        mount: str, tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    dockerfile = (f"FROM {busybox_image} AS files\n"
                  "COPY app.txt /app.txt\n"
                  f"FROM {busybox_image}\n"
                  f"RUN {mount} cp /mnt/app.txt /copy\n"
                  "RUN cat /copy > /after\n")
    context = write_context(tmp_path / "context", dockerfile, {"app.txt": "one\n"})
    ref = f"{registry.host}/cache/mounted:1"
    build(context, tmp_path / "root1", ref)
    (context / "app.txt").write_text("two\n")
    again = build(context, tmp_path / "root2", ref)
    assert "it mounts files its cache key cannot see" in again.stderr
    assert "Using caching version of cmd: RUN cat /copy" not in again.stderr
    out = run_image(ref, ["cat", "/copy", "/after"], workdir=tmp_path / "run").stdout
    assert out == "two\ntwo\n"


def test_an_unreadable_cache_repository_is_a_warning_not_a_failure(
        context: Path, tmp_path: Path, registry: Registry) -> None:
    ref = f"{registry.host}/cache/broken:1"
    result = build(context, tmp_path / "root", ref, "--cache-repo=127.0.0.1:9/nothing/here",
                   "--push-retry=0")
    warnings = [line for line in result.stderr.splitlines() if "Cannot read the layer cache"
                in line]
    assert len(warnings) == 1 and "127.0.0.1:9/nothing/here" in warnings[0]
    assert "the build goes on" in warnings[0]
    assert len(contents(ref, tmp_path / "run").splitlines()) == 3


@pytest.mark.parametrize("config", [
    {"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}, "created": "2026-01-01T00:00:00Z",
     "history": []},
    {"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}, "created": None,
     "history": [{"created_by": "x"}]},
    {"rootfs": {}, "history": [{"created_by": "x"}]},
])
def test_a_malformed_cache_entry_is_a_miss(config: dict[str, object], tmp_path: Path,
                                           registry: Registry,
                                           caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps(config).encode()
    layer = gzip.compress(bytes(1024), mtime=0)
    repo = ImageRef.parse(f"{registry.host}/cache/malformed")
    with RegistryClient(TransportOptions(insecure_registries=frozenset({registry.host}))) as c:
        config_descriptor = Descriptor(model.OCI_CONFIG, sha256_digest(body), len(body))
        layer_descriptor = Descriptor(model.OCI_LAYER_GZIP, sha256_digest(layer), len(layer))
        c.push_blob_bytes(repo, config_descriptor, body)
        c.push_blob_bytes(repo, layer_descriptor, layer)
        manifest = Manifest(model.OCI_MANIFEST, config_descriptor, (layer_descriptor,))
        c.push_manifest(repo.with_tag("k" * 64), manifest.to_bytes(), model.OCI_MANIFEST)
        cache = LayerCache(CacheSettings(repo, 3600.0, True), c, tmp_path, Platform())
        assert cache.lookup("k" * 64, "RUN x") is None
    assert cache.can_read and cache.can_write
    assert "Ignoring the cached layer" in caplog.text


def test_a_cache_in_an_oci_layout_directory_serves_the_second_build(
        context: Path, tmp_path: Path, registry: Registry) -> None:
    # kaniko's --cache-repo oci:DIR: a cache on a volume, no registry repository needed.
    layouts = tmp_path / "layer-cache"
    ref = f"{registry.host}/cache/layout:1"
    first = build(context, tmp_path / "root1", ref, "--cache-repo", f"oci:{layouts}")
    assert f"No cached layer found for cmd {FIRST}" in first.stderr
    entries = sorted(layouts.iterdir())
    assert len(entries) == 3  # the three RUNs
    stored = inspect_image(f"oci:{entries[0]}")  # skopeo reads the layout's one image
    assert len(stored["Layers"]) == 1
    before, layers = contents(ref, tmp_path / "run1"), inspect_image(ref)["Layers"]
    second = build(context, tmp_path / "root2", ref, "--cache-repo", f"oci:{layouts}")
    for command in (FIRST, SECOND, "RUN true"):
        assert f"Using caching version of cmd: {command}" in second.stderr
    assert contents(ref, tmp_path / "run2") == before
    assert inspect_image(ref)["Layers"] == layers


def test_an_oci_layout_cache_that_cannot_be_written_costs_a_warning(
        context: Path, tmp_path: Path, registry: Registry) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should be\n")
    result = build(context, tmp_path / "root", f"{registry.host}/cache/blocked:1",
                   "--cache-repo", f"oci:{blocked}")
    warnings = [line for line in result.stderr.splitlines() if "Cannot write" in line]
    assert len(warnings) == 1 and f"oci:{blocked}" in warnings[0]
