"""The ``warmer`` command: fill a ``--cache-dir`` with base images, as kaniko's warmer does.

Same flags and layout as kaniko's ``/kaniko/warmer``, so a cron job or an init container that
warms a shared volume keeps working when the image is swapped: ``--image`` (repeatable) and/or
``--dockerfile`` (its ``FROM`` images, after ``--build-arg``), ``--cache-dir``, ``--force``,
``--customPlatform``, ``--cache-ttl`` and the registry flags of the executor. Each image is
written as ``<dir>/<manifest digest>`` (a ``docker save`` tarball) and
``<dir>/<manifest digest>.json`` (the manifest), each file renamed into place only when
complete, the manifest first, so a build never sees half an entry.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from executor.flags import BOOL, log_flags, pull_flags

if TYPE_CHECKING:
    from executor.basecache import BaseImageCache
    from executor.image.model import Platform
    from executor.registry.client import RegistryClient

log = logging.getLogger("kiln")

#: The prefix of a warmer's download directory inside the cache directory.
_WARMING = ".warming-"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-i", "--image", "images", multiple=True, help="Image to cache; repeatable.")
@click.option("-d", "--dockerfile", type=click.Path(path_type=Path),
              help="Cache the base images of this Dockerfile's stages.")
@click.option("--build-arg", "build_args", multiple=True,
              help="ARG value for the Dockerfile's FROM lines, as KEY=VALUE.")
@click.option("-c", "--cache-dir", default="/cache", show_default=True,
              type=click.Path(path_type=Path), help="Directory of the base-image cache.")
@click.option("-f", "--force", **BOOL, help="Cache an image even when it is already cached.")
@click.option("--customPlatform", "custom_platform",
              help="Platform of the images to cache, as os/arch[/variant].")
@click.option("--cache-ttl", default="336h0m0s", show_default=True,
              help="An entry older than this (a Go duration) is cached again.")
@pull_flags
@log_flags
def main(**flags: object) -> None:
    """Download base images into a cache directory that builds read with --cache-dir."""
    from executor.cli import report_error
    from executor.log import setup_logging
    from executor.pid1 import spawn_by_fork

    spawn_by_fork()

    setup_logging(str(flags["verbosity"]), str(flags["log_format"]),
                  bool(flags["log_timestamp"]))
    try:
        code = warm(flags)
    except Exception as exc:
        code = report_error(exc, flags["verbosity"] in ("debug", "trace"), "warming the cache")
    sys.exit(code)


def warm(flags: dict[str, object]) -> int:
    """Cache every image the flags name; 0 when at least one is cached (kaniko's rule)."""
    from executor.basecache import BaseImageCache
    from executor.cli import duration_s, pull_options
    from executor.errors import KilnError, OptionsError
    from executor.image.model import Platform
    from executor.options import parse_key_values
    from executor.publish import make_client

    options = pull_options(flags)
    platform = Platform.parse(options.custom_platform) if options.custom_platform else Platform()
    images = [str(image) for image in flags["images"]]  # type: ignore[attr-defined]
    if flags["dockerfile"]:
        build_args = parse_key_values(tuple(flags["build_args"]),  # type: ignore[arg-type]
                                      "--build-arg", bare_from_env=True)
        images += dockerfile_bases(Path(str(flags["dockerfile"])), build_args, platform)
    if not images:
        raise OptionsError("nothing to cache: give --image or --dockerfile")
    cache = BaseImageCache(Path(str(flags["cache_dir"])),
                           duration_s("--cache-ttl", str(flags["cache_ttl"])))
    cache.directory.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads(cache.directory)
    warmed = 0
    with make_client(options) as client:
        for image in dict.fromkeys(images):
            try:
                warm_image(client, cache, image, platform, force=bool(flags["force"]))
                warmed += 1
            except (KilnError, OSError) as exc:
                log.warning("Error while trying to warm image: %s %s", image, exc)
    if warmed == 0:
        raise OptionsError("failed to warm any of the given images")
    return 0


def warm_image(client: RegistryClient, cache: BaseImageCache, image: str, platform: Platform,
               *, force: bool) -> None:
    """Download ``image`` for ``platform`` into the cache, unless a live entry has it."""
    from executor.image.atomic import write_atomically
    from executor.image.reference import ImageRef
    from executor.image.tarball import write_docker_tarball

    ref = ImageRef.parse(image)
    log.info("Retrieving image manifest %s", image)
    resolved = client.resolve(ref, platform)
    digest = resolved.manifest_digest
    if not force and cache.entry(digest) is not None:
        log.info("Image %s is already in the cache as %s", image, digest)
        return
    blobs = Path(tempfile.mkdtemp(prefix=_WARMING, dir=cache.directory))
    try:
        layers = resolved.layer_files(blobs)
        for layer in layers:
            if not layer.path.exists():
                client.fetch_blob(ref, layer.descriptor(), layer.path)
        write_atomically(cache.directory / f"{digest}.json", resolved.manifest_bytes)
        write_docker_tarball(cache.directory / digest, [str(ref)] if ref.tag else [],
                             resolved.config_bytes, layers)
    finally:
        shutil.rmtree(blobs, ignore_errors=True)
    log.info("Wrote %s to cache as %s", image, digest)


def remove_stale_downloads(directory: Path, older_than_s: float = 86400) -> None:
    """Remove what a warmer killed mid-download (a deadline, the OOM killer) left behind: its
    ``.warming-*`` directories, once they are a day old (younger ones may be another warmer's
    on the same volume)."""
    cutoff = time.time() - older_than_s
    for stale in directory.glob(f"{_WARMING}*"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)


def dockerfile_bases(dockerfile: Path, build_args: dict[str, str],
                     platform: Platform) -> list[str]:
    """The images the stages of ``dockerfile`` start from (not scratch, not other stages)."""
    from executor.dockerfile.parse import parse_dockerfile
    from executor.dockerfile.stages import plan_build

    plan = plan_build(parse_dockerfile(dockerfile, str(dockerfile)), build_args, None, platform)
    return [stage.base for stage in plan.stages
            if stage.base_stage is None and stage.base.lower() != "scratch"]


if __name__ == "__main__":
    main()
