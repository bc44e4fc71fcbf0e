"""Where a built image goes: registries (``--destination``), a docker-save tarball, an OCI
layout, and the digest files CI systems read.

Blobs go first and the manifest last, so a push that fails part way leaves no tag pointing at
missing blobs. The manifest kind is ``--image-format``, or else follows the base image (Docker
v2s2 for ``scratch``, as kaniko does) unless only OCI can describe the image (zstd layers,
annotations).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from executor.errors import OptionsError, RegistryError
from executor.image import model
from executor.image.atomic import is_mount_point, write_output
from executor.image.built import BuiltImage
from executor.image.model import Descriptor, Layer, Manifest, sha256_digest
from executor.image.reference import DOCKER_HUB, ImageRef
from executor.options import BuildOptions
from executor.registry.auth import RegistryAuth
from executor.registry.client import PullSources, RegistryClient, RegistryHTTPError
from executor.registry.credentials import Keychain, registry_host
from executor.registry.transport import Transport, TransportOptions, timing_from_environment
from snapshot.errors import os_error_reason, storage_errors

if TYPE_CHECKING:
    from executor.attest.attach import Attached
    from executor.attest.collect import Pending
    from executor.report import BuildRecorder

log = logging.getLogger("kiln")

_TO_OCI = {model.DOCKER_LAYER_GZIP: model.OCI_LAYER_GZIP,
           model.DOCKER_FOREIGN_LAYER: model.OCI_FOREIGN_LAYER_GZIP}
_TO_DOCKER = {v: k for k, v in _TO_OCI.items()}


@dataclass(frozen=True)
class FinalImage:
    """The bytes that name an image: manifest and config, and the layer files behind them."""

    manifest: Manifest
    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)


def make_client(options: BuildOptions, keychain: Keychain | None = None) -> RegistryClient:
    """A registry client with the build's TLS and plain-HTTP settings and the credentials of
    ``$DOCKER_CONFIG/config.json`` (or ``keychain``)."""
    transport = Transport(TransportOptions(
        insecure=options.insecure,
        insecure_pull=options.insecure_pull,
        insecure_registries=frozenset(options.insecure_registries),
        skip_tls_verify=options.skip_tls_verify,
        skip_tls_verify_pull=options.skip_tls_verify_pull,
        skip_tls_verify_registries=frozenset(options.skip_tls_verify_registries),
        registry_certificates=dict(options.registry_certificates),
        client_certificates=dict(options.registry_client_certs),
        **timing_from_environment(),  # type: ignore[arg-type]
    ))
    auth = RegistryAuth(keychain or Keychain.from_environment(options.credential_helpers),
                        transport)
    return RegistryClient(transport=transport, auth=auth, pull_sources=pull_sources(options))


def pull_sources(options: BuildOptions) -> PullSources:
    """``--registry-mirror`` (mirrors of Docker Hub) and ``--registry-map`` as PullSources."""
    maps: dict[str, list[str]] = {}
    for registry, mirrors in options.registry_maps:
        maps.setdefault(registry_host(registry), []).extend(mirrors)
    if options.registry_mirrors:
        maps.setdefault(DOCKER_HUB, []).extend(options.registry_mirrors)
    return PullSources({k: tuple(v) for k, v in maps.items()},
                       options.skip_default_registry_fallback, options.image_download_retry)


def check_push_permissions(options: BuildOptions, client: RegistryClient) -> None:
    """Fail before building when a destination cannot be pushed to (kaniko's pre-build check).

    One upload session opened and cancelled per destination repository; skipped with
    ``--no-push`` and ``--skip-push-permission-check``.
    """
    if options.no_push or options.skip_push_permission_check:
        return
    checked: set[str] = set()
    for destination in options.destinations:
        ref = ImageRef.parse(destination)
        if ref.name in checked:
            continue
        client.check_push_permission(ref)
        checked.add(ref.name)


def finalize(image: BuiltImage, image_format: str | None = None,
             annotations: dict[str, str] | None = None) -> FinalImage:
    """Choose the manifest kind and write the manifest for ``image``.

    ``image_format`` (``--image-format``) forces ``docker`` or ``oci``; unset, the kind follows
    the base image, and becomes OCI where only OCI can describe the image (zstd or plain tar
    layers, manifest annotations).
    """
    needs_oci = [reason for reason, present in (
        ("zstd or uncompressed layers", any(layer.media_type in (model.OCI_LAYER_ZSTD,
                                                                model.OCI_LAYER)
                                            for layer in image.layers)),
        ("manifest annotations", bool(annotations))) if present]
    if image_format == "docker" and needs_oci:
        raise OptionsError(f"--image-format docker cannot describe {needs_oci[0]}; use "
                           "--image-format oci (or --compression gzip)")
    oci = image_format == "oci" or (image_format is None and (
        image.manifest_type == model.OCI_MANIFEST or bool(needs_oci)))
    mapping = _TO_OCI if oci else _TO_DOCKER
    layers = tuple(Layer(layer.path, layer.digest, layer.diff_id, layer.size,
                         mapping.get(layer.media_type, layer.media_type))
                   for layer in image.layers)
    config_bytes = image.config.to_bytes()
    config = Descriptor(model.OCI_CONFIG if oci else model.DOCKER_CONFIG,
                        sha256_digest(config_bytes), len(config_bytes))
    manifest = Manifest(model.OCI_MANIFEST if oci else model.DOCKER_MANIFEST, config,
                        tuple(layer.descriptor() for layer in layers),
                        dict(annotations) if annotations else None)
    return FinalImage(manifest, manifest.to_bytes(), config_bytes, layers)


def publish(image: BuiltImage, options: BuildOptions, client: RegistryClient,
            attestations: Pending | None = None, recorder: BuildRecorder | None = None) -> str:
    """Write every requested local output, then push to every destination; returns the digest.

    The local outputs come first, as in kaniko: a full disk or an unwritable path then fails
    the build before anything is pushed, rather than after the tag has moved.
    """
    if attestations is not None:  # an index holds the image: BuildKit's are OCI
        if options.image_format == "docker":
            raise OptionsError("--attest needs an OCI image index; drop --image-format docker")
        final = finalize(image, "oci", options.annotations)
    else:
        final = finalize(image, options.image_format, options.annotations)
    destinations = [ImageRef.parse(d) for d in options.destinations]
    attached = _attach(attestations, final, destinations) if attestations else None
    write_local_outputs(final, options, destinations, attached)
    if options.no_push:
        log.info("Skipping push to container registry due to --no-push flag")
    else:
        for ref in destinations:
            push_image(client, ref if attached is None else _by_digest(ref, final.digest),
                       final, image.source, retries=options.push_retry,
                       ignore_immutable_tag=options.push_ignore_immutable_tag_errors,
                       homes=image.blob_homes, recorder=recorder)
            if attached is not None:
                push_attached(client, ref, attached)
        _write_builder_output(destinations, _named_digest(final, attached))
    return _named_digest(final, attached)


def _attach(attestations: Pending, final: FinalImage, destinations: Sequence[ImageRef]
            ) -> Attached:
    """The statements about ``final`` and the index naming both (``--attest``)."""
    from executor.attest.attach import attach, image_platform, write_files
    from executor.attest.collect import subjects_for

    platform = image_platform(final.config_bytes)
    platform_text = "/".join(platform[k] for k in ("os", "architecture", "variant")
                             if k in platform)
    names = [f"{ref.name}:{ref.tag or 'latest'}" for ref in destinations]
    made = attestations.statements(subjects_for(names, final.digest, platform_text),
                                   names[0] if names else "image")
    for request, statement in made:
        if request.dest is not None:
            with storage_errors(f"--attest dest={request.dest}"):
                write_files(request.dest, [statement], request.kind)
    return attach([statement for _, statement in made], final.manifest_bytes,
                  final.manifest.media_type, platform)


def _by_digest(ref: ImageRef, digest: str) -> ImageRef:
    """``ref``'s repository at ``digest`` and no tag: the image under the index the tag names."""
    return dataclasses.replace(ref, tag=None, digest=digest)


def _named_digest(final: FinalImage, attached: Attached | None) -> str:
    """What the tag names: the index when attestations ride along (as BuildKit reports it)."""
    return attached.index.digest if attached is not None else final.digest


def push_attached(client: RegistryClient, ref: ImageRef, attached: Attached) -> None:
    """The attestation blobs and manifest (by digest), then the index under the tag."""
    repo = _by_digest(ref, attached.manifest.digest)
    for blob in attached.blobs:
        client.push_blob_bytes(repo, Descriptor(blob.media_type, blob.digest, len(blob.data)),
                               blob.data)
    client.push_manifest(repo, attached.manifest.data, attached.manifest.media_type)
    client.push_manifest(ref, attached.index.data, attached.index.media_type)
    log.info("Pushed %s@%s (image index with attestations)", ref.name, attached.index.digest)


def local_outputs(options: BuildOptions) -> list[tuple[str, Path]]:
    """The files and directories the build writes here, as (flag, path)."""
    return [(flag, path) for flag, path in (
        ("--tar-path", options.tar_path), ("--oci-layout-path", options.oci_layout_path),
        ("--digest-file", options.digest_file),
        ("--image-name-with-digest-file", options.image_name_with_digest_file),
        ("--image-name-tag-with-digest-file", options.image_name_tag_with_digest_file))
        if path is not None]


def check_local_outputs(options: BuildOptions) -> None:
    """Refuse, before building, an output path that cannot be written: a directory given as a
    file (or the reverse), a parent that is a file, a directory where no file can be created
    (``/proc``, a read-only mount). Only a full disk is left to find out at the end."""
    for flag, path in local_outputs(options):
        directory = flag == "--oci-layout-path"
        try:
            mode: int | None = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise OptionsError(f"{flag} {path}: {os_error_reason(exc)}") from None
        if mode is not None and directory and not stat.S_ISDIR(mode):
            raise OptionsError(f"{flag} {path}: not a directory")
        if mode is not None and not directory and stat.S_ISDIR(mode):
            raise OptionsError(f"{flag} {path}: is a directory; name a file")
        if mode is not None and not directory and (not stat.S_ISREG(mode)
                                                    or is_mount_point(path)):
            # /dev/stdout, a FIFO, /dev/termination-log: written in place (output_file)
            if not os.access(path, os.W_OK):
                raise OptionsError(f"{flag} {path}: not writable")
            continue
        _probe_directory(flag, path, path if mode is not None and directory else path.parent)
    if options.attest and options.tar_path and not _is_stream(options.tar_path):
        from executor.attest.attach import sidecar_directory

        beside = sidecar_directory(options.tar_path)
        if beside.exists() and not beside.is_dir():
            raise OptionsError(f"--tar-path {options.tar_path}: {beside} (where its "
                               "attestations go) is not a directory")


def _probe_directory(flag: str, path: Path, directory: Path) -> None:
    """Create and remove a file in ``directory`` (or the nearest ancestor that exists, which
    the write will create it under): what writing the output will need."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise OptionsError(f"{flag} {path}: {directory} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kiln-probe-", dir=directory)
    except OSError as exc:
        raise OptionsError(f"{flag} {path}: cannot create files in {directory}: "
                           f"{os_error_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def write_local_outputs(final: FinalImage, options: BuildOptions,
                        destinations: Sequence[ImageRef], attached: Attached | None = None
                        ) -> None:
    """``--tar-path``, ``--oci-layout-path`` and the digest files, each whole or not at all;
    a failure names the flag and the path the user gave, never a temporary name."""
    if options.tar_path:
        from executor.image.tarball import write_docker_tarball

        tag = str(destinations[0]) if destinations else "kiln/image:latest"
        if attached is not None and _is_stream(options.tar_path):
            log.warning("--tar-path %s is not a file: its attestations are not written beside "
                        "it (use --attest ...,dest=DIR)", options.tar_path)
        elif attached is not None:  # a docker-save tarball holds no index: beside it
            from executor.attest.attach import sidecar_directory, write_sidecar

            sidecar = sidecar_directory(options.tar_path)
            with storage_errors(f"--tar-path {options.tar_path}: {sidecar}"):
                write_sidecar(sidecar, attached)
        with storage_errors(f"--tar-path {options.tar_path}"):
            write_docker_tarball(options.tar_path, tag, final.config_bytes, list(final.layers))
    if options.oci_layout_path:
        from executor.image.layout import write_oci_layout

        name = destinations[0].reference if destinations else None
        with storage_errors(f"--oci-layout-path {options.oci_layout_path}"):
            if attached is None:
                write_oci_layout(options.oci_layout_path, final.manifest_bytes,
                                 final.config_bytes, list(final.layers), name)
            else:
                _write_attached_layout(options.oci_layout_path, final, attached, name)
    digest = _named_digest(final, attached)
    for flag, path, text in (
            ("--digest-file", options.digest_file, digest),
            ("--image-name-with-digest-file", options.image_name_with_digest_file,
             "".join(f"{ref.name}@{digest}\n" for ref in destinations)),
            ("--image-name-tag-with-digest-file", options.image_name_tag_with_digest_file,
             "".join(f"{ref.name}:{ref.tag or 'latest'}@{digest}\n" for ref in destinations))):
        if path is not None:
            with storage_errors(f"{flag} {path}"):
                write_output(path, text.encode())


def _is_stream(path: Path) -> bool:
    """``/dev/stdout``, a FIFO: no directory can sit beside it."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _write_attached_layout(path: Path, final: FinalImage, attached: Attached,
                           name: str | None) -> None:
    """The image's blobs and manifest, the attestation blobs and manifest, and ``index.json``
    naming only the index (``name``), as BuildKit's OCI exporter lays it out; blobs first."""
    from executor.image.layout import add_to_index, init_layout, link_blob, write_blob

    init_layout(path)
    write_blob(path, final.config_bytes, final.manifest.config.media_type)
    for layer in final.layers:
        link_blob(path, layer.path, layer.digest, layer.size)
    write_blob(path, final.manifest_bytes, final.manifest.media_type)
    for blob in (*attached.blobs, attached.manifest, attached.index):
        write_blob(path, blob.data, blob.media_type)
    add_to_index(path, Descriptor(attached.index.media_type, attached.index.digest,
                                  len(attached.index.data)), name)


def push_image(client: RegistryClient, ref: ImageRef, final: FinalImage,
               source: ImageRef | None, *, retries: int = 0,
               ignore_immutable_tag: bool = False,
               homes: Mapping[str, ImageRef] | None = None,
               recorder: BuildRecorder | None = None) -> None:
    """Blobs first (skipping what the registry has), the manifest last.

    A failed push is started again ``retries`` times (``--push-retry``), after 1 s, 2 s, 4 s...
    (blobs already there are skipped by their ``HEAD``). With ``ignore_immutable_tag``
    (``--push-ignore-immutable-tag-errors``) a registry refusing to move an immutable tag is
    logged and the build goes on, as kaniko does.
    """
    log.info("Pushing image to %s", ref)
    attempt = 0
    while True:
        try:
            for layer in final.layers:
                started = time.monotonic()
                # The client mounts only from another repository of the same registry.
                uploaded = client.push_blob(ref, layer.descriptor(), layer.path,
                                            mount_from=(homes or {}).get(layer.digest, source))
                log.info("%s", transfer_line("Pushed" if uploaded else "Existing", layer.digest,
                                             layer.size, time.monotonic() - started, uploaded))
                if recorder is not None:
                    recorder.span("push layer", time.monotonic() - started, {
                        "kiln.layer.digest": layer.digest, "kiln.registry": ref.registry,
                        "kiln.layer.compressed_bytes": layer.size,
                        "kiln.bytes": layer.size if uploaded else 0})
            client.push_blob_bytes(ref, final.manifest.config, final.config_bytes)
            client.push_manifest(ref, final.manifest_bytes, final.manifest.media_type)
            break
        except RegistryError as exc:
            immutable = is_immutable_tag_error(exc)
            if immutable and ignore_immutable_tag:
                log.warning("Immutable tag error ignored for %s: %s", ref, exc)
                return
            # Retrying cannot change a refusal or an immutable tag.
            refused = isinstance(exc, RegistryHTTPError) and exc.status in (401, 403)
            if attempt >= retries or refused or immutable:
                raise
            delay = float(2 ** attempt)
            log.warning("Push to %s failed (%s); retrying in %.0fs", ref, exc, delay)
            client.transport.sleep(delay)
            attempt += 1
    log.info("Pushed %s@%s", ref.name, final.digest)


def is_immutable_tag_error(exc: RegistryError) -> bool:
    """A registry refusing to overwrite a tag: ECR's ``TAG_INVALID`` "...repository is
    immutable", and the same words from Artifact Registry, Harbor and others."""
    if not isinstance(exc, RegistryHTTPError) or not str(exc).startswith("pushing manifest"):
        return False
    return "TAG_INVALID" in exc.codes or "immutable" in str(exc).lower()


def transfer_line(verb: str, digest: str, size: int, seconds: float, moved: bool) -> str:
    """``Pushed layer sha256:abcd1234 (12.3 MB in 0.4s, 30.1 MB/s)``: CI logs show progress."""
    short = digest.split(":", 1)[-1][:12]
    if not moved:
        return f"{verb} layer sha256:{short} ({size / 1e6:.1f} MB, already there)"
    rate = size / 1e6 / seconds if seconds > 0 else float("inf")
    return f"{verb} layer sha256:{short} ({size / 1e6:.1f} MB in {seconds:.1f}s, {rate:.1f} MB/s)"


def _write_builder_output(destinations: Sequence[ImageRef], digest: str) -> None:
    """kaniko's ``BUILDER_OUTPUT``: a JSON line per pushed name in ``$BUILDER_OUTPUT/images``
    (what Cloud Build reads to report the images a build pushed)."""
    directory = os.environ.get("BUILDER_OUTPUT")
    if not directory or not destinations:
        return
    with open(os.path.join(directory, "images"), "w") as out:
        for ref in destinations:
            out.write(json.dumps({"name": str(ref), "digest": digest}) + "\n")
