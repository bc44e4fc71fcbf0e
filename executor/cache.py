"""kaniko's layer cache (``--cache``): RUN layers kept in a registry repository, and reused
instead of running the command again.

The key of a RUN is a chain of hashes. A stage starts from its base: the pulled image's manifest
digest, ``scratch``, or the chain a stage built FROM ended with. Every instruction then folds in
its text (heredoc bodies included) and the ARG and ENV values in scope. COPY and ADD also fold
in what they wrote (paths, types, modes, owners, link targets and file contents, but not
mtimes, as Docker's cache leaves them out), because their inputs live outside the Dockerfile;
they always run, which costs what fetching their layer would. A RUN's layer is stored as the
one-layer image ``<cache repo>:<key>``, its config dated when it was stored (for
``--cache-ttl``).

Where a cache can make a wrong image, this one builds instead:

- after the first RUN in a stage that finds nothing (or an expired layer), nothing later in the
  stage is looked up: the later layers stored under the same keys were made on top of the old
  run's output, not this one's (kaniko's rule too), and a stage built FROM such a stage looks
  nothing up either;
- a RUN whose result depends on files the key cannot see (``RUN --mount=type=bind``, which reads
  the context or another stage) is never stored, and ends lookups like a miss;
- a cached image that is not one layer of a known media type is a miss.

The cache never fails a build: a repository that cannot be read is a miss, one that cannot be
written is skipped; each with a warning that names the registry's answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from executor.errors import ImageError, RegistryError
from executor.image import model
from executor.image.model import Descriptor, Layer, Manifest, Platform, sha256_digest
from executor.image.reference import ImageRef
from executor.registry.client import RegistryClient, RegistryHTTPError
from snapshot.snapshot import Changes

log = logging.getLogger("kiln")

_VERSION = "kiln-layer-cache/1"
_READ_CHUNK = 1 << 20


def chain(previous: str, *parts: object) -> str:
    """The next link of a key chain: a hash of the previous link and ``parts`` (as JSON)."""
    text = json.dumps([previous, *parts], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def stage_seed(base: str, platform: Platform, layer_settings: object = None) -> str:
    """Where a stage's chain starts: its base (see the module docstring), the platform, and
    the build settings that shape a layer's bytes (compression, --reproducible, what is
    ignored), so a layer made under other settings is never reused."""
    return chain(_VERSION, base, str(platform), layer_settings)


def written_content(root: Path, changes: Changes) -> str:
    """A hash of what a step wrote: every upserted path's type, mode, owner, link target and
    content, every deletion and opaque directory; mtimes and ctimes left out."""
    digest = hashlib.sha256()
    for path in changes.upserts:
        host = os.path.join(root, path)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            digest.update(f"?{path}\0".encode("utf-8", "surrogateescape"))
            continue
        head = f"+{path}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0"
        digest.update(head.encode("utf-8", "surrogateescape"))
        if stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(host).encode("utf-8", "surrogateescape"))
        elif stat.S_ISREG(st.st_mode):
            with open(host, "rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    digest.update(chunk)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            digest.update(f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}".encode())
        digest.update(b"\0")
    for path in changes.deletions:
        digest.update(f"-{path}\0".encode("utf-8", "surrogateescape"))
    for path in changes.opaque:
        digest.update(f"*{path}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedLayer:
    """A layer found in the cache, and the history line of the step that made it."""

    layer: Layer | None  # None: the RUN changed no file
    history: str


@dataclass
class KeyChain:
    """A stage's chain so far, and whether lookups may still be trusted (no miss yet)."""

    key: str
    looking: bool = True


@dataclass(frozen=True)
class CacheSettings:
    """``--cache-repo`` (resolved), ``--cache-ttl`` and ``--no-push-cache``."""

    repo: ImageRef
    ttl_s: float
    push: bool


class LayerCache:
    """Looks up and stores RUN layers in the cache repository."""

    def __init__(self, settings: CacheSettings, client: RegistryClient, blobs: Path,
                 platform: Platform) -> None:
        self.settings = settings
        self.client = client
        self.blobs = blobs
        self.platform = platform
        # Set at the first answer that is not "not found": a repository that fails once is not
        # asked again (each request would be retried and fail the same way).
        self.unusable = False
        # Layer digest -> the cache repository that holds it: the final push mounts from
        # there instead of uploading again (same registry).
        self.homes: dict[str, ImageRef] = {}

    def ref(self, key: str) -> ImageRef:
        return self.settings.repo.with_tag(key)

    def lookup(self, key: str, command: str) -> CachedLayer | None:
        """The cached layer for ``key``, downloaded into the blob directory; None on a miss."""
        if self.unusable:
            return None
        ref = self.ref(key)
        log.info("Checking for cached layer %s...", ref)
        try:
            body, media_type, _ = self.client.get_manifest(ref)
            manifest = Manifest.from_bytes(body, media_type)
            if len(manifest.layers) > 1:
                raise ImageError(f"a cached layer image has {len(manifest.layers)} layers")
            config = json.loads(self.client.get_blob_bytes(ref, manifest.config,
                                                           what="config"))
            diff_ids = config["rootfs"]["diff_ids"]
            if len(diff_ids) != len(manifest.layers):
                raise ImageError("its config and manifest list different layers")
            for descriptor in manifest.layers:  # refuses a media type we cannot read
                model.compression_of(descriptor.media_type)
            created = datetime.fromisoformat(config["created"].replace("Z", "+00:00"))
            history = str(config["history"][0]["created_by"])
        except RegistryHTTPError as exc:
            if exc.status != 404:
                self._give_up("read", exc)
                return None
            log.info("No cached layer found for cmd %s", command)
            return None
        except RegistryError as exc:  # no answer at all: refused, TLS, timeout
            self._give_up("read", exc)
            return None
        except (ImageError, ValueError, KeyError, TypeError) as exc:
            log.warning("Ignoring the cached layer %s: %s", ref, exc)
            return None
        age = time.time() - created.timestamp()
        if age > self.settings.ttl_s:
            log.info("Cached layer %s expired (stored %s); building cmd %s", ref,
                     config["created"], command)
            return None
        if not manifest.layers:
            log.info("Using caching version of cmd: %s", command)
            return CachedLayer(None, history)
        descriptor = manifest.layers[0]
        path = self.blobs / descriptor.digest.split(":", 1)[1]
        try:
            if not path.exists():
                self.client.fetch_blob(ref, descriptor, path)
        except RegistryError as exc:
            self._give_up("read", exc)
            return None
        log.info("Using caching version of cmd: %s", command)
        self.homes[descriptor.digest] = self.settings.repo
        return CachedLayer(Layer(path, descriptor.digest, diff_ids[0], descriptor.size,
                                 descriptor.media_type), history)

    def store(self, key: str, layer: Layer | None, history: str) -> None:
        """Push ``layer`` as the image ``<repo>:<key>`` (unless ``--no-push-cache``), with the
        history line the image records for it, so a build that finds it records the same."""
        if not self.settings.push or self.unusable:
            return
        ref = self.ref(key)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        config = json.dumps({
            "architecture": self.platform.architecture, "os": self.platform.os,
            "created": now, "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id] if layer else []},
            "history": [{"created": now, "created_by": history}],
        }, indent=2).encode()
        oci = layer is not None and layer.media_type in (model.OCI_LAYER_GZIP,
                                                         model.OCI_LAYER_ZSTD, model.OCI_LAYER)
        manifest = Manifest(model.OCI_MANIFEST if oci else model.DOCKER_MANIFEST,
                            Descriptor(model.OCI_CONFIG if oci else model.DOCKER_CONFIG,
                                       sha256_digest(config), len(config)),
                            (layer.descriptor(),) if layer else ())
        log.info("Pushing layer %s to cache now", ref)
        try:
            if layer is not None:
                self.client.push_blob(ref, layer.descriptor(), layer.path)
            self.client.push_blob_bytes(ref, manifest.config, config)
            self.client.push_manifest(ref, manifest.to_bytes(), manifest.media_type)
            if layer is not None:
                self.homes[layer.digest] = self.settings.repo
        except (RegistryError, ImageError) as exc:
            self._give_up("write", exc)

    def _give_up(self, action: str, exc: Exception) -> None:
        self.unusable = True
        log.warning("Cannot %s the layer cache %s (%s); building without it, the build goes on",
                    action, self.settings.repo.name, exc)
