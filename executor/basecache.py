"""The base-image cache on a volume (``--cache-dir``), in the layout kaniko's warmer writes.

kaniko users pre-fill a volume with base images (the ``warmer`` image, a cron job, a
``ReadOnlyMany`` volume) so that builds skip the download. Each entry is two files named by the
image's manifest digest (for a multi-platform image: the chosen platform's):

* ``<dir>/sha256:<hex>``: a ``docker save`` tarball of the image (``manifest.json``, the config,
  the layer blobs as the registry serves them, compressed);
* ``<dir>/sha256:<hex>.json``: the manifest, byte for byte as the registry served it.

An entry older than ``--cache-ttl`` (by the tarball's mtime) is not used. A ``FROM`` by digest is
served from the cache alone, with no request to the registry; a ``FROM`` by tag asks the registry
which digest the tag names (a tag moves) and then takes the layers from the cache. A damaged or
partial entry costs one warning and the download it was meant to save, never the build: every
layer copied out is checked against its digest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from executor.errors import ImageError
from executor.image.atomic import replacing
from executor.image.blob import VerifyingReader
from executor.image.model import ImageConfig, Layer, Manifest, Platform, sha256_digest
from executor.image.reference import ImageRef
from executor.registry.client import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, ResolvedImage
from snapshot.errors import CorruptLayerError

log = logging.getLogger("kiln")

class CacheEntryError(Exception):
    """An entry of the base-image cache that cannot be used; it is skipped with a warning."""


@dataclass(frozen=True)
class BaseImageCache:
    """The directory ``--cache-dir`` names, read by builds and written by ``warmer``."""

    directory: Path
    ttl_s: float

    def entry(self, digest: str) -> Path | None:
        """The tarball stored for ``digest`` when there is one younger than the TTL."""
        path = self.directory / digest
        try:
            mtime = path.stat().st_mtime
        except OSError:
            log.debug("Image %s not found in cache %s", digest, self.directory)
            return None
        if mtime + self.ttl_s < time.time():
            log.debug("Image %s found in cache but was expired", digest)
            return None
        return path

    def resolve(self, ref: ImageRef, platform: Platform) -> ResolvedImage | None:
        """``ref`` (which names a digest) read from the cache alone: manifest and config.

        None when there is no usable entry, so the caller asks the registry instead.
        """
        assert ref.digest is not None
        tarball = self.entry(ref.digest)
        if tarball is None:
            return None
        try:
            resolved = _read_entry(ref, tarball)
        except CacheEntryError as exc:
            log.warning("Error while retrieving image from cache: %s %s", ref, exc)
            return None
        found = Platform.from_json(resolved.config.data)
        if found.architecture and not platform.matches(found):
            log.debug("Image %s in cache is for %s, not %s", ref, found, platform)
            return None
        log.info("Found manifest at %s.json", tarball)  # copy_layers says "Found <digest>"
        return resolved

    def copy_layers(self, name: str, digest: str, layers: Sequence[Layer]) -> None:
        """Copy the layers the entry for ``digest`` holds to their blob paths, each verified.

        Layers already on disk are left alone; any layer not copied is downloaded as usual.
        """
        tarball = self.entry(digest)
        wanted = {layer.digest: layer for layer in layers if not layer.path.exists()}
        if tarball is None or not wanted:
            return
        log.info("Found %s in local cache", digest)
        try:
            _copy_layers(tarball, wanted)
        except CacheEntryError as exc:
            log.warning("Error while retrieving image from cache: %s %s", name, exc)


def _read_entry(ref: ImageRef, tarball: Path) -> ResolvedImage:
    """Manifest (from ``<entry>.json``, checked against the digest) and config (from the
    tarball, checked against the manifest) of one entry."""
    assert ref.digest is not None
    manifest_path = Path(f"{tarball}.json")
    try:
        with manifest_path.open("rb") as handle:
            manifest_bytes = handle.read(MAX_MANIFEST_SIZE + 1)
    except OSError as exc:
        raise CacheEntryError(f"{manifest_path}: {exc.strerror}") from None
    if sha256_digest(manifest_bytes) != ref.digest:
        raise CacheEntryError(f"{manifest_path}: the manifest's digest is not {ref.digest}")
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
        with _open_tarball(tarball) as tar:
            config_name = _saved_manifest(tar, tarball).get("Config")
            if not isinstance(config_name, str):
                raise CacheEntryError(f"{tarball}: manifest.json names no Config")
            config_bytes = _read_member(tar, tarball, config_name, MAX_CONFIG_SIZE)
        if sha256_digest(config_bytes) != manifest.config.digest:
            raise CacheEntryError(f"{tarball}: the config is not {manifest.config.digest}")
        config = ImageConfig.from_bytes(config_bytes)
    except ImageError as exc:
        raise CacheEntryError(f"{tarball}: {exc}") from None
    return ResolvedImage(ref, manifest, manifest_bytes, ref.digest, config, config_bytes)


def _copy_layers(tarball: Path, wanted: dict[str, Layer]) -> None:
    """Copy each member of ``tarball`` whose name gives a wanted digest (``<hex>.tar.gz``, as
    go-containerregistry names layers; ``<hex>.tar.zst`` and ``<hex>.tar`` too) to the layer's
    blob path, through a temporary file renamed only when digest and size match."""
    with _open_tarball(tarball) as tar:
        try:
            for member in tar:
                stem = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
                layer = wanted.get(f"sha256:{stem}")
                if layer is None or not member.isreg():
                    continue
                if member.size != layer.size:
                    raise CacheEntryError(f"{tarball}: {member.name} is {member.size} bytes, "
                                          f"the manifest says {layer.size}")
                source = tar.extractfile(member)
                assert source is not None
                _copy_verified(cast(BinaryIO, source), layer, f"{tarball}: {member.name}")
                del wanted[layer.digest]
        except (tarfile.TarError, EOFError) as exc:
            raise CacheEntryError(f"{tarball}: not a readable tarball: {exc}") from None
    if wanted:
        raise CacheEntryError(f"{tarball}: holds no layer {next(iter(wanted))}")


def _copy_verified(source: BinaryIO, layer: Layer, where: str) -> None:
    try:
        with replacing(layer.path) as handle:
            reader = VerifyingReader(source, layer.digest)
            shutil.copyfileobj(reader, handle, 1 << 20)
            reader.verify()
    except CorruptLayerError:
        raise CacheEntryError(f"{where}: content does not match {layer.digest}") from None
    except OSError as exc:  # an unreadable volume, or no room for the blob
        raise CacheEntryError(f"{where}: {exc.strerror or exc}") from None


def _open_tarball(tarball: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tarball, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise CacheEntryError(f"{tarball}: not a readable tarball: {exc}") from None


def _saved_manifest(tar: tarfile.TarFile, tarball: Path) -> dict[str, object]:
    """The one image entry of the tarball's ``manifest.json``."""
    try:
        data = json.loads(_read_member(tar, tarball, "manifest.json", MAX_MANIFEST_SIZE))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheEntryError(f"{tarball}: manifest.json is not valid JSON: {exc}") from None
    except RecursionError:
        raise CacheEntryError(f"{tarball}: manifest.json is nested too deeply") from None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise CacheEntryError(f"{tarball}: manifest.json does not describe one image")
    return cast(dict[str, object], data[0])


def _read_member(tar: tarfile.TarFile, tarball: Path, name: str, limit: int) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise CacheEntryError(f"{tarball}: no {name} in the tarball") from None
    except (tarfile.TarError, EOFError) as exc:
        raise CacheEntryError(f"{tarball}: not a readable tarball: {exc}") from None
    if not member.isreg() or member.size > limit:
        raise CacheEntryError(f"{tarball}: {name} is not a file of at most {limit} bytes")
    source = tar.extractfile(member)
    assert source is not None
    try:
        return source.read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise CacheEntryError(f"{tarball}: reading {name}: {exc}") from None
