"""The distribution API (OCI distribution-spec v2): resolve, pull and push images.

Pull is one manifest request per image: the tag is asked for with every manifest and index
type accepted, and only an index costs a second request (the chosen platform's manifest, by
digest). Every byte that arrives is checked against the digest that named it, so a registry,
proxy or network that corrupts content is caught before the content is used. Blobs stream to
disk in bounded chunks and from disk when pushed; no layer is ever held in memory.

Every request goes through ``RegistryClient._request``, which asks an ``Authenticator``
(``auth.RegistryAuth``) for a header before sending and again on a ``401`` challenge, and asks it
what to advise when the registry still says no.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

import requests

from executor.errors import ImageError, RegistryError
from executor.image.model import (
    ACCEPT_MANIFESTS,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    Layer,
    Manifest,
    Platform,
    sha256_digest,
)
from executor.image.reference import ImageRef, validate_digest
from executor.log import TransferMeter, heartbeat
from executor.registry.feed import DownloadFeed
from executor.registry.transport import (
    RETRY_STATUSES,
    Body,
    MeteredFile,
    RegistryConnectionError,
    Transport,
    TransportOptions,
    describe_connection_error,
    describe_failure,
    format_wait,
)
from snapshot.errors import storage_errors
from snapshot.layer import lock_new_file

log = logging.getLogger("kiln")
_T = TypeVar("_T")

CHUNK_SIZE = 1 << 20
#: A blob download's read: small enough that an extraction following the download
#: (executor.registry.feed) gets bytes as they come, not a megabyte late.
DOWNLOAD_CHUNK_SIZE = 128 << 10
#: The suffix of a blob being downloaded (renamed into place once verified).
PARTIAL_SUFFIX = ".partial"
#: distribution refuses manifests above 4 MiB; anything bigger is not a manifest.
MAX_MANIFEST_SIZE = 4 << 20
#: A config blob is JSON read into memory; refuse absurd ones rather than exhaust memory.
MAX_CONFIG_SIZE = 64 << 20

#: The authenticator's advice for a refused response, read by ``http_error``.
_ADVICE: weakref.WeakKeyDictionary[requests.Response, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Scope:
    """What a request needs permission for: bearer-token scopes are built from this."""

    registry: str
    repository: str
    push: bool = False
    #: For a cross-repository mount: the repository the blob is read from (needs pull).
    mount_from: str | None = None


class Authenticator(Protocol):
    """The hook ``auth.py`` implements; ``None`` from either method means anonymous."""

    def authorization(self, scope: Scope) -> str | None:
        """An ``Authorization`` header value to send up front (a cached token), if any."""

    def challenge(self, scope: Scope, response: requests.Response) -> str | None:
        """An ``Authorization`` header answering the ``401`` in ``response``, if one can be had."""

    def explain(self, scope: Scope, response: requests.Response) -> str | None:
        """Advice for a final ``401``/``403`` (which credentials to check), without secrets."""


@dataclass(frozen=True)
class PullSources:
    """Where base images are pulled from: kaniko's ``--registry-map`` / ``--registry-mirror``.

    ``maps`` takes a registry (``docker.io`` for the Hub, whatever name it was given) to
    mirrors tried in order; a mirror may carry a repository prefix (``mirror.io/hub``), so
    ``docker.io/library/busybox`` becomes ``mirror.io/hub/library/busybox``.
    """

    maps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    skip_default_fallback: bool = False
    #: ``--image-download-retry``: how many times a failed pull is tried again.
    retries: int = 0

    def mirrors_for(self, ref: ImageRef) -> list[ImageRef]:
        """``ref`` as found on each mirror of its registry, in order."""
        out = []
        for mirror in self.maps.get(ref.registry, ()):
            registry, _, prefix = mirror.strip("/").partition("/")
            repository = f"{prefix}/{ref.repository}" if prefix else ref.repository
            out.append(ImageRef(registry, repository, ref.tag, ref.digest))
        return out


@dataclass(frozen=True)
class ResolvedImage:
    """An image's manifest and config, pulled and verified; layers are fetched separately."""

    ref: ImageRef
    manifest: Manifest
    manifest_bytes: bytes
    #: The digest of ``manifest_bytes``: for a multi-platform image, the chosen platform's.
    manifest_digest: str
    config: ImageConfig
    config_bytes: bytes

    def layer_files(self, directory: Path) -> list[Layer]:
        """The manifest's layers, bottom first, each paired with its diff_id and named
        ``directory/<hex digest>``, where it is (or will be) downloaded."""
        descriptors, diff_ids = self.manifest.layers, self.config.diff_ids
        if len(diff_ids) != len(descriptors):
            raise ImageError(f"{self.ref}: the config lists {len(diff_ids)} layers but the "
                             f"manifest has {len(descriptors)}")
        return [Layer(directory / desc.digest.split(":", 1)[1], desc.digest, diff_id,
                      desc.size, desc.media_type)
                for desc, diff_id in zip(descriptors, diff_ids, strict=True)]


class DownloadCancelled(Exception):
    """A download stopped by its ``Cancellation``; never retried, never reported."""


class Cancellation:
    """Stops blob downloads running in other threads, at once.

    Setting a flag is not enough: a thread blocked reading from a stalled registry would only
    see it after the read timeout (two minutes). ``cancel()`` also shuts down the socket of
    every response being read, which ends the blocked read now. A stop signal must not wait
    for base-layer downloads (issue 18: 401 s with a stalled registry; the kubelet's SIGKILL
    comes after 30 s).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._responses: set[requests.Response] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``DownloadCancelled`` once ``cancel()`` was called."""
        if self._event.is_set():
            raise DownloadCancelled()

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            _shut_down_socket(response)

    @contextlib.contextmanager
    def watching(self, response: requests.Response) -> Iterator[None]:
        """Register ``response`` as being read, so ``cancel()`` can cut it."""
        with self._lock:
            self._responses.add(response)
        try:
            self.check()
            yield
        finally:
            with self._lock:
                self._responses.discard(response)


def _shut_down_socket(response: requests.Response) -> None:
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class RegistryClient:
    """Talks to registries on behalf of one build. Use it as a context manager or ``close()`` it."""

    def __init__(self, transport_options: TransportOptions | None = None, *,
                 transport: Transport | None = None,
                 auth: Authenticator | None = None,
                 pull_sources: PullSources | None = None) -> None:
        self.transport = transport or Transport(transport_options)
        self.auth = auth
        self.pull_sources = pull_sources or PullSources()
        #: image name -> the mirror it was resolved from, so its blobs come from there too.
        self._pulled_from: dict[str, ImageRef] = {}

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # --- pull ----------------------------------------------------------------------------------

    def resolve(self, ref: ImageRef, platform: Platform) -> ResolvedImage:
        """The manifest and config of ``ref`` for ``platform`` (chosen from an index if needed).

        A base image whose registry has mirrors (``--registry-mirror``, ``--registry-map``) is
        tried on each mirror in turn, then on its own registry unless
        ``--skip-default-registry-fallback``; ``fetch_blob`` then reads from wherever the
        manifest came from. Each try is repeated ``--image-download-retry`` times.
        """
        sources = self.pull_sources
        for mirror in sources.mirrors_for(ref):
            log.info("Retrieving image %s from mapped registry %s", mirror, mirror.registry)
            try:
                resolved = self._retrying_pull(partial(self._resolve, mirror, platform))
            except (RegistryError, ImageError) as exc:
                log.warning("Failed to retrieve image %s from mapped registry %s: %s. Will try "
                            "with the next registry, or fallback to the original registry.",
                            mirror, mirror.registry, exc)
                continue
            self._pulled_from[ref.name] = mirror
            return resolved
        if sources.mirrors_for(ref) and sources.skip_default_fallback:
            raise RegistryError(f"pulling {ref}: image not found on any configured mapped "
                                f"registry (--skip-default-registry-fallback)")
        return self._retrying_pull(partial(self._resolve, ref, platform))

    def _retrying_pull(self, pull: Callable[[], _T]) -> _T:
        """``pull()``, tried again ``pull_sources.retries`` times with backoff 1 s, 2 s, ...

        A refusal that cannot change (401, 403, 404) is not retried.
        """
        attempt = 0
        while True:
            try:
                return pull()
            except RegistryError as exc:
                permanent = isinstance(exc, RegistryHTTPError) and exc.status in (401, 403, 404)
                if attempt >= self.pull_sources.retries or permanent:
                    raise
                log.warning("Pull failed (%s), retrying", exc)
                self.transport.sleep(float(2 ** attempt))
                attempt += 1

    def _resolve(self, ref: ImageRef, platform: Platform) -> ResolvedImage:
        body, media_type, digest = self.get_manifest(ref)
        if _is_index(body, media_type):
            with _naming(f"pulling index {ref.name}{_at(ref)} ({digest})"):
                index = Index.from_bytes(body, media_type)
            try:
                entry = index.select(platform)
            except ImageError as exc:
                raise ImageError(f"{ref}: {exc}") from None
            ref_for_platform = ref.with_digest(entry.digest)
            body, media_type, digest = self.get_manifest(ref_for_platform)
            if _is_index(body, media_type):
                raise ImageError(f"{ref_for_platform}: the index for {platform} points at "
                                 "another index, which kiln does not follow")
        with _naming(f"pulling manifest {ref.name}{_at(ref)} ({digest})"):
            manifest = Manifest.from_bytes(body, media_type)
        config_bytes = self.get_blob_bytes(ref, manifest.config, what="config",
                                           limit=MAX_CONFIG_SIZE)
        with _naming(f"pulling config {ref.name}@{manifest.config.digest}"):
            config = ImageConfig.from_bytes(config_bytes)
        return ResolvedImage(ref, manifest, body, digest, config, config_bytes)

    def get_manifest(self, ref: ImageRef, *, push: bool = False) -> tuple[bytes, str | None, str]:
        """(body, media type, digest) of the manifest or index ``ref`` names, in one request.

        When ``ref`` has a digest the body is checked against it. ``push``: ``ref`` is a
        repository kiln pushes to (the layer cache), reached with the push-side TLS settings.
        """
        operation = f"pulling manifest {ref.name}{_at(ref)}"
        response = self._request("GET", ref, f"/v2/{ref.repository}/manifests/{ref.reference}",
                                 headers={"Accept": ACCEPT_MANIFESTS}, push=push)
        with response:
            if response.status_code != 200:
                raise http_error(operation, response)
            body = _read_limited(response, MAX_MANIFEST_SIZE, operation)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        digest = _digest_of(body, ref.digest.partition(":")[0] if ref.digest else "sha256")
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{operation}: digest mismatch: the registry sent content with "
                                f"digest {digest}")
        return body, content_type or None, digest

    def get_blob_bytes(self, ref: ImageRef, descriptor: Descriptor, *, what: str = "blob",
                       limit: int = MAX_CONFIG_SIZE, push: bool = False) -> bytes:
        """A small blob (a config) in memory, checked against ``descriptor``."""
        operation = f"pulling {what} {ref.name}@{descriptor.digest}"
        _check_descriptor(descriptor, operation)
        if descriptor.size > limit:
            raise RegistryError(f"{operation}: {descriptor.size} bytes is more than the "
                                f"{limit} kiln reads into memory")
        response = self._request("GET", ref, f"/v2/{ref.repository}/blobs/{descriptor.digest}",
                                 push=push)
        with response:
            if response.status_code != 200:
                raise http_error(operation, response)
            body = _read_limited(response, descriptor.size, operation)
        _verify(descriptor, _digest_of(body, descriptor.digest.partition(":")[0]), len(body),
                operation)
        return body

    def fetch_blob(self, ref: ImageRef, descriptor: Descriptor, dest: Path, *,
                   push: bool = False, cancel: Cancellation | None = None,
                   feed: DownloadFeed | None = None) -> None:
        """Download the blob ``descriptor`` names to ``dest``, verified, in 128 KiB chunks.

        The bytes go to a temporary file next to ``dest`` that is renamed into place only when
        digest and size match, so ``dest`` never holds a partial or corrupt blob. A download
        that breaks off is started again, up to the transport's retry count. ``cancel`` stops
        it from another thread (``DownloadCancelled``), even in the middle of a stalled read.
        ``feed`` hears of every attempt's file and bytes, for a reader following the download
        (:mod:`executor.registry.feed`); the caller tells it the end.
        """
        ref = ref if push else self._pulled_from.get(ref.name, ref)
        self._retrying_pull(partial(self._fetch_blob, ref, descriptor, dest, push,
                                    cancel or Cancellation(), feed))

    def _fetch_blob(self, ref: ImageRef, descriptor: Descriptor, dest: Path,
                    push: bool, cancel: Cancellation, feed: DownloadFeed | None = None) -> None:
        operation = f"fetching blob {ref.name}@{descriptor.digest}"
        _check_descriptor(descriptor, operation)
        dest.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            cancel.check()
            try:
                self._download(ref, descriptor, dest, operation, push, cancel, feed)
                return
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                cancel.check()
                path = f"/v2/{ref.repository}/blobs/{descriptor.digest}"
                limit = self.transport.options.retries
                if attempt >= limit:
                    raise RegistryError(f"{operation}: "
                                        f"{describe_failure(exc, ref.registry, 'GET', path)}"
                                        ) from exc
                delay = self.transport.backoff_delay(attempt)
                log.warning("Retrying download of blob %s from %s after %s due to %s (retry %d "
                            "of %d)", descriptor.digest, ref.registry, format_wait(delay),
                            describe_connection_error(exc), attempt + 1, limit)
                self.transport.sleep(delay)
                attempt += 1

    def _download(self, ref: ImageRef, descriptor: Descriptor, dest: Path,
                  operation: str, push: bool, cancel: Cancellation,
                  feed: DownloadFeed | None = None) -> None:
        response = self._request("GET", ref, f"/v2/{ref.repository}/blobs/{descriptor.digest}",
                                 stream=True, push=push)
        with response, cancel.watching(response):
            if response.status_code != 200:
                raise http_error(operation, response)
            hasher = hashlib.new(descriptor.digest.partition(":")[0])
            # A full disk names the blob; only file operations: requests' errors are OSErrors.
            disk = partial(storage_errors, dest.parent, f"write blob {descriptor.digest} to")
            size = 0
            while True:
                handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed or removed
                    dir=dest.parent, prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX,
                    delete=False)
                # Held while the file is written: stale-partial cleanup skips a live download
                # (and a file it took before the lock is made again).
                if lock_new_file(handle.fileno(), handle.name):
                    break
                handle.close()
            meter = TransferMeter("downloading", descriptor.digest, ref.registry,
                                  descriptor.size)
            if feed is not None:
                feed.begin(handle.name)

            try:
                with handle, heartbeat(meter.describe, self.transport.progress_every):
                    for chunk in response.iter_content(DOWNLOAD_CHUNK_SIZE):
                        cancel.check()
                        size += len(chunk)
                        meter.done = size
                        if size > descriptor.size:
                            break  # a registry sending more than it should is wrong already
                        hasher.update(chunk)
                        with disk():
                            handle.write(chunk)
                            if feed is not None:  # where a reader's own descriptor sees it
                                handle.flush()
                        if feed is not None:
                            feed.wrote(len(chunk))
                    with disk():
                        handle.flush()
                _verify(descriptor, f"{descriptor.digest.partition(':')[0]}:{hasher.hexdigest()}",
                        size, operation)
                with disk():
                    os.replace(handle.name, dest)
            except BaseException:
                Path(handle.name).unlink(missing_ok=True)
                raise

    # --- push ----------------------------------------------------------------------------------

    def blob_exists(self, ref: ImageRef, digest: str, *, push: bool = True) -> bool:
        """True when ``ref``'s repository already holds the blob ``digest`` (a ``HEAD``).

        ``push`` picks the TLS policy: the check normally precedes an upload to a destination.
        """
        operation = f"checking blob {ref.name}@{digest}"
        response = self._request("HEAD", ref, f"/v2/{ref.repository}/blobs/{digest}", push=push)
        with response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise http_error(operation, response)

    def push_blob(self, ref: ImageRef, descriptor: Descriptor, path: Path, *,
                  mount_from: ImageRef | str | None = None) -> bool:
        """Upload the blob in ``path`` to ``ref``'s repository unless it is there already.

        The file is streamed from disk. With ``mount_from`` (a repository on the same registry)
        a cross-repository mount is tried first, falling back to an upload when the registry
        declines. Returns False when nothing had to be sent.
        """
        actual = path.stat().st_size
        if actual != descriptor.size:
            raise ImageError(f"blob {descriptor.digest} in {path} is {actual} bytes, "
                             f"its descriptor says {descriptor.size}")
        meter = TransferMeter("uploading", descriptor.digest, ref.registry, descriptor.size)
        return self._push(ref, descriptor, MeteredFile(path, meter), mount_from)

    def push_blob_bytes(self, ref: ImageRef, descriptor: Descriptor, data: bytes) -> bool:
        """Upload a small blob held in memory (an image config); as ``push_blob``."""
        if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
            raise ImageError(f"the bytes given for blob {descriptor.digest} are not that blob")
        return self._push(ref, descriptor, data, None)

    def _push(self, ref: ImageRef, descriptor: Descriptor, body: Body,
              mount_from: ImageRef | str | None) -> bool:
        operation = f"pushing blob {ref.name}@{descriptor.digest}"
        _check_descriptor(descriptor, operation)
        if self.blob_exists(ref, descriptor.digest):
            return False
        upload_url: str | None = None
        source = _mount_source(ref, mount_from)
        if source is not None:
            mounted, upload_url = self._start_mount(ref, descriptor.digest, source)
            if mounted:
                return True
        limit = self.transport.options.retries
        attempt = 0
        while True:
            if upload_url is None:
                upload_url = self._start_upload(ref, operation)
            broken = self._put_upload(ref, upload_url, descriptor, body, operation)
            if broken is None:
                return True
            if attempt >= limit:
                raise broken
            # The session died with the connection (distribution answers a PUT to it with
            # 404 BLOB_UPLOAD_INVALID): the retry opens a new one, unless the blob got in.
            delay = self.transport.backoff_delay(attempt)
            log.warning("Retrying upload of blob %s to %s in a new upload session after %s due "
                        "to %s (retry %d of %d)", descriptor.digest, ref.registry,
                        format_wait(delay), broken.reason, attempt + 1, limit)
            self.transport.sleep(delay)
            attempt += 1
            upload_url = None
            if self.blob_exists(ref, descriptor.digest):
                return True

    def _put_upload(self, ref: ImageRef, upload_url: str, descriptor: Descriptor, body: Body,
                    operation: str) -> BrokenUpload | None:
        """The monolithic upload: one PUT that closes the session and names the digest.

        None when the registry took the blob; a ``BrokenUpload`` when a new session may do
        better (no answer, a 5xx or 429, the session gone); a refusal raises."""
        try:
            response = self._request(
                "PUT", ref, _with_query(upload_url, digest=descriptor.digest), push=True,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(descriptor.size)},
                body=body, retries=0,
            )
        except RegistryConnectionError as exc:
            if not exc.transient:
                raise
            return BrokenUpload(f"{operation}: {exc}", exc.reason)
        with response:
            if response.status_code in (201, 204):
                return None
            error = http_error(operation, response)
            session_gone = response.status_code == 404 and not set(error.codes).isdisjoint(
                {"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})
            if response.status_code in RETRY_STATUSES or session_gone:
                reason = f"{response.status_code} {response.reason or ''}".rstrip()
                return BrokenUpload(str(error), reason)
            raise error

    def mount_blob(self, ref: ImageRef, digest: str, from_repo: ImageRef | str) -> bool:
        """Mount blob ``digest`` from another repository of the same registry into ``ref``'s.

        True when mounted. False when the source is on another registry or the registry
        declined (it then opened an upload session, which is cancelled): upload instead.
        """
        source = _mount_source(ref, from_repo)
        if source is None:
            return False
        mounted, upload_url = self._start_mount(ref, digest, source)
        if not mounted and upload_url is not None:
            self._request("DELETE", ref, upload_url, push=True).close()
        return mounted

    def check_push_permission(self, ref: ImageRef) -> None:
        """Fail now, before a long build, if ``ref``'s repository cannot be pushed to.

        As go-containerregistry's ``CheckPushPermission`` (kaniko's check): open an upload
        session with push credentials and cancel it at once.
        """
        operation = f"pushing to {ref.name}"
        response = self._request("POST", ref, f"/v2/{ref.repository}/blobs/uploads/", push=True,
                                 headers={"Content-Length": "0"})
        with response:
            if response.status_code != 202:
                raise http_error(operation, response)
            location = response.headers.get("Location")
        if location:
            self._request("DELETE", ref, urljoin(response.url, location), push=True).close()

    def push_manifest(self, ref: ImageRef, body: bytes, media_type: str) -> str:
        """Put a manifest (or index) under ``ref``'s tag (or digest); returns its digest."""
        target = ref.tag or ref.reference
        operation = f"pushing manifest {ref.name}{':' if ref.tag else '@'}{target}"
        response = self._request("PUT", ref, f"/v2/{ref.repository}/manifests/{target}",
                                 push=True, headers={"Content-Type": media_type}, body=body)
        with response:
            if response.status_code not in (200, 201, 202):
                raise http_error(operation, response)
        return _digest_of(body, "sha256")

    def _start_upload(self, ref: ImageRef, operation: str) -> str:
        response = self._request("POST", ref, f"/v2/{ref.repository}/blobs/uploads/", push=True,
                                 headers={"Content-Length": "0"})
        with response:
            if response.status_code != 202:
                raise http_error(operation, response)
            return _location(response, operation)

    def _start_mount(self, ref: ImageRef, digest: str, source: str) -> tuple[bool, str | None]:
        """(mounted, upload URL): a registry that declines a mount opens an upload instead."""
        operation = f"mounting blob {ref.name}@{digest} from {source}"
        query = urlencode({"mount": digest, "from": source})
        response = self._request("POST", ref, f"/v2/{ref.repository}/blobs/uploads/?{query}",
                                 push=True, mount_from=source, headers={"Content-Length": "0"})
        with response:
            if response.status_code == 201:
                return True, None
            if response.status_code == 202:
                return False, _location(response, operation)
            raise http_error(operation, response)

    # --- the one place a request is sent -------------------------------------------------------

    def _request(self, method: str, ref: ImageRef, target: str, *, push: bool = False,
                 mount_from: str | None = None, headers: Mapping[str, str] | None = None,
                 body: Body = None, stream: bool = False,
                 retries: int | None = None) -> requests.Response:
        """Send a request for ``ref``'s repository, with credentials when an authenticator has
        them, answering one ``401`` challenge."""
        scope = Scope(ref.registry, ref.repository, push=push, mount_from=mount_from)
        sent_headers = dict(headers or {})
        if self.auth is not None:
            authorization = self.auth.authorization(scope)
            if authorization:
                sent_headers["Authorization"] = authorization
        response = self.transport.request(method, ref, target, push=push, headers=sent_headers,
                                          body=body, stream=stream, retries=retries)
        if response.status_code == 401 and self.auth is not None:
            authorization = self.auth.challenge(scope, response)
            if authorization:
                response.close()
                sent_headers["Authorization"] = authorization
                response = self.transport.request(method, ref, target, push=push,
                                                  headers=sent_headers, body=body, stream=stream,
                                                  retries=retries)
        if response.status_code in (401, 403) and self.auth is not None:
            advice = self.auth.explain(scope, response)
            if advice:
                _ADVICE[response] = advice
        return response


class RegistryHTTPError(RegistryError):
    """A registry answered, and said no: the HTTP status and distribution error codes."""

    def __init__(self, message: str, *, status: int, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


class BrokenUpload(RegistryError):
    """An upload that failed in a way a new upload session may not: ``reason`` in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def http_error(operation: str, response: requests.Response) -> RegistryHTTPError:
    """``OPERATION: 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)``, as one line."""
    reason = response.reason or ""
    message = f"{operation}: {response.status_code} {reason}".rstrip()
    advice = _ADVICE.get(response)
    if advice:
        return RegistryHTTPError(f"{message}: {advice}", status=response.status_code)
    codes, details = _error_details(response)
    return RegistryHTTPError(f"{message} ({details})" if details else message,
                             status=response.status_code, codes=codes)


def _error_details(response: requests.Response) -> tuple[tuple[str, ...], str]:
    """The distribution-spec error codes, and codes with messages, in a response body."""
    if response.request is not None and response.request.method == "HEAD":
        return (), ""
    try:
        data: Any = json.loads(_read_limited(response, 64 << 10, "reading an error"))
    except (ValueError, RecursionError, RegistryError, requests.RequestException):
        return (), ""
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return (), ""
    parts = []
    codes = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        code, text = error.get("code"), error.get("message")
        if code:
            codes.append(str(code))
        parts.append(": ".join(str(p) for p in (code, text) if p))
    return tuple(codes), "; ".join(p for p in parts if p).replace("\n", " ")


def _read_limited(response: requests.Response, limit: int, operation: str) -> bytes:
    """The body, refusing more than ``limit`` bytes (without reading them all first)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_SIZE):
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"{operation}: the registry sent more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_index(body: bytes, media_type: str | None) -> bool:
    """True for an index / manifest list, judged by its ``mediaType`` or, lacking one (it is
    optional in OCI), by the ``Content-Type`` and finally by the shape of the document."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # Manifest.from_bytes reports the malformed JSON
    if not isinstance(data, dict):
        return False
    declared = data.get("mediaType")
    if declared:
        return declared in INDEX_TYPES
    if media_type in INDEX_TYPES:
        return True
    if media_type in MANIFEST_TYPES:
        return False
    return "manifests" in data and "layers" not in data


@contextlib.contextmanager
def _naming(operation: str) -> Iterator[None]:
    """Prefix an ``ImageError`` raised inside with the operation: registry, image, digest."""
    try:
        yield
    except ImageError as exc:
        raise ImageError(f"{operation}: {exc}") from None


def _digest_of(data: bytes, algorithm: str) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _check_descriptor(descriptor: Descriptor, operation: str) -> None:
    """Refuse a digest we cannot verify before asking for content named by it."""
    why = validate_digest(descriptor.digest)
    if why:
        raise ImageError(f"{operation}: {why}")


def _verify(descriptor: Descriptor, digest: str, size: int, operation: str) -> None:
    if size != descriptor.size:
        raise RegistryError(f"{operation}: size mismatch: expected {descriptor.size} bytes, "
                            f"received {size}{' or more' if size > descriptor.size else ''}")
    if digest != descriptor.digest:
        raise RegistryError(f"{operation}: digest mismatch: received content with digest "
                            f"{digest}")


def _at(ref: ImageRef) -> str:
    return f"@{ref.digest}" if ref.digest else f":{ref.tag}"


def _mount_source(ref: ImageRef, source: ImageRef | str | None) -> str | None:
    """The repository to mount from, or None when a mount cannot work (another registry)."""
    if source is None:
        return None
    if isinstance(source, str):
        return source if source != ref.repository else None
    if source.registry != ref.registry or source.repository == ref.repository:
        return None
    return source.repository


def _location(response: requests.Response, operation: str) -> str:
    """The absolute upload URL from ``Location``, which may be relative to the request."""
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{operation}: the registry started an upload without a Location")
    return urljoin(response.url, location)


def _with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to whatever query (upload state) it already carries."""
    parts = urlsplit(url)
    extra = "&".join(f"{key}={quote(value, safe='')}" for key, value in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))
