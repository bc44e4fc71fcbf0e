"""kaniko's layer cache (``--cache``): RUN layers kept in a registry repository (or, with
``--cache-repo oci:DIR``, in OCI layouts in a directory), and reused
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

import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from executor import __version__
from executor.errors import ImageError, RegistryError
from executor.image import model
from executor.image.atomic import write_atomically
from executor.image.layout import REF_NAME_ANNOTATION, blob_path, write_oci_layout
from executor.image.model import Descriptor, Layer, Manifest, Platform, sha256_digest
from executor.image.reference import ImageRef, validate_digest
from executor.registry.client import MAX_CONFIG_SIZE, RegistryClient, RegistryHTTPError
from snapshot.layer import EMPTY_GZIP_LAYER
from snapshot.snapshot import Changes

log = logging.getLogger("kiln")

_VERSION = f"kiln-layer-cache/3 kiln/{__version__}"
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
    content, every deletion; mtimes and ctimes left out."""
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

    repo: ImageRef | Path  # a registry repository, or (``oci:DIR``) a directory of layouts
    ttl_s: float
    push: bool

    @property
    def name(self) -> str:
        return f"oci:{self.repo}" if isinstance(self.repo, Path) else self.repo.name


class EntryMissing(Exception):
    """No entry under that key (or its blob is gone): a plain miss."""


@contextlib.contextmanager
def _missing_on_404() -> Iterator[None]:
    """A registry's 404 is a miss; every other answer says something about the registry."""
    try:
        yield
    except RegistryHTTPError as exc:
        if exc.status == 404:
            raise EntryMissing from None
        raise


class RegistryStore:
    """Entries as images ``<repository>:<key>`` of a registry, reached with the push-side TLS
    settings (the cache is a repository kiln pushes to)."""

    def __init__(self, client: RegistryClient, repo: ImageRef) -> None:
        self.client = client
        self.repo = repo

    def read_manifest(self, key: str) -> tuple[bytes, str | None]:
        with _missing_on_404():
            body, media_type, _ = self.client.get_manifest(self.repo.with_tag(key), push=True)
        return body, media_type

    def read_blob(self, key: str, descriptor: Descriptor) -> bytes:
        with _missing_on_404():
            return self.client.get_blob_bytes(self.repo.with_tag(key), descriptor,
                                              what="config", push=True)

    def layer_file(self, key: str, descriptor: Descriptor, blobs: Path) -> Path:
        path = blobs / descriptor.digest.split(":", 1)[1]
        if not path.exists():
            with _missing_on_404():  # a blob garbage collected under its manifest
                self.client.fetch_blob(self.repo.with_tag(key), descriptor, path, push=True)
        return path

    def write(self, key: str, manifest: Manifest, config: bytes, layer: Layer) -> None:
        ref = self.repo.with_tag(key)
        self.client.push_blob(ref, layer.descriptor(), layer.path)
        self.client.push_blob_bytes(ref, manifest.config, config)
        self.client.push_manifest(ref, manifest.to_bytes(), manifest.media_type)


class LayoutStore:
    """Entries as OCI image layouts ``<directory>/<key>`` (``--cache-repo oci:DIR``), for a
    cache on a volume: one layout per key, so that builds writing at once never race on a
    shared ``index.json``. Layers are used where they lie; extraction checks their digests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read_manifest(self, key: str) -> tuple[bytes, str | None]:
        entry = self.directory / key
        try:
            index = json.loads((entry / "index.json").read_bytes())
        except FileNotFoundError:
            raise EntryMissing from None
        named = [m for m in index.get("manifests") or []
                 if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) == key]
        if not named:  # another build is writing this entry right now
            raise EntryMissing
        if len(named) != 1:
            raise ImageError(f"{entry}/index.json names no single image {key}")
        descriptor = Descriptor.from_json(named[0])
        return self._read(entry, descriptor), descriptor.media_type

    def read_blob(self, key: str, descriptor: Descriptor) -> bytes:
        return self._read(self.directory / key, descriptor)

    def layer_file(self, key: str, descriptor: Descriptor, blobs: Path) -> Path:
        path = blob_path(self.directory / key, descriptor.digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise EntryMissing from None
        if size != descriptor.size:
            raise ImageError(f"{path} is {size} bytes, the manifest says {descriptor.size}")
        return path

    def write(self, key: str, manifest: Manifest, config: bytes, layer: Layer) -> None:
        write_oci_layout(self.directory / key, manifest.to_bytes(), config, [layer],
                         ref_name=key)

    @staticmethod
    def _read(entry: Path, descriptor: Descriptor) -> bytes:
        path = blob_path(entry, descriptor.digest)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_CONFIG_SIZE + 1)
        except FileNotFoundError:
            raise EntryMissing from None
        if sha256_digest(data) != descriptor.digest:
            raise ImageError(f"{path} does not hold {descriptor.digest}")
        return data


# A RUN that changed nothing is stored as an empty tar (registries need not take a manifest
# without layers), marked by this label so that a hit records no layer, as the run did.
_NO_CHANGE_LABEL = "dev.kiln.cache.no-change"
_EMPTY_TAR = bytes(1024)
_EMPTY_TAR_GZIP = EMPTY_GZIP_LAYER  # the blob an empty layer of the image has too


class LayerCache:
    """Looks up and stores RUN layers in the cache repository (or layout directory)."""

    def __init__(self, settings: CacheSettings, client: RegistryClient, blobs: Path,
                 platform: Platform) -> None:
        self.settings = settings
        self.store: RegistryStore | LayoutStore = (
            LayoutStore(settings.repo) if isinstance(settings.repo, Path)
            else RegistryStore(client, settings.repo))
        self.blobs = blobs
        self.platform = platform
        # Cleared at the first answer that says the repository cannot be used that way (each
        # later request would be retried and fail alike). Reads and writes fail apart.
        self.can_read = True
        self.can_write = settings.push
        # Layer digest -> the cache repository that holds it: the final push mounts from
        # there instead of uploading again (same registry).
        self.homes: dict[str, ImageRef] = {}

    def where(self, key: str) -> str:
        """An entry's name in log lines: ``<repo>:<key>`` or ``oci:<dir>/<key>``."""
        return (f"oci:{self.settings.repo / key}" if isinstance(self.settings.repo, Path)
                else str(self.settings.repo.with_tag(key)))

    def lookup(self, key: str, command: str) -> CachedLayer | None:
        """The cached layer for ``key``, downloaded into the blob directory; None on a miss."""
        if not self.can_read:
            return None
        where = self.where(key)
        log.info("Checking for cached layer %s...", where)
        try:
            found = self._read_entry(key)
        except EntryMissing:
            log.info("No cached layer found for cmd %s", command)
            return None
        except (RegistryError, PermissionError) as exc:  # refused, TLS, timeout, unreadable
            self._give_up("read", exc)
            return None
        except (ImageError, OSError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, RecursionError) as exc:
            log.warning("Ignoring the cached layer %s: %s", where, exc)
            return None
        if found is None:
            log.info("Cached layer %s is older than --cache-ttl; building cmd %s", where,
                     command)
            return None
        log.info("Using caching version of cmd: %s", command)
        if found.layer is not None and isinstance(self.settings.repo, ImageRef):
            self.homes[found.layer.digest] = self.settings.repo
        return found

    def _read_entry(self, key: str) -> CachedLayer | None:
        """The entry ``key`` with its layer on disk; None when it has expired. Raises on
        anything that makes it unusable."""
        body, media_type = self.store.read_manifest(key)
        manifest = Manifest.from_bytes(body, media_type)
        config = json.loads(self.store.read_blob(key, manifest.config))
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
        path = self.store.layer_file(key, descriptor, self.blobs)
        return CachedLayer(Layer(path, descriptor.digest, str(diff_ids[0]), descriptor.size,
                                 descriptor.media_type), history)

    def store_layer(self, key: str, layer: Layer | None, history: str) -> None:
        """Store ``layer`` (None: the RUN changed nothing) as the entry ``key``, with the
        history line the image records for it, so a build that finds it records the same."""
        if not self.can_write:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        labels = {_NO_CHANGE_LABEL: "true"} if layer is None else {}
        stored = layer if layer is not None else self._empty_layer()
        config = json.dumps({
            "architecture": self.platform.architecture, "os": self.platform.os,
            "created": now, "config": {"Labels": labels} if labels else {},
            "rootfs": {"type": "layers", "diff_ids": [stored.diff_id]},
            "history": [{"created": now, "created_by": history}],
        }, indent=2).encode()
        oci = stored.media_type in (model.OCI_LAYER_GZIP, model.OCI_LAYER_ZSTD,
                                    model.OCI_LAYER)
        manifest = Manifest(model.OCI_MANIFEST if oci else model.DOCKER_MANIFEST,
                            Descriptor(model.OCI_CONFIG if oci else model.DOCKER_CONFIG,
                                       sha256_digest(config), len(config)),
                            (stored.descriptor(),))
        log.info("Pushing layer %s to cache now", self.where(key))
        try:
            self.store.write(key, manifest, config, stored)
        except (RegistryError, ImageError, OSError) as exc:
            self._give_up("write", exc)
            return
        if layer is not None and isinstance(self.settings.repo, ImageRef):
            self.homes[layer.digest] = self.settings.repo

    def _empty_layer(self) -> Layer:
        """The labelled empty tar that stands for "this RUN changed nothing", as a blob file."""
        digest = sha256_digest(_EMPTY_TAR_GZIP)
        path = self.blobs / digest.split(":", 1)[1]
        if not path.exists():
            write_atomically(path, _EMPTY_TAR_GZIP)
        return Layer(path, digest, sha256_digest(_EMPTY_TAR), len(_EMPTY_TAR_GZIP),
                     model.DOCKER_LAYER_GZIP)

    def _give_up(self, action: str, exc: Exception) -> None:
        if action == "read":
            self.can_read = False
        else:
            self.can_write = False
        log.warning("Cannot %s the layer cache %s (%s); the build goes on without %s it",
                    action, self.settings.name, exc,
                    "reading" if action == "read" else "writing")
