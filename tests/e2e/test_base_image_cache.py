"""``warmer`` and ``--cache-dir``: base images warmed onto a volume, in kaniko's warmer layout,
feed builds without a download; a ``FROM`` by digest builds with the base registry gone.

The base image lives in a registry of its own, so a test can stop it; builds push to the
session's registry, and crun runs what they pushed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import push_layout
from tests.support.kiln import ExecutorRun, run_executor, run_spawning, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_config, inspect_image, run_image

pytestmark = pytest.mark.e2e

DOCKERFILE = "FROM {base}\nRUN echo built on the warmed base > /hello\n"


def warm(cache_dir: Path, *args: str) -> ExecutorRun:
    """Run the ``warmer`` command the way a cron job or an init container would."""
    proc = run_spawning([sys.executable, "-m", "executor.warmer", "--cache-dir", str(cache_dir),
                         "--insecure-pull", *args], capture_output=True, text=True,
                        timeout=120, check=False, stdin=subprocess.DEVNULL)
    return ExecutorRun(proc.returncode, proc.stdout, proc.stderr)


def build(context: Path, root: Path, destination: str, cache_dir: Path,
          *args: str) -> ExecutorRun:
    result = run_executor(context, root, "--destination", destination, "--insecure",
                          "--insecure-pull", "--cache-dir", str(cache_dir), *args)
    assert result.exit_code == 0, result.stderr
    return result


def pulled_layers(result: ExecutorRun) -> list[str]:
    return [line for line in result.stderr.splitlines() if "Pulled layer" in line]


@pytest.fixture
def base_registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "base-registry").start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def base(base_registry: Registry, busybox_layout: Path) -> str:
    return push_layout(busybox_layout, "latest", f"{base_registry.host}/base/busybox:1")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_the_warmer_writes_kanikos_layout_and_skopeo_reads_it(base: str, cache_dir: Path,
                                                             tmp_path: Path) -> None:
    result = warm(cache_dir, "--image", base)
    assert result.exit_code == 0, result.stderr
    digest = inspect_image(base)["Digest"]
    assert sorted(p.name for p in cache_dir.iterdir()) == [digest, f"{digest}.json"]
    manifest = (cache_dir / f"{digest}.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest
    readable = tmp_path / "saved.tar"  # skopeo reads a ':' in the path as a reference
    readable.symlink_to(cache_dir / digest)
    saved = inspect_image(f"docker-archive:{readable}")
    # skopeo names a docker-archive layer by the digest of its uncompressed tar
    assert saved["Layers"] == inspect_config(base)["rootfs"]["diff_ids"]
    with tarfile.open(cache_dir / digest) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        assert json.loads(member.read())[0]["RepoTags"] == [base]
    assert f"Wrote {base} to cache as {digest}" in result.stderr


def test_a_from_by_digest_builds_from_the_cache_with_the_registry_gone(
        base: str, base_registry: Registry, cache_dir: Path, tmp_path: Path,
        registry: Registry) -> None:
    assert warm(cache_dir, "--image", base).exit_code == 0
    digest = inspect_image(base)["Digest"]
    pinned = f"{base.rsplit(':', 1)[0]}@{digest}"
    base_registry.kill()
    context = write_context(tmp_path / "context", DOCKERFILE.format(base=pinned))
    dest = f"{registry.host}/warmed/digest:1"
    result = build(context, tmp_path / "root", dest, cache_dir)
    assert f"Found {digest} in local cache" in result.stderr
    assert pulled_layers(result) == []
    out = run_image(dest, ["cat", "/hello"], workdir=tmp_path / "run")
    assert out.stdout == "built on the warmed base\n"


def test_a_from_by_tag_asks_the_registry_for_the_digest_and_takes_the_layers_from_the_cache(
        base: str, cache_dir: Path, tmp_path: Path, registry: Registry) -> None:
    assert warm(cache_dir, "--image", base).exit_code == 0
    context = write_context(tmp_path / "context", DOCKERFILE.format(base=base))
    dest = f"{registry.host}/warmed/tag:1"
    result = build(context, tmp_path / "root", dest, cache_dir)
    assert f"Found {inspect_image(base)['Digest']} in local cache" in result.stderr
    assert pulled_layers(result) == []
    assert inspect_image(dest)["Layers"][:1] == inspect_image(base)["Layers"]
    out = run_image(dest, ["cat", "/hello"], workdir=tmp_path / "run")
    assert out.stdout == "built on the warmed base\n"


def test_an_entry_older_than_the_ttl_is_not_used(base: str, cache_dir: Path, tmp_path: Path,
                                                 registry: Registry) -> None:
    assert warm(cache_dir, "--image", base).exit_code == 0
    entry = cache_dir / inspect_image(base)["Digest"]
    two_hours_ago = time.time() - 7200
    os.utime(entry, (two_hours_ago, two_hours_ago))
    context = write_context(tmp_path / "context", DOCKERFILE.format(base=base))
    result = build(context, tmp_path / "root", f"{registry.host}/warmed/old:1", cache_dir,
                   "--cache-ttl", "1h")
    assert "in local cache" not in result.stderr
    assert len(pulled_layers(result)) == 1


def test_a_damaged_entry_costs_a_warning_and_a_download_never_the_build(
        base: str, cache_dir: Path, tmp_path: Path, registry: Registry) -> None:
    assert warm(cache_dir, "--image", base).exit_code == 0
    digest = inspect_image(base)["Digest"]
    entry = cache_dir / digest
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the layer blob: its digest no longer matches
    entry.write_bytes(bytes(data))
    context = write_context(tmp_path / "context", DOCKERFILE.format(base=base))
    dest = f"{registry.host}/warmed/damaged:1"
    result = build(context, tmp_path / "root", dest, cache_dir)
    warnings = [line for line in result.stderr.splitlines()
                if "Error while retrieving image from cache" in line]
    assert len(warnings) == 1 and "content does not match" in warnings[0], result.stderr
    assert len(pulled_layers(result)) == 1
    out = run_image(dest, ["cat", "/hello"], workdir=tmp_path / "run")
    assert out.stdout == "built on the warmed base\n"


def test_the_warmer_caches_the_bases_of_a_dockerfile(base: str, cache_dir: Path,
                                                     tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE\nFROM $BASE AS one\nFROM one\nFROM scratch\n"
                          "COPY --from=one /bin/busybox /busybox\n")
    result = warm(cache_dir, "--dockerfile", str(dockerfile), "--build-arg", f"BASE={base}")
    assert result.exit_code == 0, result.stderr
    digest = inspect_image(base)["Digest"]
    assert sorted(p.name for p in cache_dir.iterdir()) == [digest, f"{digest}.json"]


def test_a_cached_image_is_fetched_again_only_when_forced(base: str, cache_dir: Path) -> None:
    assert warm(cache_dir, "--image", base).exit_code == 0
    entry = cache_dir / inspect_image(base)["Digest"]
    os.utime(entry, (1_000_000, time.time()))
    again = warm(cache_dir, "--image", base)
    assert again.exit_code == 0 and "is already in the cache" in again.stderr
    assert entry.stat().st_atime == 1_000_000
    forced = warm(cache_dir, "--image", base, "--force")
    assert forced.exit_code == 0 and "Wrote" in forced.stderr


def test_the_warmer_fails_in_one_line_when_no_image_can_be_cached(
        base_registry: Registry, cache_dir: Path) -> None:
    missing = f"{base_registry.host}/base/nothing:1"
    result = warm(cache_dir, "--image", missing)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error warming the cache: failed to warm any of the given images"
    assert f"Error while trying to warm image: {missing}" in lines[-2]
    assert "404" in lines[-2] or "MANIFEST_UNKNOWN" in lines[-2]
    assert "Traceback" not in result.stderr
    assert list(cache_dir.iterdir()) == []
