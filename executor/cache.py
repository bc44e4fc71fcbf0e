"""kaniko's layer cache (``--cache``): RUN layers kept in a registry repository, and reused
instead of running the command again.

The key of a RUN is a chain of hashes. A stage starts from its base (the pulled image's manifest
digest, ``scratch``, or the chain a stage built FROM ended with), the platform, kiln's version
and the settings that shape a layer's bytes. Every instruction then folds in its text (heredoc
bodies included) and the ARG and ENV values in scope, and every step that writes files folds in
what it wrote: a RUN its layer's diff_id (or "no change"), a COPY or ADD the paths, types,
modes, owners, link targets and contents of what it wrote (not mtimes, as Docker's cache leaves
them out; COPY and ADD always run, which costs what fetching their layer would). A RUN's layer
is stored as the one-layer image ``<cache repo>:<key>``, its config dated when it was stored
(for ``--cache-ttl``).

Because each key names the output of every step before it, an entry is only ever applied on
top of the very layers it was made on: builds that overlap, entries that expire or fail to be
stored one by one, a RUN that prints a new date each time: each can only make a lookup miss,
never mix layers of different runs. A RUN whose result depends on files the key cannot see
(a bind mount, or any mount filled from another stage or the context) is neither looked up nor
stored; the steps after it are keyed by its output like any other.

Left out of the key on purpose, as Docker's cache leaves them out: the contents of secrets and
of cache mounts, the proxy variables (``HTTP_PROXY`` and the like reach RUN without an ARG), and
the mtimes of copied files.

The cache never fails a build: an entry that cannot be read or used is a miss; a repository
that refuses reads is not read again, one that refuses writes not written again; each with one
warning naming the registry's answer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from executor import __version__
from executor.errors import ImageError, RegistryError
from executor.image import model
from executor.image.model import Descriptor, Layer, Manifest, Platform, sha256_digest
from executor.image.reference import ImageRef, validate_digest
from executor.registry.client import RegistryClient, RegistryHTTPError
from snapshot.snapshot import Changes

log = logging.getLogger("kiln")

_VERSION = f"kiln-layer-cache/2 kiln/{__version__}"
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
    """A stage's key chain so far (see the module docstring)."""

    key: str


@dataclass(frozen=True)
class CacheSettings:
    """``--cache-repo`` (resolved), ``--cache-ttl`` and ``--no-push-cache``."""

    repo: ImageRef
    ttl_s: float
    push: bool


# A RUN that changed nothing is stored as an empty tar (registries need not take a manifest
# without layers), marked by this label so that a hit records no layer, as the run did.
_NO_CHANGE_LABEL = "dev.kiln.cache.no-change"
_EMPTY_TAR = bytes(1024)
_EMPTY_TAR_GZIP = gzip.compress(_EMPTY_TAR, mtime=0)


class LayerCache:
    """Looks up and stores RUN layers in the cache repository."""

    def __init__(self, settings: CacheSettings, client: RegistryClient, blobs: Path,
                 platform: Platform) -> None:
        self.settings = settings
        self.client = client
        self.blobs = blobs
        self.platform = platform
        # Cleared at the first answer that says the repository cannot be used that way (each
        # later request would be retried and fail alike). Reads and writes fail apart.
        self.can_read = True
        self.can_write = settings.push
        # Layer digest -> the cache repository that holds it: the final push mounts from
        # there instead of uploading again (same registry).
        self.homes: dict[str, ImageRef] = {}

    def ref(self, key: str) -> ImageRef:
        """The image an entry is stored as: the cache repository, tagged with the key."""
        return self.settings.repo.with_tag(key)

    def lookup(self, key: str, command: str) -> CachedLayer | None:
        """The cached layer for ``key``, downloaded into the blob directory; None on a miss."""
        if not self.can_read:
            return None
        ref = self.ref(key)
        log.info("Checking for cached layer %s...", ref)
        try:
            found = self._read_entry(ref)
        except RegistryHTTPError as exc:
            if exc.status == 404:  # no such entry, or its blob is gone (garbage collected)
                log.info("No cached layer found for cmd %s", command)
            else:
                self._give_up("read", exc)
            return None
        except RegistryError as exc:  # no answer at all: refused, TLS, timeout
            self._give_up("read", exc)
            return None
        except (ImageError, ValueError, KeyError, IndexError, TypeError,
                AttributeError) as exc:
            log.warning("Ignoring the cached layer %s: %s", ref, exc)
            return None
        if found is None:
            log.info("Cached layer %s is older than --cache-ttl; building cmd %s", ref,
                     command)
            return None
        log.info("Using caching version of cmd: %s", command)
        if found.layer is not None:
            self.homes[found.layer.digest] = self.settings.repo
        return found

    def _read_entry(self, ref: ImageRef) -> CachedLayer | None:
        """The entry at ``ref`` with its layer downloaded; None when it has expired. Raises
        on anything that makes it unusable."""
        body, media_type, _ = self.client.get_manifest(ref, push=True)
        manifest = Manifest.from_bytes(body, media_type)
        config = json.loads(self.client.get_blob_bytes(ref, manifest.config, what="config",
                                                       push=True))
        diff_ids = config["rootfs"]["diff_ids"]
        if len(manifest.layers) != 1 or len(diff_ids) != 1:
            raise ImageError("a cache entry is an image of exactly one layer")
        descriptor = manifest.layers[0]
        why = validate_digest(descriptor.digest)
        if why:
            raise ImageError(f"its layer digest {descriptor.digest!r}: {why}")
        model.compression_of(descriptor.media_type)  # refuses a media type we cannot read
        created = datetime.fromisoformat(str(config["created"]).replace("Z", "+00:00"))
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        history = str(config["history"][0]["created_by"])
        if time.time() - created.timestamp() > self.settings.ttl_s:
            return None
        if ((config.get("config") or {}).get("Labels") or {}).get(_NO_CHANGE_LABEL):
            return CachedLayer(None, history)
        path = self.blobs / descriptor.digest.split(":", 1)[1]
        if not path.exists():
            self.client.fetch_blob(ref, descriptor, path, push=True)
        return CachedLayer(Layer(path, descriptor.digest, str(diff_ids[0]), descriptor.size,
                                 descriptor.media_type), history)

    def store(self, key: str, layer: Layer | None, history: str) -> None:
        """Push ``layer`` (None: the RUN changed nothing) as the image ``<repo>:<key>``, with
        the history line the image records for it, so a build that finds it records the same."""
        if not self.can_write:
            return
        ref = self.ref(key)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        labels = {_NO_CHANGE_LABEL: "true"} if layer is None else {}
        diff_id = layer.diff_id if layer is not None else sha256_digest(_EMPTY_TAR)
        config = json.dumps({
            "architecture": self.platform.architecture, "os": self.platform.os,
            "created": now, "config": {"Labels": labels} if labels else {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": now, "created_by": history}],
        }, indent=2).encode()
        layer_descriptor = (layer.descriptor() if layer is not None else
                            Descriptor(model.DOCKER_LAYER_GZIP, sha256_digest(_EMPTY_TAR_GZIP),
                                       len(_EMPTY_TAR_GZIP)))
        oci = layer_descriptor.media_type in (model.OCI_LAYER_GZIP, model.OCI_LAYER_ZSTD,
                                              model.OCI_LAYER)
        manifest = Manifest(model.OCI_MANIFEST if oci else model.DOCKER_MANIFEST,
                            Descriptor(model.OCI_CONFIG if oci else model.DOCKER_CONFIG,
                                       sha256_digest(config), len(config)),
                            (layer_descriptor,))
        log.info("Pushing layer %s to cache now", ref)
        try:
            if layer is not None:
                self.client.push_blob(ref, layer_descriptor, layer.path)
            else:
                self.client.push_blob_bytes(ref, layer_descriptor, _EMPTY_TAR_GZIP)
            self.client.push_blob_bytes(ref, manifest.config, config)
            self.client.push_manifest(ref, manifest.to_bytes(), manifest.media_type)
        except (RegistryError, ImageError) as exc:
            self._give_up("write", exc)
            return
        if layer is not None:
            self.homes[layer.digest] = self.settings.repo

    def _give_up(self, action: str, exc: Exception) -> None:
        if action == "read":
            self.can_read = False
        else:
            self.can_write = False
        log.warning("Cannot %s the layer cache %s (%s); the build goes on without %s it",
                    action, self.settings.repo.name, exc,
                    "reading" if action == "read" else "writing")
